import { Predicate, Schema } from "effect"
import { clip } from "./json.js"

/**
 * Errors that reach a client, as data. Each class declares its fields and its message; how it
 * answers (HTTP status, headers, and the OpenAI envelope `{ error: { message, type, code,
 * param } }` with any extra fields such as limit or required_mb) is its row in `errorTable`,
 * read by the `status`, `headers` and `body` getters that `answering` adds to every class.
 * The Anthropic envelope is derived from that status and body by the gateway's translator.
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

/** What every client-facing error answers with. */
export interface Answer {
  readonly status: number
  readonly headers: Record<string, string>
  readonly body: OpenAIErrorBody
}

/** A value of the row, or how to read it from the error. */
type Cell<E, A> = A | ((error: E) => A)

/** How one error answers: status, OpenAI type, code and param; headers and extra envelope fields if any. */
export interface ErrorRow<E> {
  readonly status: Cell<E, number>
  readonly type: Cell<E, string>
  readonly code: Cell<E, string | null>
  readonly param: Cell<E, string | null>
  readonly headers?: (error: E) => Record<string, string>
  readonly extra?: (error: E) => Record<string, unknown>
  /** The envelope's message when it is not the error's own `message`. */
  readonly publicMessage?: (error: E) => string
}

const cell = <E, A>(value: Cell<E, A>, error: E): A =>
  typeof value === "function" ? (value as (error: E) => A)(error) : value

// The table is declared below the classes (its type names them); the getters read it on use.
const answerOf = (error: { readonly _tag: string; readonly message: string }): Answer => {
  const row = errorTable[error._tag as ApiError["_tag"]] as ErrorRow<typeof error>
  return {
    status: cell(row.status, error),
    headers: row.headers?.(error) ?? {},
    body: {
      error: {
        message: row.publicMessage?.(error) ?? error.message,
        type: cell(row.type, error),
        code: cell(row.code, error),
        param: cell(row.param, error),
        ...row.extra?.(error)
      }
    }
  }
}

/**
 * Adds `status`, `headers` and `body`, read from the class's row, to a `Schema.TaggedError`
 * class. The cast keeps the class's own constructor (its fields, type-checked) and statics.
 */

const answering = <C extends new(...args: Array<any>) => { readonly _tag: string; readonly message: string }>(
  Base: C
) => {
  class Answering extends Base {
    get status(): number {
      return answerOf(this).status
    }
    get headers(): Record<string, string> {
      return answerOf(this).headers
    }
    get body(): OpenAIErrorBody {
      return answerOf(this).body
    }
  }
  return Answering as unknown as { new(...args: ConstructorParameters<C>): InstanceType<C> & Answer } & Pick<C, keyof C>
}

export class InvalidJson extends answering(
  Schema.TaggedError<InvalidJson>()("InvalidJson", {
    message: Schema.String
  })
) {}

export class InvalidRequest extends answering(
  Schema.TaggedError<InvalidRequest>()("InvalidRequest", {
    message: Schema.String,
    param: Schema.NullOr(Schema.String)
  })
) {}

export class ModelNotFound extends answering(
  Schema.TaggedError<ModelNotFound>()("ModelNotFound", {
    model: Schema.String
  })
) {
  override get message() {
    return `The model '${this.model}' does not exist`
  }
}

export class ContextLengthExceeded extends answering(
  Schema.TaggedError<ContextLengthExceeded>()("ContextLengthExceeded", {
    model: Schema.String,
    limit: Schema.Number,
    requested: Schema.Number
  })
) {
  override get message() {
    return `This model's maximum context length is ${this.limit} tokens; the request needs ${this.requested} tokens`
  }
}

/** A load (507) or a request (503 + Retry-After) that cannot fit in the device's free memory. */
export class InsufficientVram extends answering(
  Schema.TaggedError<InsufficientVram>()("InsufficientVram", {
    model: Schema.String,
    device: Schema.String,
    required_mb: Schema.Number,
    free_mb: Schema.Number,
    phase: Schema.Literal("load", "request")
  })
) {
  override get message() {
    return `Not enough memory on ${this.device} for ${this.model}: ${this.required_mb} MB required, ${this.free_mb} MB free`
  }
}

/** Admission refused the request: queue full or principal over its share (429), or waited too long (503). */
export class Overloaded extends answering(
  Schema.TaggedError<Overloaded>()("Overloaded", {
    model: Schema.String,
    reason: Schema.Literal("queue_full", "principal_limit", "queue_timeout"),
    retry_after_secs: Schema.Number
  })
) {
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
}

