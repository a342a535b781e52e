/**
 * Neuron benchmark: the same GGUF served three ways, measured in one run, interleaved:
 * llama.cpp's own `llama-server` (built from the llama.cpp node-llama-cpp ships, see
 * ./llama-server.ts), node-llama-cpp called in-process (in a child of its own, ./inproc.ts) and a
 * real neuron over HTTP. Every side runs in its own process group and setsid session, with the
 * same threads, context per sequence, batch size and slots; the servers are measured on their
 * OpenAI chat route streamed over SSE.
 *
 *   npx tsx bench/neuron/run.ts [--quick] [--repeats N] [--threads N] [--llama-server PATH | --no-llama-server]
 *
 * Not part of the test suite: it wants the CPU to itself (a few minutes; --quick about two).
 */
import { existsSync } from "node:fs"
import { mkdtemp, rm } from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { writeModel } from "../../src/gguf/ModelGenerator.js"
import { log, numberArg, parseCli, stopChildrenOnExit } from "../lib.js"
import {
  aggregateRate,
  type ChatRequest,
  decodeRate,
  fillerText,
  type LoadSample,
  prefillRate,
  round,
  type Sample,
  type Side,
  summarize,
  type Summary
} from "./common.js"
import {
  buildLlamaServer,
  givenLlamaServer,
  llamaServerCompiler,
  type LlamaServerResolution,
  prebuiltCompiler
} from "./llama-server.js"
import { InProcessSide, LlamaServerSide, NeuronSide, type SideSettings } from "./sides.js"

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..")

const USAGE = `usage: npx tsx bench/neuron/run.ts [options]

Measures llama-server, in-process node-llama-cpp and the neuron on one GGUF, interleaved.

  --quick               1 repeat, short prompts and generations (a smoke run of about two minutes,
                        not a figure to quote)
  --repeats N           repeats of every measurement, the sides' order rotated each time (default 3)
  --threads N           threads on every side (default 1)
  --decode-tokens N     tokens generated in the decode and concurrent runs (default 128)
  --prefill-words N     words in the prefill prompt (default 1000, about as many tokens)
  --history-words N     words in the two-turn history (default 1000)
  --streams N           concurrent streams, and slots on every side (default 4)
  --context N           context per sequence on every side (default 4096)
  --model PATH          benchmark this .gguf instead of the generated bench model
  --llama-server PATH   use this llama-server binary instead of building one
  --no-llama-server     leave the llama-server column out
  --build-jobs N        parallel compile jobs for the llama-server build (default 2)
  --verbose             show the servers' logs
  --help                this text

The first run builds llama-server from node_modules/node-llama-cpp/llama/gitRelease.bundle into
\${XDG_CACHE_HOME:-~/.cache}/cortex-bench/ (several minutes); later runs reuse it. Without cmake or
a C++ compiler that column is skipped with the reason printed.`

const values = parseCli({
  quick: { type: "boolean", default: false },
  repeats: { type: "string" },
  runs: { type: "string" },
  threads: { type: "string", default: "1" },
  "decode-tokens": { type: "string" },
  "prefill-words": { type: "string" },
  "history-words": { type: "string" },
  streams: { type: "string", default: "4" },
  context: { type: "string", default: "4096" },
  model: { type: "string" },
  "llama-server": { type: "string" },
  "no-llama-server": { type: "boolean", default: false },
  "build-jobs": { type: "string", default: "2" },
  verbose: { type: "boolean", default: false }
}, USAGE)
const quick = values.quick

const SETTINGS = {
  repeats: numberArg("repeats", values.repeats ?? values.runs ?? (quick ? "1" : "3"), 1, true),
  threads: numberArg("threads", values.threads, 1, true),
  contextSize: numberArg("context", values.context, 256, true),
  batchSize: 512,
  slots: numberArg("streams", values.streams, 1, true),
  temperature: 0,
  seed: 42,
  decodeTokens: numberArg("decode-tokens", values["decode-tokens"] ?? (quick ? "32" : "128"), 2, true),
  prefillWords: numberArg("prefill-words", values["prefill-words"] ?? (quick ? "300" : "1000"), 1, true),
  historyWords: numberArg("history-words", values["history-words"] ?? (quick ? "300" : "1000"), 1, true),
  replyTokens: 32,
  buildJobs: numberArg("build-jobs", values["build-jobs"], 1, true)
} as const

