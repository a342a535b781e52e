/**
 * Everything that touches node-llama-cpp lives here and runs inside a device worker process.
 * Plain async code on purpose: this is the per-token hot path.
 */
import {
  type ChatHistoryItem,
  type ChatModelFunctions,
  getLlama,
  getModuleVersion,
  GgufInsights,
  type Llama,
  LlamaChat,
  LlamaCompletion,
  type LlamaContext,
  type LlamaContextSequence,
  type LlamaEmbeddingContext,
  type LlamaGrammar,
  LlamaLogLevel,
  type LlamaModel,
  readGgufFileInfo,
  type Token
} from "node-llama-cpp"
import { minPromptTokens } from "./promptSize.js"
import type {
  EmbedResult,
  EngineInfo,
  FinishReason,
  GenerationParams,
  GenerationResult,
  Job,
  LoadedInfo,
  MemoryState,
  ModelEstimate,
  RequestBudget,
  WorkerFailure,
  WorkerMessage
} from "./protocol.js"

export class Failure extends Error {
  constructor(readonly failure: WorkerFailure) {
    super(failure.tag)
  }
}

interface Slot {
  readonly sequence: LlamaContextSequence
  readonly chat: LlamaChat
  busy: boolean
}

interface Resident {
  readonly model: LlamaModel
  readonly context: LlamaContext
  readonly slots: Array<Slot>
  embedding: Promise<LlamaEmbeddingContext> | undefined
  readonly contextSize: number
  readonly maxTokenBytes: number
}

export interface StreamSink {
  readonly chunk: (kind: "content" | "reasoning", text: string) => void
  readonly prefilled: (promptTokens: number, cachedTokens: number) => void
}

const MB = 1024 * 1024
const EMBEDDING_CONTEXT = 2048
const toMb = (bytes: number) => Math.ceil(bytes / MB)

const commonPrefix = (a: ReadonlyArray<Token>, b: ReadonlyArray<Token>) => {
  const n = Math.min(a.length, b.length)
  let i = 0
  while (i < n && a[i] === b[i]) i++
  return i
}

export const toHistory = (messages: ReadonlyArray<WorkerMessage>): Array<ChatHistoryItem> =>
  messages.map((m): ChatHistoryItem => {
    switch (m.role) {
      case "system":
        return { type: "system", text: m.text }
      case "user":
        return { type: "user", text: m.text }
      case "assistant": {
        const response: Extract<ChatHistoryItem, { type: "model" }>["response"] = []
        if (m.reasoning) response.push({ type: "segment", segmentType: "thought", text: m.reasoning, ended: true })
        if (m.text) response.push(m.text)
        for (const call of m.toolCalls) {
          response.push({ type: "functionCall", name: call.name, params: call.params, result: call.result })
        }
        return { type: "model", response }
      }
    }
  })

const mapStopReason = (reason: string): FinishReason => {
  switch (reason) {
    case "maxTokens":
      return "length"
    case "functionCalls":
      return "tool_calls"
    case "abort":
      return "abort"
    default:
      return "stop"
  }
}

export class Engine {
  private readonly models = new Map<string, Resident>()
  private readonly grammars = new Map<string, Promise<LlamaGrammar>>()

  private constructor(readonly llama: Llama, readonly threads: number) {}

  static async create(options: { readonly gpu: boolean; readonly threads: number }) {
    const llama = await getLlama({
      gpu: options.gpu ? "auto" : false,
      build: "never",
      maxThreads: options.threads,
      logLevel: LlamaLogLevel.error,
      progressLogs: false
    })
    return new Engine(llama, options.threads)
  }

  async info(): Promise<EngineInfo> {
    return { engine: "node-llama-cpp", version: (await getModuleVersion()) ?? "unknown", memory: await this.memory() }
  }

  async memory(): Promise<MemoryState> {
    const [ram, vram, gpuNames] = await Promise.all([
      this.llama.getRamState(),
      this.llama.getVramState(),
      this.llama.getGpuDeviceNames()
    ])
    return {
      ram: { total: ram.total, free: ram.free },
      vram: { total: vram.total, used: vram.used, free: vram.free },
      gpu: this.llama.gpu,
      gpuNames
    }
  }