/** The model exists but cannot serve right now (loading, recovering after a worker crash, unloading). */
export class ModelUnavailable extends answering(
  Schema.TaggedError<ModelUnavailable>()("ModelUnavailable", {
    model: Schema.String,
    state: Schema.String,
    detail: Schema.optionalWith(Schema.String, { exact: true })
  })
) {
  override get message() {
    return `Model ${this.model} is ${this.state}${this.detail ? `: ${this.detail}` : ""}`
  }
}

/** The device worker died (native abort, OOM kill) while serving or loading. */
export class WorkerCrashed extends answering(
  Schema.TaggedError<WorkerCrashed>()("WorkerCrashed", {
    device: Schema.String,
    detail: Schema.String
  })
) {
  override get message() {
    return `The worker for ${this.device} crashed (${this.detail})`
  }
}

export class ModelLoadFailed extends answering(
  Schema.TaggedError<ModelLoadFailed>()("ModelLoadFailed", {
    model: Schema.String,
    detail: Schema.String
  })
) {
  override get message() {
    return `Loading ${this.model} failed: ${this.detail}`
  }
}

export class ShuttingDown extends answering(Schema.TaggedError<ShuttingDown>()("ShuttingDown", {})) {
  override get message() {
    return "The neuron is shutting down"
  }
}

/** A request body over the gateway's limit. */
export class PayloadTooLarge extends answering(
  Schema.TaggedError<PayloadTooLarge>()("PayloadTooLarge", {
    limitBytes: Schema.Number
  })
) {
  override get message() {
    return `The request body is larger than ${Math.round(this.limitBytes / 1048576)} MiB`
  }
}

export class Unauthorized extends answering(Schema.TaggedError<Unauthorized>()("Unauthorized", {})) {
  override get message() {
    return "Missing or invalid API token"
  }
}

export class NotFoundRoute extends answering(
  Schema.TaggedError<NotFoundRoute>()("NotFoundRoute", {
    method: Schema.String,
    path: Schema.String
  })
) {
  override get message() {
    return `No route for ${this.method} ${this.path}`
  }
}

/**
 * A file on the server: under a usual root, or a source, module or model file (with a line and
 * column). URL paths such as `/v1/models` are not files and stay.
 */
const SERVER_PATH =
  /(?:file:\/\/)?(?:[A-Za-z]:\\[^\s:]+|\/(?:home|root|usr|opt|var|tmp|work|srv|app|etc|mnt|Users|private)(?:\/[\w.@+~-]+)+|(?:[\w.@+~-]*\/)+[\w.@+~-]+\.(?:[cm]?[jt]s|gguf|node))(?::\d+)*/g

/** A message fit for a client: no stack frames, no server files, bounded (it may quote the client). */
export const scrubMessage = (message: string, max?: number): string =>
  clip(message.replace(/\n\s*at\s[\s\S]*$/, "").replace(SERVER_PATH, "<path>"), max)

/**
 * What a client may read of an internal failure: its first line, without the runtime's wrapper,
 * stack frames or file paths (those go to the log, under the error's id).
 */
export const publicDetail = (detail: string): string =>
  scrubMessage((detail.split("\n")[0] ?? "").replace(/^\(FiberFailure\)\s*/, ""), 200)

export class InternalError extends answering(
  Schema.TaggedError<InternalError>()("InternalError", {
    detail: Schema.String
  })
) {
  /** Names this failure in the log and in the answer, so an operator can find one from the other. */
  readonly id = Math.random().toString(36).slice(2, 10)
  override get message() {
    return this.detail
  }
}

/**
 * An upstream (neuron) error passed through to the client with its status and envelope; its
 * row is the fallback for an upstream body that is not an OpenAI envelope.
 */
