/**
 * The `[telemetry]` table of cortex.toml and neuron.toml, and the standard OpenTelemetry
 * environment variables that mirror it (they win over the file, as CORTEX_ and NEURON_ ones do).
 * Export is on when an endpoint is set and neither OTEL_SDK_DISABLED nor OTEL_TRACES_EXPORTER=none
 * says otherwise. Only the HTTP protocols are offered (an OTel collector's port 4318): gRPC
 * would bring a second HTTP/2 stack for the same spans.
 */
import { Data, Effect, Schema } from "effect"

const opt = <S extends Schema.Schema.Any>(s: S) => Schema.optionalWith(s, { exact: true })
const strict = { parseOptions: { onExcessProperty: "error" as const } }

const Url = Schema.String.pipe(
  Schema.pattern(/^https?:\/\/[^\s]+$/, { message: () => "expected an http(s) URL, e.g. http://127.0.0.1:4318" })
)
export const PROTOCOLS = ["http/protobuf", "http/json"] as const
export type Protocol = typeof PROTOCOLS[number]
export const SAMPLERS = [
  "always_on",
  "always_off",
  "traceidratio",
  "parentbased_always_on",
  "parentbased_always_off",
  "parentbased_traceidratio"
] as const
export type SamplerName = typeof SAMPLERS[number]
export const LOG_FORMATS = ["logfmt", "json", "off"] as const
export type LogFormat = typeof LOG_FORMATS[number]

const fields = {
  /** OTEL_SDK_DISABLED: no trace export whatever else says. */
  disabled: opt(Schema.Boolean),
  /** OTEL_EXPORTER_OTLP_ENDPOINT: the collector's base URL; traces go to <endpoint>/v1/traces. */
  endpoint: opt(Url),
  /** OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: the full traces URL (used as is). */
  traces_endpoint: opt(Url),
  /** OTEL_EXPORTER_OTLP_PROTOCOL. */
  protocol: opt(Schema.Literal(...PROTOCOLS)),
  /** OTEL_EXPORTER_OTLP_HEADERS (e.g. an API key for a hosted backend). */
  headers: opt(Schema.Record({ key: Schema.String, value: Schema.String })),
  /** OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG. */
  sampler: opt(Schema.Literal(...SAMPLERS)),
  sampler_arg: opt(Schema.Number.pipe(Schema.between(0, 1))),
  /** OTEL_SERVICE_NAME. */
  service_name: opt(Schema.String.pipe(Schema.minLength(1))),
  /** OTEL_BSP_MAX_QUEUE_SIZE: spans waiting for export; more are dropped (and counted). */
  max_queue_size: opt(Schema.Int.pipe(Schema.between(1, 1_000_000))),
  /** Prompt and completion text in spans (gen_ai.input.messages / gen_ai.output.messages). */
  capture_content: opt(Schema.Boolean)
}

/** neuron.toml's `[telemetry]`. */
export const NeuronTelemetryTable = Schema.Struct(fields).annotations(strict)
/** cortex.toml's `[telemetry]`: the same, plus the per-request log line's format. */
export const GatewayTelemetryTable = Schema.Struct({ ...fields, log_format: opt(Schema.Literal(...LOG_FORMATS)) })
  .annotations(strict)
export type TelemetryTable = typeof GatewayTelemetryTable.Type

export interface TraceExport {
  readonly url: string
  readonly protocol: Protocol
  readonly headers: Readonly<Record<string, string>>
  readonly maxQueueSize: number
}

export interface TelemetrySettings {
  readonly serviceName: string
  /** Where spans go; undefined: nowhere (spans still carry trace context to the neurons). */
  readonly export: TraceExport | undefined
  readonly sampler: SamplerName
  readonly samplerArg: number
  readonly captureContent: boolean
  readonly logFormat: LogFormat
}

/** A bad value, before it becomes the caller's ConfigError (file, key, reason). */
export class TelemetryIssue extends Data.TaggedError("TelemetryIssue")<{
  readonly file: string
  readonly key: string
  readonly reason: string
}> {}

export const DEFAULT_MAX_QUEUE_SIZE = 2048

/** "k1=v1,k2=v2" with URL-encoded values (the OTLP headers format). */
const parseHeaders = (key: string, raw: string) =>
  Effect.suspend(() => {
    const headers: Record<string, string> = {}
    for (const part of raw.split(",")) {
      if (part.trim() === "") continue
      const i = part.indexOf("=")
      if (i <= 0) {
        return Effect.fail(
          new TelemetryIssue({ file: "environment", key, reason: `expected key=value pairs separated by commas` })
        )
      }
      try {
        headers[decodeURIComponent(part.slice(0, i).trim())] = decodeURIComponent(part.slice(i + 1).trim())
      } catch {
        return Effect.fail(new TelemetryIssue({ file: "environment", key, reason: "invalid URL encoding" }))
      }
    }
    return Effect.succeed(headers)
  })

