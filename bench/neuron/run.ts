/**
 * Neuron benchmark: node-llama-cpp called directly in this process versus the same model served
 * by a real neuron process over HTTP (streaming SSE), on the generated `bench` model.
 *
 *   npx tsx bench/neuron/run.ts [--quick] [--model PATH] [--runs N] [--decode-tokens N] [--prefill-words N]
 *
 * Not part of the test suite: it takes a minute or two (about 30 s with --quick) and wants the
 * CPU to itself.
 */
import { type ChatHistoryItem, getLlama, LlamaChat, LlamaLogLevel, type Token } from "node-llama-cpp"
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync } from "node:fs"
import { mkdtemp, rm } from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { writeModel } from "../../src/gguf/ModelGenerator.js"
import { freePort, parseCli } from "../lib.js"

// ---------------------------------------------------------------------------------------------
// Settings

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..")

const USAGE = `usage: npx tsx bench/neuron/run.ts [options]

  --quick              1 run, 64 decode tokens, 300 prefill words (a smoke run, not a figure to quote)
  --model PATH         benchmark this .gguf instead of the generated bench model
  --runs N             runs per measurement (default 3)
  --decode-tokens N    tokens generated in the decode runs (default 256)
  --prefill-words N    words in the prefill prompt (default 1500)
  --verbose            show the neuron's log
  --help               this text`

const parsed = {
  values: parseCli({
    quick: { type: "boolean", default: false },
    model: { type: "string" },
    runs: { type: "string" },
    "decode-tokens": { type: "string" },
    "prefill-words": { type: "string" },
    verbose: { type: "boolean", default: false },
    // Internal: run only the direct side and print its result as JSON (see runDirectApart).
    "direct-only": { type: "boolean", default: false }
  }, USAGE)
}
const quick = parsed.values.quick
const args = {
  ...parsed.values,
  runs: parsed.values.runs ?? (quick ? "1" : "3"),
  "decode-tokens": parsed.values["decode-tokens"] ?? (quick ? "64" : "256"),
  "prefill-words": parsed.values["prefill-words"] ?? (quick ? "300" : "1500")
}

const positiveInt = (name: string, raw: string | undefined): number => {
  const n = Number(raw)
  if (!Number.isInteger(n) || n < 1) {
    console.error(`--${name} must be a positive integer, got ${raw}`)
    process.exit(2)
  }
  return n
}

const SETTINGS = {
  threads: 1,
  contextSize: 4096,
  batchSize: 512,
  temperature: 0,
  seed: 42,
  runs: positiveInt("runs", args.runs),
  decodeTokens: positiveInt("decode-tokens", args["decode-tokens"]),
  prefillWords: positiveInt("prefill-words", args["prefill-words"])
} as const

const DECODE_PROMPT = "Write a long story about the water and the people."
const TTFT_PROMPT = "Hello, what is your name?"

/** Deterministic filler text of `n` words from the bench vocabulary (about one token a word). */
const fillerText = (n: number): string => {
  const words = (
    "the of and to in is it you that he was for on are with as his they be at one have this from or had by "
    + "but what some we can out other were all there when up use your how said an each she which do their time "
    + "if will way about many then them write would like so these her long make thing see him two has look more "
    + "day could go come did number sound no most people my over know water than call first who may down side"
  ).split(" ")
  let state = 0x12345678
  const out: Array<string> = []
  for (let i = 0; i < n; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0
    out.push(words[state % words.length]!)
  }
  return out.join(" ")
}

const PREFILL_TEXT = fillerText(SETTINGS.prefillWords)

/** A per-run prefix that makes each prompt differ right after the chat template's opening. */
const unique = (tag: string, run: number, text: string) => `${tag} run ${run}. ${text}`

// ---------------------------------------------------------------------------------------------
// Statistics and formatting

interface Summary {
  readonly median: number
  readonly min: number
  readonly max: number
  readonly samples: ReadonlyArray<number>
}

