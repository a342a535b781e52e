/**
 * OpenAI inference on the neuron: admission, then a generation on the device worker, answered
 * as one JSON body or as an SSE stream with keep-alives, a usage chunk carrying timing, and an
 * in-band error event (never `[DONE]`) when a started stream fails.
 */
import { Tracer as OtelTracer } from "@effect/opentelemetry"
import { HttpServerResponse } from "@effect/platform"
import { Cause, Clock, Context, Deferred, Effect, Exit, Fiber, Option, Queue, Schedule, Stream } from "effect"
import { randomBytes } from "node:crypto"
import {
  type ApiError,
  ContextLengthExceeded,
  InsufficientVram,
  InternalError,
  InvalidRequest,
  isApiError,
  ModelUnavailable,
  type OpenAIErrorBody,
  scrubMessage,
  WorkerCrashed
} from "../domain/errors.js"
import type { ChatCompletionRequest, CompletionRequest, EmbeddingRequest } from "../domain/openai.js"
import { toWorkerMessages } from "./ChatMessages.js"
import { WorkerError } from "./DeviceWorker.js"
import * as NM from "./Metrics.js"
import { type Caller, ModelManager, type Seat } from "./ModelManager.js"
import { NeuronConfig } from "./NeuronConfig.js"
import { resolveSampling } from "./Sampling.js"
import { minPromptTokens } from "./worker/promptSize.js"
import type {
  ChoiceResult,
  EmbedResult,
  GenerationParams,
  GenerationResult,
  Job,
  PromptShape,
  TokenLogprob
} from "./worker/protocol.js"

const encoder = new TextEncoder()
const frame = (value: unknown) => encoder.encode(`data: ${JSON.stringify(value)}\n\n`)
const KEEPALIVE = encoder.encode(": keep-alive\n\n")
const DONE = encoder.encode("data: [DONE]\n\n")
/** How long a stream may stay silent before its headers go out with a keep-alive. */
const HEAD_START_MS = 750

const newId = (prefix: string) => `${prefix}-${randomBytes(12).toString("hex")}`
const now = () => Math.floor(Date.now() / 1000)

export const toApiError = (model: string, seat: Seat | undefined) => (error: unknown): ApiError => {
  if (isApiError(error)) return error
  if (error instanceof WorkerError) {
    const r = error.reason
    switch (r.tag) {
      case "Crashed":
        return new WorkerCrashed({ device: r.device, detail: r.detail })
      case "ContextLengthExceeded":
        return new ContextLengthExceeded({ model, limit: r.limit, requested: r.requested })
      case "InsufficientVram":
        return new InsufficientVram({
          model,
          device: seat?.device ?? "unknown",
          required_mb: r.required_mb,
          free_mb: r.free_mb,
          phase: "request"
        })
      case "NotLoaded":
        return new ModelUnavailable({ model, state: "not_loaded" })
      case "InvalidRequest":
        return new InvalidRequest({ message: r.message, param: r.param })
      case "Failed":
        return new InternalError({ detail: r.message })
    }
  }
  return new InternalError({ detail: (error as Error)?.message ?? String(error) })
}

interface Events {
  readonly onChunk: (
    kind: "content" | "reasoning",
    text: string,
    choice: number,
    logprobs: ReadonlyArray<TokenLogprob> | undefined
  ) => void
  readonly onPrefilled: (promptTokens: number, cachedTokens: number) => void
}

/** Run one request on the seat's worker; interruption cancels it and waits (bounded) for the worker to stop. */
const runOnWorker = <A>(
  seat: Seat,
  message: Parameters<Seat["worker"]["call"]>[0],
  events: Partial<Events> = {}
) =>
  Effect.async<A, ApiError>((resume) => {
    const { id, promise } = seat.worker.call<A>(message, events)
    promise.then(
      (value) => resume(Effect.succeed(value)),
      (error) => resume(Effect.fail(toApiError(seat.model, seat)(error)))
    )
    return Effect.sync(() => seat.worker.cancel(id)).pipe(
      Effect.zipRight(Effect.promise(() => promise.catch(() => undefined))),
      Effect.timeout("5 seconds"),
      Effect.ignore
    )
  })

