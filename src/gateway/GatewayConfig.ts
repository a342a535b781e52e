/**
 * cortex.toml and models.toml: parsed with smol-toml, decoded with Schema, CORTEX_* overrides.
 * A bad file or value stops the gateway before any port is bound, naming file, key and reason.
 * A relative models_config resolves against cortex.toml's folder (never the cwd: lesson 9).
 */
import { Context, Effect, ParseResult, Redacted, Schema } from "effect"
import { existsSync } from "node:fs"
import { readFile } from "node:fs/promises"
import * as path from "node:path"
import { parse as parseToml } from "smol-toml"
import { ConfigError } from "../domain/contract.js"
import { isHfId, isRefError, parseHfRef } from "../domain/modelSource.js"
import { ModelLimitsTable, resolveStore, type StoreSettings, StoreTable } from "../store/StoreConfig.js"
import { GatewayTelemetryTable, resolveTelemetry, type TelemetrySettings } from "../telemetry/TelemetryConfig.js"
import { ImageFetchKeys, type ImageFetchSettings, resolveImageFetch } from "./ImageFetch.js"

const opt = <S extends Schema.Schema.Any>(s: S) => Schema.optionalWith(s, { exact: true })
const strict = { parseOptions: { onExcessProperty: "error" as const } }

const Listen = Schema.String.pipe(
  Schema.pattern(/^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$/, { message: () => "expected host:port, e.g. 0.0.0.0:31313" })
)

/**
 * What may send a request to another replica (before any byte reached the client): "connect"
 * (refused, unreachable), "reset" (the connection dropped before the response head), "timeout"
 * (no connection or no response head within idle_timeout_secs), or an upstream HTTP status
 * (408, 429, 5xx).
 */
const RetryOn = Schema.String.pipe(
  Schema.filter((s) => /^(connect|reset|timeout|408|429|5\d\d)$/.test(s), {
    message: (issue) =>
      `unknown retry condition ${
        JSON.stringify(issue.actual)
      }: expected "connect", "reset", "timeout" or an HTTP status such as "503" (408, 429 or 5xx)`
  })
)

/**
 * Envoy's connect-failure,reset,gateway-error and LiteLLM's failover on timeouts and 5xx, minus
 * 500: a 500 from a neuron is usually deterministic for this request (a template or sampling
 * bug) and would fail again elsewhere at full cost; an operator who knows better opts in.
 * 502/503/504 mean "this replica cannot serve now" (worker crash, going away, queue full).
 */
export const DEFAULT_RETRY_ON: ReadonlyArray<string> = ["connect", "reset", "timeout", "502", "503", "504"]
/**
 * Three tries in all: one failover on a two-replica model and both others on a three-replica one
 * (the fleets cortex is for), while a request that times out everywhere still answers within
 * 3 × idle_timeout_secs and a failing fleet sees at most 3× its traffic.
 */
export const DEFAULT_MAX_ATTEMPTS = 3

export const CortexFile = Schema.Struct({
  models_config: opt(Schema.String),
  gateway: opt(
    Schema.Struct({
      listen: opt(Listen),
      metrics_listen: opt(Listen),
      idle_timeout_secs: opt(Schema.Number.pipe(Schema.positive())),
      poll_interval_secs: opt(Schema.Number.pipe(Schema.positive())),
      load_timeout_secs: opt(Schema.Number.pipe(Schema.positive())),
      retry_on: opt(Schema.Array(RetryOn)),
      max_attempts: opt(Schema.Int.pipe(Schema.positive())),
      /** Re-read cortex.toml and models.toml when either changes (src/gateway/LiveConfig.ts). */
      watch_config: opt(Schema.Boolean),
      ...ImageFetchKeys
    }).annotations(strict)
  ),
  eviction: opt(
    Schema.Struct({
      strategy: opt(Schema.Literal("lru", "priority")),
      defrag_after_cycles: opt(Schema.Int.pipe(Schema.nonNegative())),
      min_resident_secs: opt(Schema.Number.pipe(Schema.nonNegative())),
      max_swap_wait_secs: opt(Schema.Number.pipe(Schema.nonNegative())),
      max_load_waiters: opt(Schema.Int.pipe(Schema.positive()))
    }).annotations(strict)
  ),
  neurons: opt(Schema.Array(
    Schema.Struct({
      name: Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9_.-]+$/, { message: () => "letters, digits, . _ - only" })),
      endpoint: Schema.String.pipe(Schema.pattern(/^https?:\/\/[^\s]+$/, { message: () => "expected an http(s) URL" })),
      token: opt(Schema.String)
    }).annotations(strict)
  )),
  auth: opt(
    Schema.Struct({
      require_auth: opt(Schema.Boolean),
      /** The environment variable holding the admin key for /admin/keys and /admin/usage. */
      admin_key_env: opt(Schema.String.pipe(Schema.pattern(/^[A-Za-z_][A-Za-z0-9_]*$/))),
      keys: opt(Schema.Array(
        Schema.Struct({ key: Schema.String.pipe(Schema.minLength(8)), name: Schema.String })
          .annotations(strict)
      ))
    }).annotations(strict)
  ),
  /** Trace export and the per-request log line (src/telemetry/TelemetryConfig.ts; OTEL_* variables win). */
  telemetry: opt(GatewayTelemetryTable),
  /** Keys, usage ledger and limits (src/store/StoreConfig.ts). */
  store: opt(StoreTable)
}).annotations(strict)
export type CortexFile = typeof CortexFile.Type