const oneOf = <A extends string>(
  key: string,
  raw: string,
  values: ReadonlyArray<A>,
  hint = ""
): Effect.Effect<A, TelemetryIssue> =>
  values.includes(raw.trim().toLowerCase() as A)
    ? Effect.succeed(raw.trim().toLowerCase() as A)
    : Effect.fail(
      new TelemetryIssue({ file: "environment", key, reason: `expected one of ${values.join(", ")}${hint}` })
    )

const bool = (key: string, raw: string) =>
  oneOf(key, raw, ["true", "false"] as const).pipe(Effect.map((v) => v === "true"))

const url = (key: string, raw: string) =>
  /^https?:\/\/[^\s]+$/.test(raw.trim())
    ? Effect.succeed(raw.trim())
    : Effect.fail(new TelemetryIssue({ file: "environment", key, reason: "expected an http(s) URL" }))

const number = (key: string, raw: string, min: number, max: number, integer = false) => {
  const n = Number(raw)
  return raw.trim() !== "" && Number.isFinite(n) && n >= min && n <= max && (!integer || Number.isInteger(n))
    ? Effect.succeed(n)
    : Effect.fail(
      new TelemetryIssue({
        file: "environment",
        key,
        reason: `expected ${integer ? "an integer" : "a number"} from ${min} to ${max}, got '${raw}'`
      })
    )
}

const GRPC_HINT = " (gRPC is not offered: point cortex at the collector's OTLP/HTTP port, 4318)"

/** The signal-specific URL is used as is; the base endpoint gets /v1/traces appended. */
export const tracesUrl = (base: string) => `${base.replace(/\/+$/, "")}/v1/traces`

/** The file's table and the OTEL_* variables, resolved; env wins, as everywhere in cortex. */
export const resolveTelemetry = (options: {
  readonly file: string
  readonly table: TelemetryTable | undefined
  readonly env: Record<string, string | undefined>
  readonly defaultServiceName: string
}) =>
  Effect.gen(function*() {
    const { env } = options
    const t = options.table ?? {}
    const fromEnv = <A>(key: string, parse: (key: string, raw: string) => Effect.Effect<A, TelemetryIssue>) => {
      const raw = env[key]
      return raw === undefined || raw === "" ? Effect.succeed(undefined) : parse(key, raw)
    }
    const disabled = (yield* fromEnv("OTEL_SDK_DISABLED", bool)) ?? t.disabled ?? false
    const exporter = yield* fromEnv("OTEL_TRACES_EXPORTER", (key, raw) =>
      oneOf(key, raw.split(",")[0]!, ["otlp", "none"] as const, " (cortex exports traces over OTLP only)"))
    const endpoint = (yield* fromEnv("OTEL_EXPORTER_OTLP_ENDPOINT", url)) ?? t.endpoint
    const tracesEndpoint = (yield* fromEnv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)) ?? t.traces_endpoint
    const protocol = (yield* fromEnv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", (k, r) =>
      oneOf(k, r, PROTOCOLS, GRPC_HINT))) ??
      (yield* fromEnv("OTEL_EXPORTER_OTLP_PROTOCOL", (k, r) =>
        oneOf(k, r, PROTOCOLS, GRPC_HINT))) ??
      t.protocol ?? "http/protobuf"
    const headers = {
      ...t.headers,
      ...(yield* fromEnv("OTEL_EXPORTER_OTLP_HEADERS", parseHeaders)),
      ...(yield* fromEnv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", parseHeaders))
    }
    const sampler = (yield* fromEnv("OTEL_TRACES_SAMPLER", (k, r) => oneOf(k, r, SAMPLERS))) ?? t.sampler ??
      "parentbased_always_on"
    const samplerArg = (yield* fromEnv("OTEL_TRACES_SAMPLER_ARG", (k, r) => number(k, r, 0, 1))) ??
      t.sampler_arg ?? 1
    const serviceName = env.OTEL_SERVICE_NAME || t.service_name || options.defaultServiceName
    const maxQueueSize = (yield* fromEnv("OTEL_BSP_MAX_QUEUE_SIZE", (k, r) => number(k, r, 1, 1_000_000, true))) ??
      t.max_queue_size ?? DEFAULT_MAX_QUEUE_SIZE
    const target = tracesEndpoint ?? (endpoint !== undefined ? tracesUrl(endpoint) : undefined)
    return {
      serviceName,
      export: disabled || exporter === "none" || target === undefined
        ? undefined
        : { url: target, protocol, headers, maxQueueSize },
      sampler,
      samplerArg,
      captureContent: t.capture_content ?? false,
      logFormat: (t as { log_format?: LogFormat }).log_format ?? "logfmt"
    } satisfies TelemetrySettings
  })

/** Telemetry as it is with no table and no OTEL_* variables (tests, tools). */
export const defaultTelemetry = (serviceName: string): TelemetrySettings => ({
  serviceName,
  export: undefined,
  sampler: "parentbased_always_on",
  samplerArg: 1,
  captureContent: false,
  logFormat: "logfmt"
})
