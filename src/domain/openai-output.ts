/**
 * What the neuron (and any OpenAI-compatible upstream) answers: chat completions and their
 * stream chunks, as plain types. Built and read as plain objects on the hot path (no Schema).
 */

export interface Timing {
  readonly queue_ms: number
  readonly prefill_ms: number
  readonly decode_ms: number
  readonly ttft_ms: number
}

export interface Usage {
  readonly prompt_tokens: number
  readonly completion_tokens: number
  readonly total_tokens: number
  readonly prompt_tokens_details?: { readonly cached_tokens?: number }
  /** cortex extension: where the time went, measured by the neuron. */
  readonly timing?: Timing
}

export interface ToolCallOut {
  readonly id: string
  readonly type: "function"
  readonly function: { readonly name: string; readonly arguments: string }
}

export type FinishReason = "stop" | "length" | "tool_calls" | "content_filter" | "function_call"

/** One token position of chat `logprobs.content`: the sampled token, and the likeliest alternatives. */
export interface TokenLogprob {
  readonly token: string
  readonly logprob: number
  readonly bytes: ReadonlyArray<number> | null
  readonly top_logprobs: ReadonlyArray<{
    readonly token: string
    readonly logprob: number
    readonly bytes: ReadonlyArray<number> | null
  }>
}

export interface ChatLogprobs {
  readonly content: ReadonlyArray<TokenLogprob> | null
  readonly refusal?: ReadonlyArray<TokenLogprob> | null
}

export interface ChatCompletion {
  readonly id: string
  readonly object: "chat.completion"
  readonly created: number
  readonly model: string
  readonly choices: ReadonlyArray<{
    readonly index: number
    readonly message: {
      readonly role: "assistant"
      readonly content: string | null
      readonly reasoning_content?: string
      readonly tool_calls?: ReadonlyArray<ToolCallOut>
    }
    readonly finish_reason: FinishReason | null
    /** vLLM's extension, sent by the neuron: the stop string that ended the choice. */
    readonly stop_reason?: string | number | null
    readonly logprobs?: ChatLogprobs | null
  }>
  readonly usage?: Usage
}

/** A streamed tool call fragment: the first for an index carries id and name, later ones more arguments. */
export interface ToolCallDelta {
  readonly index: number
  readonly id?: string
  readonly type?: "function"
  readonly function?: { readonly name?: string; readonly arguments?: string }
}

export interface ChatCompletionChunk {
  readonly id: string
  readonly object: "chat.completion.chunk"
  readonly created: number
  readonly model: string
  readonly choices: ReadonlyArray<{
    readonly index: number
    readonly delta: {
      readonly role?: "assistant"
      readonly content?: string | null
      readonly reasoning_content?: string | null
      readonly tool_calls?: ReadonlyArray<ToolCallDelta>
    }
    readonly finish_reason: FinishReason | null
    /** vLLM's extension, on the finishing chunk: the stop string that ended the choice. */
    readonly stop_reason?: string | number | null
    readonly logprobs?: ChatLogprobs | null
  }>
  /** Present on the final usage chunk (with `choices: []`). */
  readonly usage?: Usage | null
  /**
   * cortex extension on the neuron's first chunk: the prompt's size, known once it is tokenized,
   * so a translated stream can report input tokens before any output (Anthropic message_start).
   */
  readonly cortex?: { readonly prompt_tokens: number; readonly cached_tokens: number }
}
