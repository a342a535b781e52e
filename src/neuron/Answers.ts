/**
 * The OpenAI answers of a generation, as plain objects: the whole chat or text completion, the
 * chunks of a streamed one (built per token: no Effect, no Schema), and the embeddings list.
 */
import { randomBytes } from "node:crypto"
import type { ChatCompletionRequest, CompletionRequest, EmbeddingRequest } from "../domain/openai.js"
import type { Kind } from "./RequestPrep.js"
import type { ChoiceResult, GenerationResult, TokenLogprob } from "./worker/protocol.js"

export const newId = (kind: Kind) => `${kind === "chat" ? "chatcmpl" : "cmpl"}-${randomBytes(12).toString("hex")}`
export const now = () => Math.floor(Date.now() / 1000)

export const usageOf = (result: GenerationResult, queueMs: number) => ({
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
export const finishReason = (choice: ChoiceResult) =>
  choice.finishReason === "length"
    ? "length"
    : choice.toolCalls.length > 0
    ? "tool_calls"
    : choice.finishReason === "abort"
    ? "stop"
    : choice.finishReason

/** vLLM's extension: the stop string that ended the choice (the gateway maps it to Anthropic's stop_sequence). */
const stopReasonOf = (choice: ChoiceResult) => choice.stopSequence !== null ? { stop_reason: choice.stopSequence } : {}

export const toolCallsOf = (choice: ChoiceResult) =>
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
export const echoOf = (request: ChatCompletionRequest | CompletionRequest) => {
  const r = request as CompletionRequest
  return r.echo === true && r.prompt !== undefined ? typeof r.prompt === "string" ? r.prompt : r.prompt[0]! : ""
}

/** A whole (non-streamed) chat or text completion. `name` is the model as the client named it. */
export const completionAnswer = (
  request: ChatCompletionRequest | CompletionRequest,
  kind: Kind,
  id: string,
  name: string,
  result: GenerationResult,
  queueMs: number
) => {
  const usage = usageOf(result, queueMs)
  if (kind === "completion") {
    return {
      id,
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
    id,
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
}

/**
 * The chunks of one streamed chat or text completion. With n > 1 every chunk carries its
 * choice's `index`; completions' `text_offset` runs on across a choice's chunks.
 */
export const streamChunks = (kind: Kind, id: string, name: string, n: number, wantLogprobs: boolean) => {
  const created = now()
  const object = kind === "chat" ? "chat.completion.chunk" : "text_completion"
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
  const usage = (result: GenerationResult, queueMs: number) => ({
    id,
    object,
    created,
    model: name,
    choices: [],
    usage: usageOf(result, queueMs)
  })
  return { chunk, usage }
}

export const embeddingsAnswer = (
  request: EmbeddingRequest,
  name: string,
  vectors: ReadonlyArray<ReadonlyArray<number>>,
  promptTokens: number
) => ({
  object: "list",
  model: name,
  data: vectors.map((vector, index) => ({
    object: "embedding",
    index,
    embedding: request.encoding_format === "base64"
      ? Buffer.from(new Float32Array(vector).buffer).toString("base64")
      : vector
  })),
  usage: { prompt_tokens: promptTokens, total_tokens: promptTokens }
})