// ---------------------------------------------------------------------------------------------
// The measurements

const DECODE_PROMPT = "Write a long story about the water and the people."
const TTFT_PROMPT = "Hello, what is your name?"
const SECOND_TURN = "Thank you. And what about the water?"
const PREFILL_TEXT = fillerText(SETTINGS.prefillWords)
const HISTORY_TEXT = fillerText(SETTINGS.historyWords, 0x9e3779b9)

/** A per-repeat tag right after the chat template's opening, so no side finds it cached. */
const user = (tag: string, repeat: number, text: string): ChatRequest["messages"][number] => ({
  role: "user",
  content: `${tag} ${repeat}. ${text}`
})

interface Measured {
  readonly load: Array<LoadSample>
  readonly decode: Array<Sample>
  readonly prefill: Array<Sample>
  readonly ttft: Array<Sample>
  readonly turn1: Array<Sample>
  readonly turn2: Array<Sample>
  readonly concurrent: Array<ReadonlyArray<Sample>>
}

const emptyMeasured = (): Measured => ({
  load: [],
  decode: [],
  prefill: [],
  ttft: [],
  turn1: [],
  turn2: [],
  concurrent: []
})

const one = async (side: Side, request: ChatRequest) => (await side.chats([request]))[0]!

type Step = (side: Side, into: Measured, repeat: number) => Promise<string>

/** The measurements of one repeat, in order; each runs on every side before the next starts. */
const STEPS: ReadonlyArray<readonly [string, Step]> = [
  ["load", async (side, into) => {
    const l = await side.load()
    into.load.push(l)
    // Not measured: the first generation after a load pays for lazy allocations.
    await one(side, { messages: [user("warm-up", 0, DECODE_PROMPT)], maxTokens: 8 })
    return `${l.ms.toFixed(0)} ms`
  }],
  ["decode", async (side, into, r) => {
    const s = await one(side, { messages: [user("decode", r, DECODE_PROMPT)], maxTokens: SETTINGS.decodeTokens })
    into.decode.push(s)
    return `${decodeRate(s).toFixed(1)} tok/s (${s.completionTokens} tok)`
  }],
  ["prefill", async (side, into, r) => {
    const s = await one(side, { messages: [user("prefill", r, PREFILL_TEXT)], maxTokens: 1 })
    into.prefill.push(s)
    return `${prefillRate(s).toFixed(1)} tok/s (${s.promptTokens} tok, cached ${s.cachedTokens})`
  }],
  ["ttft", async (side, into, r) => {
    const s = await one(side, { messages: [user("ttft", r, TTFT_PROMPT)], maxTokens: 1 })
    into.ttft.push(s)
    return `${s.ttftMs.toFixed(1)} ms (${s.promptTokens} tok, cached ${s.cachedTokens})`
  }],
  ["two turns", async (side, into, r) => {
    const history = user("history", r, HISTORY_TEXT)
    const first = await one(side, { messages: [history], maxTokens: SETTINGS.replyTokens })
    const second = await one(side, {
      messages: [history, { role: "assistant", content: first.text }, { role: "user", content: SECOND_TURN }],
      maxTokens: 1
    })
    into.turn1.push(first)
    into.turn2.push(second)
    return `${first.ttftMs.toFixed(0)} → ${
      second.ttftMs.toFixed(0)
    } ms (${second.promptTokens} tok, cached ${second.cachedTokens})`
  }],
  ["concurrent", async (side, into, r) => {
    const requests = Array.from({ length: SETTINGS.slots }, (_, i): ChatRequest => ({
      messages: [user(`stream ${i} of`, r, DECODE_PROMPT)],
      maxTokens: SETTINGS.decodeTokens,
      sequence: i
    }))
    const samples = await side.chats(requests)
    into.concurrent.push(samples)
    return `${aggregateRate(samples).toFixed(1)} tok/s (${samples.map((s) => s.completionTokens).join("+")} tok)`
  }]
]

