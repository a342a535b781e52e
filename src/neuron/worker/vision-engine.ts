/**
 * The vision engine: @fugood/llama.node (llama.cpp with mtmd) for models that come with a
 * multimodal projector. It runs in its own device worker (DeviceWorker engine "vision"), so a
 * native abort here (a corrupt projector, a GGML_ASSERT) kills only this process: the text
 * models on the device's other worker keep serving.
 *
 * What it does differently from the text engine (engine.ts):
 * - Images arrive as data: URLs (validated by the neuron: format, dimensions, size); the binding
 *   decodes them (stb_image: PNG, JPEG, GIF first frame) and mtmd resizes them to the
 *   projector's input size, so a 4k×4k picture costs one decode and one resize, never more
 *   image tokens.
 * - Prefill runs in `prefill_chunk_tokens` windows (the context's n_batch: text and image tokens
 *   alike are decoded that many at a time). The binding evaluates a whole prompt in one native
 *   call, so a hang-up is checked before the prefill starts and after every generated token
 *   (stopCompletion); it cannot cut a running prefill short.
 * - Pre-flight before any work: the prompt is tokenized with its images (exact image token
 *   counts), checked against the context, and the memory guard counts the image encoder plus
 *   the KV of every prompt token, image tokens included (InsufficientVram otherwise).
 * - One request at a time per model (the binding's context has one slot here): requests are
 *   queued in order inside the worker; admission bounds how many wait.
 * - Not served here (refused by name, never ignored): tools, response_format, logprobs, embeddings.
 */
import * as os from "node:os"
import type { StreamSink, WorkerEngine } from "./harness.js"
import { binding, bindingVersion, type ChatMessage, type LlamaContext, type MessagePart } from "./llama-node.js"
import {
  type ChoiceResult,
  type EmbedResult,
  type EngineInfo,
  type GenerationParams,
  type GenerationResult,
  type Job,
  type LoadedInfo,
  MEDIA_MARKER,
  type MemoryState,
  type ModelEstimate,
  type RequestBudget,
  WorkerError,
  type WorkerFailure,
  type WorkerMessage
} from "./protocol.js"

const fail = (reason: WorkerFailure) => new WorkerError({ reason })

/** A token never stands for more bytes than this (a safe bound: it only weakens the size pre-check). */
const MAX_TOKEN_BYTES = 1024

interface Resident {
  readonly context: LlamaContext
  readonly contextSize: number
  readonly trainContextSize: number | null
  /** Requests run one after another: the tail of the chain. */
  queue: Promise<unknown>
}

interface Prompt {
  readonly text: string
  readonly media: ReadonlyArray<string>
}

const round = (ms: number) => Math.round(ms * 100) / 100

/** A user turn's text with its images put back where their markers are, as the binding's parts. */
const userParts = (text: string, images: ReadonlyArray<string>): string | Array<MessagePart> => {
  if (images.length === 0) return text
  const pieces = text.split(MEDIA_MARKER)
  const parts: Array<MessagePart> = []
  pieces.forEach((piece, i) => {
    if (piece.length > 0) parts.push({ type: "text", text: piece })
    if (i < pieces.length - 1) parts.push({ type: "image_url", image_url: { url: images[i] ?? "" } })
  })
  return parts
}

const toBindingMessages = (messages: ReadonlyArray<WorkerMessage>): Array<ChatMessage> =>
  messages.map((m): ChatMessage => {
    switch (m.role) {
      case "system":
        return { role: "system", content: m.text }
      case "user":
        return { role: "user", content: userParts(m.text, m.images ?? []) }
      case "assistant":
        return { role: "assistant", content: m.text }
    }
  })

/** What this engine will not do, refused by the parameter's name before any work. */
const refuseUnsupported = (params: GenerationParams) => {
  if (params.tools.length > 0 && params.toolChoice !== "none") {
    throw fail({ tag: "InvalidRequest", message: "tools are not supported by vision models", param: "tools" })
  }
  if (params.responseFormat) {
    throw fail({
      tag: "InvalidRequest",
      message: "response_format is not supported by vision models",
      param: "response_format"
    })
  }
  if (params.logprobs !== undefined) {
    throw fail({ tag: "InvalidRequest", message: "logprobs are not supported by vision models", param: "logprobs" })
  }
}

export class VisionEngine implements WorkerEngine {
  private readonly models = new Map<string, Resident>()

  private constructor(readonly gpu: boolean, readonly threads: number) {}

  static async create(options: { readonly gpu: boolean; readonly threads: number }) {
    return new VisionEngine(options.gpu, options.threads)
  }

  async info(): Promise<EngineInfo> {
    return { engine: "@fugood/llama.node", version: bindingVersion(), memory: await this.memory() }
  }