const summarize = (samples: ReadonlyArray<number>): Summary => {
  const sorted = [...samples].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  const median = sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
  return {
    median: round(median),
    min: round(sorted[0] ?? NaN),
    max: round(sorted[sorted.length - 1] ?? NaN),
    samples: samples.map(round)
  }
}

const round = (x: number) => Math.round(x * 100) / 100

const fmt = (s: Summary, digits = 1) =>
  `${s.median.toFixed(digits)} (${s.min.toFixed(digits)}–${s.max.toFixed(digits)})`

const log = (line: string) => process.stderr.write(`[bench] ${line}\n`)

// ---------------------------------------------------------------------------------------------
// Measurements shared by both sides

interface Sample {
  /** Tokens in the prompt as the model sees it. */
  readonly promptTokens: number
  readonly cachedTokens: number
  readonly completionTokens: number
  /** Request start → first content text. */
  readonly ttftMs: number
  /** First content text → last content text. */
  readonly decodeSpanMs: number
  /** The neuron's own usage.timing (HTTP only). */
  readonly server?: ServerTiming
}

interface ServerTiming {
  readonly queue_ms: number
  readonly prefill_ms: number
  readonly decode_ms: number
  readonly ttft_ms: number
}

type Runner = (prompt: string, maxTokens: number) => Promise<Sample>

interface SideResult {
  readonly decode: ReadonlyArray<Sample>
  readonly prefill: ReadonlyArray<Sample>
  readonly ttft: ReadonlyArray<Sample>
  /** Direct only: TTFT with the chat template's opening kept in the sequence, as the neuron keeps it. */
  readonly ttftShared: ReadonlyArray<Sample>
}

const decodeRate = (s: Sample) => (s.completionTokens - 1) / (s.decodeSpanMs / 1000)
const prefillRate = (s: Sample) => s.promptTokens / (s.ttftMs / 1000)

const measureSide = async (
  name: string,
  run: Runner,
  fresh: () => Promise<void>,
  sharedPrefix: boolean
): Promise<SideResult> => {
  // Warm-up (not measured): the first generation pays for lazy allocations.
  await fresh()
  await run(unique("warm-up", 0, DECODE_PROMPT), 16)
  const decode: Array<Sample> = []
  const prefill: Array<Sample> = []
  const ttft: Array<Sample> = []
  const ttftShared: Array<Sample> = []
  for (let i = 1; i <= SETTINGS.runs; i++) {
    await fresh()
    const d = await run(unique("decode", i, DECODE_PROMPT), SETTINGS.decodeTokens)
    decode.push(d)
    await fresh()
    const p = await run(unique("prefill", i, PREFILL_TEXT), 1)
    prefill.push(p)
    await fresh()
    const t = await run(unique("ttft", i, TTFT_PROMPT), 1)
    ttft.push(t)
    // No clearing: the sequence still holds the previous prompt, so only the template's opening matches.
    if (sharedPrefix) ttftShared.push(await run(unique("shared", i, TTFT_PROMPT), 1))
    log(
      `${name} run ${i}/${SETTINGS.runs}: decode ${decodeRate(d).toFixed(1)} tok/s (${d.completionTokens} tok), `
        + `prefill ${prefillRate(p).toFixed(1)} tok/s (${p.promptTokens} tok, cached ${p.cachedTokens}), `
        + `ttft ${t.ttftMs.toFixed(1)} ms (${t.promptTokens} tok, cached ${t.cachedTokens})`
    )
  }
  return { decode, prefill, ttft, ttftShared }
}

const commonPrefix = (a: ReadonlyArray<Token>, b: ReadonlyArray<Token>) => {
  const n = Math.min(a.length, b.length)
  let i = 0
  while (i < n && a[i] === b[i]) i++
  return i
}

// ---------------------------------------------------------------------------------------------
// Direct node-llama-cpp