  async estimate(
    path: string,
    contextSize: number,
    sequences: number,
    batchSize: number,
    gpuLayers?: number
  ): Promise<ModelEstimate> {
    const insights = await GgufInsights.from(await readGgufFileInfo(path), this.llama)
    const layers = this.llama.gpu === false ? 0 : (gpuLayers ?? insights.totalLayers)
    // The V1 estimators are arithmetic over the GGUF header. The V2 ones load the model natively
    // to simulate it, and a malformed file then aborts the worker just for being listed.
    const model = insights.estimateModelResourceRequirements({ gpuLayers: layers })
    const context = insights.estimateContextResourceRequirements({
      contextSize: Math.min(contextSize, insights.trainContextSize ?? contextSize),
      modelGpuLayers: layers,
      sequences,
      batchSize
    })
    return {
      ramMb: toMb(model.cpuRam + context.cpuRam),
      vramMb: toMb(model.gpuVram + context.gpuVram),
      trainContextSize: insights.trainContextSize ?? null,
      embeddingSize: insights.embeddingVectorSize ?? null
    }
  }

  /**
   * The most input bytes one token can stand for: the longest token's text (specials included)
   * plus one for the leading space a detokenizer may drop. llama.cpp's SPM and BPE tokenizers
   * do not normalize, so a token never covers more input than its own text; the others (WPM,
   * UGM: NFD/NFKC-style maps) may contract input, so they get a wide margin. ~2 µs per token.
   */
  private maxTokenBytes(model: LlamaModel): number {
    let longest = 0
    for (const token of model.iterateAllTokens()) {
      longest = Math.max(longest, Buffer.byteLength(model.detokenize([token], true), "utf8"))
    }
    const plain = model.vocabularyType === "spm" || model.vocabularyType === "bpe"
    return (longest + 1) * (plain ? 1 : 4)
  }

  loaded(model: string) {
    return this.models.has(model)
  }

  async load(
    id: string,
    path: string,
    contextSize: number,
    sequences: number,
    batchSize: number,
    gpuLayers?: number
  ): Promise<LoadedInfo> {
    const started = performance.now()
    const estimate = await this.estimate(path, contextSize, sequences, batchSize, gpuLayers)
    const model = await this.llama.loadModel({
      modelPath: path,
      ...(this.llama.gpu === false ? { gpuLayers: 0 } : gpuLayers !== undefined ? { gpuLayers } : {})
    })
    try {
      const size = Math.min(contextSize, model.trainContextSize)
      const context = await model.createContext({
        contextSize: size,
        sequences,
        batchSize: Math.min(batchSize, size),
        threads: this.threads
      })
      const slots: Array<Slot> = []
      for (let i = 0; i < sequences; i++) {
        const sequence = context.getSequence()
        slots.push({
          sequence,
          chat: new LlamaChat({ contextSequence: sequence, autoDisposeSequence: false }),
          busy: false
        })
      }
      const maxTokenBytes = this.maxTokenBytes(model)
      this.models.set(id, {
        model,
        context,
        slots,
        embedding: undefined,
        contextSize: context.contextSize,
        maxTokenBytes
      })
      return {
        contextSize: context.contextSize,
        maxTokenBytes,
        trainContextSize: model.trainContextSize,
        embeddingSize: model.embeddingVectorSize ?? null,
        estimate,
        gpuLayers: model.gpuLayers,
        loadMs: Math.round(performance.now() - started)
      }
    } catch (e) {
      await model.dispose()
      throw e
    }
  }

  async unload(id: string) {
    const resident = this.models.get(id)
    if (!resident) return false
    this.models.delete(id)
    for (const slot of resident.slots) slot.chat.dispose({ disposeSequence: true })
    if (resident.embedding) await (await resident.embedding.catch(() => undefined))?.dispose()
    await resident.context.dispose()
    await resident.model.dispose()
    return true
  }

