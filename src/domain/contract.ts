/**
 * The gateway ⇄ neuron contract, declared once: the neuron's control-plane answers (`/health`,
 * `/discovery`, `/models`, `/models/load`, `/models/unload`, `/models/pull`, `/models/remove`, `/tokenize`,
 * `/admin/restart-worker`), the version both speak, and the configuration error both raise. The
 * neuron's answers have these types; the gateway decodes every answer with these schemas, once
 * per poll and off the request path, so a neuron that answers something else is an error naming
 * the field, not a crash three calls later. Unknown fields are ignored (a newer neuron may add
 * some). Header names are in `headers.ts`.
 */
import { Data, Schema } from "effect"

export const VERSION = "0.1.0"

/** A configuration file or value that cannot be used: the process stops before binding a port. */
export class ConfigError extends Data.TaggedError("ConfigError")<{
  readonly file: string
  readonly key: string | undefined
  readonly reason: string
}> {
  override get message() {
    return `${this.file}${this.key ? `: ${this.key}` : ""}: ${this.reason}`
  }
}

const opt = <S extends Schema.Schema.Any>(s: S) => Schema.optionalWith(s, { exact: true })

export const ModelStatus = Schema.Literal(
  "downloading",
  "available",
  "loading",
  "loaded",
  "unloading",
  "recovering",
  "failed"
)
export type ModelStatus = typeof ModelStatus.Type

export const DownloadProgress = Schema.Struct({
  bytes_done: Schema.Number,
  bytes_total: Schema.Number,
  rate_bps: Schema.Number,
  started_at: Schema.String
})
export type DownloadProgress = typeof DownloadProgress.Type

/** A pull, under way or ended (`POST /models/pull` answers one; `/models` lists them in `pulls`). */
export const PullRecord = Schema.Struct({
  model: Schema.String,
  status: Schema.Literal("downloading", "done", "failed"),
  bytes_done: Schema.Number,
  bytes_total: Schema.Number,
  rate_bps: Schema.Number,
  started_at: Schema.String,
  finished_at: Schema.NullOr(Schema.String),
  error: Schema.NullOr(Schema.Struct({ code: Schema.String, message: Schema.String }))
})
export type PullRecord = typeof PullRecord.Type

/** `POST /models/resolve`: what a pull of the model would download (placement sizes it by this). */
export const ResolveAnswer = Schema.Struct({
  model: Schema.String,
  bytes_total: Schema.Number,
  files: Schema.Array(Schema.Struct({ path: Schema.String, size: Schema.Number }))
})
export type ResolveAnswer = typeof ResolveAnswer.Type

/** `POST /models/remove`: a cached download deleted. */
export const RemoveAnswer = Schema.Struct({ model: Schema.String, removed: Schema.Boolean, freed_bytes: Schema.Number })
export type RemoveAnswer = typeof RemoveAnswer.Type

/** One model on a neuron (`/models`, and the answer of load and unload). */
export const NeuronModel = Schema.Struct({
  id: Schema.String,
  status: ModelStatus,
  error: Schema.NullOr(Schema.String),
  /** The device group it is on ("cuda:0", "cuda:0+cuda:1", "cpu"). */
  device: Schema.NullOr(Schema.String),
  group: opt(Schema.NullOr(Schema.String)),
  /** Its memory on each device of the group, MB (a group's load is split across its devices). */
  device_memory_mb: opt(Schema.NullOr(Schema.Record({ key: Schema.String, value: Schema.Number }))),
  size_bytes: Schema.Number,
  memory_estimate_mb: Schema.NullOr(Schema.Number),
  context_limit: Schema.NullOr(Schema.Number),
  train_context: opt(Schema.NullOr(Schema.Number)),
  capabilities: Schema.Array(Schema.String),
  in_flight: Schema.Number,
  queue_depth: Schema.Number,
  loaded_at: Schema.NullOr(Schema.String),
  last_used_at: Schema.NullOr(Schema.String),
  load_ms: opt(Schema.NullOr(Schema.Number)),
  /** While `downloading`: the pull's progress (src/neuron/Puller.ts). */
  download: opt(DownloadProgress)
})
export type NeuronModel = typeof NeuronModel.Type

/** What a GPU's telemetry says, where the source has it (a CPU device has none of these). */
export const DeviceTelemetry = Schema.Struct({
  uuid: opt(Schema.String),
  /** 0..1 */
  utilization: opt(Schema.Number),
  temperatureC: opt(Schema.Number),
  powerW: opt(Schema.Number)
})