const runDirect = async (modelPath: string): Promise<SideResult> => {
  const llama = await getLlama({
    gpu: false,
    build: "never",
    maxThreads: SETTINGS.threads,
    logLevel: LlamaLogLevel.error,
    progressLogs: false
  })
  try {
    const model = await llama.loadModel({ modelPath, gpuLayers: 0 })
    try {
      const context = await model.createContext({
        contextSize: SETTINGS.contextSize,
        sequences: 1,
        batchSize: SETTINGS.batchSize,
        threads: SETTINGS.threads
      })
      try {
        const sequence = context.getSequence()
        const chat = new LlamaChat({ contextSequence: sequence, autoDisposeSequence: false })
        const promptTokens = (history: Array<ChatHistoryItem>) =>
          chat.chatWrapper.generateContextState({ chatHistory: [...history, { type: "model", response: [] }] })
            .contextText.tokenize(model.tokenizer)
        const run: Runner = async (prompt, maxTokens) => {
          const history: Array<ChatHistoryItem> = [{ type: "user", text: prompt }]
          const tokens = promptTokens(history)
          // As the neuron counts it: the last prompt token is always evaluated again.
          const cached = Math.min(commonPrefix(sequence.contextTokens, tokens), Math.max(0, tokens.length - 1))
          let completionTokens = 0
          let firstText: number | undefined
          let lastText = 0
          const started = performance.now()
          await chat.generateResponse(history, {
            maxTokens,
            temperature: SETTINGS.temperature,
            seed: SETTINGS.seed,
            repeatPenalty: false,
            onToken: (t: Array<Token>) => {
              completionTokens += t.length
            },
            onResponseChunk: (chunk) => {
              if (chunk.type === "segment" || chunk.text.length === 0) return
              const now = performance.now()
              firstText ??= now
              lastText = now
            }
          })
          const ended = performance.now()
          const first = firstText ?? ended
          return {
            promptTokens: tokens.length,
            cachedTokens: cached,
            completionTokens,
            ttftMs: first - started,
            decodeSpanMs: (firstText === undefined ? ended : lastText) - first
          }
        }
        const fresh = async () => {
          await sequence.clearHistory()
        }
        const result = await measureSide("direct", run, fresh, true)
        chat.dispose({ disposeSequence: true })
        return result
      } finally {
        await context.dispose()
      }
    } finally {
      await model.dispose()
    }
  } finally {
    await llama.dispose()
  }
}

// ---------------------------------------------------------------------------------------------
// Neuron over HTTP

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

class NeuronProcess {
  readonly logs: Array<string> = []
  private exited: Promise<void>
  private exitInfo: string | undefined

  private constructor(readonly child: ChildProcess, readonly base: string) {
    const keep = (data: Buffer) => {
      for (const line of data.toString("utf8").split("\n")) {
        if (line.length === 0) continue
        if (args.verbose) process.stderr.write(`[neuron] ${line}\n`)
        this.logs.push(line)
        if (this.logs.length > 200) this.logs.shift()
      }
    }
    child.stdout?.on("data", keep)
    child.stderr?.on("data", keep)
    this.exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        this.exitInfo = `code ${code}, signal ${signal}`
        resolve()
      })
    })
  }

  static async start(modelsDir: string, modelId: string): Promise<NeuronProcess> {
    const port = await freePort()
    const env: Record<string, string> = {}
    for (const [key, value] of Object.entries(process.env)) {
      if (value !== undefined && !key.startsWith("NEURON_")) env[key] = value
    }
    Object.assign(env, {
      NEURON_THREADS: String(SETTINGS.threads),
      NEURON_MODELS_DIR: modelsDir,
      NEURON_HOST: "127.0.0.1",
      NEURON_DEFAULT_MODELS: modelId,
      NEURON_MAX_IN_FLIGHT: "1",
      NEURON_CONTEXT_SIZE: String(SETTINGS.contextSize),
      NEURON_PREFILL_CHUNK_TOKENS: String(SETTINGS.batchSize),
      NEURON_GPU: "off"
    })
    const child = spawn(process.execPath, [path.join(ROOT, "bin/cortex.js"), "neuron", "--port", String(port)], {
      cwd: ROOT,
      env,
      stdio: ["ignore", "pipe", "pipe"]
    })
    const neuron = new NeuronProcess(child, `http://127.0.0.1:${port}`)
    active = neuron
    return neuron
  }

  get alive() {
    return this.exitInfo === undefined
  }

  describeExit() {
    return `${this.exitInfo ?? "still running"}; last log lines:\n${this.logs.slice(-30).join("\n")}`
  }

  async waitLoaded(modelId: string, timeoutMs: number) {
    const deadline = Date.now() + timeoutMs
    while (Date.now() < deadline) {
      if (!this.alive) throw new Error(`neuron exited before loading ${modelId}: ${this.describeExit()}`)
      try {
        const res = await fetch(`${this.base}/health`, { signal: AbortSignal.timeout(2000) })
        if (res.ok) {
          const body = (await res.json()) as { models?: Array<{ id: string; status: string }> }
          if (body.models?.some((m) => m.id === modelId && m.status === "loaded")) return
        }
      } catch {
        // not listening yet
      }
      await sleep(200)
    }
    throw new Error(`neuron did not report ${modelId} loaded within ${timeoutMs} ms: ${this.describeExit()}`)
  }

  /** SIGTERM, then SIGKILL if it has not exited after `graceMs`. */
  async stop(graceMs = 10_000) {
    if (this.alive) {
      this.child.kill("SIGTERM")
      const timedOut = await Promise.race([this.exited.then(() => false), sleep(graceMs).then(() => true)])
      if (timedOut && this.alive) {
        log("neuron ignored SIGTERM, sending SIGKILL")
        this.child.kill("SIGKILL")
        await this.exited
      }
    }
    if (active === this) active = undefined
  }
}