// ---------------------------------------------------------------------------------------------
// Report

const cpuInfo = () => {
  const cpus = os.cpus()
  return {
    model: cpus[0]?.model.trim() ?? "unknown",
    logicalCores: cpus.length,
    totalMemMb: Math.round(os.totalmem() / (1024 * 1024))
  }
}

const table = (rows: ReadonlyArray<ReadonlyArray<string>>) => {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? "").length)))
  const line = (r: ReadonlyArray<string>) => `| ${r.map((cell, c) => cell.padEnd(widths[c]!)).join(" | ")} |`
  const sep = `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`
  return [line(rows[0]!), sep, ...rows.slice(1).map(line)].join("\n")
}

const fmt = (s: Summary | undefined, digits = 1) =>
  s === undefined || Number.isNaN(s.median)
    ? "–"
    : s.samples.length === 1
    ? s.median.toFixed(digits)
    : `${s.median.toFixed(digits)} (${s.min.toFixed(digits)}–${s.max.toFixed(digits)})`

const ratio = (num: Summary | undefined, den: Summary | undefined) =>
  num === undefined || den === undefined || !(den.median > 0) ? undefined : round(num.median / den.median, 3)

const distinct = (values: ReadonlyArray<number | null>) =>
  values.length === 0 ? "–" : [...new Set(values.map((v) => v ?? "?"))].join("/")

interface Figures {
  readonly decode: Summary
  readonly prefill: Summary
  readonly ttft: Summary
  readonly turn1: Summary
  readonly turn2: Summary
  readonly turn2Fraction: Summary
  readonly concurrent: Summary
  readonly load: Summary
}

const figures = (m: Measured): Figures => ({
  decode: summarize(m.decode.map(decodeRate)),
  prefill: summarize(m.prefill.map(prefillRate)),
  ttft: summarize(m.ttft.map((s) => s.ttftMs)),
  turn1: summarize(m.turn1.map((s) => s.ttftMs)),
  turn2: summarize(m.turn2.map((s) => s.ttftMs)),
  turn2Fraction: summarize(m.turn2.map((s, i) => (100 * s.ttftMs) / m.turn1[i]!.ttftMs)),
  concurrent: summarize(m.concurrent.map(aggregateRate)),
  load: summarize(m.load.map((l) => l.ms))
})

/** Prompt / completion / cached tokens per request kind, to show the sides did the same work. */
const tokens = (m: Measured) => ({
  decode: { prompt: m.decode.map((s) => s.promptTokens), completion: m.decode.map((s) => s.completionTokens) },
  prefill: { prompt: m.prefill.map((s) => s.promptTokens), cached: m.prefill.map((s) => s.cachedTokens) },
  ttft: { prompt: m.ttft.map((s) => s.promptTokens), cached: m.ttft.map((s) => s.cachedTokens) },
  turn1: { prompt: m.turn1.map((s) => s.promptTokens), completion: m.turn1.map((s) => s.completionTokens) },
  turn2: { prompt: m.turn2.map((s) => s.promptTokens), cached: m.turn2.map((s) => s.cachedTokens) },
  concurrent: { completion: m.concurrent.map((c) => c.reduce((n, s) => n + s.completionTokens, 0)) }
})

interface Context {
  readonly modelPath: string
  readonly loadBefore: ReadonlyArray<number>
  readonly llamaServer: LlamaServerResolution
  readonly llamaServerSide: LlamaServerSide | undefined
  readonly inProcess: InProcessSide
  readonly neuron: NeuronSide
  readonly measured: ReadonlyMap<string, Measured>
  readonly order: ReadonlyArray<string>
  readonly wallSeconds: number
}

