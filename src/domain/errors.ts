import { Schema } from "effect"
import { clip } from "./json.js"

/**
 * Errors that reach a client. Each knows its HTTP status and encodes to the OpenAI error
 * envelope `{ error: { message, type, code, param } }`; some add headers (Retry-After) or
 * extra envelope fields (required_mb, free_mb, limit).
 */
export interface OpenAIErrorBody {
  readonly error: {
    readonly message: string
    readonly type: string
    readonly code: string | null
    readonly param: string | null
    readonly [extra: string]: unknown
  }
}

export interface ApiErrorLike {
  readonly status: number
  readonly headers: Record<string, string>
  readonly body: OpenAIErrorBody
}

const envelope = (
  message: string,
  type: string,
  code: string | null,
  param: string | null = null,
  extra: Record<string, unknown> = {}
): OpenAIErrorBody => ({ error: { message, type, code, param, ...extra } })

export class InvalidJson extends Schema.TaggedError<InvalidJson>()("InvalidJson", {
  message: Schema.String
}) {
  get status() {
    return 400
  }
  get headers() {
    return {}
  }
  get body() {
    return envelope(this.message, "invalid_request_error", "invalid_json")
  }
}

export class InvalidRequest extends Schema.TaggedError<InvalidRequest>()("InvalidRequest", {
  message: Schema.String,
  param: Schema.NullOr(Schema.String)
}) {
  get status() {
    return 422
  }
  get headers() {
    return {}
  }
  get body() {
    return envelope(this.message, "invalid_request_error", "invalid_value", this.param)
  }
}

export class ModelNotFound extends Schema.TaggedError<ModelNotFound>()("ModelNotFound", {
  model: Schema.String
}) {
  get status() {
    return 404
  }
  get headers() {
    return {}
  }
  override get message() {
    return `The model '${this.model}' does not exist`
  }
  get body() {
    return envelope(this.message, "invalid_request_error", "model_not_found", "model")
  }
}

export class ContextLengthExceeded extends Schema.TaggedError<ContextLengthExceeded>()("ContextLengthExceeded", {
  model: Schema.String,
  limit: Schema.Number,
  requested: Schema.Number
}) {
  get status() {
    return 400
  }
  get headers() {
    return {}
  }
  override get message() {
    return `This model's maximum context length is ${this.limit} tokens; the request needs ${this.requested} tokens`
  }
  get body() {
    return envelope(this.message, "invalid_request_error", "context_length_exceeded", "messages", {
      limit: this.limit,
      requested: this.requested
    })
  }
}

/** A load (507) or a request (503 + Retry-After) that cannot fit in the device's free memory. */
export class InsufficientVram extends Schema.TaggedError<InsufficientVram>()("InsufficientVram", {
  model: Schema.String,
  device: Schema.String,
  required_mb: Schema.Number,
  free_mb: Schema.Number,
  phase: Schema.Literal("load", "request")
}) {
  get status() {
    return this.phase === "load" ? 507 : 503
  }
  get headers(): Record<string, string> {
    return this.phase === "load" ? {} : { "retry-after": "2" }
  }
  override get message() {
    return `Not enough memory on ${this.device} for ${this.model}: ${this.required_mb} MB required, ${this.free_mb} MB free`
  }
  get body() {
    return envelope(this.message, "insufficient_vram", "insufficient_vram", null, {
      required_mb: this.required_mb,
      free_mb: this.free_mb
    })
  }
}

/** Admission refused the request: queue full or principal over its share (429), or waited too long (503). */
export class Overloaded extends Schema.TaggedError<Overloaded>()("Overloaded", {
  model: Schema.String,
  reason: Schema.Literal("queue_full", "principal_limit", "queue_timeout"),
  retry_after_secs: Schema.Number
}) {
  get status() {
    return this.reason === "queue_timeout" ? 503 : 429
  }
  get headers(): Record<string, string> {
    return { "retry-after": String(this.retry_after_secs) }
  }
  override get message() {
    switch (this.reason) {
      case "queue_full":
        return `The queue for ${this.model} is full; retry later`
      case "principal_limit":
        return `Too many concurrent requests from this principal for ${this.model}`
      case "queue_timeout":
        return `Timed out waiting for a free slot on ${this.model}`
    }
  }
  get body() {
    return envelope(this.message, "rate_limit_error", this.reason)
  }
}

/** The model exists but cannot serve right now (loading, recovering after a worker crash, unloading). */
export class ModelUnavailable extends Schema.TaggedError<ModelUnavailable>()("ModelUnavailable", {
  model: Schema.String,
  state: Schema.String,
  detail: Schema.optionalWith(Schema.String, { exact: true })
}) {
  get status() {
    return 503
  }
  get headers(): Record<string, string> {
    return { "retry-after": "2" }
  }
  override get message() {
    return `Model ${this.model} is ${this.state}${this.detail ? `: ${this.detail}` : ""}`
  }
  get body() {
    return envelope(this.message, "service_unavailable", `model_${this.state}`, "model")
  }
}

/** The device worker died (native abort, OOM kill) while serving or loading. */
export class WorkerCrashed extends Schema.TaggedError<WorkerCrashed>()("WorkerCrashed", {
  device: Schema.String,
  detail: Schema.String
}) {
  get status() {
    return 502
  }
  get headers(): Record<string, string> {
    return { "retry-after": "2" }
  }
  override get message() {
    return `The worker for ${this.device} crashed (${this.detail})`
  }
  get body() {
    return envelope(this.message, "server_error", "worker_crashed")
  }
}