let active: NeuronProcess | undefined

/** Parse an SSE response body into `data:` payloads, skipping comment lines such as keep-alives. */
async function* sseEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder()
  let buffer = ""
  const reader = body.getReader()
  try {
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      buffer += decoder.decode(value, { stream: true })
      let boundary: number
      while ((boundary = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, boundary)
        buffer = buffer.slice(boundary + 2)
        const data = event
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n")
        if (data.length > 0) yield data
      }
    }
  } finally {
    reader.releaseLock()
  }
}

interface ChunkBody {
  readonly choices?: ReadonlyArray<{ readonly delta?: { readonly content?: string | null } }>
  readonly usage?: {
    readonly prompt_tokens: number
    readonly completion_tokens: number
    readonly prompt_tokens_details?: { readonly cached_tokens?: number }
    readonly timing?: ServerTiming
  }
  readonly error?: unknown
}

const httpRunner = (base: string, modelId: string): Runner => async (prompt, maxTokens) => {
  const started = performance.now()
  const res = await fetch(`${base}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model: modelId,
      messages: [{ role: "user", content: prompt }],
      max_tokens: maxTokens,
      temperature: SETTINGS.temperature,
      seed: SETTINGS.seed,
      stream: true,
      stream_options: { include_usage: true }
    })
  })
  if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}: ${await res.text()}`)
  let firstText: number | undefined
  let lastText = 0
  let usage: ChunkBody["usage"]
  let sawDone = false
  for await (const data of sseEvents(res.body)) {
    if (data === "[DONE]") {
      sawDone = true
      continue
    }
    const chunk = JSON.parse(data) as ChunkBody
    if (chunk.error !== undefined) throw new Error(`stream error: ${data}`)
    const text = chunk.choices?.[0]?.delta?.content
    if (typeof text === "string" && text.length > 0) {
      const now = performance.now()
      firstText ??= now
      lastText = now
    }
    if (chunk.usage) usage = chunk.usage
  }
  const ended = performance.now()
  if (!sawDone) throw new Error("stream ended without [DONE]")
  if (!usage) throw new Error("stream carried no usage chunk")
  const first = firstText ?? ended
  return {
    promptTokens: usage.prompt_tokens,
    cachedTokens: usage.prompt_tokens_details?.cached_tokens ?? 0,
    completionTokens: usage.completion_tokens,
    ttftMs: first - started,
    decodeSpanMs: (firstText === undefined ? ended : lastText) - first,
    ...(usage.timing ? { server: usage.timing } : {})
  }
}

