/**
 * Sampling resolution: request → model defaults → fallback. Pure; the result is what the worker
 * passes to node-llama-cpp.
 */
import type { ChatCompletionRequest } from "../domain/openai.js"
import type { GenerationParams } from "./worker/protocol.js"

export interface SamplingDefaults {
  readonly temperature?: number
  readonly top_p?: number
  readonly top_k?: number
  readonly min_p?: number
  readonly repeat_penalty?: number
  readonly max_tokens?: number
}

export const fallback = {
  temperature: 0.8,
  top_p: 0.95,
  top_k: 40,
  min_p: 0.05
} as const

type SamplingInput = Partial<
  Pick<
    ChatCompletionRequest,
    | "temperature"
    | "top_p"
    | "top_k"
    | "min_p"
    | "seed"
    | "frequency_penalty"
    | "presence_penalty"
    | "repeat_penalty"
    | "max_tokens"
    | "max_completion_tokens"
    | "stop"
  >
>

const pick = <A>(...values: ReadonlyArray<A | null | undefined>): A | undefined => {
  for (const v of values) if (v !== null && v !== undefined) return v
  return undefined
}

export const resolveSampling = (
  request: SamplingInput,
  defaults: SamplingDefaults = {}
): Omit<GenerationParams, "tools" | "toolChoice" | "responseFormat"> => {
  const temperature = pick(request.temperature, defaults.temperature, fallback.temperature)!
  const topP = pick(request.top_p, defaults.top_p, fallback.top_p)
  const topK = pick(request.top_k, defaults.top_k, fallback.top_k)
  const minP = pick(request.min_p, defaults.min_p, fallback.min_p)
  // max_completion_tokens is the newer name and wins over max_tokens.
  const maxTokens = pick(request.max_completion_tokens, request.max_tokens, defaults.max_tokens)
  const penalty = pick(request.repeat_penalty, defaults.repeat_penalty)
  const frequency = request.frequency_penalty ?? 0
  const presence = request.presence_penalty ?? 0
  const stops = request.stop === undefined || request.stop === null
    ? []
    : typeof request.stop === "string"
    ? [request.stop]
    : request.stop
  const stop = stops.filter((s) => s.length > 0)
  return {
    temperature,
    ...(topP !== undefined ? { topP } : {}),
    ...(topK !== undefined ? { topK } : {}),
    ...(minP !== undefined ? { minP } : {}),
    ...(request.seed !== undefined && request.seed !== null ? { seed: request.seed } : {}),
    ...(maxTokens !== undefined ? { maxTokens } : {}),
    ...((penalty !== undefined && penalty !== 1) || frequency !== 0 || presence !== 0
      ? { repeatPenalty: { penalty: penalty ?? 1, frequencyPenalty: frequency, presencePenalty: presence } }
      : {}),
    stop: [...new Set(stop)]
  }
}