  async unloadAll() {
    for (const id of [...this.models.keys()]) await this.unload(id)
  }

  private resident(id: string): Resident {
    const resident = this.models.get(id)
    if (!resident) throw new Failure({ tag: "NotLoaded", model: id })
    return resident
  }

  /** The prompt tokens exactly as the model will see them. */
  promptTokens(id: string, job: Job, params?: GenerationParams): Array<Token> {
    const { model, slots } = this.resident(id)
    if (job.kind === "completion") {
      const tokens = model.tokenize(job.prompt)
      return model.tokens.bos !== null && model.tokens.shouldPrependBosToken ? [model.tokens.bos, ...tokens] : tokens
    }
    const wrapper = slots[0]!.chat.chatWrapper
    const functions = params ? this.functionsFor(params) : undefined
    const { contextText } = wrapper.generateContextState({
      chatHistory: [...toHistory(job.messages), { type: "model", response: [] }],
      ...(functions ? { availableFunctions: functions, documentFunctionParams: true } : {})
    })
    return contextText.tokenize(model.tokenizer)
  }

  private functionsFor(params: GenerationParams): ChatModelFunctions | undefined {
    if (params.tools.length === 0 || params.toolChoice !== "auto") return undefined
    const functions: Record<string, { description?: string; params?: any }> = {}
    for (const tool of params.tools) {
      functions[tool.name] = {
        ...(tool.description !== undefined ? { description: tool.description } : {}),
        ...(tool.parameters !== undefined ? { params: tool.parameters } : {})
      }
    }
    return functions
  }

  private grammarFor(schema: unknown): Promise<LlamaGrammar> {
    const key = JSON.stringify(schema)
    let grammar = this.grammars.get(key)
    if (!grammar) {
      grammar = schema === "json"
        ? this.llama.getGrammarFor("json")
        : (this.llama.createGrammarForJsonSchema(schema as any) as Promise<LlamaGrammar>)
      grammar.catch(() => this.grammars.delete(key))
      this.grammars.set(key, grammar)
    }
    return grammar
  }

  /** A forced tool call ("required" or a named function) is generated under a JSON grammar. */
  private forcedToolSchema(params: GenerationParams): unknown {
    const choice = params.toolChoice
    const tools = typeof choice === "object"
      ? params.tools.filter((t) => t.name === choice.name)
      : params.tools
    if (tools.length === 0) {
      throw new Failure({
        tag: "InvalidRequest",
        message: `tool_choice names a function that is not in tools`,
        param: "tool_choice"
      })
    }
    return {
      oneOf: tools.map((t) => ({
        type: "object",
        properties: {
          name: { const: t.name },
          arguments: t.parameters ?? { type: "object", properties: {} }
        }
      }))
    }
  }

  private async grammarForRequest(params: GenerationParams, forced: boolean): Promise<LlamaGrammar | undefined> {
    const schema = forced
      ? this.forcedToolSchema(params)
      : params.responseFormat?.kind === "schema"
      ? params.responseFormat.schema
      : params.responseFormat?.kind === "json"
      ? "json"
      : undefined
    if (schema === undefined) return undefined
    try {
      return await this.grammarFor(schema)
    } catch (e) {
      throw new Failure({
        tag: "InvalidRequest",
        message: `The ${forced ? "tool parameters" : "response_format"} JSON schema cannot be used: ${
          (e as Error)?.message ?? String(e)
        }`,
        param: forced ? "tools" : "response_format"
      })
    }
  }

  private pickSlot(resident: Resident, prompt: ReadonlyArray<Token>): { slot: Slot; cached: number } {
    let best: Slot | undefined
    let cached = -1
    for (const slot of resident.slots) {
      if (slot.busy) continue
      // The last prompt token is always evaluated again to get fresh logits.
      const shared = Math.min(commonPrefix(slot.sequence.contextTokens, prompt), Math.max(0, prompt.length - 1))
      if (shared > cached) {
        best = slot
        cached = shared
      }
    }
    if (!best) throw new Failure({ tag: "Failed", message: "no free sequence (admission out of step)" })
    return { slot: best, cached }
  }