const runNeuron = async (modelsDir: string, modelId: string): Promise<{ result: SideResult; startupMs: number }> => {
  const started = performance.now()
  const neuron = await NeuronProcess.start(modelsDir, modelId)
  try {
    await neuron.waitLoaded(modelId, 90_000)
    const startupMs = performance.now() - started
    log(`neuron up on ${neuron.base} with ${modelId} loaded after ${(startupMs / 1000).toFixed(1)} s`)
    const result = await measureSide("neuron", httpRunner(neuron.base, modelId), async () => {}, false)
    return { result, startupMs }
  } finally {
    await neuron.stop()
  }
}

// ---------------------------------------------------------------------------------------------
// Report

const cpuInfo = () => {
  const cpus = os.cpus()
  return {
    model: cpus[0]?.model.trim() ?? "unknown",
    logicalCores: cpus.length,
    availableParallelism: os.availableParallelism(),
    totalMemMb: Math.round(os.totalmem() / (1024 * 1024))
  }
}

const table = (rows: ReadonlyArray<ReadonlyArray<string>>) => {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? "").length)))
  const line = (r: ReadonlyArray<string>) => `| ${r.map((cell, c) => cell.padEnd(widths[c]!)).join(" | ")} |`
  const sep = `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`
  return [line(rows[0]!), sep, ...rows.slice(1).map(line)].join("\n")
}

const signed = (ms: number) => `${ms >= 0 ? "+" : "−"}${Math.abs(ms).toFixed(1)} ms`