export class UpstreamError extends answering(
  Schema.TaggedError<UpstreamError>()("UpstreamError", {
    upstreamStatus: Schema.Number,
    upstreamBody: Schema.Unknown,
    retryAfter: Schema.NullOr(Schema.String)
  })
) {
  override get message() {
    const b = this.upstreamEnvelope
    return b ? b.error.message : `upstream answered ${this.upstreamStatus}`
  }
  override get body(): OpenAIErrorBody {
    const b = this.upstreamEnvelope
    if (!b) return super.body
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
  private get upstreamEnvelope() {
    const b = this.upstreamBody as Partial<OpenAIErrorBody> | undefined
    return b && typeof b === "object" && b.error && typeof b.error.message === "string"
      ? b as OpenAIErrorBody
      : undefined
  }
}

/** The model is catalogued but can never fit on any node (too big, missing devices): 404. */
export class ModelInfeasible extends answering(
  Schema.TaggedError<ModelInfeasible>()("ModelInfeasible", {
    model: Schema.String,
    reason: Schema.String
  })
) {
  override get message() {
    return `The model '${this.model}' cannot be served by this fleet: ${this.reason}`
  }
}

/**
 * A model source could not give the model: the repository or file is not there (404), the hub
 * refused the neuron's credentials (403: the neuron's token, not the client's key), a quant
 * matches no file or several (400), the file did not match the hub's size or sha256 (502), or
 * the hub could not be reached (502).
 */
export class PullFailed extends answering(
  Schema.TaggedError<PullFailed>()("PullFailed", {
    model: Schema.String,
    reason: Schema.Literal("not_found", "unauthorized", "no_match", "ambiguous", "checksum_mismatch", "unreachable"),
    detail: Schema.String
  })
) {
  override get message() {
    return `Cannot pull '${this.model}': ${this.detail}`
  }
}

/** Not enough disk (or cache allowance) for a download: 507, with what it needs and what is free. */
export class InsufficientDisk extends answering(
  Schema.TaggedError<InsufficientDisk>()("InsufficientDisk", {
    model: Schema.String,
    required_mb: Schema.Number,
    free_mb: Schema.Number,
    detail: Schema.String
  })
) {
  override get message() {
    return `Not enough disk to pull '${this.model}': needs ${this.required_mb} MB, ${this.free_mb} MB available (${this.detail})`
  }
}

/**
 * An image the request cannot have served (400, invalid_request_error): sent to a model without
 * vision (`vision_unsupported`), unreadable (`invalid_image`), over a limit (`image_too_large`),
 * or a URL the gateway would not or could not fetch (`image_fetch_failed`). `param` names the part.
 */
export class ImageRejected extends answering(
  Schema.TaggedError<ImageRejected>()("ImageRejected", {
    code: Schema.Literal("vision_unsupported", "invalid_image", "image_too_large", "image_fetch_failed"),
    message: Schema.String,
    param: Schema.NullOr(Schema.String)
  })
) {}

/**
 * A key's or a model's limit (src/accounting/Limits.ts): requests or tokens per minute, spend in
 * its window, or concurrent requests. 429 always (never 402); OpenAI's `insufficient_quota` for
 * spend, `rate_limit_exceeded` otherwise; Retry-After and x-ratelimit-* headers as hosted APIs send.
 */
export class LimitExceeded extends answering(
  Schema.TaggedError<LimitExceeded>()("LimitExceeded", {
    scope: Schema.Literal("key", "model"),
    name: Schema.String,
    limit: Schema.Literal("rpm", "tpm", "spend", "concurrent"),
    cap: Schema.Number,
    retry_after_secs: Schema.Number
  })
) {
  override get message() {
    const what = this.scope === "key" ? `key '${this.name}'` : `model '${this.name}'`
    switch (this.limit) {
      case "rpm":
        return `Rate limit reached for ${what}: ${this.cap} requests per minute`
      case "tpm":
        return `Rate limit reached for ${what}: ${this.cap} tokens per minute`
      case "spend":
        return `Budget exhausted for ${what}: ${this.cap} USD in its window`
      case "concurrent":
        return `Too many concurrent requests for ${what}: at most ${this.cap}`
    }
  }
}

/** The x-ratelimit-* unit of each limit (OpenAI names requests and tokens; cortex adds usd and concurrent). */
const limitUnit = { rpm: "requests", tpm: "tokens", spend: "usd", concurrent: "concurrent" } as const

/** A key restricted to some models asked for another. */
export class ModelNotAllowed extends answering(
  Schema.TaggedError<ModelNotAllowed>()("ModelNotAllowed", { model: Schema.String })
) {
  override get message() {
    return `This API key may not use the model '${this.model}'`
  }
}

export type ApiError =
  | LimitExceeded
  | ModelNotAllowed
  | ImageRejected
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
  | PullFailed
  | InsufficientDisk

const retryAfter = (secs: string) => () => ({ "retry-after": secs })

/** How every client-facing error answers, by `_tag`. */
export const errorTable: { readonly [T in ApiError["_tag"]]: ErrorRow<Extract<ApiError, { readonly _tag: T }>> } = {
  ImageRejected: { status: 400, type: "invalid_request_error", code: (e) => e.code, param: (e) => e.param },
  LimitExceeded: {
    status: 429,
    type: (e) => e.limit === "spend" ? "insufficient_quota" : e.limit === "tpm" ? "tokens" : "requests",
    code: (e) => e.limit === "spend" ? "insufficient_quota" : "rate_limit_exceeded",
    param: null,
    headers: (e) => ({
      "retry-after": String(e.retry_after_secs),
      [`x-ratelimit-limit-${limitUnit[e.limit]}`]: String(e.cap),
      [`x-ratelimit-remaining-${limitUnit[e.limit]}`]: "0",
      [`x-ratelimit-reset-${limitUnit[e.limit]}`]: `${e.retry_after_secs}s`
    })
  },
  ModelNotAllowed: { status: 403, type: "invalid_request_error", code: "model_not_allowed", param: "model" },
  InvalidJson: { status: 400, type: "invalid_request_error", code: "invalid_json", param: null },
  InvalidRequest: { status: 422, type: "invalid_request_error", code: "invalid_value", param: (e) => e.param },
  ModelNotFound: { status: 404, type: "invalid_request_error", code: "model_not_found", param: "model" },
  ContextLengthExceeded: {
    status: 400,
    type: "invalid_request_error",
    code: "context_length_exceeded",
    param: "messages",
    extra: (e) => ({ limit: e.limit, requested: e.requested })
  },
  InsufficientVram: {
    status: (e) => e.phase === "load" ? 507 : 503,
    type: "insufficient_vram",
    code: "insufficient_vram",
    param: null,
    headers: (e) => e.phase === "load" ? {} : { "retry-after": "2" },
    extra: (e) => ({ required_mb: e.required_mb, free_mb: e.free_mb })
  },
  Overloaded: {
    status: (e) => e.reason === "queue_timeout" ? 503 : 429,
    type: "rate_limit_error",
    code: (e) => e.reason,
    param: null,
    headers: (e) => ({ "retry-after": String(e.retry_after_secs) })
  },
  ModelUnavailable: {
    status: 503,
    type: "service_unavailable",
    code: (e) => `model_${e.state}`,
    param: "model",
    headers: retryAfter("2")
  },
  WorkerCrashed: { status: 502, type: "server_error", code: "worker_crashed", param: null, headers: retryAfter("2") },
  ModelLoadFailed: { status: 500, type: "server_error", code: "model_load_failed", param: "model" },
  ShuttingDown: {
    status: 503,
    type: "service_unavailable",
    code: "shutting_down",
    param: null,
    headers: () => ({ "retry-after": "5", connection: "close" })
  },
  PayloadTooLarge: { status: 413, type: "invalid_request_error", code: "payload_too_large", param: null },
  Unauthorized: { status: 401, type: "authentication_error", code: "invalid_api_key", param: null },
  NotFoundRoute: { status: 404, type: "invalid_request_error", code: "unknown_url", param: null },
  InternalError: {
    status: 500,
    type: "server_error",
    code: "internal_error",
    param: null,
    publicMessage: (e) => `${publicDetail(e.detail)} (error id ${e.id})`
  },
  UpstreamError: {
    status: (e) => e.upstreamStatus,
    type: "server_error",
    code: "upstream_error",
    param: null,
    headers: (e) => e.retryAfter ? { "retry-after": e.retryAfter } : {}
  },
  ModelInfeasible: { status: 404, type: "invalid_request_error", code: "model_not_feasible", param: "model" },
  PullFailed: {
    status: (e) =>
      e.reason === "not_found"
        ? 404
        : e.reason === "unauthorized"
        ? 403
        : e.reason === "no_match" || e.reason === "ambiguous"
        ? 400
        : 502,
    type: "source_error",
    code: (e) => e.reason === "not_found" ? "source_not_found" : `source_${e.reason}`,
    param: "model"
  },
  InsufficientDisk: {
    status: 507,
    type: "insufficient_storage",
    code: "insufficient_disk",
    param: null,
    extra: (e) => ({ required_mb: e.required_mb, free_mb: e.free_mb })
  }
}

const apiErrorTags: ReadonlySet<string> = new Set(Object.keys(errorTable))

/** A client-facing error, known by its tag. */
export const isApiError = (u: unknown): u is ApiError =>
  Predicate.hasProperty(u, "_tag") && typeof u._tag === "string" && apiErrorTags.has(u._tag)