const usageOf = (result: GenerationResult, queueMs: number) => ({
  prompt_tokens: result.usage.promptTokens,
  completion_tokens: result.usage.completionTokens,
  total_tokens: result.usage.promptTokens + result.usage.completionTokens,
  prompt_tokens_details: { cached_tokens: result.usage.cachedTokens },
  timing: {
    queue_ms: queueMs,
    prefill_ms: result.timing.prefillMs,
    decode_ms: result.timing.decodeMs,
    ttft_ms: Math.round((queueMs + result.timing.ttftMs) * 100) / 100
  }
})

/** A call cut by max_tokens stays "length": the client must not take a partial call for a whole one. */
const finishReason = (choice: ChoiceResult) =>
  choice.finishReason === "length"
    ? "length"
    : choice.toolCalls.length > 0
    ? "tool_calls"
    : choice.finishReason === "abort"
    ? "stop"
    : choice.finishReason

/** vLLM's extension: the stop string that ended the choice (the gateway maps it to Anthropic's stop_sequence). */
const stopReasonOf = (choice: ChoiceResult) => choice.stopSequence !== null ? { stop_reason: choice.stopSequence } : {}

const toolCallsOf = (choice: ChoiceResult) =>
  choice.toolCalls.map((call, index) => ({
    index,
    id: `call_${randomBytes(8).toString("hex")}`,
    type: "function" as const,
    function: { name: call.name, arguments: call.arguments }
  }))

/** Chat's shape: `{content: [{token, logprob, bytes, top_logprobs}], refusal}`. */
const chatLogprobs = (entries: ReadonlyArray<TokenLogprob> | undefined) =>
  entries ? { content: entries, refusal: null } : null

/**
 * Legacy completions' shape. `top_logprobs` holds the `logprobs` most likely tokens and, as
 * OpenAI documents, always the sampled one (so up to logprobs + 1 entries); `text_offset` counts
 * from the start of the generated text.
 */
const completionLogprobs = (entries: ReadonlyArray<TokenLogprob>, startOffset: number) => {
  const tokens: Array<string> = []
  const tokenLogprobs: Array<number> = []
  const top: Array<Record<string, number>> = []
  const textOffset: Array<number> = []
  let offset = startOffset
  for (const entry of entries) {
    tokens.push(entry.token)
    tokenLogprobs.push(entry.logprob)
    const alternatives = new Map<string, number>()
    for (const alt of entry.top_logprobs) if (!alternatives.has(alt.token)) alternatives.set(alt.token, alt.logprob)
    if (!alternatives.has(entry.token)) alternatives.set(entry.token, entry.logprob)
    top.push(Object.fromEntries(alternatives))
    textOffset.push(offset)
    offset += entry.token.length
  }
  return { tokens, token_logprobs: tokenLogprobs, top_logprobs: top, text_offset: textOffset }
}

/** Completions' `echo`: the prompt comes back before the generated text. */
const echoOf = (request: ChatCompletionRequest | CompletionRequest) => {
  const r = request as CompletionRequest
  return r.echo === true && r.prompt !== undefined ? typeof r.prompt === "string" ? r.prompt : r.prompt[0]! : ""
}

/** The tools a chat request offers, as the worker renders them; also what `/tokenize` counts with. */
export const promptShapeOf = (
  request: Pick<ChatCompletionRequest, "tools" | "tool_choice">
): PromptShape => {
  const tools = (request.tools ?? []).map((t) => ({
    name: t.function.name,
    ...(t.function.description !== undefined ? { description: t.function.description } : {}),
    ...(t.function.parameters !== undefined ? { parameters: t.function.parameters } : {})
  }))
  const choice = request.tool_choice ?? "auto"
  const toolChoice = typeof choice === "string" ? choice : { name: choice.function.name }
  if (typeof toolChoice === "object" && !tools.some((t) => t.name === toolChoice.name)) {
    throw new InvalidRequest({
      message: `tool_choice names '${toolChoice.name}', which is not in tools`,
      param: "tool_choice"
    })
  }
  return { tools, toolChoice: tools.length === 0 ? "none" : toolChoice }
}

