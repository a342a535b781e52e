/**
 * Every client-facing error answers from one table by `_tag`: its status, headers and OpenAI
 * envelope (byte for byte, as clients and the gateway read them), and the Anthropic answer the
 * gateway derives from them. Each case names one tag (some several variants of it).
 */
import { describe, expect, it } from "@effect/vitest"
import {
  type ApiError,
  ContextLengthExceeded,
  errorTable,
  ImageRejected,
  InsufficientDisk,
  InsufficientVram,
  InternalError,
  InvalidJson,
  InvalidRequest,
  isApiError,
  LimitExceeded,
  ModelInfeasible,
  ModelLoadFailed,
  ModelNotAllowed,
  ModelNotFound,
  ModelUnavailable,
  NotFoundRoute,
  Overloaded,
  PayloadTooLarge,
  PullFailed,
  ShuttingDown,
  Unauthorized,
  UpstreamError,
  WorkerCrashed
} from "../src/domain/errors.js"
import { anthropicError, openaiError } from "../src/gateway/Dialects.js"

interface Case {
  readonly error: ApiError
  readonly status: number
  readonly headers: Record<string, string>
  /** The OpenAI envelope, as JSON text. */
  readonly openai: string
  readonly anthropic: readonly [status: number, type: string, message: string]
}

const internal = new InternalError({ detail: "TypeError: boom\n    at /work/main/src/a.ts:1:2" })

