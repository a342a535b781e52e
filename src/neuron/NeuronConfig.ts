/**
 * neuron.toml: parsed with smol-toml, decoded with Schema, overridden by NEURON_* variables (read
 * through Effect's Config and decoded with the same Schema).
 * A bad file or value stops the process before any port is bound, naming file, key and reason.
 */
import { Config, ConfigProvider, Context, Effect, Option, ParseResult, Redacted, Schema } from "effect"
import { readFile } from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { parse as parseToml } from "smol-toml"
import { ConfigError } from "../domain/contract.js"
import { NeuronTelemetryTable, resolveTelemetry, type TelemetrySettings } from "../telemetry/TelemetryConfig.js"
import { checkGroups, DeviceGroupTable, type SimulatedDevice, SimulateTable } from "./DeviceGroups.js"
import { resolveSources, type SourceSettings, SourcesTable } from "./Sources.js"
import { ModelSettingsTable, resolveVision, type VisionSettings, VisionTable } from "./VisionConfig.js"

const Port = Schema.Int.pipe(Schema.between(0, 65535))
const PositiveInt = Schema.Int.pipe(Schema.positive())
const opt = <S extends Schema.Schema.Any>(s: S) => Schema.optionalWith(s, { exact: true })

export const NeuronFile = Schema.Struct({
  host: opt(Schema.String),
  port: opt(Port),
  models_dir: opt(Schema.String),
  threads: opt(PositiveInt),
  memory_budget_mb: opt(Schema.Number.pipe(Schema.positive())),
  prefill_chunk_tokens: opt(PositiveInt.pipe(Schema.between(8, 8192))),
  /** Streamed tokens within this many ms of the last frame sent share the next frame (0: one per token). */
  stream_coalesce_ms: opt(Schema.Int.pipe(Schema.between(0, 1000))),
  context_size: opt(PositiveInt.pipe(Schema.between(64, 1 << 20))),
  max_in_flight: opt(PositiveInt.pipe(Schema.between(1, 64))),
  /** The most choices (OpenAI `n`) one request may ask for. */
  max_n: opt(PositiveInt.pipe(Schema.between(1, 64))),
  max_queue_depth: opt(Schema.Int.pipe(Schema.between(0, 100_000))),
  max_wait_secs: opt(Schema.Number.pipe(Schema.positive())),
  max_per_principal: opt(PositiveInt),
  default_models: opt(Schema.Array(Schema.String)),
  api_token: opt(Schema.String.pipe(Schema.minLength(1))),
  gpu: opt(Schema.Literal("auto", "off")),
  drain_secs: opt(Schema.Number.pipe(Schema.nonNegative())),
  auto_load: opt(Schema.Boolean),
  /** Testing aid: hold every load this long (to exercise clients waiting on a slow load). */
  load_delay_ms: opt(Schema.Int.pipe(Schema.nonNegative())),
  /** Prometheus metrics on this port (at /metrics, on `host`); off when unset. */
  metrics_port: opt(Port),
  /** Trace export (src/telemetry/TelemetryConfig.ts; OTEL_* variables win). */
  telemetry: opt(NeuronTelemetryTable),
  /** GPUs that share one worker (a model there is split across them; see DeviceGroups.ts). */
  device_groups: opt(Schema.Array(DeviceGroupTable)),
  /** Testing aid: declared GPUs instead of nvidia-smi's (see DeviceSource.ts). */
  simulate: opt(SimulateTable),
  /** Where pulled models are kept (default `<models_dir>/.cache/hf`); see src/neuron/Sources.ts. */
  cache_dir: opt(Schema.String),
  sources: opt(SourcesTable),
  /** Image limits and the vision memory guard (VisionConfig.ts). */
  vision: opt(VisionTable),
  /** Per-model settings: `[models."<id>"] mmproj = "…"`. */
  models: opt(ModelSettingsTable)
}).annotations({ parseOptions: { onExcessProperty: "error" } })
export type NeuronFile = typeof NeuronFile.Type

export interface NeuronSettings {
  readonly configFile: string | undefined
  readonly host: string
  readonly port: number
  readonly modelsDir: string
  readonly threads: number
  readonly memoryBudgetMb: number | undefined
  readonly prefillChunkTokens: number
  /** See `stream_coalesce_ms` (worker/coalesce.ts). */
  readonly streamCoalesceMs: number
  readonly contextSize: number
  readonly maxInFlight: number
  readonly maxN: number
  readonly maxQueueDepth: number
  readonly maxWaitSecs: number
  readonly maxPerPrincipal: number | undefined
  readonly defaultModels: ReadonlyArray<string>
  readonly apiToken: Redacted.Redacted<string> | undefined
  readonly gpu: "auto" | "off"
  readonly drainSecs: number
  readonly autoLoad: boolean
  readonly loadDelayMs: number
  readonly prefillBaseMb: number
  readonly prefillMbPer1kTokens: number
  readonly metricsPort: number | undefined
  readonly telemetry: TelemetrySettings
  /** Configured device groups by GPU index (other GPUs are groups of their own). */
  readonly deviceGroups: ReadonlyArray<ReadonlyArray<number>> | undefined
  readonly simulate: ReadonlyArray<SimulatedDevice> | undefined
  readonly sources: SourceSettings
  readonly vision: VisionSettings
  /** How these settings were loaded, so a reload (NeuronReload.ts) reads them the same way. */
  readonly source?: NeuronConfigSource
}