/** A short id that ties an answer to its log line. */
export const newRequestId = () => randomBytes(4).toString("hex")

/**
 * The envelope a client sees. An internal error says only that it happened, under a request
 * id; its detail goes to the log (`reportInternal`) under the same id.
 */
export const publicBody = (error: ApiError, requestId: string): OpenAIErrorBody => {
  if (error._tag === "InternalError") {
    return {
      error: {
        message: `Internal server error (request id ${requestId})`,
        type: "server_error",
        code: "internal_error",
        param: null
      }
    }
  }
  const body = error.body
  return { error: { ...body.error, message: scrubMessage(body.error.message) } }
}

/** Log what the client will not see of an error. */
export const reportInternal = (error: ApiError, requestId: string) =>
  error._tag === "InternalError"
    ? Effect.logError(`internal error (request id ${requestId}): ${error.detail}`)
    : Effect.void

export const errorResponse = (error: ApiError, requestId = newRequestId()) =>
  HttpServerResponse.unsafeJson(publicBody(error, requestId), { status: error.status, headers: error.headers })

type Kind = "chat" | "completion"

const operationOf = (kind: Kind) => kind === "chat" ? "chat" : "text_completion"

/** The request's span: a child of the platform's server span, which continued the gateway's traceparent. */
const requestSpan = (request: ChatCompletionRequest | CompletionRequest, kind: Kind) =>
  Effect.withSpan(`neuron.${operationOf(kind)}`, {
    kind: "internal",
    captureStackTrace: false,
    attributes: {
      "gen_ai.operation.name": operationOf(kind),
      "gen_ai.request.model": request.model,
      "gen_ai.request.stream": request.stream === true,
      ...(request.max_tokens != null ? { "gen_ai.request.max_tokens": request.max_tokens } : {}),
      ...(request.temperature != null ? { "gen_ai.request.temperature": request.temperature } : {}),
      ...(request.n != null && request.n > 1 ? { "gen_ai.request.choice.count": request.n } : {})
    }
  })