const cases: ReadonlyArray<Case> = [
  {
    error: new InvalidJson({ message: "Unexpected token" }),
    status: 400,
    headers: {},
    openai:
      `{"error":{"message":"Unexpected token","type":"invalid_request_error","code":"invalid_json","param":null}}`,
    anthropic: [400, "invalid_request_error", "Unexpected token"]
  },
  {
    error: new InvalidRequest({ message: "n is 9", param: "n" }),
    status: 422,
    headers: {},
    openai: `{"error":{"message":"n is 9","type":"invalid_request_error","code":"invalid_value","param":"n"}}`,
    anthropic: [400, "invalid_request_error", "n is 9"]
  },
  {
    error: new InvalidRequest({ message: "bad", param: null }),
    status: 422,
    headers: {},
    openai: `{"error":{"message":"bad","type":"invalid_request_error","code":"invalid_value","param":null}}`,
    anthropic: [400, "invalid_request_error", "bad"]
  },
  {
    error: new ImageRejected({ code: "vision_unsupported", message: "no images here", param: "messages.0.content.1" }),
    status: 400,
    headers: {},
    openai:
      `{"error":{"message":"no images here","type":"invalid_request_error","code":"vision_unsupported","param":"messages.0.content.1"}}`,
    anthropic: [400, "invalid_request_error", "no images here"]
  },
  {
    error: new ModelNotFound({ model: "m" }),
    status: 404,
    headers: {},
    openai:
      `{"error":{"message":"The model 'm' does not exist","type":"invalid_request_error","code":"model_not_found","param":"model"}}`,
    anthropic: [404, "not_found_error", "The model 'm' does not exist"]
  },
  {
    error: new ContextLengthExceeded({ model: "m", limit: 512, requested: 900 }),
    status: 400,
    headers: {},
    openai:
      `{"error":{"message":"This model's maximum context length is 512 tokens; the request needs 900 tokens","type":"invalid_request_error","code":"context_length_exceeded","param":"messages","limit":512,"requested":900}}`,
    anthropic: [400, "invalid_request_error", "prompt is too long: 900 tokens > 512 maximum"]
  },
  {
    error: new InsufficientVram({ model: "m", device: "cuda:0", required_mb: 900, free_mb: 100, phase: "load" }),
    status: 507,
    headers: {},
    openai:
      `{"error":{"message":"Not enough memory on cuda:0 for m: 900 MB required, 100 MB free","type":"insufficient_vram","code":"insufficient_vram","param":null,"required_mb":900,"free_mb":100}}`,
    anthropic: [529, "overloaded_error", "Not enough memory on cuda:0 for m: 900 MB required, 100 MB free"]
  },
  {
    error: new InsufficientVram({ model: "m", device: "cpu", required_mb: 9, free_mb: 1, phase: "request" }),
    status: 503,
    headers: { "retry-after": "2" },
    openai:
      `{"error":{"message":"Not enough memory on cpu for m: 9 MB required, 1 MB free","type":"insufficient_vram","code":"insufficient_vram","param":null,"required_mb":9,"free_mb":1}}`,
    anthropic: [529, "overloaded_error", "Not enough memory on cpu for m: 9 MB required, 1 MB free"]
  },
  {
    error: new LimitExceeded({ scope: "key", name: "team", limit: "rpm", cap: 60, retry_after_secs: 12 }),
    status: 429,
    headers: {
      "retry-after": "12",
      "x-ratelimit-limit-requests": "60",
      "x-ratelimit-remaining-requests": "0",
      "x-ratelimit-reset-requests": "12s"
    },
    openai:
      `{"error":{"message":"Rate limit reached for key 'team': 60 requests per minute","type":"requests","code":"rate_limit_exceeded","param":null}}`,
    anthropic: [429, "rate_limit_error", "Rate limit reached for key 'team': 60 requests per minute"]
  },
  {
    error: new LimitExceeded({ scope: "model", name: "m", limit: "tpm", cap: 1000, retry_after_secs: 5 }),
    status: 429,
    headers: {
      "retry-after": "5",
      "x-ratelimit-limit-tokens": "1000",
      "x-ratelimit-remaining-tokens": "0",
      "x-ratelimit-reset-tokens": "5s"
    },
    openai:
      `{"error":{"message":"Rate limit reached for model 'm': 1000 tokens per minute","type":"tokens","code":"rate_limit_exceeded","param":null}}`,
    anthropic: [429, "rate_limit_error", "Rate limit reached for model 'm': 1000 tokens per minute"]
  },
  {
    error: new LimitExceeded({ scope: "key", name: "team", limit: "spend", cap: 50, retry_after_secs: 3600 }),
    status: 429,
    headers: {
      "retry-after": "3600",
      "x-ratelimit-limit-usd": "50",
      "x-ratelimit-remaining-usd": "0",
      "x-ratelimit-reset-usd": "3600s"
    },
    openai:
      `{"error":{"message":"Budget exhausted for key 'team': 50 USD in its window","type":"insufficient_quota","code":"insufficient_quota","param":null}}`,
    anthropic: [429, "rate_limit_error", "Budget exhausted for key 'team': 50 USD in its window"]
  },
  {
    error: new LimitExceeded({ scope: "key", name: "team", limit: "concurrent", cap: 2, retry_after_secs: 1 }),
    status: 429,
    headers: {
      "retry-after": "1",
      "x-ratelimit-limit-concurrent": "2",
      "x-ratelimit-remaining-concurrent": "0",
      "x-ratelimit-reset-concurrent": "1s"
    },
    openai:
      `{"error":{"message":"Too many concurrent requests for key 'team': at most 2","type":"requests","code":"rate_limit_exceeded","param":null}}`,
    anthropic: [429, "rate_limit_error", "Too many concurrent requests for key 'team': at most 2"]
  },
  {
    error: new ModelNotAllowed({ model: "m" }),
    status: 403,
    headers: {},
    openai:
      `{"error":{"message":"This API key may not use the model 'm'","type":"invalid_request_error","code":"model_not_allowed","param":"model"}}`,
    anthropic: [403, "permission_error", "This API key may not use the model 'm'"]
  },
  {
    error: new Overloaded({ model: "m", reason: "queue_full", retry_after_secs: 1 }),
    status: 429,
    headers: { "retry-after": "1" },
    openai:
      `{"error":{"message":"The queue for m is full; retry later","type":"rate_limit_error","code":"queue_full","param":null}}`,
    anthropic: [429, "rate_limit_error", "The queue for m is full; retry later"]
  },
  {
    error: new Overloaded({ model: "m", reason: "principal_limit", retry_after_secs: 3 }),
    status: 429,
    headers: { "retry-after": "3" },
    openai:
      `{"error":{"message":"Too many concurrent requests from this principal for m","type":"rate_limit_error","code":"principal_limit","param":null}}`,
    anthropic: [429, "rate_limit_error", "Too many concurrent requests from this principal for m"]
  },
  {
    error: new Overloaded({ model: "m", reason: "queue_timeout", retry_after_secs: 2 }),
    status: 503,
    headers: { "retry-after": "2" },
    openai:
      `{"error":{"message":"Timed out waiting for a free slot on m","type":"rate_limit_error","code":"queue_timeout","param":null}}`,
    anthropic: [529, "overloaded_error", "Timed out waiting for a free slot on m"]
  },
  {
    error: new ModelUnavailable({ model: "m", state: "loading" }),
    status: 503,
    headers: { "retry-after": "2" },
    openai:
      `{"error":{"message":"Model m is loading","type":"service_unavailable","code":"model_loading","param":"model"}}`,
    anthropic: [529, "overloaded_error", "Model m is loading"]
  },
  {
    error: new ModelUnavailable({ model: "m", state: "recovering", detail: "worker died" }),
    status: 503,
    headers: { "retry-after": "2" },
    openai:
      `{"error":{"message":"Model m is recovering: worker died","type":"service_unavailable","code":"model_recovering","param":"model"}}`,
    anthropic: [529, "overloaded_error", "Model m is recovering: worker died"]
  },
  {
    error: new WorkerCrashed({ device: "cuda:0", detail: "signal SIGABRT" }),
    status: 502,
    headers: { "retry-after": "2" },
    openai:
      `{"error":{"message":"The worker for cuda:0 crashed (signal SIGABRT)","type":"server_error","code":"worker_crashed","param":null}}`,
    anthropic: [500, "api_error", "The worker for cuda:0 crashed (signal SIGABRT)"]
  },
  {
    error: new ModelLoadFailed({ model: "m", detail: "bad file" }),
    status: 500,
    headers: {},
    openai:
      `{"error":{"message":"Loading m failed: bad file","type":"server_error","code":"model_load_failed","param":"model"}}`,
    anthropic: [500, "api_error", "Loading m failed: bad file"]
  },
  {
    error: new ShuttingDown(),
    status: 503,
    headers: { "retry-after": "5", connection: "close" },
    openai:
      `{"error":{"message":"The neuron is shutting down","type":"service_unavailable","code":"shutting_down","param":null}}`,
    anthropic: [529, "overloaded_error", "The neuron is shutting down"]
  },
  {
    error: new PayloadTooLarge({ limitBytes: 8 * 1048576 }),
    status: 413,
    headers: {},
    openai:
      `{"error":{"message":"The request body is larger than 8 MiB","type":"invalid_request_error","code":"payload_too_large","param":null}}`,
    anthropic: [413, "request_too_large", "The request body is larger than 8 MiB"]
  },
  {
    error: new Unauthorized(),
    status: 401,
    headers: {},
    openai:
      `{"error":{"message":"Missing or invalid API token","type":"authentication_error","code":"invalid_api_key","param":null}}`,
    anthropic: [401, "authentication_error", "Missing or invalid API token"]
  },
  {
    error: new NotFoundRoute({ method: "GET", path: "/nope" }),
    status: 404,
    headers: {},
    openai:
      `{"error":{"message":"No route for GET /nope","type":"invalid_request_error","code":"unknown_url","param":null}}`,
    anthropic: [404, "not_found_error", "No route for GET /nope"]
  },
  {
    error: internal,
    status: 500,
    headers: {},
    openai:
      `{"error":{"message":"TypeError: boom (error id ${internal.id})","type":"server_error","code":"internal_error","param":null}}`,
    anthropic: [500, "api_error", `TypeError: boom (error id ${internal.id})`]
  },
  {
    error: new UpstreamError({
      upstreamStatus: 429,
      upstreamBody: { error: { message: "slow down", type: "rate_limit_error", code: "queue_full", extra: 1 } },
      retryAfter: "4"
    }),
    status: 429,
    headers: { "retry-after": "4" },
    openai: `{"error":{"message":"slow down","type":"rate_limit_error","code":"queue_full","extra":1,"param":null}}`,
    anthropic: [429, "rate_limit_error", "slow down"]
  },
  {
    error: new UpstreamError({ upstreamStatus: 502, upstreamBody: "<html>bad gateway</html>", retryAfter: null }),
    status: 502,
    headers: {},
    openai: `{"error":{"message":"upstream answered 502","type":"server_error","code":"upstream_error","param":null}}`,
    anthropic: [500, "api_error", "upstream answered 502"]
  },
  {
    error: new ModelInfeasible({ model: "m", reason: "needs 90 GB" }),
    status: 404,
    headers: {},
    openai:
      `{"error":{"message":"The model 'm' cannot be served by this fleet: needs 90 GB","type":"invalid_request_error","code":"model_not_feasible","param":"model"}}`,
    anthropic: [404, "not_found_error", "The model 'm' cannot be served by this fleet: needs 90 GB"]
  },
  {
    error: new PullFailed({ model: "hf:o/r:q4", reason: "not_found", detail: "o/r not found: Repository not found" }),
    status: 404,
    headers: {},
    openai:
      `{"error":{"message":"Cannot pull 'hf:o/r:q4': o/r not found: Repository not found","type":"source_error","code":"source_not_found","param":"model"}}`,
    anthropic: [404, "not_found_error", "Cannot pull 'hf:o/r:q4': o/r not found: Repository not found"]
  },
  {
    error: new PullFailed({ model: "hf:o/r:q4", reason: "unauthorized", detail: "401; set HF_TOKEN" }),
    status: 403,
    headers: {},
    openai:
      `{"error":{"message":"Cannot pull 'hf:o/r:q4': 401; set HF_TOKEN","type":"source_error","code":"source_unauthorized","param":"model"}}`,
    anthropic: [403, "permission_error", "Cannot pull 'hf:o/r:q4': 401; set HF_TOKEN"]
  },
  {
    error: new PullFailed({ model: "hf:o/r:q", reason: "ambiguous", detail: "a.gguf, b.gguf" }),
    status: 400,
    headers: {},
    openai:
      `{"error":{"message":"Cannot pull 'hf:o/r:q': a.gguf, b.gguf","type":"source_error","code":"source_ambiguous","param":"model"}}`,
    anthropic: [400, "invalid_request_error", "Cannot pull 'hf:o/r:q': a.gguf, b.gguf"]
  },
  {
    error: new PullFailed({ model: "hf:o/r/a.gguf", reason: "checksum_mismatch", detail: "sha256 differs" }),
    status: 502,
    headers: {},
    openai:
      `{"error":{"message":"Cannot pull 'hf:o/r/a.gguf': sha256 differs","type":"source_error","code":"source_checksum_mismatch","param":"model"}}`,
    anthropic: [500, "api_error", "Cannot pull 'hf:o/r/a.gguf': sha256 differs"]
  },
  {
    error: new InsufficientDisk({ model: "hf:o/r:q4", required_mb: 900, free_mb: 100, detail: "disk" }),
    status: 507,
    headers: {},
    openai:
      `{"error":{"message":"Not enough disk to pull 'hf:o/r:q4': needs 900 MB, 100 MB available (disk)","type":"insufficient_storage","code":"insufficient_disk","param":null,"required_mb":900,"free_mb":100}}`,
    anthropic: [529, "overloaded_error", "Not enough disk to pull 'hf:o/r:q4': needs 900 MB, 100 MB available (disk)"]
  }
]