export const ModelProfile = Schema.Struct({
  id: Schema.String.pipe(Schema.minLength(1)),
  /**
   * The model's id on the neurons (its GGUF path under models_dir without .gguf), or one exact
   * file to pull (`hf:Org/Repo/path/model.gguf`); default: id.
   */
  file: opt(Schema.String),
  /** A repository to pull from (`hf:Org/Repo`), with `quant` (a filename substring). */
  source: opt(Schema.String),
  quant: opt(Schema.String),
  vram_mb: opt(Schema.Number.pipe(Schema.positive())),
  min_devices: opt(Schema.Int.pipe(Schema.positive())),
  min_device_vram_mb: opt(Schema.Number.pipe(Schema.positive())),
  pinned_on: opt(Schema.String),
  residency_priority: opt(Schema.Int),
  context_size: opt(Schema.Int.pipe(Schema.positive())),
  idle_unload_secs: opt(Schema.Number.pipe(Schema.positive())),
  limit: opt(
    Schema.Struct({ context: opt(Schema.Int.pipe(Schema.positive())), output: opt(Schema.Int.pipe(Schema.positive())) })
      .annotations(strict)
  ),
  cost: opt(
    Schema.Struct({
      input: opt(Schema.Number.pipe(Schema.nonNegative())),
      output: opt(Schema.Number.pipe(Schema.nonNegative())),
      cache_read: opt(Schema.Number.pipe(Schema.nonNegative()))
    }).annotations(strict)
  ),
  capabilities: opt(Schema.Array(Schema.String)),
  /** The model's own limits, whoever asks (src/accounting/Limits.ts). */
  limits: opt(ModelLimitsTable),
  sampling: opt(
    Schema.Struct({
      temperature: opt(Schema.Number.pipe(Schema.between(0, 2))),
      top_p: opt(Schema.Number.pipe(Schema.between(0, 1))),
      top_k: opt(Schema.Int.pipe(Schema.nonNegative())),
      min_p: opt(Schema.Number.pipe(Schema.between(0, 1))),
      repeat_penalty: opt(Schema.Number.pipe(Schema.between(0, 10))),
      max_tokens: opt(Schema.Int.pipe(Schema.positive()))
    }).annotations(strict)
  )
}).annotations(strict)
export type ModelProfile = typeof ModelProfile.Type

export const ModelsFile = Schema.Struct({
  models: opt(Schema.Array(ModelProfile)),
  aliases: opt(Schema.Record({ key: Schema.String, value: Schema.String }))
}).annotations(strict)
export type ModelsFile = typeof ModelsFile.Type

export interface NeuronEndpoint {
  readonly name: string
  readonly endpoint: string
  readonly token: Redacted.Redacted<string> | undefined
}

export interface GatewaySettings {
  readonly configFile: string | undefined
  readonly modelsFile: string | undefined
  readonly listen: { readonly host: string; readonly port: number }
  readonly metricsListen: { readonly host: string; readonly port: number } | undefined
  readonly idleTimeoutSecs: number
  readonly pollIntervalSecs: number
  readonly loadTimeoutSecs: number
  /** Failover to another replica before any byte reached the client. */
  readonly retry: {
    /** "connect", "reset", "timeout" or HTTP statuses as strings ("503"). */
    readonly on: ReadonlyArray<string>
    /** Tries in all, across replicas. */
    readonly maxAttempts: number
  }
  readonly eviction: {
    readonly strategy: "lru" | "priority"
    readonly defragAfterCycles: number
    /** A just-loaded model is not displaced before this (unless a waiter has waited maxSwapWaitSecs). */
    readonly minResidentSecs: number
    /** How long a cold load may wait for busy or young victims to free up before it swaps anyway. */
    readonly maxSwapWaitSecs: number
    /** Requests that may wait on one model's load; more get 503. */
    readonly maxLoadWaiters: number
  }
  readonly neurons: ReadonlyArray<NeuronEndpoint>
  readonly requireAuth: boolean
  readonly keys: ReadonlyArray<{ readonly key: Redacted.Redacted<string>; readonly name: string }>
  readonly models: ReadonlyArray<ModelProfile>
  readonly aliases: Readonly<Record<string, string>>
  readonly telemetry: TelemetrySettings
  /** `[gateway] watch_config`: reload when the files change. */
  readonly watchConfig?: boolean
  /** How these settings were loaded, so a reload (LiveConfig.ts) reads them the same way. */
  readonly source?: GatewayConfigSource
  /** Image URLs in chat requests (ImageFetch.ts). */
  readonly imageFetch: ImageFetchSettings
  /** Keys, ledger and limits; undefined without a `[store]` table. */
  readonly store: StoreSettings | undefined
  /** The admin key for /admin/keys and /admin/usage (from `[auth] admin_key_env`). */
  readonly adminKey: Redacted.Redacted<string> | undefined
}

