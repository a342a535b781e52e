/**
 * The typed IPC protocol between the neuron and a device worker (a child process).
 * Control messages are validated on arrival in the worker; per-token `chunk` messages are
 * plain objects (no Schema on the hot path).
 */
import { Schema } from "effect"

export const ToolSpec = Schema.Struct({
  name: Schema.String,
  description: Schema.optionalWith(Schema.String, { exact: true }),
  parameters: Schema.optionalWith(Schema.Unknown, { exact: true })
})
export type ToolSpec = typeof ToolSpec.Type

/** Sampling and stopping, fully resolved by the neuron (see Sampling.ts). */
export const GenerationParams = Schema.Struct({
  maxTokens: Schema.optionalWith(Schema.Number, { exact: true }),
  temperature: Schema.Number,
  topP: Schema.optionalWith(Schema.Number, { exact: true }),
  topK: Schema.optionalWith(Schema.Number, { exact: true }),
  minP: Schema.optionalWith(Schema.Number, { exact: true }),
  seed: Schema.optionalWith(Schema.Number, { exact: true }),
  repeatPenalty: Schema.optionalWith(
    Schema.Struct({ penalty: Schema.Number, frequencyPenalty: Schema.Number, presencePenalty: Schema.Number }),
    { exact: true }
  ),
  stop: Schema.Array(Schema.String),
  responseFormat: Schema.optionalWith(
    Schema.Union(
      Schema.Struct({ kind: Schema.Literal("json") }),
      Schema.Struct({ kind: Schema.Literal("schema"), schema: Schema.Unknown })
    ),
    { exact: true }
  ),
  tools: Schema.Array(ToolSpec),
  toolChoice: Schema.Union(
    Schema.Literal("none", "auto", "required"),
    Schema.Struct({ name: Schema.String })
  ),
  /**
   * Report each generated token's log-probability and this many alternatives (0 to 20).
   * Absent: no probabilities are computed at all (the per-token path stays as cheap as it was).
   */
  logprobs: Schema.optionalWith(Schema.Number, { exact: true })
})
export type GenerationParams = typeof GenerationParams.Type

/** What, besides the messages, changes the prompt a chat job renders to: the tools offered. */
export type PromptShape = Pick<GenerationParams, "tools" | "toolChoice">

/** A chat turn in the worker's own shape (OpenAI messages already flattened by the neuron). */
export const WorkerMessage = Schema.Union(
  Schema.Struct({ role: Schema.Literal("system"), text: Schema.String }),
  Schema.Struct({ role: Schema.Literal("user"), text: Schema.String }),
  Schema.Struct({
    role: Schema.Literal("assistant"),
    text: Schema.String,
    reasoning: Schema.optionalWith(Schema.String, { exact: true }),
    toolCalls: Schema.Array(Schema.Struct({ name: Schema.String, params: Schema.Unknown, result: Schema.Unknown }))
  })
)
export type WorkerMessage = typeof WorkerMessage.Type

/** Limits the worker checks once it knows the prompt's token count. */
export const RequestBudget = Schema.Struct({
  freeMb: Schema.Number,
  prefillBaseMb: Schema.Number,
  prefillMbPer1kTokens: Schema.Number,
  device: Schema.String
})
export type RequestBudget = typeof RequestBudget.Type

export const Job = Schema.Union(
  Schema.Struct({ kind: Schema.Literal("chat"), messages: Schema.Array(WorkerMessage) }),
  Schema.Struct({ kind: Schema.Literal("completion"), prompt: Schema.String })
)
export type Job = typeof Job.Type

export const ToWorker = Schema.Union(
  Schema.TaggedStruct("load", {
    id: Schema.Number,
    model: Schema.String,
    path: Schema.String,
    contextSize: Schema.Number,
    sequences: Schema.Number,
    batchSize: Schema.Number,
    gpuLayers: Schema.optionalWith(Schema.Number, { exact: true })
  }),
  Schema.TaggedStruct("unload", { id: Schema.Number, model: Schema.String }),
  Schema.TaggedStruct("estimate", {
    id: Schema.Number,
    path: Schema.String,
    contextSize: Schema.Number,
    sequences: Schema.Number,
    batchSize: Schema.Number
  }),
  Schema.TaggedStruct("generate", {
    id: Schema.Number,
    model: Schema.String,
    job: Job,
    params: GenerationParams,
    budget: RequestBudget,
    /** Send `chunk` messages as tokens come; off for non-streaming requests (saves IPC per token). */
    stream: Schema.Boolean,
    /** How many choices to generate from the prompt (OpenAI `n`), and on how many sequences at once. */
    choices: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 64)), { exact: true }),
    parallel: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 64)), { exact: true })
  }),
  Schema.TaggedStruct("embed", { id: Schema.Number, model: Schema.String, inputs: Schema.Array(Schema.String) }),
  Schema.TaggedStruct("tokenize", {
    id: Schema.Number,
    model: Schema.String,
    job: Job,
    tools: Schema.optionalWith(Schema.Array(ToolSpec), { exact: true }),
    toolChoice: Schema.optionalWith(GenerationParams.fields.toolChoice, { exact: true })
  }),
  Schema.TaggedStruct("cancel", { id: Schema.Number }),
  Schema.TaggedStruct("memory", { id: Schema.Number }),
  Schema.TaggedStruct("shutdown", { id: Schema.Number })
)
export type ToWorker = typeof ToWorker.Type