describe("the error table", () => {
  it("has a case here for every tag it knows", () => {
    expect(new Set(cases.map((c) => c.error._tag))).toEqual(new Set(Object.keys(errorTable)))
  })

  for (const c of cases) {
    it(`${c.error._tag}: ${c.status} with the OpenAI envelope byte for byte`, () => {
      expect(isApiError(c.error)).toBe(true)
      expect(c.error.status).toBe(c.status)
      expect(c.error.headers).toEqual(c.headers)
      expect(JSON.stringify(c.error.body)).toBe(c.openai)
      const openai = openaiError(c.error)
      expect(openai.status).toBe(c.status)
      expect(JSON.stringify(openai.body)).toBe(c.openai)
    })

    it(`${c.error._tag}: the Anthropic answer the gateway derives is unchanged`, () => {
      const answer = anthropicError(c.error)
      expect(answer.status).toBe(c.anthropic[0])
      expect(answer.headers).toEqual(c.headers)
      expect(answer.body).toEqual({ type: "error", error: { type: c.anthropic[1], message: c.anthropic[2] } })
    })
  }

  it("knows an error by its tag, not by its shape", () => {
    expect(isApiError({ _tag: "Elsewhere", status: 500, body: {} })).toBe(false)
    expect(isApiError(new Error("x"))).toBe(false)
    expect(isApiError(null)).toBe(false)
    expect(isApiError("InvalidJson")).toBe(false)
  })
})