export interface NeuronConfigSource {
  readonly file?: string | undefined
  readonly port?: number | undefined
  readonly env?: Record<string, string | undefined>
}

export class NeuronConfig extends Context.Tag("cortex/NeuronConfig")<NeuronConfig, NeuronSettings>() {}

export { ConfigError }

/**
 * Default worker threads: the physical cores (logical / 2 where SMT is likely). On small hosts
 * one core is left to the processes' own JS threads: measured on a 2-vCPU host, 2 decode threads
 * ran the bench model at ~40-80 tok/s against ~200-230 tok/s with 1.
 */
export const physicalCores = () => {
  const logical = os.availableParallelism()
  return logical >= 4 ? Math.floor(logical / 2) : Math.max(1, logical - 1)
}

/**
 * Streamed tokens that come within this many ms of the last frame share the next one (the first is
 * sent at once). Measured on the tiny model (~1,000 tok/s on one thread): the neuron process spent
 * 490 µs of CPU per token sending each alone. 10 ms is below what a reader can see.
 */
export const DEFAULT_STREAM_COALESCE_MS = 10

/** The keys a NEURON_<KEY> variable may override (every one but the telemetry table: OTEL_* cover it). */
const ENV_KEYS = [
  "host",
  "port",
  "models_dir",
  "threads",
  "memory_budget_mb",
  "prefill_chunk_tokens",
  "stream_coalesce_ms",
  "context_size",
  "max_in_flight",
  "max_n",
  "max_queue_depth",
  "max_wait_secs",
  "max_per_principal",
  "default_models",
  "api_token",
  "gpu",
  "drain_secs",
  "auto_load",
  "load_delay_ms",
  "metrics_port",
  "cache_dir"
] as const satisfies ReadonlyArray<keyof NeuronFile>
type EnvKey = typeof ENV_KEYS[number]

const variableOf = (key: string) => `NEURON_${key.toUpperCase()}`

/**
 * The NEURON_* variables, read through Effect's Config under the NEURON namespace: each key as
 * the raw string (decoded below with the file's Schema, so both obey the same limits), the API
 * token redacted, and the two prefill estimate knobs that have no file key.
 */
const NeuronEnv = Config.all({
  overrides: Config.all(
    Object.fromEntries(
      ENV_KEYS.filter((key) => key !== "api_token").map((key) => [key, Config.option(Config.string(key.toUpperCase()))])
    )
  ),
  apiToken: Config.option(Config.redacted("API_TOKEN")),
  prefillBaseMb: Config.option(Config.string("PREFILL_BASE_MB")),
  prefillMbPer1kTokens: Config.option(Config.string("PREFILL_MB_PER_1K_TOKENS"))
}).pipe(Config.nested("NEURON"))

/** The variables given (`cortex neuron` passes the process's) as a provider: NEURON + MODELS_DIR is NEURON_MODELS_DIR. */
const envProvider = (env: Record<string, string | undefined>) =>
  ConfigProvider.fromMap(
    new Map(Object.entries(env).filter((entry): entry is [string, string] => entry[1] !== undefined)),
    { pathDelim: "_" }
  )

const envValue = (key: EnvKey, raw: string): unknown => {
  switch (key) {
    case "host":
    case "cache_dir":
    case "models_dir":
    case "api_token":
    case "gpu":
      return raw
    case "default_models":
      return raw.split(",").map((s) => s.trim()).filter((s) => s.length > 0)
    case "auto_load":
      return raw === "true" || raw === "1" ? true : raw === "false" || raw === "0" ? false : raw
    default:
      return raw.trim() === "" ? raw : Number(raw)
  }
}

const decodeFile = (file: string, raw: unknown) =>
  Schema.decodeUnknown(NeuronFile)(raw, { errors: "first", onExcessProperty: "error" }).pipe(
    Effect.mapError((error) => {
      const issue = ParseResult.ArrayFormatter.formatErrorSync(error)[0]
      return new ConfigError({
        file,
        key: issue?.path.join("."),
        reason: issue?.message ?? String(error)
      })
    })
  )