/** Errors a worker reports for one request; the neuron maps them to its tagged API errors. */
export type WorkerFailure =
  | { readonly tag: "ContextLengthExceeded"; readonly limit: number; readonly requested: number }
  | { readonly tag: "InsufficientVram"; readonly required_mb: number; readonly free_mb: number }
  | { readonly tag: "NotLoaded"; readonly model: string }
  | { readonly tag: "InvalidRequest"; readonly message: string; readonly param: string | null }
  | { readonly tag: "Failed"; readonly message: string }

export interface ModelEstimate {
  readonly ramMb: number
  readonly vramMb: number
  readonly trainContextSize: number | null
  readonly embeddingSize: number | null
}

export interface LoadedInfo {
  readonly contextSize: number
  /** The most input bytes one token covers: a prompt of n bytes is at least n / this tokens. */
  readonly maxTokenBytes: number
  readonly trainContextSize: number | null
  readonly embeddingSize: number | null
  readonly estimate: ModelEstimate
  readonly gpuLayers: number
  readonly loadMs: number
}

export interface Usage {
  readonly promptTokens: number
  readonly completionTokens: number
  readonly cachedTokens: number
}

export interface Timing {
  readonly prefillMs: number
  readonly decodeMs: number
  readonly ttftMs: number
}

export type FinishReason = "stop" | "length" | "tool_calls" | "abort"

/** One alternative for a token position: its text, natural log-probability and UTF-8 bytes. */
export interface TokenAlternative {
  readonly token: string
  readonly logprob: number
  readonly bytes: ReadonlyArray<number>
}

/** A generated token with its log-probability and the most likely alternatives (OpenAI chat's shape). */
export interface TokenLogprob extends TokenAlternative {
  readonly top_logprobs: ReadonlyArray<TokenAlternative>
}

export interface ChoiceResult {
  readonly index: number
  readonly text: string
  readonly reasoning: string
  readonly toolCalls: ReadonlyArray<{ readonly name: string; readonly arguments: string }>
  readonly finishReason: FinishReason
  /** The request's stop string that ended this choice (finishReason "stop"), else null. */
  readonly stopSequence: string | null
  /** The content tokens' log-probabilities, when asked for. */
  readonly logprobs?: ReadonlyArray<TokenLogprob>
}

export interface GenerationResult {
  readonly choices: ReadonlyArray<ChoiceResult>
  /** The prompt counted once; completion tokens summed over the choices. */
  readonly usage: Usage
  readonly timing: Timing
}

export interface EmbedResult {
  readonly vectors: ReadonlyArray<ReadonlyArray<number>>
  readonly promptTokens: number
}

export interface MemoryState {
  readonly ram: { readonly total: number; readonly free: number }
  readonly vram: { readonly total: number; readonly used: number; readonly free: number }
  readonly gpu: string | false
  readonly gpuNames: ReadonlyArray<string>
}

export interface EngineInfo {
  readonly engine: string
  readonly version: string
  readonly memory: MemoryState
}

export type FromWorker =
  | { readonly _tag: "ready"; readonly info: EngineInfo }
  | { readonly _tag: "result"; readonly id: number; readonly value: unknown }
  | { readonly _tag: "failure"; readonly id: number; readonly failure: WorkerFailure }
  | {
    readonly _tag: "chunk"
    readonly id: number
    readonly kind: "content" | "reasoning"
    readonly text: string
    /** The choice index; absent for choice 0. */
    readonly choice?: number
    /** Present only when log-probabilities were asked for. */
    readonly logprobs?: ReadonlyArray<TokenLogprob>
  }
  | { readonly _tag: "prefilled"; readonly id: number; readonly promptTokens: number; readonly cachedTokens: number }