export class Inference extends Effect.Service<Inference>()("cortex/Inference", {
  effect: Effect.gen(function*() {
    const models = yield* ModelManager
    const config = yield* NeuronConfig
    const tracer = yield* Effect.tracer

    /** Refusals before generation, counted by model and reason (admission, memory, availability, size). */
    const countRefusal = (model: string) => <A, E extends ApiError, R>(self: Effect.Effect<A, E, R>) =>
      Effect.tapError(self, (error) =>
        Effect.sync(() =>
          NM.recordRejection(
            error._tag === "ModelNotFound" ? "unknown" : model,
            NM.reasonLabel(error._tag === "Overloaded" ? error.reason : error.body.error.code ?? error._tag)
          )
        ))
    const seatFor = (model: string, caller: Caller, n = 1) => models.acquire(model, caller, n).pipe(countRefusal(model))

    /**
     * After a generation: the request span's GenAI attributes, its queue, prefill and decode
     * child spans made after the fact from the worker's own timing (nothing on the per-token
     * path), and the per-request metrics.
     */
    const observe = (
      request: ChatCompletionRequest | CompletionRequest,
      seat: Seat,
      result: GenerationResult,
      startedNs: bigint,
      responseId: string
    ) =>
      Effect.gen(function*() {
        const u = result.usage
        const t = result.timing
        NM.recordGeneration(seat.model, {
          promptTokens: u.promptTokens,
          cachedTokens: u.cachedTokens,
          completionTokens: u.completionTokens,
          prefillMs: t.prefillMs,
          decodeMs: t.decodeMs
        })
        const parent = yield* Effect.option(Effect.currentSpan)
        if (Option.isNone(parent)) return
        const span = parent.value
        span.attribute("gen_ai.response.model", seat.model)
        span.attribute("gen_ai.response.id", responseId)
        span.attribute("gen_ai.usage.input_tokens", u.promptTokens)
        span.attribute("gen_ai.usage.output_tokens", u.completionTokens)
        span.attribute("gen_ai.usage.cache_read.input_tokens", u.cachedTokens)
        // A string array, as the convention has it (Effect's span.attribute would JSON-encode it).
        const reasons = result.choices.map(finishReason)
        yield* OtelTracer.currentOtelSpan.pipe(
          Effect.map((otel) => otel.setAttribute("gen_ai.response.finish_reasons", reasons)),
          Effect.orElse(() => Effect.sync(() => span.attribute("gen_ai.response.finish_reasons", reasons.join(","))))
        )
        span.attribute("cortex.device", seat.device)
        span.attribute("cortex.queue_ms", seat.queueMs)
        span.attribute("cortex.ttft_ms", Math.round((seat.queueMs + t.ttftMs) * 100) / 100)
        if (config.telemetry.captureContent) {
          const r = request as Partial<ChatCompletionRequest & CompletionRequest>
          span.attribute("gen_ai.input.messages", JSON.stringify(r.messages ?? r.prompt ?? null))
          span.attribute(
            "gen_ai.output.messages",
            JSON.stringify(result.choices.map((c) => ({
              role: "assistant",
              content: c.text,
              finish_reason: finishReason(c),
              ...(c.toolCalls.length > 0 ? { tool_calls: c.toolCalls } : {})
            })))
          )
        }
        if (!span.sampled) return
        const ms = (x: number) => BigInt(Math.round(x * 1e6))
        const endNs = yield* Clock.currentTimeNanos
        const child = (name: string, start: bigint, end: bigint, attributes: Record<string, unknown>) => {
          const c = tracer.span(name, Option.some(span), Context.empty(), [], start, "internal")
          for (const key in attributes) c.attribute(key, attributes[key])
          c.end(end < start ? start : end, Exit.void)
        }
        const queueEnd = startedNs + ms(seat.queueMs)
        const prefillEnd = queueEnd + ms(t.prefillMs)
        const decodeStart = endNs - ms(t.decodeMs) > prefillEnd ? endNs - ms(t.decodeMs) : prefillEnd
        const prefilled = u.promptTokens - u.cachedTokens
        child("neuron.queue", startedNs, queueEnd, { "cortex.queue_ms": seat.queueMs })
        child("neuron.prefill", queueEnd, prefillEnd, {
          "gen_ai.usage.input_tokens": u.promptTokens,
          "gen_ai.usage.cache_read.input_tokens": u.cachedTokens,
          "cortex.prefill.tokens": prefilled,
          "cortex.prefill.chunks": Math.ceil(Math.max(0, prefilled) / config.prefillChunkTokens),
          "cortex.prefill.tokens_per_second": t.prefillMs > 0 ? Math.round(prefilled / t.prefillMs * 1e5) / 100 : 0
        })
        child("neuron.decode", decodeStart, decodeStart + ms(t.decodeMs), {
          "gen_ai.usage.output_tokens": u.completionTokens,
          "cortex.decode.tokens_per_second": t.decodeMs > 0 && u.completionTokens > 1
            ? Math.round((u.completionTokens - 1) / t.decodeMs * 1e5) / 100
            : 0
        })
      })

    const prepare = (request: ChatCompletionRequest | CompletionRequest, kind: Kind) =>
      Effect.try({
        try: (): { job: Job; params: GenerationParams; n: number } => {
          const n = request.n ?? 1
          if (n > config.maxN) {
            throw new InvalidRequest({
              message: `n is ${n}; this server generates at most ${config.maxN} choices per request (max_n)`,
              param: "n"
            })
          }
          const sampling = resolveSampling(request)
          if (kind === "completion") {
            const r = request as CompletionRequest
            if (r.echo === true && r.logprobs != null) {
              // The prompt's own token log-probabilities would need a scoring pass the engine does not make.
              throw new InvalidRequest({ message: "echo cannot be combined with logprobs", param: "echo" })
            }
            return {
              job: { kind: "completion", prompt: typeof r.prompt === "string" ? r.prompt : r.prompt[0]! },
              params: {
                ...sampling,
                tools: [],
                toolChoice: "none",
                ...(r.logprobs != null ? { logprobs: r.logprobs } : {})
              },
              n
            }
          }
          const r = request as ChatCompletionRequest
          if (r.top_logprobs != null && r.logprobs !== true) {
            throw new InvalidRequest({ message: "top_logprobs needs logprobs: true", param: "top_logprobs" })
          }
          const format = r.response_format
          const responseFormat = format?.type === "json_object"
            ? { kind: "json" as const }
            : format?.type === "json_schema"
            ? format.json_schema.schema
              ? { kind: "schema" as const, schema: format.json_schema.schema }
              : { kind: "json" as const }
            : undefined
          return {
            job: { kind: "chat", messages: toWorkerMessages(r.messages) },
            params: {
              ...sampling,
              ...(responseFormat ? { responseFormat } : {}),
              ...promptShapeOf(r),
              ...(r.logprobs === true ? { logprobs: r.top_logprobs ?? 0 } : {})
            },
            n
          }
        },
        catch: (e) => isApiError(e) ? e : new InvalidRequest({ message: String(e), param: null })
      })

    /**
     * Refuse, before admission and before any tokenizing, a prompt whose byte size alone proves
     * it cannot fit the context (400 context_length_exceeded, `requested` then being that lower
     * bound). Without this a multi-MB prompt took a seat and held the device worker for seconds
     * while it was tokenized, only to be refused. Prompts under the bound are tokenized, and
     * checked exactly, by the worker.
     */
    const refuseOversized = (model: string, job: Job, caller: Caller) =>
      Effect.gen(function*() {
        const seat = yield* models.peek(model, caller.autoLoad ?? config.autoLoad)
        const atLeast = minPromptTokens(job, seat.maxTokenBytes)
        if (atLeast >= seat.contextSize) {
          return yield* new ContextLengthExceeded({ model, limit: seat.contextSize, requested: atLeast })
        }
      })

    const generate = (seat: Seat, job: Job, params: GenerationParams, n: number, events: Partial<Events>) =>
      runOnWorker<GenerationResult>(seat, {
        _tag: "generate",
        model: seat.model,
        job,
        params,
        stream: events.onChunk !== undefined,
        ...(n > 1 ? { choices: n, parallel: seat.seats } : {}),
        budget: {
          freeMb: seat.freeMb,
          prefillBaseMb: config.prefillBaseMb,
          prefillMbPer1kTokens: config.prefillMbPer1kTokens,
          device: seat.device
        }
      }, events)

    /**
     * Non-streaming chat or text completion. `name` is the model as the client named it (the
     * gateway sends it in MODEL_NAME_HEADER): every answer says that name.
     */
    const complete = (
      request: ChatCompletionRequest | CompletionRequest,
      kind: Kind,
      caller: Caller,
      name: string = request.model
    ) =>
      Effect.scoped(
        Effect.gen(function*() {
          const { job, n, params } = yield* prepare(request, kind)
          yield* refuseOversized(request.model, job, caller).pipe(countRefusal(request.model))
          const startedNs = yield* Clock.currentTimeNanos
          const seat = yield* seatFor(request.model, caller, n)
          const result = yield* generate(seat, job, params, n, {})
          const usage = usageOf(result, seat.queueMs)
          const responseId = newId(kind === "chat" ? "chatcmpl" : "cmpl")
          yield* observe(request, seat, result, startedNs, responseId)
          yield* Effect.logDebug(`${kind} ${request.model}: ${result.usage.completionTokens} tokens`)
          if (kind === "completion") {
            return {
              id: responseId,
              object: "text_completion",
              created: now(),
              model: name,
              choices: result.choices.map((choice) => ({
                index: choice.index,
                text: echoOf(request) + choice.text,
                finish_reason: finishReason(choice),
                ...stopReasonOf(choice),
                logprobs: choice.logprobs ? completionLogprobs(choice.logprobs, 0) : null
              })),
              usage
            }
          }
          return {
            id: responseId,
            object: "chat.completion",
            created: now(),
            model: name,
            choices: result.choices.map((choice) => {
              const toolCalls = toolCallsOf(choice)
              return {
                index: choice.index,
                message: {
                  role: "assistant",
                  content: toolCalls.length > 0 && choice.text === "" ? null : choice.text,
                  ...(choice.reasoning ? { reasoning_content: choice.reasoning } : {}),
                  ...(toolCalls.length > 0 ? { tool_calls: toolCalls } : {})
                },
                finish_reason: finishReason(choice),
                ...stopReasonOf(choice),
                logprobs: chatLogprobs(choice.logprobs)
              }
            }),
            usage
          }
        }).pipe(requestSpan(request, kind))
      )

    /**
     * A streamed chat or text completion. Errors found before anything was generated (unknown
     * model, admission refusal, context too long) are plain HTTP errors when they come within
     * the head start; after the headers went out they are an in-band error event. With n > 1,
     * every chunk carries its choice's `index`; the choices' last chunks (tool calls, finish)
     * come when all are done.
     */
    const stream = (
      request: ChatCompletionRequest | CompletionRequest,
      kind: Kind,
      caller: Caller,
      name: string = request.model
    ) =>
      Effect.gen(function*() {
        const { job, n, params } = yield* prepare(request, kind)
        yield* refuseOversized(request.model, job, caller).pipe(countRefusal(request.model))
        const id = newId(kind === "chat" ? "chatcmpl" : "cmpl")
        const requestId = newRequestId()
        const created = now()
        const object = kind === "chat" ? "chat.completion.chunk" : "text_completion"
        const includeUsage = request.stream_options?.include_usage !== false
        const queue = yield* Queue.unbounded<Uint8Array | null>()
        const started = yield* Deferred.make<void, ApiError>()
        const wantLogprobs = params.logprobs !== undefined
        // Completions' text_offset runs on across a choice's chunks.
        const offsets = kind === "completion" && wantLogprobs ? new Array<number>(n).fill(0) : undefined
        const chunk = (
          index: number,
          delta: Record<string, unknown>,
          finish: ChoiceResult | null = null,
          logprobs?: ReadonlyArray<TokenLogprob>
        ) => {
          const ending = finish
            ? { finish_reason: finishReason(finish), ...stopReasonOf(finish) }
            : { finish_reason: null }
          if (kind === "chat") {
            return {
              id,
              object,
              created,
              model: name,
              choices: [{ index, delta, ...ending, logprobs: chatLogprobs(logprobs) }]
            }
          }
          let completion: ReturnType<typeof completionLogprobs> | null = null
          if (logprobs && offsets) {
            completion = completionLogprobs(logprobs, offsets[index] ?? 0)
            offsets[index] = (offsets[index] ?? 0) + logprobs.reduce((sum, e) => sum + e.token.length, 0)
          }
          return {
            id,
            object,
            created,
            model: name,
            choices: [{ index, text: (delta.content as string | undefined) ?? "", ...ending, logprobs: completion }]
          }
        }
        const push = (bytes: Uint8Array) => Queue.unsafeOffer(queue, bytes)

        const run = Effect.scoped(Effect.gen(function*() {
          const startedNs = yield* Clock.currentTimeNanos
          const seat = yield* seatFor(request.model, caller, n)
          const result = yield* generate(seat, job, params, n, {
            onPrefilled: (promptTokens, cachedTokens) => {
              Deferred.unsafeDone(started, Exit.void)
              const echo = echoOf(request)
              if (echo !== "") { for (let index = 0; index < n; index++) push(frame(chunk(index, { content: echo }))) }
              if (kind === "chat") {
                for (let index = 0; index < n; index++) {
                  push(frame({
                    ...chunk(index, { role: "assistant", content: "" }),
                    ...(index === 0 ? { cortex: { prompt_tokens: promptTokens, cached_tokens: cachedTokens } } : {})
                  }))
                }
              }
            },
            onChunk: (type, text, index, logprobs) => {
              if (text.length === 0 && (logprobs === undefined || logprobs.length === 0)) return
              push(frame(
                type === "reasoning"
                  ? chunk(index, { reasoning_content: text })
                  : chunk(index, { content: text }, null, logprobs)
              ))
            }
          })
          for (const choice of result.choices) {
            const toolCalls = toolCallsOf(choice)
            if (toolCalls.length > 0) push(frame(chunk(choice.index, { tool_calls: toolCalls })))
            push(frame(chunk(choice.index, {}, choice)))
          }
          if (includeUsage) {
            push(frame({ id, object, created, model: name, choices: [], usage: usageOf(result, seat.queueMs) }))
          }
          push(DONE)
          yield* observe(request, seat, result, startedNs, id)
        })).pipe(
          requestSpan(request, kind),
          Effect.catchAllCause((cause) => {
            if (Cause.isInterruptedOnly(cause)) return Effect.void
            const failure = Cause.failureOption(cause)
            const error = Option.isSome(failure)
              ? failure.value
              : toApiError(request.model, undefined)(Cause.squash(cause))
            return reportInternal(error, requestId).pipe(
              Effect.zipRight(Effect.sync(() => {
                Deferred.unsafeDone(started, Exit.fail(error))
                push(frame(publicBody(error, requestId)))
              }))
            )
          }),
          Effect.ensuring(Queue.offer(queue, null))
        )
        const fiber = yield* Effect.forkDaemon(run)
        // The client may hang up before the stream starts: take the generation down with it.
        const head = yield* Deferred.await(started).pipe(
          Effect.timeout(`${HEAD_START_MS} millis`),
          Effect.either,
          Effect.onInterrupt(() => Fiber.interrupt(fiber))
        )
        if (head._tag === "Left" && head.left._tag !== "TimeoutException") {
          yield* Fiber.interrupt(fiber)
          return errorResponse(head.left as ApiError, requestId)
        }
        const body = Stream.fromQueue(queue).pipe(
          Stream.takeWhile((item): item is Uint8Array => item !== null),
          Stream.merge(Stream.repeatValue(KEEPALIVE).pipe(Stream.schedule(Schedule.spaced("1 second"))), {
            haltStrategy: "left"
          }),
          Stream.ensuring(Fiber.interrupt(fiber))
        )
        return HttpServerResponse.stream(body, {
          contentType: "text/event-stream",
          headers: { "cache-control": "no-cache", "x-accel-buffering": "no", connection: "keep-alive" }
        })
      })

    const embed = (request: EmbeddingRequest, caller: Caller, name: string = request.model) =>
      Effect.scoped(Effect.gen(function*() {
        const inputs = typeof request.input === "string" ? [request.input] : [...request.input]
        const seat = yield* seatFor(request.model, caller)
        const result = yield* runOnWorker<EmbedResult>(seat, { _tag: "embed", model: seat.model, inputs })
        // Shortening embeddings is only meaningful for models trained for it: refuse, never ignore.
        const size = result.vectors[0]?.length
        if (request.dimensions !== undefined && size !== undefined && request.dimensions !== size) {
          return yield* new InvalidRequest({
            message: `dimensions: this model's embeddings have ${size} dimensions and cannot be shortened`,
            param: "dimensions"
          })
        }
        return {
          object: "list",
          model: name,
          data: result.vectors.map((vector, index) => ({
            object: "embedding",
            index,
            embedding: request.encoding_format === "base64"
              ? Buffer.from(new Float32Array(vector).buffer).toString("base64")
              : vector
          })),
          usage: { prompt_tokens: result.promptTokens, total_tokens: result.promptTokens }
        }
      }))

    /** The prompt's token count as generation would evaluate it (same template, same tools). */
    const tokenize = (model: string, job: Job, shape?: PromptShape) =>
      Effect.gen(function*() {
        const seat = yield* models.peek(model)
        const count = yield* runOnWorker<number>(seat, {
          _tag: "tokenize",
          model,
          job,
          ...(shape ? { tools: shape.tools, toolChoice: shape.toolChoice } : {})
        })
        return { model, tokens: count }
      })

    return { complete, stream, embed, tokenize } as const
  })
}) {}