const envNumber = (key: string, raw: Option.Option<string>, fallback: number) => {
  if (Option.isNone(raw)) return Effect.succeed(fallback)
  const n = Number(raw.value)
  return Number.isFinite(n) && n >= 0
    ? Effect.succeed(n)
    : Effect.fail(
      new ConfigError({
        file: "environment",
        key: variableOf(key),
        reason: `expected a non-negative number, got '${raw.value}'`
      })
    )
}

export const loadNeuronConfig = (options: NeuronConfigSource) =>
  Effect.gen(function*() {
    const env = options.env ?? process.env
    const file = options.file ? path.resolve(options.file) : undefined
    let raw: Record<string, unknown> = {}
    if (file) {
      const text = yield* Effect.tryPromise({
        try: () => readFile(file, "utf8"),
        catch: (e) => new ConfigError({ file, key: undefined, reason: (e as Error).message })
      })
      raw = yield* Effect.try({
        try: () => parseToml(text) as Record<string, unknown>,
        catch: (e) => new ConfigError({ file, key: undefined, reason: `invalid TOML: ${(e as Error).message}` })
      })
    }
    const fromFile = yield* decodeFile(file ?? "neuron.toml", raw)
    const fromVariables = yield* NeuronEnv.pipe(
      Effect.withConfigProvider(envProvider(env)),
      Effect.mapError((e) => new ConfigError({ file: "environment", key: undefined, reason: String(e) }))
    )
    const overrides: Record<string, unknown> = {}
    for (const key of ENV_KEYS) {
      const value = fromVariables.overrides[key]
      if (value !== undefined && Option.isSome(value)) overrides[key] = envValue(key, value.value)
    }
    // Decoded with the file's Schema (then redacted again): a token must not be empty either.
    if (Option.isSome(fromVariables.apiToken)) overrides.api_token = Redacted.value(fromVariables.apiToken.value)
    if (options.port !== undefined) overrides.port = options.port
    // Overrides are decoded on their own so an error names the variable that carried it.
    const fromEnv = yield* decodeFile("environment", overrides).pipe(
      Effect.mapError((error) => {
        const key = error.key?.split(".")[0]
        const variable = key !== undefined && key in overrides && !(key === "port" && options.port !== undefined)
          ? variableOf(key)
          : undefined
        return variable ? new ConfigError({ ...error, key: variable }) : error
      })
    )
    const merged: NeuronFile = { ...fromFile, ...fromEnv }
    const base = file ? path.dirname(file) : process.cwd()
    const maxInFlight = merged.max_in_flight ?? 2
    const telemetry = yield* resolveTelemetry({
      file: file ?? "neuron.toml",
      table: merged.telemetry,
      env,
      defaultServiceName: "cortex-neuron"
    }).pipe(Effect.mapError((issue) => new ConfigError({ file: issue.file, key: issue.key, reason: issue.reason })))
    const deviceGroups = checkGroups(file ?? "neuron.toml", merged.device_groups)
    if (deviceGroups instanceof ConfigError) return yield* deviceGroups
    return {
      configFile: file,
      host: merged.host ?? "0.0.0.0",
      port: merged.port ?? 13131,
      modelsDir: path.resolve(base, merged.models_dir ?? "models"),
      threads: merged.threads ?? physicalCores(),
      memoryBudgetMb: merged.memory_budget_mb,
      prefillChunkTokens: merged.prefill_chunk_tokens ?? 512,
      streamCoalesceMs: merged.stream_coalesce_ms ?? DEFAULT_STREAM_COALESCE_MS,
      contextSize: merged.context_size ?? 4096,
      maxInFlight,
      maxN: merged.max_n ?? 4,
      maxQueueDepth: merged.max_queue_depth ?? 32,
      maxWaitSecs: merged.max_wait_secs ?? 60,
      maxPerPrincipal: merged.max_per_principal,
      defaultModels: merged.default_models ?? [],
      apiToken: merged.api_token !== undefined ? Redacted.make(merged.api_token) : undefined,
      gpu: merged.gpu ?? "auto",
      drainSecs: merged.drain_secs ?? 30,
      autoLoad: merged.auto_load ?? true,
      loadDelayMs: merged.load_delay_ms ?? 0,
      prefillBaseMb: yield* envNumber("prefill_base_mb", fromVariables.prefillBaseMb, 4),
      prefillMbPer1kTokens: yield* envNumber("prefill_mb_per_1k_tokens", fromVariables.prefillMbPer1kTokens, 8),
      metricsPort: merged.metrics_port,
      telemetry,
      deviceGroups,
      simulate: merged.simulate?.devices.map((d) => ({
        totalMb: d.total_mb,
        name: d.name,
        utilization: d.utilization,
        temperatureC: d.temperature_c,
        powerW: d.power_w
      })),
      source: options,
      sources: resolveSources(merged, path.resolve(base, merged.models_dir ?? "models"), base, env),
      vision: resolveVision(merged.vision, merged.models, path.resolve(base, merged.models_dir ?? "models"))
    } satisfies NeuronSettings
  })
