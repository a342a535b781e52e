/**
 * Everything that touches node-llama-cpp lives here and runs inside a device worker process.
 * Plain async code on purpose: this is the per-token hot path.
 */
import {
  type ChatHistoryItem,
  type ChatModelFunctions,
  type ChatWrapper,
  getLlama,
  getModuleVersion,
  GgufInsights,
  JinjaTemplateChatWrapper,
  type Llama,
  LlamaChat,
  LlamaCompletion,
  type LlamaContext,
  type LlamaContextSequence,
  type LlamaEmbeddingContext,
  type LlamaGrammar,
  LlamaLogLevel,
  type LlamaModel,
  LlamaVocabularyType,
  readGgufFileInfo,
  resolveChatWrapper,
  TemplateChatWrapper,
  type Token
} from "node-llama-cpp"
import { stat } from "node:fs/promises"
import type { StreamSink, WorkerEngine } from "./harness.js"
import { LogprobRecorder } from "./logprobs.js"
import { minPromptTokens } from "./promptSize.js"
import type {
  ChoiceResult,
  EmbedResult,
  EngineInfo,
  FinishReason,
  GenerationParams,
  GenerationResult,
  Job,
  LoadedInfo,
  MemoryState,
  ModelEstimate,
  PromptShape,
  RequestBudget,
  TokenLogprob,
  WorkerFailure,
  WorkerMessage
} from "./protocol.js"
import { WorkerError } from "./protocol.js"

/** A job failure, thrown inside the engine and sent to the neuron as its `reason`. */
const fail = (reason: WorkerFailure) => new WorkerError({ reason })

interface Slot {
  readonly sequence: LlamaContextSequence
  /**
   * Slot 0's is made at load; the others on first use, sharing its resolved chat wrapper.
   * Resolving the wrapper (the model's Jinja template) is what costs: 0.5–0.6 s per LlamaChat on
   * the bench model, 0.2 ms with the wrapper shared.
   */
  chat: LlamaChat | undefined
  busy: boolean
}

const chatOf = (slots: ReadonlyArray<Slot>, slot: Slot): LlamaChat => {
  if (slot.chat) return slot.chat
  const first = slots[0]!
  const shared = first !== slot ? chatOf(slots, first).chatWrapper : undefined
  slot.chat = new LlamaChat({
    contextSequence: slot.sequence,
    autoDisposeSequence: false,
    ...(shared ? { chatWrapper: shared } : {})
  })
  return slot.chat
}

/**
 * What a load works out from the model file alone, kept for the worker's life so that reloading
 * a model (after an eviction, a context change) does not do it again: resolving the chat wrapper
 * renders the model's Jinja template against each specialized wrapper node-llama-cpp knows
 * (350–700 ms on the bench model, more than loadModel + createContext), and the longest token
 * is a walk over the vocabulary. Keyed by path, size and mtime, so a replaced file resolves anew.
 */
const resolved = new Map<string, { readonly wrapper: ChatWrapper; readonly maxTokenBytes: number }>()

const fileIdentity = async (path: string) => {
  try {
    const info = await stat(path)
    return `${path}\0${info.size}\0${info.mtimeMs}`
  } catch {
    return undefined
  }
}

/** Specialized wrappers are plain settings; a template wrapper holds the tokenizer of the model it was made for. */
const reusable = (wrapper: ChatWrapper) =>
  !(wrapper instanceof JinjaTemplateChatWrapper) && !(wrapper instanceof TemplateChatWrapper)

interface Resident {
  readonly model: LlamaModel
  readonly context: LlamaContext
  readonly slots: Array<Slot>
  embedding: Promise<LlamaEmbeddingContext> | undefined
  readonly contextSize: number
  readonly maxTokenBytes: number
}

export type { StreamSink } from "./harness.js"

/** What the choices of one request share. */
interface ChoiceRun {
  readonly resident: Resident
  readonly job: Job
  readonly params: GenerationParams
  readonly prompt: ReadonlyArray<Token>
  readonly grammar: LlamaGrammar | undefined
  readonly forced: boolean
  readonly sink: StreamSink
  readonly signal: AbortSignal
  firstTokenAt: number | undefined
  completionTokens: number
}