/** The same in the snake_case of `/health` and `/discovery`. */
export const DeviceTelemetryFields = Schema.Struct({
  uuid: opt(Schema.String),
  utilization: opt(Schema.Number),
  temperature_c: opt(Schema.Number),
  power_w: opt(Schema.Number)
})

/** One device as `/models` lists it (memory in MB). */
export const NeuronDevice = Schema.Struct({
  id: Schema.String,
  kind: Schema.String,
  index: opt(Schema.Number),
  name: Schema.String,
  totalMb: Schema.Number,
  freeMb: Schema.Number,
  usedMb: Schema.Number,
  budgetMb: opt(Schema.NullOr(Schema.Number)),
  ...DeviceTelemetry.fields,
  /** The device group (worker) it belongs to; absent from older neurons: a group of its own. */
  group: opt(Schema.String),
  simulated: opt(Schema.Boolean),
  worker: opt(Schema.Struct({
    pid: Schema.NullOr(Schema.Number),
    alive: Schema.Boolean,
    restarts: Schema.Number
  }))
})
export type NeuronDevice = typeof NeuronDevice.Type

export const NeuronModels = Schema.Struct({
  object: opt(Schema.Literal("list")),
  data: Schema.Array(NeuronModel),
  devices: Schema.Array(NeuronDevice),
  /** Pulls under way, then recent ones that ended (a failed one with its error). */
  pulls: opt(Schema.Array(PullRecord))
})
export type NeuronModels = typeof NeuronModels.Type

export const NeuronHealth = Schema.Struct({
  status: Schema.Literal("ok", "degraded", "draining"),
  version: Schema.String,
  uptime_s: Schema.Number,
  devices: Schema.Array(Schema.Struct({
    id: Schema.String,
    name: Schema.String,
    total_mb: Schema.Number,
    free_mb: Schema.Number,
    used_mb: Schema.Number,
    worker_alive: Schema.Boolean,
    worker_restarts: Schema.Number,
    ...DeviceTelemetryFields.fields
  })),
  in_flight: Schema.Number,
  queued: Schema.Number,
  models: Schema.Array(Schema.Struct({
    id: Schema.String,
    status: ModelStatus,
    in_flight: Schema.Number,
    queue_depth: Schema.Number
  }))
})
export type NeuronHealth = typeof NeuronHealth.Type

export const NeuronDiscovery = Schema.Struct({
  host: Schema.Struct({
    hostname: Schema.String,
    os: opt(Schema.String),
    arch: opt(Schema.String),
    cpus: Schema.Number,
    totalMemoryMb: Schema.Number
  }),
  neuron: Schema.Struct({
    version: Schema.String,
    port: Schema.Number,
    models_dir: opt(Schema.String),
    threads: opt(Schema.Number)
  }),
  engine: Schema.NullOr(Schema.Struct({
    name: Schema.String,
    version: Schema.String,
    /** "prebuilt" (the package's llama.cpp binary) or "local" (compiled on this host). */
    binary: opt(Schema.String),
    gpu: Schema.Union(Schema.String, Schema.Boolean),
    gpu_names: opt(Schema.Array(Schema.String))
  })),
  memory_budget_mb: Schema.NullOr(Schema.Number),
  devices: Schema.Array(Schema.Struct({
    id: Schema.String,
    kind: Schema.String,
    name: Schema.String,
    total_mb: Schema.Number,
    free_mb: Schema.Number,
    used_mb: opt(Schema.Number),
    group: opt(Schema.String),
    worker_pid: opt(Schema.NullOr(Schema.Number)),
    simulated: opt(Schema.Boolean),
    ...DeviceTelemetryFields.fields
  })),
  driver_version: opt(Schema.String),
  cuda_version: opt(Schema.String)
})
export type NeuronDiscovery = typeof NeuronDiscovery.Type

export const TokenizeAnswer = Schema.Struct({ tokens: Schema.Number })
export type TokenizeAnswer = typeof TokenizeAnswer.Type

export const RestartWorkerAnswer = Schema.Struct({
  device: Schema.String,
  restarted: Schema.Boolean,
  reason: Schema.NullOr(Schema.String),
  models: Schema.Array(Schema.String)
})
export type RestartWorkerAnswer = typeof RestartWorkerAnswer.Type

/** The error envelope every neuron route answers with (OpenAI's). */
export const ErrorEnvelope = Schema.Struct({
  error: Schema.Struct({
    message: Schema.String,
    type: Schema.String,
    code: Schema.NullOr(Schema.String),
    param: opt(Schema.NullOr(Schema.String))
  })
})
export type ErrorEnvelope = typeof ErrorEnvelope.Type