export class GatewayConfig extends Context.Tag("cortex/GatewayConfig")<GatewayConfig, GatewaySettings>() {}

export const parseListen = (value: string) => {
  const i = value.lastIndexOf(":")
  const host = value.slice(0, i).replace(/^\[|\]$/g, "")
  return { host, port: Number(value.slice(i + 1)) }
}

const decodeWith = <A, I>(schema: Schema.Schema<A, I>, file: string, raw: unknown) =>
  Schema.decodeUnknown(schema)(raw, { errors: "first", onExcessProperty: "error" }).pipe(
    Effect.mapError((error) => {
      const issue = ParseResult.ArrayFormatter.formatErrorSync(error)[0]
      return new ConfigError({ file, key: issue?.path.join("."), reason: issue?.message ?? String(error) })
    })
  )

const readToml = (file: string) =>
  Effect.gen(function*() {
    const text = yield* Effect.tryPromise({
      try: () => readFile(file, "utf8"),
      catch: (e) => new ConfigError({ file, key: undefined, reason: (e as Error).message })
    })
    return yield* Effect.try({
      try: () => parseToml(text) as Record<string, unknown>,
      catch: (e) => new ConfigError({ file, key: undefined, reason: `invalid TOML: ${(e as Error).message}` })
    })
  })

/** `source` + `quant`, or an exact `file = "hf:…"` (src/domain/modelSource.ts); never both. */
const checkSource = (m: ModelProfile): { key: string; reason: string } | undefined => {
  if (m.source !== undefined) {
    if (m.file !== undefined) return { key: "file", reason: "give source (with quant) or file, not both" }
    const ref = parseHfRef(m.source, m.quant)
    return isRefError(ref) ? { key: m.quant !== undefined ? "quant" : "source", reason: ref.error } : undefined
  }
  if (m.quant !== undefined) return { key: "quant", reason: "quant needs a source (hf:Org/Repo)" }
  if (m.file !== undefined && isHfId(m.file)) {
    const ref = parseHfRef(m.file)
    if (isRefError(ref)) return { key: "file", reason: ref.error }
    if (ref.file === undefined) {
      return { key: "file", reason: "an hf: file names one file: hf:Org/Repo/path/model.gguf" }
    }
  }
  return undefined
}

/** Cross-field checks Schema cannot express: unique ids, aliases that point somewhere, sources. */
const checkModels = (file: string, models: ModelsFile) =>
  Effect.gen(function*() {
    const ids = new Set<string>()
    for (const [i, m] of (models.models ?? []).entries()) {
      if (ids.has(m.id)) {
        return yield* new ConfigError({ file, key: `models.${i}.id`, reason: `duplicate model id '${m.id}'` })
      }
      ids.add(m.id)
      const source = checkSource(m)
      if (source) return yield* new ConfigError({ file, key: `models.${i}.${source.key}`, reason: source.reason })
    }
    for (const [alias, target] of Object.entries(models.aliases ?? {})) {
      if (ids.size > 0 && !ids.has(target)) {
        return yield* new ConfigError({
          file,
          key: `aliases.${alias}`,
          reason: `points to '${target}', which is not a model`
        })
      }
    }
    return models
  })

export interface GatewayConfigSource {
  readonly file?: string | undefined
  readonly env?: Record<string, string | undefined>
  /** Extra neurons (cortex up) and listen override. */
  readonly neurons?: ReadonlyArray<NeuronEndpoint>
  readonly listen?: string | undefined
}