/** A forced tool call ("required" or a named function) is generated under a JSON grammar. */
const isForced = (shape: PromptShape) =>
  shape.tools.length > 0 && shape.toolChoice !== "none" && shape.toolChoice !== "auto"

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

export class Engine implements WorkerEngine {
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
    return {
      engine: "node-llama-cpp",
      version: (await getModuleVersion()) ?? "unknown",
      binary: this.llama.buildType === "localBuild" ? "local" : "prebuilt",
      memory: await this.memory()
    }
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

  async load(
    id: string,
    path: string,
    contextSize: number,
    sequences: number,
    batchSize: number,
    gpuLayers?: number,
    preflight?: ModelEstimate,
    projector?: string
  ): Promise<LoadedInfo> {
    if (projector !== undefined) {
      throw fail({ tag: "Failed", message: `${id} has a projector: the text engine cannot load it (vision engine)` })
    }
    const started = performance.now()
    // The neuron's pre-flight estimated this very load already: reuse it rather than read the GGUF again.
    const estimate = preflight ?? await this.estimate(path, contextSize, sequences, batchSize, gpuLayers)
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
        slots.push({ sequence, chat: undefined, busy: false })
      }
      // The chat wrapper is resolved once, here, not on the first request; a reload of the same
      // file takes the one resolved before (see `resolved`).
      const identity = await fileIdentity(path)
      const known = identity !== undefined ? resolved.get(identity) : undefined
      const wrapper = known?.wrapper ?? resolveChatWrapper(model)
      slots[0]!.chat = new LlamaChat({
        contextSequence: slots[0]!.sequence,
        autoDisposeSequence: false,
        chatWrapper: wrapper
      })
      const maxTokenBytes = known?.maxTokenBytes ?? this.maxTokenBytes(model)
      if (identity !== undefined && reusable(wrapper)) resolved.set(identity, { wrapper, maxTokenBytes })
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
    for (const slot of resident.slots) {
      if (slot.chat) slot.chat.dispose({ disposeSequence: true })
      else slot.sequence.dispose()
    }
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
    if (!resident) throw fail({ tag: "NotLoaded", model: id })
    return resident
  }

  /**
   * The prompt tokens exactly as the model will see them: the same history (with the forced
   * tool instruction) and the same tool rendering as `generate`. `/tokenize` (and so Anthropic's
   * count_tokens) counts with this too.
   */
  promptTokens(id: string, job: Job, shape?: PromptShape): Array<Token> {
    const { model, slots } = this.resident(id)
    if (job.kind === "completion") {
      // Exactly as LlamaCompletion tokenizes a string (its beginning token, and then no leading
      // space): a different first token made it erase the prefilled sequence and evaluate the
      // prompt again, and no prefix was ever reused on this route.
      const bos = beginningToken(model)
      const tokens = model.tokenize(job.prompt, false, bos !== null ? "trimLeadingSpace" : undefined)
      return bos !== null ? [bos, ...tokens] : tokens
    }
    const wrapper = chatOf(slots, slots[0]!).chatWrapper
    const functions = shape ? this.functionsFor(shape) : undefined
    const { contextText } = wrapper.generateContextState({
      chatHistory: [...this.historyFor(job.messages, shape), { type: "model", response: [] }],
      ...(functions ? { availableFunctions: functions, documentFunctionParams: true } : {})
    })
    return contextText.tokenize(model.tokenizer)
  }

  async countPromptTokens(id: string, job: Job, shape?: PromptShape): Promise<number> {
    return this.promptTokens(id, job, shape).length
  }

  /** The chat history a job generates from; a forced tool call adds its instruction first. */
  private historyFor(messages: ReadonlyArray<WorkerMessage>, shape: PromptShape | undefined): Array<ChatHistoryItem> {
    const history = toHistory(messages)
    if (shape && isForced(shape)) {
      history.unshift({
        type: "system",
        text: `Call exactly one of these tools. Reply with JSON {"name", "arguments"}.\n${JSON.stringify(shape.tools)}`
      })
    }
    return history
  }

  private functionsFor(params: PromptShape): ChatModelFunctions | undefined {
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

  /** The JSON a forced tool call is generated under: `{"name", "arguments"}` for one of the tools. */
  private forcedToolSchema(params: GenerationParams): unknown {
    const choice = params.toolChoice
    const tools = typeof choice === "object"
      ? params.tools.filter((t) => t.name === choice.name)
      : params.tools
    if (tools.length === 0) {
      throw fail({
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
      throw fail({
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
    if (!best) throw fail({ tag: "Failed", message: "no free sequence (admission out of step)" })
    return { slot: best, cached }
  }

  /**
   * Generate `choices` answers to one prompt (OpenAI `n`), on up to `parallel` sequences at once
   * (the seats the neuron holds for the request). Each choice runs on its own sequence, and the
   * sequences' decodes are batched together by the context. The prompt is tokenized, checked and
   * counted once, but each sequence prefills it itself (reusing whatever prefix it already
   * holds): node-llama-cpp 3.21 exposes no KV copy between sequences (llama.cpp's
   * `llama_memory_seq_cp`), so the prefill is not shared.
   */
  async generate(
    id: string,
    job: Job,
    params: GenerationParams,
    budget: RequestBudget,
    signal: AbortSignal,
    sink: StreamSink,
    choices = 1,
    parallel = 1
  ): Promise<GenerationResult> {
    const started = performance.now()
    const resident = this.resident(id)
    const forced = isForced(params)
    // The neuron refuses these before admission; this keeps a direct caller from making the
    // worker tokenize megabytes it will refuse anyway.
    const atLeast = minPromptTokens(job, resident.maxTokenBytes)
    if (atLeast >= resident.contextSize) {
      throw fail({ tag: "ContextLengthExceeded", limit: resident.contextSize, requested: atLeast })
    }
    const prompt = this.promptTokens(id, job, params)
    if (prompt.length >= resident.contextSize) {
      throw fail({ tag: "ContextLengthExceeded", limit: resident.contextSize, requested: prompt.length })
    }
    const requiredMb = Math.ceil(budget.prefillBaseMb + (budget.prefillMbPer1kTokens * prompt.length) / 1000)
    if (requiredMb > budget.freeMb) {
      throw fail({ tag: "InsufficientVram", required_mb: requiredMb, free_mb: Math.floor(budget.freeMb) })
    }
    // Built before the prefill: a schema the grammar compiler rejects is the client's mistake
    // (422), and should cost no prefill.
    const grammar = await this.grammarForRequest(params, forced)
    const run: ChoiceRun = {
      resident,
      job,
      params,
      prompt,
      grammar,
      forced,
      sink,
      signal,
      firstTokenAt: undefined,
      completionTokens: 0
    }
    const free = resident.slots.filter((s) => !s.busy).length
    const lanes = Math.max(1, Math.min(choices, parallel, free))
    const results: Array<ChoiceResult> = []
    let cachedTokens = 0
    let next = 0
    // One choice failing stops the others: their sequences are free again before the failure is reported.
    const stop = new AbortController()
    const onAbort = () => stop.abort()
    signal.addEventListener("abort", onAbort)
    const lane = async () => {
      while (next < choices) {
        const index = next++
        if (stop.signal.aborted) {
          results[index] = abortedChoice(index)
          continue
        }
        const { cached, slot } = this.pickSlot(resident, prompt)
        slot.busy = true
        try {
          if (index === 0) {
            cachedTokens = cached
            sink.prefilled(prompt.length, cached)
          }
          results[index] = await this.generateChoice(run, slot, cached, index, stop.signal)
        } catch (e) {
          stop.abort()
          throw e
        } finally {
          slot.busy = false
        }
      }
    }
    try {
      const settled = await Promise.allSettled(Array.from({ length: lanes }, lane))
      const failed = settled.find((s): s is PromiseRejectedResult => s.status === "rejected")
      if (failed) throw failed.reason
    } finally {
      signal.removeEventListener("abort", onAbort)
    }
    const ended = performance.now()
    const first = run.firstTokenAt ?? ended
    return {
      choices: results,
      usage: { promptTokens: prompt.length, completionTokens: run.completionTokens, cachedTokens },
      timing: {
        prefillMs: round(first - started),
        ttftMs: round(first - started),
        decodeMs: round(ended - first)
      }
    }
  }

  private async generateChoice(
    run: ChoiceRun,
    slot: Slot,
    cached: number,
    index: number,
    signal: AbortSignal
  ): Promise<ChoiceResult> {
    const { forced, grammar, job, params, prompt, resident, sink } = run
    const room = resident.contextSize - prompt.length
    const maxTokens = Math.max(1, Math.min(params.maxTokens ?? room, room))
    const recorder = params.logprobs !== undefined
      ? new LogprobRecorder(resident.model, params.logprobs, prompt)
      : undefined
    const logprobs: Array<TokenLogprob> | undefined = recorder ? [] : undefined
    /** Content (with its tokens' log-probabilities when asked) or reasoning, to the stream and the record. */
    const emit = (kind: "content" | "reasoning", text: string, tokens: ReadonlyArray<Token>) => {
      if (!recorder) return sink.chunk(index, kind, text)
      if (kind === "reasoning") {
        recorder.skip(tokens)
        return sink.chunk(index, kind, text)
      }
      const entries = recorder.take(tokens)
      logprobs!.push(...entries)
      sink.chunk(index, kind, text, entries)
    }
    let pending: ReadonlyArray<Token> = []
    const onToken = (tokens: Array<Token>) => {
      if (run.firstTokenAt === undefined) run.firstTokenAt = performance.now()
      run.completionTokens += tokens.length
      pending = tokens
    }
    const sampling = {
      maxTokens,
      temperature: params.temperature,
      ...(params.topP !== undefined ? { topP: params.topP } : {}),
      ...(params.topK !== undefined ? { topK: params.topK } : {}),
      ...(params.minP !== undefined ? { minP: params.minP } : {}),
      // Several choices under one seed would all be the same answer.
      ...(params.seed !== undefined ? { seed: params.seed + index } : {}),
      repeatPenalty: params.repeatPenalty ?? (false as const),
      customStopTriggers: params.stop,
      signal,
      stopOnAbortSignal: true,
      onToken
    }
    const detach = recorder?.attach(slot.sequence)
    try {
      if (!(await this.prefill(slot.sequence, prompt, cached, resident.context.batchSize, signal))) {
        return abortedChoice(index)
      }
      let text = ""
      let reasoning = ""
      let toolCalls: Array<{ name: string; arguments: string }> = []
      let stopReason: string
      let stopSequence: string | null
      if (job.kind === "completion") {
        const completion = new LlamaCompletion({ contextSequence: slot.sequence, autoDisposeSequence: false })
        // The prompt's tokens as prefilled (LlamaCompletion prepends the beginning token itself).
        const input = prompt.slice(beginningToken(resident.model) !== null ? 1 : 0)
        const res = await completion.generateCompletionWithMeta(input, {
          ...sampling,
          ...(grammar ? { grammar } : {}),
          // LlamaCompletion calls onToken, then onTextChunk, with the same tokens.
          onTextChunk: (chunk) => emit("content", chunk, pending)
        })
        text = res.response
        stopReason = res.metadata.stopReason
        stopSequence = matchedStop(resident.model, res.metadata, params.stop)
      } else {
        const functions = this.functionsFor(params)
        const res = await chatOf(resident.slots, slot).generateResponse(this.historyFor(job.messages, params), {
          ...sampling,
          ...(grammar ? { grammar } : functions ? { functions, documentFunctionParams: true } : {}),
          onResponseChunk: (chunk) => {
            if (forced) return
            if (chunk.type === "segment") {
              if (chunk.segmentType === "thought") emit("reasoning", chunk.text, chunk.tokens)
              else recorder?.skip(chunk.tokens)
            } else {
              emit("content", chunk.text, chunk.tokens)
            }
          }
        })
        stopReason = res.metadata.stopReason
        stopSequence = matchedStop(resident.model, res.metadata, params.stop)
        for (const item of res.fullResponse) {
          if (typeof item === "string") text += item
          else if (item.segmentType === "thought") reasoning += item.text
        }
        toolCalls = (res.functionCalls ?? []).map((call) => ({
          name: call.functionName,
          arguments: JSON.stringify(call.params ?? {})
        }))
        if (forced) {
          // The grammar makes the whole answer the call; cut by max_tokens, it is still the
          // call (partial, finish_reason "length"), never text the client would take as a reply.
          const whole = parseForcedCall(text)
          if (whole) {
            toolCalls = [whole]
            text = ""
            stopReason = "functionCalls"
          } else if (stopReason === "maxTokens") {
            toolCalls = [partialForcedCall(text, params)]
            text = ""
          }
        }
      }
      return {
        index,
        text,
        reasoning,
        toolCalls,
        finishReason: mapStopReason(stopReason),
        stopSequence,
        ...(logprobs ? { logprobs } : {})
      }
    } finally {
      detach?.()
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
    // What fits one window is left to the generation's own first evaluation: one decode for the
    // rest of the prompt and its logits, not a prefill decode and then one for the last token.
    if (prompt.length - cached <= window) return !signal.aborted
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
      if (atLeast > limit) throw fail({ tag: "ContextLengthExceeded", limit, requested: atLeast })
      const tokens = resident.model.tokenize(input)
      promptTokens += tokens.length
      if (tokens.length > limit) {
        throw fail({ tag: "ContextLengthExceeded", limit, requested: tokens.length })
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

const abortedChoice = (index: number): ChoiceResult => ({
  index,
  text: "",
  reasoning: "",
  toolCalls: [],
  finishReason: "abort",
  stopSequence: null
})

/** The request's stop string that ended generation, when a custom stop trigger did. */
const matchedStop = (
  model: LlamaModel,
  metadata: { readonly stopReason: string; readonly customStopTrigger?: ReadonlyArray<string | Token> },
  stops: ReadonlyArray<string>
): string | null => {
  if (metadata.stopReason !== "customStopTrigger" || !metadata.customStopTrigger) return null
  const text = metadata.customStopTrigger
    .map((part) => typeof part === "string" ? part : model.detokenize([part], true))
    .join("")
  return stops.find((s) => s === text) ?? text
}

/**
 * A forced call cut by max_tokens: the name (the one named, or as far as it was written) and
 * the arguments' JSON as far as it got.
 */
const partialForcedCall = (text: string, params: PromptShape): { name: string; arguments: string } => {
  const choice = params.toolChoice
  let name = typeof choice === "object" ? choice.name : undefined
  if (name === undefined) {
    const whole = /"name"\s*:\s*"((?:[^"\\]|\\.)*)"/.exec(text)
    if (whole) {
      try {
        name = JSON.parse(`"${whole[1]}"`) as string
      } catch {
        name = whole[1] ?? ""
      }
    } else {
      const begun = /"name"\s*:\s*"((?:[^"\\]|\\.)*)$/.exec(text)?.[1] ?? ""
      const candidates = params.tools.filter((t) => t.name.startsWith(begun))
      name = candidates.length === 1 ? candidates[0]!.name : begun
    }
  }
  const args = /"arguments"\s*:\s*/.exec(text)
  return { name, arguments: args ? text.slice(args.index + args[0].length) : "" }
}

const parseForcedCall = (text: string): { name: string; arguments: string } | undefined => {
  try {
    const value = JSON.parse(text) as { name?: unknown; arguments?: unknown }
    if (typeof value.name !== "string") return undefined
    return { name: value.name, arguments: JSON.stringify(value.arguments ?? {}) }
  } catch {
    return undefined
  }
}

/** The token LlamaCompletion puts before a prompt (node-llama-cpp's resolveBeginningTokenToPrepend). */
const beginningToken = (model: LlamaModel): Token | null => {
  switch (model.vocabularyType) {
    case LlamaVocabularyType.rwkv:
    case LlamaVocabularyType.ugm:
      return null
    case LlamaVocabularyType.wpm:
      return model.tokens.bos
    default:
      return model.tokens.shouldPrependBosToken ? model.tokens.bos : null
  }
}