export class ModelLoadFailed extends Schema.TaggedError<ModelLoadFailed>()("ModelLoadFailed", {
  model: Schema.String,
  detail: Schema.String
}) {
  get status() {
    return 500
  }
  get headers() {
    return {}
  }
  override get message() {
    return `Loading ${this.model} failed: ${this.detail}`
  }
  get body() {
    return envelope(this.message, "server_error", "model_load_failed", "model")
  }
}

export class ShuttingDown extends Schema.TaggedError<ShuttingDown>()("ShuttingDown", {}) {
  get status() {
    return 503
  }
  get headers(): Record<string, string> {
    return { "retry-after": "5", connection: "close" }
  }
  override get message() {
    return "The neuron is shutting down"
  }
  get body() {
    return envelope(this.message, "service_unavailable", "shutting_down")
  }
}

/** A request body over the gateway's limit. */
export class PayloadTooLarge extends Schema.TaggedError<PayloadTooLarge>()("PayloadTooLarge", {
  limitBytes: Schema.Number
}) {
  get status() {
    return 413
  }
  get headers() {
    return {}
  }
  override get message() {
    return `The request body is larger than ${Math.round(this.limitBytes / 1048576)} MiB`
  }
  get body() {
    return envelope(this.message, "invalid_request_error", "payload_too_large")
  }
}

export class Unauthorized extends Schema.TaggedError<Unauthorized>()("Unauthorized", {}) {
  get status() {
    return 401
  }
  get headers() {
    return {}
  }
  override get message() {
    return "Missing or invalid API token"
  }
  get body() {
    return envelope(this.message, "authentication_error", "invalid_api_key")
  }
}

export class NotFoundRoute extends Schema.TaggedError<NotFoundRoute>()("NotFoundRoute", {
  method: Schema.String,
  path: Schema.String
}) {
  get status() {
    return 404
  }
  get headers() {
    return {}
  }
  override get message() {
    return `No route for ${this.method} ${this.path}`
  }
  get body() {
    return envelope(this.message, "invalid_request_error", "unknown_url")
  }
}

/**
 * What a client may read of an internal failure: its first line, without the runtime's wrapper,
 * stack frames or file paths (those go to the log, under the error's id).
 */
/**
 * A file on the server: under a usual root, or a source, module or model file (with a line and
 * column). URL paths such as `/v1/models` are not files and stay.
 */
const SERVER_PATH =
  /(?:file:\/\/)?(?:[A-Za-z]:\\[^\s:]+|\/(?:home|root|usr|opt|var|tmp|work|srv|app|etc|mnt|Users|private)(?:\/[\w.@+~-]+)+|(?:[\w.@+~-]*\/)+[\w.@+~-]+\.(?:[cm]?[jt]s|gguf|node))(?::\d+)*/g

/** A message fit for a client: no stack frames, no server files, bounded (it may quote the client). */
export const scrubMessage = (message: string, max?: number): string =>
  clip(message.replace(/\n\s*at\s[\s\S]*$/, "").replace(SERVER_PATH, "<path>"), max)

export const publicDetail = (detail: string): string =>
  scrubMessage((detail.split("\n")[0] ?? "").replace(/^\(FiberFailure\)\s*/, ""), 200)

export class InternalError extends Schema.TaggedError<InternalError>()("InternalError", {
  detail: Schema.String
}) {
  /** Names this failure in the log and in the answer, so an operator can find one from the other. */
  readonly id = Math.random().toString(36).slice(2, 10)
  get status() {
    return 500
  }
  get headers() {
    return {}
  }
  override get message() {
    return this.detail
  }
  get body() {
    return envelope(`${publicDetail(this.detail)} (error id ${this.id})`, "server_error", "internal_error")
  }
}

export type ApiError =
  | InvalidJson
  | InvalidRequest
  | ModelNotFound
  | ContextLengthExceeded
  | InsufficientVram
  | Overloaded
  | ModelUnavailable
  | WorkerCrashed
  | ModelLoadFailed
  | ShuttingDown
  | Unauthorized
  | PayloadTooLarge
  | NotFoundRoute
  | InternalError
  | UpstreamError
  | ModelInfeasible

export const isApiError = (u: unknown): u is ApiError =>
  typeof u === "object" && u !== null && "status" in u && "body" in u && "_tag" in u

/** An upstream (neuron) error passed through to the client with its status and envelope. */
export class UpstreamError extends Schema.TaggedError<UpstreamError>()("UpstreamError", {
  upstreamStatus: Schema.Number,
  upstreamBody: Schema.Unknown,
  retryAfter: Schema.NullOr(Schema.String)
}) {
  get status() {
    return this.upstreamStatus
  }
  get headers(): Record<string, string> {
    return this.retryAfter ? { "retry-after": this.retryAfter } : {}
  }
  override get message() {
    return this.body.error.message
  }
  get body(): OpenAIErrorBody {
    const b = this.upstreamBody as Partial<OpenAIErrorBody> | undefined
    if (b && typeof b === "object" && b.error && typeof b.error.message === "string") {
      return {
        error: {
          ...b.error,
          message: b.error.message,
          type: b.error.type ?? "server_error",
          code: b.error.code ?? null,
          param: b.error.param ?? null
        }
      }
    }
    return envelope(`upstream answered ${this.upstreamStatus}`, "server_error", "upstream_error")
  }
}

/** The model is catalogued but can never fit on any node (too big, missing devices): 404. */
export class ModelInfeasible extends Schema.TaggedError<ModelInfeasible>()("ModelInfeasible", {
  model: Schema.String,
  reason: Schema.String
}) {
  get status() {
    return 404
  }
  get headers() {
    return {}
  }
  override get message() {
    return `The model '${this.model}' cannot be served by this fleet: ${this.reason}`
  }
  get body() {
    return envelope(this.message, "invalid_request_error", "model_not_feasible", "model")
  }
}