export const loadGatewayConfig = (options: GatewayConfigSource) =>
  Effect.gen(function*() {
    const env = options.env ?? process.env
    const file = options.file ? path.resolve(options.file) : undefined
    const raw = file ? yield* readToml(file) : {}
    const cortex = yield* decodeWith(CortexFile, file ?? "cortex.toml", raw)
    const envListen = env.CORTEX_LISTEN
    const envMetrics = env.CORTEX_METRICS_LISTEN
    const envModels = env.CORTEX_MODELS_CONFIG
    const envAuth = env.CORTEX_REQUIRE_AUTH
    const overrides = yield* decodeWith(CortexFile, "environment", {
      ...(envListen !== undefined || options.listen !== undefined
        ? { gateway: { listen: options.listen ?? envListen } }
        : {}),
      ...(envModels !== undefined ? { models_config: envModels } : {})
    })
    if (envMetrics !== undefined && envMetrics !== "off") {
      yield* decodeWith(Listen, "environment: CORTEX_METRICS_LISTEN", envMetrics)
    }
    if (envAuth !== undefined && !["true", "false", "1", "0"].includes(envAuth)) {
      return yield* new ConfigError({
        file: "environment",
        key: "CORTEX_REQUIRE_AUTH",
        reason: "expected true or false"
      })
    }
    const base = file ? path.dirname(file) : process.cwd()
    const modelsConfig = overrides.models_config ?? cortex.models_config
    const modelsFile = modelsConfig !== undefined
      ? path.resolve(base, modelsConfig)
      : file && existsSync(path.join(base, "models.toml"))
      ? path.join(base, "models.toml")
      : undefined
    // A configured models file that is missing is an error; none configured means auto-discovery.
    const models = modelsFile
      ? yield* readToml(modelsFile).pipe(
        Effect.flatMap((r) => decodeWith(ModelsFile, modelsFile, r)),
        Effect.flatMap((m) => checkModels(modelsFile, m))
      )
      : {}
    const store = resolveStore(cortex.store, base, env)
    const limited = (models.models ?? []).findIndex((m) => m.limits !== undefined)
    if (limited >= 0 && store === undefined) {
      return yield* new ConfigError({
        file: modelsFile ?? "models.toml",
        key: `models.${limited}.limits`,
        reason: "limits need a [store] in cortex.toml (their counts live there)"
      })
    }
    const metricsListen = envMetrics === "off"
      ? undefined
      : parseListen(envMetrics ?? cortex.gateway?.metrics_listen ?? "0.0.0.0:31314")
    const neurons: Array<NeuronEndpoint> = (cortex.neurons ?? []).map((n) => ({
      name: n.name,
      endpoint: n.endpoint.replace(/\/+$/, ""),
      token: n.token !== undefined ? Redacted.make(n.token) : undefined
    }))
    for (const extra of options.neurons ?? []) if (!neurons.some((n) => n.name === extra.name)) neurons.push(extra)
    const names = new Set<string>()
    for (const [i, n] of neurons.entries()) {
      if (names.has(n.name)) {
        return yield* new ConfigError({
          file: file ?? "cortex.toml",
          key: `neurons.${i}.name`,
          reason: `duplicate neuron '${n.name}'`
        })
      }
      names.add(n.name)
    }
    const telemetry = yield* resolveTelemetry({
      file: file ?? "cortex.toml",
      table: cortex.telemetry,
      env,
      defaultServiceName: "cortex-gateway"
    }).pipe(Effect.mapError((issue) => new ConfigError({ file: issue.file, key: issue.key, reason: issue.reason })))
    return {
      configFile: file,
      modelsFile,
      listen: parseListen(overrides.gateway?.listen ?? cortex.gateway?.listen ?? "0.0.0.0:31313"),
      metricsListen,
      idleTimeoutSecs: cortex.gateway?.idle_timeout_secs ?? 120,
      pollIntervalSecs: cortex.gateway?.poll_interval_secs ?? 2,
      loadTimeoutSecs: cortex.gateway?.load_timeout_secs ?? 300,
      retry: {
        on: cortex.gateway?.retry_on ?? DEFAULT_RETRY_ON,
        maxAttempts: cortex.gateway?.max_attempts ?? DEFAULT_MAX_ATTEMPTS
      },
      eviction: {
        strategy: cortex.eviction?.strategy ?? "lru",
        defragAfterCycles: cortex.eviction?.defrag_after_cycles ?? 0,
        minResidentSecs: cortex.eviction?.min_resident_secs ?? 10,
        maxSwapWaitSecs: cortex.eviction?.max_swap_wait_secs ?? 20,
        maxLoadWaiters: cortex.eviction?.max_load_waiters ?? 256
      },
      neurons,
      requireAuth: envAuth !== undefined ? envAuth === "true" || envAuth === "1" : cortex.auth?.require_auth ?? false,
      keys: (cortex.auth?.keys ?? []).map((k) => ({ key: Redacted.make(k.key), name: k.name })),
      models: models.models ?? [],
      aliases: models.aliases ?? {},
      telemetry,
      watchConfig: cortex.gateway?.watch_config ?? false,
      source: options,
      imageFetch: resolveImageFetch(cortex.gateway),
      store,
      adminKey: cortex.auth?.admin_key_env !== undefined && env[cortex.auth.admin_key_env]
        ? Redacted.make(env[cortex.auth.admin_key_env]!)
        : undefined
    } satisfies GatewaySettings
  })
