/**
 * OpenAI inference on the neuron: a request prepared (RequestPrep), admitted to a seat, run as a
 * job on the seat's device worker (WorkerJobs), and answered as one JSON body (Answers) or as an
 * SSE stream (SseStream); what it cost is observed after the fact (GenerationTelemetry).
 */
import { Clock, Effect } from "effect"
import { type ApiError, InvalidRequest } from "../domain/errors.js"
import type { ChatCompletionRequest, CompletionRequest, EmbeddingRequest } from "../domain/openai.js"
import { completionAnswer, echoOf, embeddingsAnswer, newId, streamChunks, toolCallsOf } from "./Answers.js"
import { observeGeneration, requestSpan } from "./GenerationTelemetry.js"
import * as NM from "./Metrics.js"
import { type Caller, ModelManager } from "./ModelManager.js"
import { NeuronConfig } from "./NeuronConfig.js"
import { type Kind, prepare, refuseOversized } from "./RequestPrep.js"
import { sseResponse } from "./SseStream.js"
import type { EmbedResult, Job, PromptShape } from "./worker/protocol.js"
import { generate, runOnWorker } from "./WorkerJobs.js"

export class Inference extends Effect.Service<Inference>()("cortex/Inference", {
  effect: Effect.gen(function*() {
    const models = yield* ModelManager
    const config = yield* NeuronConfig
    const observe = observeGeneration(yield* Effect.tracer, config)

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

    /** The request's job, refused before admission if it is invalid or its prompt cannot fit. */
    const admissible = (request: ChatCompletionRequest | CompletionRequest, kind: Kind, caller: Caller) =>
      Effect.gen(function*() {
        const prepared = yield* prepare(request, kind, config.maxN, yield* models.visionOf(request.model))
        yield* models.peek(request.model, caller.autoLoad ?? config.autoLoad).pipe(
          Effect.flatMap((seat) => refuseOversized(request.model, prepared.job, seat)),
          countRefusal(request.model)
        )
        return prepared
      })

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
          const { job, n, params } = yield* admissible(request, kind, caller)
          const startedNs = yield* Clock.currentTimeNanos
          const seat = yield* seatFor(request.model, caller, n)
          const result = yield* generate(config, seat, job, params, n, {})
          const responseId = newId(kind)
          yield* observe(request, seat, result, startedNs, responseId)
          yield* Effect.logDebug(`${kind} ${request.model}: ${result.usage.completionTokens} tokens`)
          return completionAnswer(request, kind, responseId, name, result, seat.queueMs)
        }).pipe(requestSpan(request, kind))
      )

    /**
     * A streamed chat or text completion. Errors found before anything was generated (unknown
     * model, admission refusal, context too long) are plain HTTP errors when they come within
     * the head start; after the headers went out they are an in-band error event. The choices'
     * last chunks (tool calls, finish) come when all are done.
     */
    const stream = (
      request: ChatCompletionRequest | CompletionRequest,
      kind: Kind,
      caller: Caller,
      name: string = request.model
    ) =>
      Effect.gen(function*() {
        const { job, n, params } = yield* admissible(request, kind, caller)
        const id = newId(kind)
        const includeUsage = request.stream_options?.include_usage !== false
        const chunks = streamChunks(kind, id, name, n, params.logprobs !== undefined)
        const { chunk } = chunks
        return yield* sseResponse(request.model, (sse) =>
          Effect.scoped(Effect.gen(function*() {
            const startedNs = yield* Clock.currentTimeNanos
            const seat = yield* seatFor(request.model, caller, n)
            const result = yield* generate(config, seat, job, params, n, {
              onPrefilled: (promptTokens, cachedTokens) => {
                sse.started()
                const echo = echoOf(request)
                if (echo !== "") { for (let index = 0; index < n; index++) sse.send(chunk(index, { content: echo })) }
                if (kind === "chat") {
                  for (let index = 0; index < n; index++) {
                    sse.send({
                      ...chunk(index, { role: "assistant", content: "" }),
                      ...(index === 0 ? { cortex: { prompt_tokens: promptTokens, cached_tokens: cachedTokens } } : {})
                    })
                  }
                }
              },
              onChunk: (type, text, index, logprobs) => {
                if (text.length === 0 && (logprobs === undefined || logprobs.length === 0)) return
                sse.send(
                  type === "reasoning"
                    ? chunk(index, { reasoning_content: text })
                    : chunk(index, { content: text }, null, logprobs)
                )
              }
            })
            for (const choice of result.choices) {
              const toolCalls = toolCallsOf(choice)
              if (toolCalls.length > 0) sse.send(chunk(choice.index, { tool_calls: toolCalls }))
              sse.send(chunk(choice.index, {}, choice))
            }
            if (includeUsage) sse.send(chunks.usage(result, seat.queueMs))
            sse.done()
            yield* observe(request, seat, result, startedNs, id)
          })).pipe(requestSpan(request, kind)))
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
        return embeddingsAnswer(request, name, result.vectors, result.promptTokens)
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
