/**
 * The typed IPC protocol between the neuron and a device worker (a child process).
 * Every message is Schema-validated on arrival, both ways, except the worker's per-token
 * `chunk` messages: those are plain objects checked by a type guard (no Schema on the hot path).
 * The one failure vocabulary of a worker is `WorkerError` with its `reason` (below).
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

/** Where an image stands in a user turn's text (llama.cpp mtmd's default marker). */
export const MEDIA_MARKER = "<__media__>"

/** A chat turn in the worker's own shape (OpenAI messages already flattened by the neuron). */
export const WorkerMessage = Schema.Union(
  Schema.Struct({ role: Schema.Literal("system"), text: Schema.String }),
  Schema.Struct({
    role: Schema.Literal("user"),
    text: Schema.String,
    /** Images as data: URLs, in order; each stands where MEDIA_MARKER is in `text` (vision engine only). */
    images: Schema.optionalWith(Schema.Array(Schema.String), { exact: true })
  }),
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
  device: Schema.String,
  /** What encoding one image takes (the vision encoder's compute), counted when the job has images. */
  imageEncoderMb: Schema.optionalWith(Schema.Number, { exact: true })
})
export type RequestBudget = typeof RequestBudget.Type

export const Job = Schema.Union(
  Schema.Struct({ kind: Schema.Literal("chat"), messages: Schema.Array(WorkerMessage) }),
  Schema.Struct({ kind: Schema.Literal("completion"), prompt: Schema.String })
)
export type Job = typeof Job.Type

export const ModelEstimate = Schema.Struct({
  ramMb: Schema.Number,
  vramMb: Schema.Number,
  trainContextSize: Schema.NullOr(Schema.Number),
  embeddingSize: Schema.NullOr(Schema.Number)
})
export type ModelEstimate = typeof ModelEstimate.Type