  /** RAM from the OS; GPU memory as the binding's backends report it (their size, not what is free). */
  async memory(): Promise<MemoryState> {
    const gpus = this.gpu
      ? (await binding().getBackendDevicesInfo().catch(() => [])).filter((d) => d.type.toLowerCase().includes("gpu"))
      : []
    const total = gpus.reduce((sum, d) => sum + (d.maxMemorySize ?? 0), 0)
    return {
      ram: { total: os.totalmem(), free: os.freemem() },
      vram: { total, used: 0, free: total },
      gpu: gpus.length > 0 ? gpus[0]!.backend.toLowerCase() : false,
      gpuNames: gpus.map((d) => d.deviceName)
    }
  }

  /** Memory estimates come from the text worker's GGUF reader (the neuron adds the projector). */
  async estimate(): Promise<ModelEstimate> {
    throw fail({ tag: "Failed", message: "the vision engine does not estimate: ask the text worker" })
  }

  async load(
    id: string,
    path: string,
    contextSize: number,
    _sequences: number,
    batchSize: number,
    gpuLayers?: number,
    estimate?: ModelEstimate,
    projector?: string
  ): Promise<LoadedInfo> {
    if (projector === undefined) {
      throw fail({ tag: "Failed", message: `${id} has no projector: the vision engine serves multimodal models only` })
    }
    const started = performance.now()
    const window = Math.max(8, Math.min(batchSize, contextSize))
    const context = await binding().loadModel({
      model: path,
      n_ctx: contextSize,
      // The prefill window: text and image tokens are decoded this many at a time.
      n_batch: window,
      n_ubatch: window,
      n_threads: this.threads,
      n_gpu_layers: this.gpu ? (gpuLayers ?? 999) : 0,
      n_parallel: 1,
      // Measured: identical greedy output with a reused prefix or without, and across windows.
      flash_attn_type: "off",
      // On an NVIDIA device the CUDA build (the binding falls back to the CPU one if it cannot load).
      ...(this.gpu ? { lib_variant: "cuda" as const } : {})
    })
    try {
      const ok = context.initMultimodal({ path: projector, use_gpu: this.gpu })
      if (!ok || !context.getMultimodalSupport().vision) {
        throw fail({
          tag: "Failed",
          message: `the projector ${projector} could not be loaded for ${id} (no vision support)`
        })
      }
    } catch (e) {
      await context.release().catch(() => {})
      if (e instanceof WorkerError) throw e
      throw fail({
        tag: "Failed",
        message: `the projector ${projector} could not be loaded for ${id}: ${(e as Error)?.message ?? String(e)}`
      })
    }
    const info = context.getModelInfo()
    const arch = info.metadata["general.architecture"]
    const train = Number(arch ? info.metadata[`${arch}.context_length`] : NaN)
    const trainContextSize = Number.isFinite(train) && train > 0 ? train : null
    this.models.set(id, {
      context,
      contextSize: trainContextSize !== null ? Math.min(contextSize, trainContextSize) : contextSize,
      trainContextSize,
      queue: Promise.resolve()
    })
    return {
      contextSize: trainContextSize !== null ? Math.min(contextSize, trainContextSize) : contextSize,
      maxTokenBytes: MAX_TOKEN_BYTES,
      trainContextSize,
      embeddingSize: null,
      estimate: estimate ?? { ramMb: 0, vramMb: 0, trainContextSize, embeddingSize: null },
      gpuLayers: this.gpu ? (gpuLayers ?? 999) : 0,
      loadMs: Math.round(performance.now() - started)
    }
  }

  async unload(id: string) {
    const resident = this.models.get(id)
    if (!resident) return false
    this.models.delete(id)
    await resident.queue.catch(() => {})
    await resident.context.release()
    return true
  }

  private resident(id: string): Resident {
    const resident = this.models.get(id)
    if (!resident) throw fail({ tag: "NotLoaded", model: id })
    return resident
  }

  /** The prompt text the binding evaluates (its chat template applied) and its images in order. */
  private render(resident: Resident, job: Job): Prompt {
    if (job.kind === "completion") return { text: job.prompt, media: [] }
    const formatted = resident.context.getFormattedChat(toBindingMessages(job.messages))
    if (typeof formatted === "string") return { text: formatted, media: [] }
    return { text: formatted.prompt, media: formatted.media_paths ?? [] }
  }

  /** The prompt's tokens, image tokens included (mtmd's count for each image at this projector). */
  private async count(resident: Resident, prompt: Prompt): Promise<number> {
    try {
      const result = await resident.context.tokenize(prompt.text, { media_paths: [...prompt.media] })
      return result.tokens.length
    } catch (e) {
      throw fail({
        tag: "InvalidRequest",
        message: `an image could not be decoded: ${(e as Error)?.message ?? String(e)}`,
        param: "messages"
      })
    }
  }

  async countPromptTokens(id: string, job: Job): Promise<number> {
    const resident = this.resident(id)
    return this.count(resident, this.render(resident, job))
  }

  async generate(
    id: string,
    job: Job,
    params: GenerationParams,
    budget: RequestBudget,
    signal: AbortSignal,
    sink: StreamSink,
    choices = 1
  ): Promise<GenerationResult> {
    const resident = this.resident(id)
    refuseUnsupported(params)
    const run = resident.queue.then(() => this.run(resident, job, params, budget, signal, sink, choices))
    resident.queue = run.catch(() => {})
    return run
  }