const report = (c: Context) => {
  const sides = ["llama-server", "in-process", "neuron"] as const
  const fig = new Map(sides.map((s) => [s, c.measured.has(s) ? figures(c.measured.get(s)!) : undefined]))
  const tok = new Map(sides.map((s) => [s, c.measured.has(s) ? tokens(c.measured.get(s)!) : undefined]))
  const n = fig.get("neuron")!
  const row = (
    label: string,
    pick: (f: Figures) => Summary,
    digits = 1
  ) => {
    const cells = sides.map((s) => fig.get(s) === undefined ? "skipped" : fmt(pick(fig.get(s)!), digits))
    const r1 = ratio(pick(n), fig.get("llama-server") && pick(fig.get("llama-server")!))
    const r2 = ratio(pick(n), fig.get("in-process") && pick(fig.get("in-process")!))
    return [label, ...cells, r1 === undefined ? "–" : r1.toFixed(3), r2 === undefined ? "–" : r2.toFixed(3)]
  }
  const perSide = (f: (t: ReturnType<typeof tokens>) => string) =>
    sides.map((s) => `${s} ${tok.get(s) ? f(tok.get(s)!) : "–"}`).join(", ")
  const ls = c.llamaServer._tag === "ok" ? c.llamaServer.binary : undefined
  const rows = [
    ["metric: median (min–max)", "llama-server", "in-process", "neuron", "neuron/llama-server", "neuron/in-process"],
    row(`decode tok/s, ${SETTINGS.decodeTokens} tok (higher is better)`, (f) => f.decode),
    row(`prefill tok/s, ~${SETTINGS.prefillWords}-token prompt (higher)`, (f) => f.prefill),
    row("TTFT ms, short prompt (lower)", (f) => f.ttft),
    row(`TTFT ms, 1st turn, ~${SETTINGS.historyWords}-token history (lower)`, (f) => f.turn1),
    row("TTFT ms, 2nd turn sharing it (lower)", (f) => f.turn2),
    row("  2nd turn TTFT as % of 1st (target ≤ 15)", (f) => f.turn2Fraction),
    row(`aggregate tok/s, ${SETTINGS.slots} streams × ${SETTINGS.decodeTokens} tok (higher)`, (f) => f.concurrent),
    row("load ms (lower)", (f) => f.load, 0)
  ]
  const cpu = cpuInfo()
  const loadText = (l: ReadonlyArray<number>) => l.map((x) => x.toFixed(2)).join(" ")
  const loadAfter = os.loadavg()
  console.log("")
  console.log(
    `machine:  ${cpu.model}, ${cpu.logicalCores} logical cores, ${cpu.totalMemMb} MB RAM, node ${process.version}; `
      + `load average ${loadText(c.loadBefore)} before, ${
        loadText(loadAfter)
      } after (shared machine: figures are indicative)`
  )
  console.log(
    `settings: model ${
      path.basename(c.modelPath)
    }, threads ${SETTINGS.threads}, context ${SETTINGS.contextSize} per sequence, `
      + `${SETTINGS.slots} slots/sequences per side, batch ${SETTINGS.batchSize}, temperature ${SETTINGS.temperature}, `
      + `seed ${SETTINGS.seed}, repeats ${SETTINGS.repeats} (order rotated: ${c.order.join(", ")}), gpu off, `
      + `flash attention auto (node-llama-cpp's default, which the neuron uses); HTTP sides on /v1/chat/completions streamed over SSE`
  )
  console.log(
    ls
      ? `llama-server: ${ls.version}, llama.cpp ${ls.commit.slice(0, 12)}, ${
        ls.cached ? "cached" : `built in ${ls.buildSeconds} s`
      }, CPU variant ${ls.variant}; ${ls.cmakeFlags.join(" ")}`
      : `llama-server: skipped (${c.llamaServer._tag === "skip" ? c.llamaServer.reason : ""})`
  )
  if (c.llamaServerSide) {
    const i = c.llamaServerSide.info
    console.log(`llama-server slots: n_ctx_slot ${i.nCtxSlot ?? "?"}, kv_unified ${i.kvUnified ?? "?"}`)
  }
  const compilers = {
    llamaServer: ls ? llamaServerCompiler(ls.path) ?? "unknown" : null,
    prebuilt: prebuiltCompiler(ROOT) ?? "unknown"
  }
  console.log(`compilers: llama-server ${compilers.llamaServer ?? "–"}; node-llama-cpp prebuilt ${compilers.prebuilt}`)
  // The prebuilt loads one CPU variant at run time: its features here show which (llama-server's are the -DGGML_ flags above).
  console.log(`in-process (prebuilt node-llama-cpp) system_info: ${c.inProcess.systemInfo.trim()}`)
  console.log(
    `load: llama-server = spawn → /health 200; in-process = loadModel + createContext; neuron = POST /models/load `
      + `after /models/unload. Neuron spawn → model loaded (once): ${c.neuron.startupMs.toFixed(0)} ms`
  )
  console.log(`tokens per request, as each side counts them (prompt / completion / cached):`)
  console.log(
    `  decode prompt: ${perSide((t) => distinct(t.decode.prompt))}; completion: ${
      perSide((t) => distinct(t.decode.completion))
    }`
  )
  console.log(
    `  prefill prompt: ${perSide((t) => distinct(t.prefill.prompt))}; cached: ${
      perSide((t) => distinct(t.prefill.cached))
    }`
  )
  console.log(
    `  ttft prompt: ${perSide((t) => distinct(t.ttft.prompt))}; cached: ${perSide((t) => distinct(t.ttft.cached))}`
  )
  console.log(
    `  1st turn prompt: ${perSide((t) => distinct(t.turn1.prompt))}; completion: ${
      perSide((t) => distinct(t.turn1.completion))
    }`
  )
  console.log(
    `  2nd turn prompt: ${perSide((t) => distinct(t.turn2.prompt))}; cached: ${
      perSide((t) => distinct(t.turn2.cached))
    }`
  )
  console.log(`  concurrent completion (all streams): ${perSide((t) => distinct(t.concurrent.completion))}`)
  console.log(`wall time ${c.wallSeconds.toFixed(0)} s`)
  console.log("")
  console.log(table(rows))
  console.log("")
  const json = (f: Figures | undefined) =>
    f && {
      decodeTokPerS: f.decode,
      prefillTokPerS: f.prefill,
      ttftShortMs: f.ttft,
      ttftTurn1Ms: f.turn1,
      ttftTurn2Ms: f.turn2,
      turn2PercentOfTurn1: f.turn2Fraction,
      concurrentTokPerS: f.concurrent,
      loadMs: f.load
    }
  const ratios = (other: "llama-server" | "in-process") => {
    const o = fig.get(other)
    if (!o) return null
    return {
      decode: ratio(n.decode, o.decode),
      prefill: ratio(n.prefill, o.prefill),
      ttftShort: ratio(n.ttft, o.ttft),
      ttftTurn2: ratio(n.turn2, o.turn2),
      concurrent: ratio(n.concurrent, o.concurrent),
      load: ratio(n.load, o.load)
    }
  }
  const serverTimings = (s: (typeof sides)[number]) => c.measured.get(s)?.decode.map((x) => x.server ?? null) ?? null
  console.log(JSON.stringify({
    bench: "neuron",
    machine: { ...cpu, loadavgBefore: c.loadBefore.map((x) => round(x)), loadavgAfter: loadAfter.map((x) => round(x)) },
    settings: { ...SETTINGS, model: path.basename(c.modelPath), gpu: false, flashAttention: "auto", order: c.order },
    llamaServer: ls
      ? {
        version: ls.version,
        commit: ls.commit,
        variant: ls.variant,
        cmakeFlags: ls.cmakeFlags,
        buildSeconds: ls.buildSeconds,
        ...c.llamaServerSide?.info
      }
      : { skipped: c.llamaServer._tag === "skip" ? c.llamaServer.reason : "" },
    compilers,
    sides: Object.fromEntries(sides.map((s) => [s, json(fig.get(s)) ?? null])),
    ratios: { neuronOverLlamaServer: ratios("llama-server"), neuronOverInProcess: ratios("in-process") },
    tokens: Object.fromEntries(sides.map((s) => [s, tok.get(s) ?? null])),
    loadDetail: Object.fromEntries(sides.map((s) => [s, c.measured.get(s)?.load.map((l) => l.detail ?? null) ?? null])),
    decodeServerTimings: { "llama-server": serverTimings("llama-server"), neuron: serverTimings("neuron") },
    neuronStartupMs: Math.round(c.neuron.startupMs),
    wallSeconds: Math.round(c.wallSeconds)
  }))
}

