/**
 * The three sides of the neuron benchmark, each in its own process group and setsid session:
 * llama.cpp's `llama-server`, node-llama-cpp in a child process (bench/neuron/inproc.ts) and a
 * real neuron (`cortex neuron`). The servers are measured over HTTP on their OpenAI chat route,
 * streamed over SSE.
 */
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { BenchChild, freePort, ORPHAN_GUARD, sleep } from "../lib.js"
import type { ChatRequest, LoadSample, Sample, Side } from "./common.js"
import { sseEvents } from "./common.js"

export interface SideSettings {
  readonly modelPath: string
  readonly threads: number
  /** Context per sequence (slot). */
  readonly contextSize: number
  readonly batchSize: number
  /** Sequences (slots) per model on every side. */
  readonly slots: number
  readonly temperature: number
  readonly seed: number
  readonly verbose: boolean
}

const HERE = path.dirname(fileURLToPath(import.meta.url))
const ROOT = path.resolve(HERE, "../..")

// ---------------------------------------------------------------------------------------------
// Over HTTP: one streamed chat completion

interface ChunkBody {
  readonly choices?: ReadonlyArray<{ readonly delta?: { readonly content?: string | null } }>
  readonly usage?: {
    readonly prompt_tokens: number
    readonly completion_tokens: number
    readonly prompt_tokens_details?: { readonly cached_tokens?: number }
    readonly timing?: Record<string, number>
  }
  /** llama-server's own account of the request. */
  readonly timings?: Record<string, number>
  readonly error?: unknown
}

const httpChat = async (base: string, model: string, settings: SideSettings, request: ChatRequest, t0: number) => {
  const started = performance.now()
  const res = await fetch(`${base}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model,
      messages: request.messages,
      max_tokens: request.maxTokens,
      temperature: settings.temperature,
      seed: settings.seed,
      stream: true,
      stream_options: { include_usage: true }
    })
  })
  if (!res.ok || !res.body) throw new Error(`${base}: HTTP ${res.status}: ${await res.text()}`)
  let firstText: number | undefined
  let lastText = 0
  let text = ""
  let usage: ChunkBody["usage"]
  let timings: ChunkBody["timings"]
  let sawDone = false
  for await (const data of sseEvents(res.body)) {
    if (data === "[DONE]") {
      sawDone = true
      continue
    }
    const chunk = JSON.parse(data) as ChunkBody
    if (chunk.error !== undefined) throw new Error(`${base}: stream error: ${data}`)
    const delta = chunk.choices?.[0]?.delta?.content
    if (typeof delta === "string" && delta.length > 0) {
      const now = performance.now()
      firstText ??= now
      lastText = now
      text += delta
    }
    if (chunk.usage) usage = chunk.usage
    if (chunk.timings) timings = chunk.timings
  }
  const ended = performance.now()
  if (!sawDone) throw new Error(`${base}: stream ended without [DONE]`)
  if (!usage) throw new Error(`${base}: stream carried no usage chunk`)
  const first = firstText ?? ended
  const server = usage.timing ?? timings
  const sample: Sample = {
    promptTokens: usage.prompt_tokens,
    cachedTokens: usage.prompt_tokens_details?.cached_tokens ?? timings?.["cache_n"] ?? null,
    completionTokens: usage.completion_tokens,
    ttftMs: first - started,
    decodeSpanMs: (firstText === undefined ? ended : lastText) - first,
    startMs: started - t0,
    endMs: ended - t0,
    text,
    ...(server ? { server } : {})
  }
  return sample
}

const httpChats = (base: string, model: string, settings: SideSettings) => (requests: ReadonlyArray<ChatRequest>) => {
  const t0 = performance.now()
  return Promise.all(requests.map((r) => httpChat(base, model, settings, r, t0)))
}

/** Poll `url` every 25 ms until it answers 200 (and `accept` agrees), or throw naming `child`'s exit. */
const waitReady = async (
  child: BenchChild,
  url: string,
  timeoutMs: number,
  accept: (body: unknown) => boolean = () => true
) => {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (!child.alive) throw new Error(`${child.name} exited before it was ready: ${child.describeExit()}`)
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2000) })
      if (res.ok && accept(await res.json().catch(() => null))) return
      await res.body?.cancel().catch(() => {})
    } catch {
      // not listening yet
    }
    await sleep(25)
  }
  throw new Error(`${child.name} was not ready within ${timeoutMs} ms: ${child.describeExit()}`)
}

// ---------------------------------------------------------------------------------------------
// llama-server

export class LlamaServerSide implements Side {
  readonly name = "llama-server"
  private child: BenchChild | undefined
  private base = ""
  /** What the server said about its slots at its last start. */
  info: { nCtxSlot?: number; kvUnified?: string } = {}

  constructor(private readonly binary: string, private readonly settings: SideSettings) {}

  args(port: number) {
    const s = this.settings
    return [
      "--model",
      s.modelPath,
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      "--threads",
      String(s.threads),
      "--threads-batch",
      String(s.threads),
      // Each slot gets -c / --parallel cells: the same per-sequence context as the other sides.
      "--ctx-size",
      String(s.contextSize * s.slots),
      "--parallel",
      String(s.slots),
      "--no-kv-unified",
      "--batch-size",
      String(s.batchSize),
      "--ubatch-size",
      String(s.batchSize),
      // node-llama-cpp's contexts (the neuron's and the in-process side's) default to "auto",
      // which turns flash attention on for this CPU backend: the same here.
      "--flash-attn",
      "auto",
      "--jinja",
      "--no-webui",
      "--seed",
      String(s.seed)
    ]
  }

  load = async (): Promise<LoadSample> => {
    await this.stop()
    const port = await freePort()
    const started = performance.now()
    const child = BenchChild.spawn("llama-server", this.args(port), {
      cwd: ROOT,
      command: this.binary,
      detached: true,
      verbose: this.settings.verbose
    })
    this.child = child
    this.base = `http://127.0.0.1:${port}`
    await waitReady(child, `${this.base}/health`, 120_000)
    const ms = performance.now() - started
    const logText = child.lines.map((l) => l.text).join("\n")
    const slot = /n_ctx_slot = (\d+)/.exec(logText)
    const unified = /kv_unified = '(\w+)'/.exec(logText)
    this.info = {
      ...(slot ? { nCtxSlot: Number(slot[1]) } : {}),
      ...(unified ? { kvUnified: unified[1]! } : {})
    }
    return { ms }
  }

  chats = (requests: ReadonlyArray<ChatRequest>) => httpChats(this.base, "bench", this.settings)(requests)

  stop = async () => {
    if (this.child) await this.child.stop(5000)
    this.child = undefined
  }
}