const report = (direct: SideResult, neuron: SideResult, modelPath: string, startupMs: number, load: Load) => {
  const ttft = (samples: ReadonlyArray<Sample>) => summarize(samples.map((s) => s.ttftMs))
  const server = (samples: ReadonlyArray<Sample>, f: (t: ServerTiming, s: Sample) => number) =>
    summarize(samples.flatMap((s) => (s.server ? [f(s.server, s)] : [])))
  const d = {
    decode: summarize(direct.decode.map(decodeRate)),
    prefill: summarize(direct.prefill.map(prefillRate)),
    ttft: ttft(direct.ttft),
    ttftShared: ttft(direct.ttftShared),
    prefillTtft: ttft(direct.prefill)
  }
  const n = {
    decode: summarize(neuron.decode.map(decodeRate)),
    prefill: summarize(neuron.prefill.map(prefillRate)),
    ttft: ttft(neuron.ttft),
    prefillTtft: ttft(neuron.prefill)
  }
  const srv = {
    decode: server(neuron.decode, (t, s) => (s.completionTokens - 1) / (t.decode_ms / 1000)),
    prefill: server(neuron.prefill, (t, s) => s.promptTokens / (t.prefill_ms / 1000)),
    ttft: server(neuron.ttft, (t) => t.ttft_ms),
    prefillTtft: server(neuron.prefill, (t) => t.ttft_ms),
    queueMs: server([...neuron.decode, ...neuron.prefill, ...neuron.ttft], (t) => t.queue_ms)
  }
  const ratio = (a: Summary, b: Summary) => Math.round((b.median / a.median) * 1000) / 1000
  const overhead = (a: Summary, b: Summary) => round(b.median - a.median)
  const distinct = (samples: ReadonlyArray<Sample>, f: (s: Sample) => number) => [...new Set(samples.map(f))].join("/")
  const cachedOf = (samples: ReadonlyArray<Sample>) => distinct(samples, (s) => s.cachedTokens)

  const rows: Array<Array<string>> = [
    [
      "metric (median, min–max)",
      "direct node-llama-cpp",
      "neuron HTTP (client)",
      "neuron usage.timing",
      "neuron/direct"
    ],
    [
      `decode tok/s (${distinct(direct.decode, (s) => s.completionTokens)} tok)`,
      fmt(d.decode),
      fmt(n.decode),
      fmt(srv.decode),
      ratio(d.decode, n.decode).toFixed(3)
    ],
    [
      `prefill tok/s (${distinct(direct.prefill, (s) => s.promptTokens)} tok; cached ${cachedOf(direct.prefill)} vs ${
        cachedOf(neuron.prefill)
      })`,
      fmt(d.prefill),
      fmt(n.prefill),
      fmt(srv.prefill),
      ratio(d.prefill, n.prefill).toFixed(3)
    ],
    [
      `  its TTFT ms`,
      fmt(d.prefillTtft),
      fmt(n.prefillTtft),
      fmt(srv.prefillTtft),
      `${ratio(d.prefillTtft, n.prefillTtft).toFixed(3)} (${signed(overhead(d.prefillTtft, n.prefillTtft))})`
    ],
    [
      `TTFT ms, short (${distinct(direct.ttft, (s) => s.promptTokens)} tok; cached ${cachedOf(direct.ttft)} vs ${
        cachedOf(neuron.ttft)
      })`,
      fmt(d.ttft),
      fmt(n.ttft),
      fmt(srv.ttft),
      `${ratio(d.ttft, n.ttft).toFixed(3)} (${signed(overhead(d.ttft, n.ttft))})`
    ],
    [
      `TTFT ms, short, same prefix (cached ${cachedOf(direct.ttftShared)} vs ${cachedOf(neuron.ttft)})`,
      fmt(d.ttftShared),
      fmt(n.ttft),
      fmt(srv.ttft),
      `${ratio(d.ttftShared, n.ttft).toFixed(3)} (${signed(overhead(d.ttftShared, n.ttft))})`
    ]
  ]
  const cached = {
    direct: [...direct.decode, ...direct.prefill, ...direct.ttft].map((s) => s.cachedTokens),
    directSharedPrefix: direct.ttftShared.map((s) => s.cachedTokens),
    neuron: [...neuron.decode, ...neuron.prefill, ...neuron.ttft].map((s) => s.cachedTokens)
  }
  const cpu = cpuInfo()
  const loadText = (l: ReadonlyArray<number>) => l.map((x) => x.toFixed(2)).join(" ")

  console.log("")
  console.log(
    `machine:  ${cpu.model}, ${cpu.logicalCores} logical cores, ${cpu.totalMemMb} MB RAM, node ${process.version}, `
      + `load average ${loadText(load.before)} before, ${loadText(os.loadavg())} after`
  )
  console.log(
    `settings: model ${path.basename(modelPath)}, threads ${SETTINGS.threads}, context ${SETTINGS.contextSize}, `
      + `batch ${SETTINGS.batchSize}, temperature ${SETTINGS.temperature}, seed ${SETTINGS.seed}, runs ${SETTINGS.runs}, `
      + `decode ${SETTINGS.decodeTokens} tok, gpu off, neuron max_in_flight 1, chat completions streamed over SSE`
  )
  console.log(
    `cached prompt tokens per request (decode, prefill, ttft runs): direct [${cached.direct.join(",")}], `
      + `neuron [${cached.neuron.join(",")}]`
  )
  console.log(
    `neuron queue_ms median ${srv.queueMs.median}; neuron startup (spawn → model loaded) `
      + `${(startupMs / 1000).toFixed(1)} s, not part of any figure`
  )
  console.log("")
  console.log(table(rows))
  console.log("")
  console.log(JSON.stringify({
    bench: "neuron",
    machine: { ...cpu, loadavgBefore: load.before.map(round), loadavgAfter: os.loadavg().map(round) },
    settings: { ...SETTINGS, model: path.basename(modelPath), gpu: false },
    direct: {
      decodeTokPerS: d.decode,
      prefillTokPerS: d.prefill,
      prefillTtftMs: d.prefillTtft,
      ttftMs: d.ttft,
      ttftSharedPrefixMs: d.ttftShared
    },
    neuronClient: { decodeTokPerS: n.decode, prefillTokPerS: n.prefill, prefillTtftMs: n.prefillTtft, ttftMs: n.ttft },
    neuronServer: {
      decodeTokPerS: srv.decode,
      prefillTokPerS: srv.prefill,
      prefillTtftMs: srv.prefillTtft,
      ttftMs: srv.ttft,
      queueMs: srv.queueMs
    },
    ratio: {
      decode: ratio(d.decode, n.decode),
      prefill: ratio(d.prefill, n.prefill),
      ttft: ratio(d.ttft, n.ttft),
      ttftOverheadMs: overhead(d.ttft, n.ttft),
      ttftSharedPrefix: ratio(d.ttftShared, n.ttft),
      ttftSharedPrefixOverheadMs: overhead(d.ttftShared, n.ttft)
    },
    tokens: {
      decodeCompletion: direct.decode.map((s) => s.completionTokens),
      prefillPrompt: direct.prefill.map((s) => s.promptTokens),
      ttftPrompt: direct.ttft.map((s) => s.promptTokens)
    },
    cachedTokens: cached,
    neuronStartupMs: Math.round(startupMs)
  }))
}