// ---------------------------------------------------------------------------------------------
// Main

let tempDir: string | undefined
const running: Array<Side> = []

const cleanup = async () => {
  for (const side of running.splice(0)) await side.stop().catch(() => {})
  if (tempDir) await rm(tempDir, { recursive: true, force: true })
}
stopChildrenOnExit(cleanup)

const main = async () => {
  let modelPath: string
  if (values.model !== undefined) {
    modelPath = path.resolve(values.model)
    if (!existsSync(modelPath)) throw new Error(`--model ${modelPath} does not exist`)
    if (!modelPath.endsWith(".gguf")) throw new Error(`--model must name a .gguf file`)
  } else {
    tempDir = await mkdtemp(path.join(os.tmpdir(), "cortex-bench-"))
    modelPath = path.join(tempDir, "bench.gguf")
    const t0 = performance.now()
    const { bytes } = await writeModel(modelPath, { shape: "bench" })
    log(`generated ${modelPath} (${(bytes / 1e6).toFixed(1)} MB) in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  }

  const llamaServer: LlamaServerResolution = values["no-llama-server"]
    ? { _tag: "skip", reason: "--no-llama-server" }
    : values["llama-server"] !== undefined
    ? await givenLlamaServer(path.resolve(values["llama-server"]))
    : await buildLlamaServer(ROOT, log, SETTINGS.buildJobs)
  if (llamaServer._tag === "skip") log(`llama-server column skipped: ${llamaServer.reason}`)

  const loadBefore = os.loadavg()
  const started = performance.now()
  const modelId = path.basename(modelPath, ".gguf")
  const settings: SideSettings = {
    modelPath,
    threads: SETTINGS.threads,
    contextSize: SETTINGS.contextSize,
    batchSize: SETTINGS.batchSize,
    slots: SETTINGS.slots,
    temperature: SETTINGS.temperature,
    seed: SETTINGS.seed,
    verbose: values.verbose
  }
  const inProcess = new InProcessSide(settings)
  const neuron = new NeuronSide(modelId, settings)
  const llamaServerSide = llamaServer._tag === "ok" ? new LlamaServerSide(llamaServer.binary.path, settings) : undefined
  running.push(inProcess, neuron, ...(llamaServerSide ? [llamaServerSide] : []))

  log("starting the in-process child and the neuron (each in its own session)")
  await inProcess.start()
  await neuron.start()
  log(`neuron spawn → ${modelId} loaded: ${neuron.startupMs.toFixed(0)} ms`)

  const sides: ReadonlyArray<Side> = [...(llamaServerSide ? [llamaServerSide] : []), inProcess, neuron]
  const measured = new Map(sides.map((s) => [s.name, emptyMeasured()]))
  for (let r = 1; r <= SETTINGS.repeats; r++) {
    // Rotate the order each repeat, so load drift lands on every side alike.
    const order = sides.map((_, i) => sides[(i + r - 1) % sides.length]!)
    log(`repeat ${r}/${SETTINGS.repeats}: order ${order.map((s) => s.name).join(", ")}`)
    for (const [name, step] of STEPS) {
      for (const side of order) {
        const line = await step(side, measured.get(side.name)!, r)
        log(`  ${name.padEnd(10)} ${side.name.padEnd(12)} ${line}`)
      }
    }
  }
  const wallSeconds = (performance.now() - started) / 1000
  report({
    modelPath,
    loadBefore,
    llamaServer,
    llamaServerSide,
    inProcess,
    neuron,
    measured,
    order: sides.map((s) => s.name),
    wallSeconds
  })
}

try {
  await main()
} catch (error) {
  console.error(error instanceof Error ? (error.stack ?? error.message) : error)
  process.exitCode = 1
} finally {
  await cleanup()
}