// ---------------------------------------------------------------------------------------------
// The neuron

export class NeuronSide implements Side {
  readonly name = "neuron"
  private child: BenchChild | undefined
  private base = ""
  /** Spawn → model loaded, once at start. */
  startupMs = NaN

  constructor(private readonly modelId: string, private readonly settings: SideSettings) {}

  start = async () => {
    const port = await freePort()
    const env: Record<string, string> = {}
    for (const [key, value] of Object.entries(process.env)) {
      if (value !== undefined && !key.startsWith("NEURON_")) env[key] = value
    }
    const s = this.settings
    Object.assign(env, {
      NEURON_THREADS: String(s.threads),
      NEURON_MODELS_DIR: path.dirname(s.modelPath),
      NEURON_HOST: "127.0.0.1",
      NEURON_DEFAULT_MODELS: this.modelId,
      NEURON_MAX_IN_FLIGHT: String(s.slots),
      NEURON_CONTEXT_SIZE: String(s.contextSize),
      NEURON_PREFILL_CHUNK_TOKENS: String(s.batchSize),
      NEURON_GPU: "off"
    })
    const started = performance.now()
    const child = BenchChild.spawn(
      "neuron",
      ["--import", ORPHAN_GUARD, path.join(ROOT, "bin/cortex.js"), "neuron", "--port", String(port)],
      { cwd: ROOT, env, detached: true, verbose: s.verbose }
    )
    this.child = child
    this.base = `http://127.0.0.1:${port}`
    await waitReady(child, `${this.base}/health`, 180_000, (body) => {
      const models = (body as { models?: Array<{ id: string; status: string }> } | null)?.models
      return models?.some((m) => m.id === this.modelId && m.status === "loaded") ?? false
    })
    this.startupMs = performance.now() - started
  }

  private post = async (route: string, body: unknown) => {
    const res = await fetch(`${this.base}${route}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body)
    })
    const text = await res.text()
    if (!res.ok) throw new Error(`neuron ${route}: HTTP ${res.status}: ${text}`)
    return text
  }

  /** `POST /models/unload`, then the timed `POST /models/load` (returns once the model is resident). */
  load = async (): Promise<LoadSample> => {
    await this.post("/models/unload", { model: this.modelId })
    const started = performance.now()
    await this.post("/models/load", { model: this.modelId })
    return { ms: performance.now() - started }
  }

  chats = (requests: ReadonlyArray<ChatRequest>) => httpChats(this.base, this.modelId, this.settings)(requests)

  stop = async () => {
    if (this.child) await this.child.stop(15_000)
    this.child = undefined
  }
}

// ---------------------------------------------------------------------------------------------
// node-llama-cpp in a child process

export class InProcessSide implements Side {
  readonly name = "in-process"
  private child: BenchChild | undefined
  private nextId = 1
  systemInfo = ""

  constructor(private readonly settings: SideSettings) {}

  start = async () => {
    const s = this.settings
    const child = BenchChild.spawn("in-process", [
      ...process.execArgv,
      path.join(HERE, "inproc.ts"),
      "--model",
      s.modelPath,
      "--threads",
      String(s.threads),
      "--context",
      String(s.contextSize),
      "--batch",
      String(s.batchSize),
      "--sequences",
      String(s.slots),
      "--temperature",
      String(s.temperature),
      "--seed",
      String(s.seed)
    ], { cwd: ROOT, detached: true, verbose: s.verbose })
    this.child = child
    for (;;) {
      const line = await child.nextLine(120_000)
      const ready = parse(line) as { ready?: boolean; systemInfo?: string } | undefined
      if (ready?.ready) {
        this.systemInfo = ready.systemInfo ?? ""
        return
      }
    }
  }

  private request = async <A>(command: Record<string, unknown>): Promise<A> => {
    const child = this.child
    if (!child) throw new Error("the in-process side is not running")
    const id = this.nextId++
    const reply = child.nextLine(30 * 60_000)
    child.proc.stdin?.write(`${JSON.stringify({ id, ...command })}\n`)
    for (let line = await reply;; line = await child.nextLine(30 * 60_000)) {
      const value = parse(line) as { id?: number; ok?: boolean; result?: A; error?: string } | undefined
      if (value?.id !== id) continue
      if (!value.ok) throw new Error(`in-process side: ${value.error}`)
      return value.result as A
    }
  }

  load = () => this.request<LoadSample>({ op: "load" })

  chats = (requests: ReadonlyArray<ChatRequest>) => this.request<ReadonlyArray<Sample>>({ op: "chats", requests })

  stop = async () => {
    if (this.child) {
      this.child.proc.stdin?.end()
      await this.child.stop(10_000)
    }
    this.child = undefined
  }
}

const parse = (line: string): unknown => {
  try {
    return JSON.parse(line)
  } catch {
    return undefined
  }
}
