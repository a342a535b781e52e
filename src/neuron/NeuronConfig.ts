/**
 * neuron.toml: parsed with smol-toml, decoded with Schema, overridden by NEURON_* variables.
 * A bad file or value stops the process before any port is bound, naming file, key and reason.
 */
import { Context, Effect, ParseResult, Redacted, Schema } from "effect"
import { readFile } from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { parse as parseToml } from "smol-toml"
import { ConfigError } from "../domain/contract.js"
import { NeuronTelemetryTable, resolveTelemetry, type TelemetrySettings } from "../telemetry/TelemetryConfig.js"

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
  telemetry: opt(NeuronTelemetryTable)
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

const ENV_KEYS: Record<string, keyof NeuronFile> = {
  NEURON_HOST: "host",
  NEURON_PORT: "port",
  NEURON_MODELS_DIR: "models_dir",
  NEURON_THREADS: "threads",
  NEURON_MEMORY_BUDGET_MB: "memory_budget_mb",
  NEURON_PREFILL_CHUNK_TOKENS: "prefill_chunk_tokens",
  NEURON_CONTEXT_SIZE: "context_size",
  NEURON_MAX_IN_FLIGHT: "max_in_flight",
  NEURON_MAX_N: "max_n",
  NEURON_MAX_QUEUE_DEPTH: "max_queue_depth",
  NEURON_MAX_WAIT_SECS: "max_wait_secs",
  NEURON_MAX_PER_PRINCIPAL: "max_per_principal",
  NEURON_DEFAULT_MODELS: "default_models",
  NEURON_API_TOKEN: "api_token",
  NEURON_GPU: "gpu",
  NEURON_DRAIN_SECS: "drain_secs",
  NEURON_AUTO_LOAD: "auto_load",
  NEURON_LOAD_DELAY_MS: "load_delay_ms",
  NEURON_METRICS_PORT: "metrics_port"
}

const envValue = (key: keyof NeuronFile, raw: string): unknown => {
  switch (key) {
    case "host":
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

const envNumber = (env: Record<string, string | undefined>, key: string, fallback: number) =>
  Effect.suspend(() => {
    const raw = env[key]
    if (raw === undefined) return Effect.succeed(fallback)
    const n = Number(raw)
    return Number.isFinite(n) && n >= 0
      ? Effect.succeed(n)
      : Effect.fail(
        new ConfigError({ file: "environment", key, reason: `expected a non-negative number, got '${raw}'` })
      )
  })

export const loadNeuronConfig = (options: {
  readonly file?: string | undefined
  readonly port?: number | undefined
  readonly env?: Record<string, string | undefined>
}) =>
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
    const overrides: Record<string, unknown> = {}
    for (const [name, key] of Object.entries(ENV_KEYS)) {
      const value = env[name]
      if (value !== undefined) overrides[key] = envValue(key, value)
    }
    if (options.port !== undefined) overrides.port = options.port
    // Overrides are decoded on their own so an error names the variable that carried it.
    const fromEnv = yield* decodeFile("environment", overrides).pipe(
      Effect.mapError((error) => {
        const variable = Object.entries(ENV_KEYS).find(([, key]) => key === error.key)?.[0]
        return variable && env[variable] !== undefined ? new ConfigError({ ...error, key: variable }) : error
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
    return {
      configFile: file,
      host: merged.host ?? "0.0.0.0",
      port: merged.port ?? 13131,
      modelsDir: path.resolve(base, merged.models_dir ?? "models"),
      threads: merged.threads ?? physicalCores(),
      memoryBudgetMb: merged.memory_budget_mb,
      prefillChunkTokens: merged.prefill_chunk_tokens ?? 512,
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
      prefillBaseMb: yield* envNumber(env, "NEURON_PREFILL_BASE_MB", 4),
      prefillMbPer1kTokens: yield* envNumber(env, "NEURON_PREFILL_MB_PER_1K_TOKENS", 8),
      metricsPort: merged.metrics_port,
      telemetry
    } satisfies NeuronSettings
  })