  async generate(
    id: string,
    job: Job,
    params: GenerationParams,
    budget: RequestBudget,
    signal: AbortSignal,
    sink: StreamSink
  ): Promise<GenerationResult> {
    const started = performance.now()
    const resident = this.resident(id)
    const forced = params.tools.length > 0 && params.toolChoice !== "none" && params.toolChoice !== "auto"
    // The neuron refuses these before admission; this keeps a direct caller from making the
    // worker tokenize megabytes it will refuse anyway.
    const atLeast = minPromptTokens(job, resident.maxTokenBytes)
    if (atLeast >= resident.contextSize) {
      throw new Failure({ tag: "ContextLengthExceeded", limit: resident.contextSize, requested: atLeast })
    }
    const prompt = this.promptTokens(id, job, params)
    if (prompt.length >= resident.contextSize) {
      throw new Failure({ tag: "ContextLengthExceeded", limit: resident.contextSize, requested: prompt.length })
    }
    const requiredMb = Math.ceil(budget.prefillBaseMb + (budget.prefillMbPer1kTokens * prompt.length) / 1000)
    if (requiredMb > budget.freeMb) {
      throw new Failure({ tag: "InsufficientVram", required_mb: requiredMb, free_mb: Math.floor(budget.freeMb) })
    }
    // Built before the prefill: a schema the grammar compiler rejects is the client's mistake
    // (422), and should cost no prefill.
    const grammar = await this.grammarForRequest(params, forced)
    const { cached, slot } = this.pickSlot(resident, prompt)
    slot.busy = true
    try {
      sink.prefilled(prompt.length, cached)
      const room = resident.contextSize - prompt.length
      const maxTokens = Math.max(1, Math.min(params.maxTokens ?? room, room))
      let completionTokens = 0
      let firstTokenAt: number | undefined
      const onToken = (tokens: Array<Token>) => {
        if (firstTokenAt === undefined) firstTokenAt = performance.now()
        completionTokens += tokens.length
      }
      const sampling = {
        maxTokens,
        temperature: params.temperature,
        ...(params.topP !== undefined ? { topP: params.topP } : {}),
        ...(params.topK !== undefined ? { topK: params.topK } : {}),
        ...(params.minP !== undefined ? { minP: params.minP } : {}),
        ...(params.seed !== undefined ? { seed: params.seed } : {}),
        repeatPenalty: params.repeatPenalty ?? (false as const),
        customStopTriggers: params.stop,
        signal,
        stopOnAbortSignal: true,
        onToken
      }
      if (!(await this.prefill(slot.sequence, prompt, cached, resident.context.batchSize, signal))) {
        return aborted(prompt.length, cached, started)
      }

      let text = ""
      let reasoning = ""
      let toolCalls: Array<{ name: string; arguments: string }> = []
      let stopReason: string
      if (job.kind === "completion") {
        const completion = new LlamaCompletion({ contextSequence: slot.sequence, autoDisposeSequence: false })
        const res = await completion.generateCompletionWithMeta(job.prompt, {
          ...sampling,
          ...(grammar ? { grammar } : {}),
          onTextChunk: (chunk) => sink.chunk("content", chunk)
        })
        text = res.response
        stopReason = res.metadata.stopReason
      } else {
        const functions = this.functionsFor(params)
        const history = toHistory(job.messages)
        if (forced) {
          history.unshift({
            type: "system",
            text: `Call exactly one of these tools. Reply with JSON {"name", "arguments"}.\n${
              JSON.stringify(params.tools)
            }`
          })
        }
        const res = await slot.chat.generateResponse(history, {
          ...sampling,
          ...(grammar ? { grammar } : functions ? { functions, documentFunctionParams: true } : {}),
          onResponseChunk: (chunk) => {
            if (forced) return
            if (chunk.type === "segment") {
              if (chunk.segmentType === "thought") sink.chunk("reasoning", chunk.text)
            } else {
              sink.chunk("content", chunk.text)
            }
          }
        })
        stopReason = res.metadata.stopReason
        for (const item of res.fullResponse) {
          if (typeof item === "string") text += item
          else if (item.segmentType === "thought") reasoning += item.text
        }
        toolCalls = (res.functionCalls ?? []).map((call) => ({
          name: call.functionName,
          arguments: JSON.stringify(call.params ?? {})
        }))
        if (forced) {
          const parsed = parseForcedCall(text)
          if (parsed) {
            toolCalls = [parsed]
            text = ""
            stopReason = "functionCalls"
          }
        }
      }
      const ended = performance.now()
      const first = firstTokenAt ?? ended
      return {
        text,
        reasoning,
        toolCalls,
        finishReason: mapStopReason(stopReason),
        usage: { promptTokens: prompt.length, completionTokens, cachedTokens: cached },
        timing: {
          prefillMs: round(first - started),
          ttftMs: round(first - started),
          decodeMs: round(ended - first)
        }
      }
    } finally {
      slot.busy = false
    }
  }