  private async run(
    resident: Resident,
    job: Job,
    params: GenerationParams,
    budget: RequestBudget,
    signal: AbortSignal,
    sink: StreamSink,
    choices: number
  ): Promise<GenerationResult> {
    const started = performance.now()
    const prompt = this.render(resident, job)
    // Pre-flight, before anything is evaluated: the exact size (image tokens included) and memory.
    const promptTokens = await this.count(resident, prompt)
    if (promptTokens >= resident.contextSize) {
      throw fail({ tag: "ContextLengthExceeded", limit: resident.contextSize, requested: promptTokens })
    }
    const encoderMb = prompt.media.length > 0 ? budget.imageEncoderMb ?? 0 : 0
    const requiredMb = Math.ceil(
      budget.prefillBaseMb + encoderMb + (budget.prefillMbPer1kTokens * promptTokens) / 1000
    )
    if (requiredMb > budget.freeMb) {
      throw fail({ tag: "InsufficientVram", required_mb: requiredMb, free_mb: Math.floor(budget.freeMb) })
    }
    const room = resident.contextSize - promptTokens
    const maxTokens = Math.max(1, Math.min(params.maxTokens ?? room, room))
    const results: Array<ChoiceResult> = []
    let completionTokens = 0
    let firstTokenAt: number | undefined
    let prefilled = false
    for (let index = 0; index < choices; index++) {
      if (signal.aborted) {
        results.push(abortedChoice(index))
        continue
      }
      const context = resident.context
      let running = true
      // The binding's token callbacks can arrive after its promise settled: what came before is
      // streamed as it comes, the rest is sent from the result, and later callbacks are dropped.
      let streamed = ""
      const stop = () => {
        // stopCompletion outside a running completion would stop the next one.
        if (running) context.stopCompletion()
      }
      signal.addEventListener("abort", stop)
      try {
        const result = await context.completion({
          prompt: prompt.text,
          ...(prompt.media.length > 0 ? { media_paths: [...prompt.media] } : {}),
          n_predict: maxTokens,
          // Greedy is top-1 with no penalties: a temperature of 0 alone still left ties to the sampler chain.
          temperature: params.temperature,
          top_k: params.temperature <= 0 ? 1 : params.topK ?? 0,
          top_p: params.topP ?? 1,
          min_p: params.minP ?? 0,
          ...(params.seed !== undefined ? { seed: params.seed + index } : {}),
          penalty_repeat: params.repeatPenalty?.penalty ?? 1,
          penalty_freq: params.repeatPenalty?.frequencyPenalty ?? 0,
          penalty_present: params.repeatPenalty?.presencePenalty ?? 0,
          penalty_last_n: params.repeatPenalty ? 64 : 0,
          stop: [...params.stop]
        }, (token) => {
          if (!running) return
          if (firstTokenAt === undefined) firstTokenAt = performance.now()
          if (!prefilled) {
            prefilled = true
            sink.prefilled(promptTokens, 0)
          }
          if (token.token) {
            streamed += token.token
            sink.chunk(index, "content", token.token)
          }
        })
        running = false
        if (!prefilled) {
          prefilled = true
          sink.prefilled(promptTokens, 0)
        }
        if (result.text.length > streamed.length && result.text.startsWith(streamed)) {
          sink.chunk(index, "content", result.text.slice(streamed.length))
        }
        completionTokens += result.tokens_predicted
        const r = result
        results.push({
          index,
          text: result.text,
          reasoning: "",
          toolCalls: [],
          finishReason: result.interrupted || signal.aborted
            ? "abort"
            : r.stopped_limited || result.tokens_predicted >= maxTokens
            ? "length"
            : "stop",
          stopSequence: r.stopped_words && r.stopping_word ? r.stopping_word : null
        })
      } catch (e) {
        if (e instanceof WorkerError) throw e
        throw fail({ tag: "Failed", message: `vision generation failed: ${(e as Error)?.message ?? String(e)}` })
      } finally {
        running = false
        signal.removeEventListener("abort", stop)
      }
    }
    if (!prefilled) sink.prefilled(promptTokens, 0)
    const ended = performance.now()
    const first = firstTokenAt ?? ended
    return {
      choices: results,
      usage: { promptTokens, completionTokens, cachedTokens: 0 },
      timing: { prefillMs: round(first - started), ttftMs: round(first - started), decodeMs: round(ended - first) }
    }
  }

  async embed(): Promise<EmbedResult> {
    throw fail({ tag: "InvalidRequest", message: "embeddings are not supported by vision models", param: "model" })
  }

  async dispose() {
    for (const id of [...this.models.keys()]) await this.unload(id)
  }
}

const abortedChoice = (index: number): ChoiceResult => ({
  index,
  text: "",
  reasoning: "",
  toolCalls: [],
  finishReason: "abort",
  stopSequence: null
})