interface Load {
  readonly before: ReadonlyArray<number>
}

// ---------------------------------------------------------------------------------------------
// Main

let tempDir: string | undefined

const cleanup = async () => {
  if (active) await active.stop(3000)
  if (tempDir) await rm(tempDir, { recursive: true, force: true })
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    log(`${signal}: stopping`)
    // Kill synchronously first so nothing is left behind even if the async cleanup is cut short.
    active?.child.kill("SIGKILL")
    void cleanup().finally(() => process.exit(130))
  })
}
process.once("exit", () => {
  if (active?.alive) active.child.kill("SIGKILL")
})

/**
 * The direct side in a child process of its own session (setsid), as the neuron's device worker
 * runs: on a host that schedules CPU per session (autogroups), node-llama-cpp inside this
 * process would compete on other terms than the worker does, which flattered the neuron.
 */
const runDirectApart = (modelPath: string): Promise<SideResult> =>
  new Promise((resolve, reject) => {
    const argv = process.argv.slice(1).filter((a) => a !== "--model" && !a.endsWith(".gguf"))
    const child = spawn(process.execPath, [...process.execArgv, ...argv, "--direct-only", "--model", modelPath], {
      cwd: ROOT,
      detached: true,
      stdio: ["ignore", "pipe", "inherit"]
    })
    let out = ""
    child.stdout.on("data", (d) => (out += d))
    child.once("error", reject)
    child.once("exit", (code) => {
      if (code !== 0) return reject(new Error(`the direct side exited with ${code}`))
      try {
        resolve(JSON.parse(out.trim().split("\n").at(-1)!) as SideResult)
      } catch (e) {
        reject(e)
      }
    })
  })

const main = async () => {
  if (parsed.values["direct-only"]) {
    console.log(JSON.stringify(await runDirect(args.model!)))
    return
  }
  let modelPath: string
  if (args.model !== undefined) {
    modelPath = path.resolve(args.model)
    if (!existsSync(modelPath)) throw new Error(`--model ${modelPath} does not exist`)
    if (!modelPath.endsWith(".gguf")) throw new Error(`--model must name a .gguf file`)
  } else {
    tempDir = await mkdtemp(path.join(os.tmpdir(), "cortex-bench-"))
    modelPath = path.join(tempDir, "bench.gguf")
    const t0 = performance.now()
    const { bytes } = await writeModel(modelPath, { shape: "bench" })
    log(`generated ${modelPath} (${(bytes / 1e6).toFixed(1)} MB) in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  }
  const load: Load = { before: os.loadavg() }
  const modelId = path.basename(modelPath, ".gguf")
  const modelsDir = path.dirname(modelPath)

  log(`direct node-llama-cpp: ${SETTINGS.runs} runs (in its own session, as the neuron's worker is)`)
  const direct = await runDirectApart(modelPath)
  log(`neuron over HTTP: ${SETTINGS.runs} runs`)
  const { result: neuron, startupMs } = await runNeuron(modelsDir, modelId)
  report(direct, neuron, modelPath, startupMs, load)
}

try {
  await main()
} catch (error) {
  console.error(error instanceof Error ? (error.stack ?? error.message) : error)
  process.exitCode = 1
} finally {
  await cleanup()
}