export const ToWorker = Schema.Union(
  Schema.TaggedStruct("load", {
    id: Schema.Number,
    model: Schema.String,
    path: Schema.String,
    contextSize: Schema.Number,
    sequences: Schema.Number,
    batchSize: Schema.Number,
    gpuLayers: Schema.optionalWith(Schema.Number, { exact: true }),
    /** The multimodal projector (mmproj GGUF): served by the vision engine. */
    projector: Schema.optionalWith(Schema.String, { exact: true }),
    /** The pre-flight's estimate for exactly this load: the worker then does not compute it again. */
    estimate: Schema.optionalWith(ModelEstimate, { exact: true })
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
    /**
     * Streamed pieces that come within this many ms of the last one sent are joined into the next
     * message (the first is never held): one IPC message, one SSE frame and one write for several
     * tokens. 0 sends every piece on its own. See worker/coalesce.ts.
     */
    coalesceMs: Schema.optionalWith(Schema.Int.pipe(Schema.between(0, 1000)), { exact: true }),
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

/**
 * Why a worker failed one job, as it reports it (the neuron maps each to its tagged API error).
 * `tag`, not `_tag`: these are plain wire values inside a `WorkerError`, not errors themselves.
 */
export const WorkerFailure = Schema.Union(
  Schema.Struct({ tag: Schema.Literal("ContextLengthExceeded"), limit: Schema.Number, requested: Schema.Number }),
  Schema.Struct({ tag: Schema.Literal("InsufficientVram"), required_mb: Schema.Number, free_mb: Schema.Number }),
  Schema.Struct({ tag: Schema.Literal("NotLoaded"), model: Schema.String }),
  Schema.Struct({ tag: Schema.Literal("InvalidRequest"), message: Schema.String, param: Schema.NullOr(Schema.String) }),
  Schema.Struct({ tag: Schema.Literal("Failed"), message: Schema.String })
)
export type WorkerFailure = typeof WorkerFailure.Type

/** The worker process died (or was not running) with the job still open: seen only by the neuron. */
export const WorkerCrashReason = Schema.Struct({
  tag: Schema.Literal("Crashed"),
  device: Schema.String,
  detail: Schema.String
})
export type WorkerCrashReason = typeof WorkerCrashReason.Type

/**
 * The one error of a device worker: it died with the job (`reason.tag` "Crashed") or it failed
 * the job for one of the `WorkerFailure` reasons. The worker throws it; the neuron rebuilds it
 * from the decoded `failure` message, or from the child's exit.
 */
export class WorkerError extends Schema.TaggedError<WorkerError>()("WorkerError", {
  reason: Schema.Union(WorkerCrashReason, WorkerFailure)
}) {
  override get message(): string {
    const r = this.reason
    switch (r.tag) {
      case "Crashed":
        return `worker for ${r.device} crashed: ${r.detail}`
      case "Failed":
      case "InvalidRequest":
        return r.message
      default:
        return r.tag
    }
  }

  /** The job failure, absent when the worker crashed. */
  get failure(): WorkerFailure | undefined {
    return this.reason.tag === "Crashed" ? undefined : this.reason
  }

  /** The crash's device and detail ("signal SIGABRT", "exit code 1"), absent for a job failure. */
  get device(): string | undefined {
    return this.reason.tag === "Crashed" ? this.reason.device : undefined
  }

  get detail(): string | undefined {
    return this.reason.tag === "Crashed" ? this.reason.detail : undefined
  }
}

export const LoadedInfo = Schema.Struct({
  contextSize: Schema.Number,
  /** The most input bytes one token covers: a prompt of n bytes is at least n / this tokens. */
  maxTokenBytes: Schema.Number,
  trainContextSize: Schema.NullOr(Schema.Number),
  embeddingSize: Schema.NullOr(Schema.Number),
  estimate: ModelEstimate,
  gpuLayers: Schema.Number,
  loadMs: Schema.Number
})
export type LoadedInfo = typeof LoadedInfo.Type

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

export const MemoryState = Schema.Struct({
  ram: Schema.Struct({ total: Schema.Number, free: Schema.Number }),
  vram: Schema.Struct({ total: Schema.Number, used: Schema.Number, free: Schema.Number }),
  gpu: Schema.Union(Schema.String, Schema.Literal(false)),
  gpuNames: Schema.Array(Schema.String)
})
export type MemoryState = typeof MemoryState.Type

export const EngineInfo = Schema.Struct({
  engine: Schema.String,
  version: Schema.String,
  /**
   * Which llama.cpp binary the engine loaded: the package's prebuilt one, or one an operator
   * compiled on this host (`npx --no node-llama-cpp source build`), which node-llama-cpp prefers.
   */
  binary: Schema.optionalWith(Schema.Literal("prebuilt", "local"), { exact: true }),
  memory: MemoryState
})
export type EngineInfo = typeof EngineInfo.Type

/** One streamed piece of text: the only worker → neuron message not decoded by Schema (see `isChunk`). */
export interface ChunkMessage {
  readonly _tag: "chunk"
  readonly id: number
  readonly kind: "content" | "reasoning"
  readonly text: string
  /** The choice index; absent for choice 0. */
  readonly choice?: number
  /** Present only when log-probabilities were asked for. */
  readonly logprobs?: ReadonlyArray<TokenLogprob>
}

/**
 * Worker → neuron control messages, decoded on arrival. A `result`'s value is decoded by the
 * caller that knows its shape (load, estimate, memory); generation results pass as they are.
 */
export const WorkerControl = Schema.Union(
  Schema.TaggedStruct("ready", { info: EngineInfo }),
  Schema.TaggedStruct("result", { id: Schema.Number, value: Schema.Unknown }),
  Schema.TaggedStruct("failure", { id: Schema.Number, failure: WorkerFailure }),
  Schema.TaggedStruct("prefilled", { id: Schema.Number, promptTokens: Schema.Number, cachedTokens: Schema.Number })
)
export type WorkerControl = typeof WorkerControl.Type

export type FromWorker = WorkerControl | ChunkMessage

/** The per-token check: the fields the neuron reads, by `typeof` (a Schema decode here costs per token). */
export const isChunk = (message: unknown): message is ChunkMessage => {
  const m = message as Partial<ChunkMessage> | null
  return typeof m === "object" && m !== null && m._tag === "chunk" && typeof m.id === "number" &&
    typeof m.text === "string" && (m.kind === "content" || m.kind === "reasoning")
}
