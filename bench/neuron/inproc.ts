/**
 * The in-process side of the neuron benchmark: node-llama-cpp called directly, in a child of its
 * own setsid session (as the servers are), driven by the bench over stdin/stdout, one JSON line
 * per command, so its measurements interleave with the HTTP sides'.
 *
 *   → {"id":1,"op":"load"}                      ← {"id":1,"ok":true,"result":LoadSample}
 *   → {"id":2,"op":"chats","requests":[...]}    ← {"id":2,"ok":true,"result":[Sample,...]}
 *
 * The first line it prints is {"ready":true,"systemInfo":"..."}; it exits when stdin closes.
 */
import {
  type ChatHistoryItem,
  getLlama,
  LlamaChat,
  type LlamaContext,
  type LlamaContextSequence,
  LlamaLogLevel,
  type LlamaModel,
  type Token
} from "node-llama-cpp"
import { createInterface } from "node:readline"
import { parseArgs } from "node:util"
import type { ChatRequest, LoadSample, Sample } from "./common.js"

const { values } = parseArgs({
  options: {
    model: { type: "string" },
    threads: { type: "string", default: "1" },
    context: { type: "string", default: "4096" },
    batch: { type: "string", default: "512" },
    sequences: { type: "string", default: "4" },
    temperature: { type: "string", default: "0" },
    seed: { type: "string", default: "42" }
  }
})
const modelPath = values.model!
const threads = Number(values.threads)
const contextSize = Number(values.context)
const batchSize = Number(values.batch)
const sequences = Number(values.sequences)
const temperature = Number(values.temperature)
const seed = Number(values.seed)

const llama = await getLlama({
  gpu: false,
  build: "never",
  maxThreads: threads,
  logLevel: LlamaLogLevel.error,
  progressLogs: false
})

interface Loaded {
  readonly model: LlamaModel
  readonly context: LlamaContext
  readonly slots: ReadonlyArray<{ readonly sequence: LlamaContextSequence; readonly chat: LlamaChat }>
}
let loaded: Loaded | undefined

const unload = async () => {
  if (!loaded) return
  for (const slot of loaded.slots) slot.chat.dispose({ disposeSequence: true })
  await loaded.context.dispose()
  await loaded.model.dispose()
  loaded = undefined
}

const load = async (): Promise<LoadSample> => {
  await unload()
  const started = performance.now()
  const model = await llama.loadModel({ modelPath, gpuLayers: 0 })
  const modelMs = performance.now() - started
  const context = await model.createContext({ contextSize, sequences, batchSize, threads, flashAttention: "auto" })
  const ms = performance.now() - started
  const slots = Array.from({ length: sequences }, () => {
    const sequence = context.getSequence()
    return { sequence, chat: new LlamaChat({ contextSequence: sequence, autoDisposeSequence: false }) }
  })
  const chatsMs = performance.now() - started - ms
  loaded = { model, context, slots }
  const r = Math.round
  return { ms, detail: { loadModelMs: r(modelMs), createContextMs: r(ms - modelMs), llamaChatsMs: r(chatsMs) } }
}

const commonPrefix = (a: ReadonlyArray<Token>, b: ReadonlyArray<Token>) => {
  const n = Math.min(a.length, b.length)
  let i = 0
  while (i < n && a[i] === b[i]) i++
  return i
}

const chatOne = async (request: ChatRequest, t0: number): Promise<Sample> => {
  if (!loaded) throw new Error("no model loaded")
  const slot = loaded.slots[request.sequence ?? 0]
  if (!slot) throw new Error(`no sequence ${request.sequence}`)
  const history: Array<ChatHistoryItem> = request.messages.map((m) =>
    m.role === "user" ? { type: "user", text: m.content } : { type: "model", response: [m.content] }
  )
  const tokens = slot.chat.chatWrapper
    .generateContextState({ chatHistory: [...history, { type: "model", response: [] }] })
    .contextText.tokenize(loaded.model.tokenizer)
  // As llama.cpp servers count it: the last prompt token is always evaluated again.
  const cached = Math.min(commonPrefix(slot.sequence.contextTokens, tokens), Math.max(0, tokens.length - 1))
  let completionTokens = 0
  let firstText: number | undefined
  let lastText = 0
  let text = ""
  const started = performance.now()
  await slot.chat.generateResponse(history, {
    maxTokens: request.maxTokens,
    temperature,
    seed,
    repeatPenalty: false,
    onToken: (t: Array<Token>) => {
      completionTokens += t.length
    },
    onResponseChunk: (chunk) => {
      if (chunk.type === "segment" || chunk.text.length === 0) return
      const now = performance.now()
      firstText ??= now
      lastText = now
      text += chunk.text
    }
  })
  const ended = performance.now()
  const first = firstText ?? ended
  return {
    promptTokens: tokens.length,
    cachedTokens: cached,
    completionTokens,
    ttftMs: first - started,
    decodeSpanMs: (firstText === undefined ? ended : lastText) - first,
    startMs: started - t0,
    endMs: ended - t0,
    text
  }
}

interface Command {
  readonly id: number
  readonly op: "load" | "chats"
  readonly requests?: ReadonlyArray<ChatRequest>
}

const handle = async (command: Command): Promise<unknown> => {
  switch (command.op) {
    case "load":
      return load()
    case "chats": {
      const t0 = performance.now()
      return Promise.all((command.requests ?? []).map((r) => chatOne(r, t0)))
    }
    default:
      throw new Error(`unknown op ${String((command as { op?: unknown }).op)}`)
  }
}

const reply = (value: unknown) => process.stdout.write(`${JSON.stringify(value)}\n`)

reply({ ready: true, systemInfo: llama.systemInfo, cpuMathCores: llama.cpuMathCores })

// One command at a time, in order: the bench waits for each reply before sending the next.
let queue = Promise.resolve()
const lines = createInterface({ input: process.stdin })
lines.on("line", (line) => {
  if (line.trim().length === 0) return
  queue = queue.then(async () => {
    let command: Command
    try {
      command = JSON.parse(line) as Command
    } catch (e) {
      reply({ id: -1, ok: false, error: `bad command: ${(e as Error).message}` })
      return
    }
    try {
      const result = await handle(command)
      reply({ id: command.id, ok: true, result })
    } catch (e) {
      reply({ id: command.id, ok: false, error: e instanceof Error ? (e.stack ?? e.message) : String(e) })
    }
  })
})
lines.on("close", () => {
  void queue.then(unload).then(() => llama.dispose()).finally(() => process.exit(0))
})