  /**
   * Evaluate the prompt (all but its last token) in windows of the batch size, checking for a
   * cancel between windows: a client that hangs up mid-prefill stops it within one window.
   * The generator then finds this prefix in the sequence and evaluates only the last token.
   */
  private async prefill(
    sequence: LlamaContextSequence,
    prompt: ReadonlyArray<Token>,
    cached: number,
    window: number,
    signal: AbortSignal
  ): Promise<boolean> {
    if (sequence.nextTokenIndex > cached) {
      await sequence.eraseContextTokenRanges([{ start: cached, end: sequence.nextTokenIndex }])
    }
    for (let at = cached; at < prompt.length - 1; at += window) {
      if (signal.aborted) return false
      await sequence.evaluateWithoutGeneratingNewTokens(prompt.slice(at, Math.min(at + window, prompt.length - 1)))
    }
    return !signal.aborted
  }

  async embed(id: string, inputs: ReadonlyArray<string>): Promise<EmbedResult> {
    const resident = this.resident(id)
    if (!resident.embedding) {
      resident.embedding = resident.model.createEmbeddingContext({
        contextSize: Math.min(resident.contextSize, EMBEDDING_CONTEXT),
        threads: this.threads
      })
      resident.embedding.catch(() => {
        resident.embedding = undefined
      })
    }
    const context = await resident.embedding
    const limit = Math.min(resident.contextSize, EMBEDDING_CONTEXT)
    const vectors: Array<Array<number>> = []
    let promptTokens = 0
    for (const input of inputs) {
      const atLeast = minPromptTokens({ kind: "completion", prompt: input }, resident.maxTokenBytes)
      if (atLeast > limit) throw new Failure({ tag: "ContextLengthExceeded", limit, requested: atLeast })
      const tokens = resident.model.tokenize(input)
      promptTokens += tokens.length
      if (tokens.length > limit) {
        throw new Failure({ tag: "ContextLengthExceeded", limit, requested: tokens.length })
      }
      const embedding = await context.getEmbeddingFor(input)
      vectors.push(Array.from(embedding.vector))
    }
    return { vectors, promptTokens }
  }

  async dispose() {
    await this.unloadAll()
    await this.llama.dispose()
  }
}

const round = (ms: number) => Math.round(ms * 100) / 100

const aborted = (promptTokens: number, cachedTokens: number, started: number): GenerationResult => ({
  text: "",
  reasoning: "",
  toolCalls: [],
  finishReason: "abort",
  usage: { promptTokens, completionTokens: 0, cachedTokens },
  timing: { prefillMs: round(performance.now() - started), ttftMs: 0, decodeMs: 0 }
})

const parseForcedCall = (text: string): { name: string; arguments: string } | undefined => {
  try {
    const value = JSON.parse(text) as { name?: unknown; arguments?: unknown }
    if (typeof value.name !== "string") return undefined
    return { name: value.name, arguments: JSON.stringify(value.arguments ?? {}) }
  } catch {
    return undefined
  }
}
