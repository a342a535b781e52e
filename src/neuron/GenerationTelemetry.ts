/**
 * What a generation tells the operator: the request's span with its GenAI attributes, the
 * queue, prefill and decode child spans made after the fact from the worker's own timing
 * (nothing on the per-token path), and the per-request metrics.
 */
import { Tracer as OtelTracer } from "@effect/opentelemetry"
import { Clock, Context, Effect, Exit, Option, type Tracer } from "effect"
import type { ChatCompletionRequest, CompletionRequest } from "../domain/openai.js"
import { finishReason } from "./Answers.js"
import * as NM from "./Metrics.js"
import type { Seat } from "./ModelManager.js"
import type { NeuronSettings } from "./NeuronConfig.js"
import type { Kind } from "./RequestPrep.js"
import type { GenerationResult } from "./worker/protocol.js"

const operationOf = (kind: Kind) => kind === "chat" ? "chat" : "text_completion"

/** The request's span: a child of the platform's server span, which continued the gateway's traceparent. */
export const requestSpan = (request: ChatCompletionRequest | CompletionRequest, kind: Kind) =>
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

/** After a generation: its metrics, the request span's attributes and its child spans. */
export const observeGeneration = (
  tracer: Tracer.Tracer,
  config: Pick<NeuronSettings, "telemetry" | "prefillChunkTokens">
) =>
(
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
