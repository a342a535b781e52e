/**
 * Gateway benchmark: what `cortex serve` adds in front of a neuron, against the least a Node
 * reverse proxy adds (the floor), both over the same scripted upstream, measured in one run.
 *
 *   npx tsx bench/gateway/run.ts [--quick] [--latency-ms N] [--frames N] [--frame-gap-ms N]
 *     [--requests N] [--duration-ms N] [--streams N] [--concurrency N] [--rounds N] [--cpu-prof DIR]
 *     [--no-peers]
 *
 * Paths, each with its own keep-alive agent of the same settings:
 *   direct     client → upstream
 *   floor      client → plain node:http reverse proxy (bench/gateway/floor.ts) → upstream
 *   gateway    client → cortex serve → upstream (OpenAI chat, relayed)
 *   anthropic  client → cortex serve → upstream (Anthropic messages, translated both ways)
 *   keys       (--keys) client → another cortex serve, every request with an issued key, and the usage
 *              ledger on (embedded store) → upstream (OpenAI chat): keys+ledger on vs off, same run
 *   twin       (--keys) the same without the store: the "keys off" side of that comparison
 *   portkey    client → @portkey-ai/gateway → upstream (OpenAI chat), a peer (bench/gateway/peers.ts)
 *   ccr        client → @musistudio/claude-code-router → upstream (Anthropic in, OpenAI chat out), a peer
 *              (--no-peers leaves both out; a peer that cannot start is skipped with the reason)
 * The upstream (bench/gateway/upstream.ts) and the floor run in child processes; the client runs
 * here. Phases alternate between paths in rounds (order rotated each round) so that drift in the
 * machine's load lands on every path alike.
 *
 * Not part of the test suite: about 1.5 minutes (40 s with --quick); wants the CPU to itself.
 * `--cpu-prof DIR` runs the gateway under V8's profiler and prints where its CPU time went in the
 * concurrency-N phases (the run's figures are then slower than unprofiled ones).
 */
import { execFileSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises"
import * as http from "node:http"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import {
  BenchChild,
  children,
  freePort,
  log,
  numberArg,
  ORPHAN_GUARD,
  parseCli,
  sleep,
  stopChildrenOnExit
} from "../lib.js"
import { type Peer, type PeerKey, type PeerSkip, startPeers } from "./peers.js"
import { monotonicUs, type ProfileSummary, summarizeProfile, type Window } from "./profile.js"

// ---------------------------------------------------------------------------------------------
// Settings

const HERE = path.dirname(fileURLToPath(import.meta.url))
const ROOT = path.resolve(HERE, "../..")
const MODEL = "fast"

const USAGE = `usage: npx tsx bench/gateway/run.ts [options]

  --quick               shorter runs (a smoke run, not a figure to quote)
  --latency-ms N        upstream latency before the answer (default 0)
  --frames N            stream frames per answer (default 32)
  --frame-gap-ms N      gap between frames (default 2)
  --requests N          requests at concurrency 1 per path (default 2000; quick 400)
  --duration-ms N       each round at concurrency N (default 1500; quick 600)
  --streams N           streams at concurrency 1 per path (default 60; quick 12)
  --concurrency N       the concurrency of the throughput rounds (default 32)
  --rounds N            throughput rounds per path (default 3; quick 2)
  --keys                add a gateway with an issued key and the usage ledger (embedded store),
                        compared with the plain gateway (keys off) in the same run
  --key-limits          with --keys: give the key rpm/tpm limits it never reaches, so every
                        request also reserves and settles in the store
  --cpu-prof DIR        write V8 CPU profiles of the gateway and the floor to DIR and summarize them
  --no-peers            leave out the peers (Portkey, OpenAI in; claude-code-router, Anthropic in),
                        measured otherwise in the same rounds over the same upstream
  --verbose             show the children's logs
  --help                this text`

const args = parseCli({
  quick: { type: "boolean", default: false },
  "latency-ms": { type: "string", default: "0" },
  frames: { type: "string", default: "32" },
  "frame-gap-ms": { type: "string", default: "2" },
  requests: { type: "string" },
  "duration-ms": { type: "string" },
  streams: { type: "string" },
  concurrency: { type: "string", default: "32" },
  rounds: { type: "string" },
  "cpu-prof": { type: "string" },
  keys: { type: "boolean", default: false },
  "key-limits": { type: "boolean", default: false },
  "no-peers": { type: "boolean", default: false },
  verbose: { type: "boolean", default: false }
}, USAGE)

const quick = args.quick
const SETTINGS = {
  quick,
  upstreamLatencyMs: numberArg("latency-ms", args["latency-ms"], 0, false),
  frames: numberArg("frames", args.frames, 1, true),
  frameGapMs: numberArg("frame-gap-ms", args["frame-gap-ms"], 0, false),
  /** Non-streaming requests at concurrency 1, per path, over all rounds. */
  requests: numberArg("requests", args.requests ?? (quick ? "400" : "2000"), 1, true),
  /** Length of one concurrency-N phase, per path and round. */
  durationMs: numberArg("duration-ms", args["duration-ms"] ?? (quick ? "600" : "1500"), 100, true),
  /** Streams at concurrency 1, per path, over all rounds. */
  streams: numberArg("streams", args.streams ?? (quick ? "12" : "60"), 1, true),
  concurrency: numberArg("concurrency", args.concurrency, 1, true),
  rounds: numberArg("rounds", args.rounds ?? (quick ? "2" : "3"), 1, true),
  warmupRequests: quick ? 200 : 500,
  warmupMs: quick ? 300 : 800,
  warmupStreams: quick ? 3 : 6
} as const

const TARGETS = { addedP50Ms: 0.5, throughputRatio: 0.5 } as const

// ---------------------------------------------------------------------------------------------
// BenchChild processes

/** Start a child in the repository root, its output shown with --verbose. */
const start = (name: string, argv: ReadonlyArray<string>, env: NodeJS.ProcessEnv = process.env) =>
  BenchChild.spawn(name, argv, { cwd: ROOT, env, verbose: args.verbose })

/** CPU seconds (user + system) a process has used so far, from /proc; undefined off Linux. */
const clockTicks = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100
  } catch {
    return 100
  }
})()

const cpuSeconds = (pid: number | undefined): number | undefined => {
  if (pid === undefined) return undefined
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return (Number(fields[11]) + Number(fields[12])) / clockTicks
  } catch {
    return undefined
  }
}

// ---------------------------------------------------------------------------------------------
// Client

type Dialect = "openai" | "anthropic"
type PathKey = "direct" | "floor" | "gateway" | "anthropic" | "keys" | "twin" | PeerKey

interface Target {
  readonly key: PathKey
  readonly label: string
  readonly host: string
  readonly port: number
  readonly agent: http.Agent
  readonly dialect: Dialect
  /** The process between client and upstream, if any (for its CPU time). */
  readonly proxyPid: number | undefined
  /** Extra request headers (the issued key). */
  readonly headers?: Readonly<Record<string, string>>
}

const PROMPT = "Say something short."
const bodies = {
  openai: {
    unary: Buffer.from(JSON.stringify({
      model: MODEL,
      messages: [{ role: "user", content: PROMPT }],
      max_tokens: SETTINGS.frames
    })),
    stream: Buffer.from(JSON.stringify({
      model: MODEL,
      messages: [{ role: "user", content: PROMPT }],
      max_tokens: SETTINGS.frames,
      stream: true,
      stream_options: { include_usage: true }
    }))
  },
  anthropic: {
    unary: Buffer.from(JSON.stringify({
      model: MODEL,
      max_tokens: SETTINGS.frames,
      messages: [{ role: "user", content: PROMPT }]
    })),
    stream: Buffer.from(JSON.stringify({
      model: MODEL,
      max_tokens: SETTINGS.frames,
      messages: [{ role: "user", content: PROMPT }],
      stream: true
    }))
  }
} as const
const routeOf = (dialect: Dialect) => dialect === "openai" ? "/v1/chat/completions" : "/v1/messages"

const ignore = () => {}

/** One POST; resolves with the status once the whole answer has arrived. */
const post = (target: Target, body: Buffer, sink: (chunk: Buffer) => void = ignore) =>
  new Promise<number>((resolve, reject) => {
    const req = http.request({
      agent: target.agent,
      host: target.host,
      port: target.port,
      method: "POST",
      path: routeOf(target.dialect),
      headers: { ...target.headers, "content-type": "application/json", "content-length": body.length }
    }, (res) => {
      res.on("data", sink)
      res.once("end", () => resolve(res.statusCode ?? 0))
      res.once("error", reject)
    })
    req.once("error", reject)
    req.end(body)
  })

/** Non-streaming, one request: its latency in ms, or undefined when it failed. */
const unaryOnce = async (target: Target): Promise<number | undefined> => {
  const started = performance.now()
  try {
    const status = await post(target, bodies[target.dialect].unary)
    return status === 200 ? performance.now() - started : undefined
  } catch {
    return undefined
  }
}

interface StreamSample {
  /** Request start → first content frame. */
  readonly ttftMs: number
  /** Between consecutive content frames, as the client received them. */
  readonly gapsMs: ReadonlyArray<number>
  readonly frames: number
  readonly complete: boolean
}

/** Is this SSE data payload a content frame, the end of the stream, or neither? */
const classify = (dialect: Dialect, data: string): "content" | "end" | undefined => {
  if (dialect === "openai") {
    if (data === "[DONE]") return "end"
    const chunk = JSON.parse(data) as { choices?: Array<{ delta?: { content?: string | null } }> }
    const text = chunk.choices?.[0]?.delta?.content
    return typeof text === "string" && text.length > 0 ? "content" : undefined
  }
  const event = JSON.parse(data) as { type?: string; delta?: { type?: string; text?: string } }
  if (event.type === "message_stop") return "end"
  return event.type === "content_block_delta" && event.delta?.type === "text_delta" && (event.delta.text ?? "") !== ""
    ? "content"
    : undefined
}

const streamOnce = async (target: Target): Promise<StreamSample | undefined> => {
  const started = performance.now()
  let buffer = ""
  let first: number | undefined
  let last = 0
  let frames = 0
  let complete = false
  const gapsMs: Array<number> = []
  const sink = (bytes: Buffer) => {
    const now = performance.now()
    buffer += bytes.toString("utf8")
    let boundary: number
    while ((boundary = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, boundary)
      buffer = buffer.slice(boundary + 2)
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue
        const kind = classify(target.dialect, line.slice(line[5] === " " ? 6 : 5))
        if (kind === "end") complete = true
        if (kind !== "content") continue
        if (first === undefined) first = now
        else gapsMs.push(now - last)
        last = now
        frames++
      }
    }
  }
  try {
    const status = await post(target, bodies[target.dialect].stream, sink)
    if (status !== 200 || first === undefined) return undefined
    return { ttftMs: first - started, gapsMs, frames, complete }
  } catch {
    return undefined
  }
}

const streamOk = (s: StreamSample | undefined): s is StreamSample =>
  s !== undefined && s.complete && s.frames === SETTINGS.frames

interface Throughput {
  readonly perSec: number
  readonly ok: number
  readonly failed: number
  /** CPU time the proxy process (floor or gateway) spent per completed request, µs. */
  readonly proxyCpuUsPerReq: number | undefined
  /** Cores each process kept busy during the phase (CPU time / wall time), this one as `client`. */
  readonly cores: Readonly<Record<string, number>>
}

/** Processes whose CPU time each phase reads: the bench servers, by name. */
const probes: Array<{ readonly name: string; readonly pid: number | undefined }> = []

const cpuNow = () => {
  const own = process.cpuUsage()
  return new Map<string, number | undefined>([
    ["client", (own.user + own.system) / 1e6],
    ...probes.map((p) => [p.name, cpuSeconds(p.pid)] as const)
  ])
}

/** Phases of concurrency-N load, on the monotonic clock (to cut the gateway's CPU profile by phase). */
const phases: Array<{ readonly key: PathKey; readonly kind: "unary" | "stream" } & Window> = []

/** `concurrency` workers issue requests back to back for `durationMs`; completed per second. */
const throughput = async (
  target: Target,
  once: (t: Target) => Promise<boolean>,
  durationMs: number,
  kind?: "unary" | "stream"
): Promise<Throughput> => {
  let ok = 0
  let failed = 0
  const cpuBefore = cpuNow()
  const proxyBefore = cpuSeconds(target.proxyPid)
  const fromUs = monotonicUs()
  const started = performance.now()
  const deadline = started + durationMs
  const worker = async () => {
    while (performance.now() < deadline) {
      if (await once(target)) ok++
      else failed++
    }
  }
  await Promise.all(Array.from({ length: SETTINGS.concurrency }, worker))
  const elapsed = performance.now() - started
  if (kind) phases.push({ key: target.key, kind, fromUs, toUs: monotonicUs() })
  const proxyAfter = cpuSeconds(target.proxyPid)
  const cores: Record<string, number> = {}
  for (const [name, after] of cpuNow()) {
    const before = cpuBefore.get(name)
    if (after !== undefined && before !== undefined) cores[name] = round((after - before) / (elapsed / 1000), 2)
  }
  return {
    perSec: ok / (elapsed / 1000),
    ok,
    failed,
    proxyCpuUsPerReq: proxyBefore !== undefined && proxyAfter !== undefined && ok > 0
      ? ((proxyAfter - proxyBefore) * 1e6) / ok
      : undefined,
    cores
  }
}

const coresText = (cores: Readonly<Record<string, number>>) =>
  Object.entries(cores).map(([name, c]) => `${name} ${c.toFixed(2)}`).join(", ")

const unaryOk = async (t: Target) => (await unaryOnce(t)) !== undefined
const streamOkOnce = async (t: Target) => streamOk(await streamOnce(t))

/** One request of each kind, checked in full: a path that answers wrong must not be timed. */
const validate = async (target: Target) => {
  const parts: Array<Buffer> = []
  const status = await post(target, bodies[target.dialect].unary, (b) => parts.push(b))
  const text = Buffer.concat(parts).toString("utf8")
  if (status !== 200) throw new Error(`${target.label}: HTTP ${status}: ${text}`)
  const answer = JSON.parse(text) as {
    choices?: Array<{ message?: { content?: string } }>
    content?: Array<{ text?: string }>
  }
  const content = target.dialect === "openai" ? answer.choices?.[0]?.message?.content : answer.content?.[0]?.text
  const expected = Array.from({ length: SETTINGS.frames }, (_, i) => `w${i} `).join("")
  if (content !== expected) throw new Error(`${target.label}: unexpected answer ${text.slice(0, 400)}`)
  const stream = await streamOnce(target)
  const frames = stream?.frames ?? 0
  const complete = stream?.complete ?? false
  if (!streamOk(stream)) {
    throw new Error(`${target.label}: stream incomplete (${frames}/${SETTINGS.frames} frames, end seen: ${complete})`)
  }
}

// ---------------------------------------------------------------------------------------------
// Statistics and formatting

const round = (x: number, digits = 3) => {
  const f = 10 ** digits
  return Math.round(x * f) / f
}

const percentile = (sorted: ReadonlyArray<number>, q: number) => {
  if (sorted.length === 0) return NaN
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[rank]!
}

interface Dist {
  readonly n: number
  readonly p50: number
  readonly p99: number
  readonly mean: number
}

const dist = (samples: ReadonlyArray<number>): Dist => {
  const sorted = [...samples].sort((a, b) => a - b)
  const mean = sorted.reduce((s, x) => s + x, 0) / Math.max(1, sorted.length)
  return {
    n: sorted.length,
    p50: round(percentile(sorted, 0.5)),
    p99: round(percentile(sorted, 0.99)),
    mean: round(sorted.length > 0 ? mean : NaN)
  }
}

interface Spread {
  readonly median: number
  readonly min: number
  readonly max: number
  readonly samples: ReadonlyArray<number>
}

const medianOf = (samples: ReadonlyArray<number>) => {
  const sorted = [...samples].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length === 0
    ? NaN
    : sorted.length % 2 === 1
    ? sorted[mid]!
    : (sorted[mid - 1]! + sorted[mid]!) / 2
}

const spread = (samples: ReadonlyArray<number>): Spread => ({
  median: round(medianOf(samples), 1),
  min: round(Math.min(...samples), 1),
  max: round(Math.max(...samples), 1),
  samples: samples.map((x) => round(x, 1))
})

const ms = (x: number) => (Number.isFinite(x) ? x.toFixed(3) : "—")
const signedMs = (x: number) => (Number.isFinite(x) ? `${x >= 0 ? "+" : "−"}${Math.abs(x).toFixed(3)}` : "—")
const rate = (s: Spread) => `${s.median.toFixed(0)} (${s.min.toFixed(0)}–${s.max.toFixed(0)})`
const ratioText = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : "—")

const table = (rows: ReadonlyArray<ReadonlyArray<string>>) => {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? "").length)))
  const line = (r: ReadonlyArray<string>) => `| ${r.map((cell, c) => cell.padEnd(widths[c]!)).join(" | ")} |`
  const sep = `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`
  return [line(rows[0]!), sep, ...rows.slice(1).map(line)].join("\n")
}

const cpuInfo = () => {
  const cpus = os.cpus()
  return {
    model: cpus[0]?.model.trim() ?? "unknown",
    logicalCores: cpus.length,
    availableParallelism: os.availableParallelism(),
    totalMemMb: Math.round(os.totalmem() / (1024 * 1024)),
    node: process.version
  }
}

// ---------------------------------------------------------------------------------------------
// Measurement

interface PathResult {
  readonly latencyMs: Array<number>
  latencyErrors: number
  /** Proxy CPU µs per request during the concurrency-1 phases, one per round. */
  readonly latencyCpuUs: Array<number>
  readonly unary: Array<Throughput>
  readonly ttftMs: Array<number>
  readonly gapsMs: Array<number>
  streamErrors: number
  readonly streamed: Array<Throughput>
}

const emptyResult = (): PathResult => ({
  latencyMs: [],
  latencyErrors: 0,
  latencyCpuUs: [],
  unary: [],
  ttftMs: [],
  gapsMs: [],
  streamErrors: 0,
  streamed: []
})

const warmUp = async (target: Target) => {
  for (let i = 0; i < SETTINGS.warmupRequests; i++) await unaryOnce(target)
  await throughput(target, unaryOk, SETTINGS.warmupMs)
  for (let i = 0; i < SETTINGS.warmupStreams; i++) await streamOnce(target)
  await throughput(target, streamOkOnce, SETTINGS.warmupMs / 2)
}

const measure = async (targets: ReadonlyArray<Target>) => {
  const results = new Map<PathKey, PathResult>(targets.map((t) => [t.key, emptyResult()]))
  const resultOf = (t: Target) => results.get(t.key)!
  const perRound = (total: number, r: number) =>
    Math.floor((total * (r + 1)) / SETTINGS.rounds) - Math.floor((total * r) / SETTINGS.rounds)
  for (let r = 0; r < SETTINGS.rounds; r++) {
    // Rotate the order each round, so no path always runs right after another's burst.
    const order = targets.map((_, i) => targets[(i + r) % targets.length]!)
    const tag = `round ${r + 1}/${SETTINGS.rounds}`
    for (const t of order) {
      const res = resultOf(t)
      const cpuBefore = cpuSeconds(t.proxyPid)
      let ok = 0
      for (let i = perRound(SETTINGS.requests, r); i > 0; i--) {
        const latency = await unaryOnce(t)
        if (latency === undefined) {
          res.latencyErrors++
        } else {
          res.latencyMs.push(latency)
          ok++
        }
      }
      const cpuAfter = cpuSeconds(t.proxyPid)
      if (cpuBefore !== undefined && cpuAfter !== undefined && ok > 0) {
        res.latencyCpuUs.push(((cpuAfter - cpuBefore) * 1e6) / ok)
      }
    }
    log(`${tag}: c=1 latency done`)
    for (const t of order) {
      const result = await throughput(t, unaryOk, SETTINGS.durationMs, "unary")
      resultOf(t).unary.push(result)
      log(
        `${tag}: ${t.label} c=${SETTINGS.concurrency} ${result.perSec.toFixed(0)} req/s (${result.failed} failed; `
          + `cores busy: ${coresText(result.cores)})`
      )
    }
    for (const t of order) {
      const res = resultOf(t)
      for (let i = perRound(SETTINGS.streams, r); i > 0; i--) {
        const s = await streamOnce(t)
        if (!streamOk(s)) {
          res.streamErrors++
          continue
        }
        res.ttftMs.push(s.ttftMs)
        res.gapsMs.push(...s.gapsMs)
      }
    }
    log(`${tag}: c=1 streams done`)
    for (const t of order) {
      const result = await throughput(t, streamOkOnce, SETTINGS.durationMs, "stream")
      resultOf(t).streamed.push(result)
      log(
        `${tag}: ${t.label} c=${SETTINGS.concurrency} ${result.perSec.toFixed(0)} streams/s (${result.failed} failed; `
          + `cores busy: ${coresText(result.cores)})`
      )
    }
  }
  return results
}

// ---------------------------------------------------------------------------------------------
// Report

interface Load {
  readonly before: ReadonlyArray<number>
}

const report = (
  targets: ReadonlyArray<Target>,
  results: ReadonlyMap<PathKey, PathResult>,
  load: Load,
  startupMs:
    & { readonly upstream: number; readonly floor: number; readonly gateway: number }
    & Readonly<
      Partial<Record<PeerKey, number>>
    >,
  profiles: ReadonlyArray<{ readonly title: string; readonly summary: ProfileSummary }>,
  peerInfo: { readonly peers: ReadonlyArray<Peer>; readonly skipped: ReadonlyArray<PeerSkip> }
) => {
  const get = (key: PathKey) => results.get(key)!
  const median = (xs: ReadonlyArray<number | undefined>) => {
    const defined = xs.filter((x): x is number => x !== undefined)
    return defined.length === 0 ? undefined : round(medianOf(defined), 2)
  }
  const coresMedian = (phases: ReadonlyArray<Throughput>) => {
    const names = [...new Set(phases.flatMap((p) => Object.keys(p.cores)))]
    const out: Record<string, number> = {}
    for (const name of names) {
      const m = median(phases.map((p) => p.cores[name]))
      if (m !== undefined) out[name] = m
    }
    return out
  }
  const view = new Map(targets.map((t) => {
    const r = get(t.key)
    return [t.key, {
      latency: dist(r.latencyMs),
      latencyErrors: r.latencyErrors,
      reqPerSec: spread(r.unary.map((x) => x.perSec)),
      unaryFailed: r.unary.reduce((s, x) => s + x.failed, 0),
      proxyCpuUsPerReq: median(r.unary.map((x) => x.proxyCpuUsPerReq)),
      proxyCpuUsPerReqC1: median(r.latencyCpuUs),
      coresBusy: coresMedian(r.unary),
      coresBusyStreaming: coresMedian(r.streamed),
      ttft: dist(r.ttftMs),
      gaps: dist(r.gapsMs),
      streamErrors: r.streamErrors,
      streamsPerSec: spread(r.streamed.map((x) => x.perSec)),
      streamedFailed: r.streamed.reduce((s, x) => s + x.failed, 0),
      proxyCpuUsPerStream: median(r.streamed.map((x) => x.proxyCpuUsPerReq))
    }] as const
  }))
  const v = (key: PathKey) => view.get(key)!
  const direct = v("direct")
  const floor = v("floor")
  const gateway = v("gateway")
  const anthropic = v("anthropic")
  const toFloor = (x: Spread) => x.median / floor.reqPerSec.median
  const streamsToFloor = (x: Spread) => x.median / floor.streamsPerSec.median
  const cpuText = (x: number | undefined) => (x === undefined ? "—" : x.toFixed(0))

  const unaryRows: Array<Array<string>> = [[
    "path",
    "p50 ms",
    "p99 ms",
    "added p50",
    "added p99",
    `req/s c=${SETTINGS.concurrency} (median, min–max)`,
    "ratio to floor",
    `proxy CPU µs/req c=1, c=${SETTINGS.concurrency}`,
    "errors"
  ]]
  const streamRows: Array<Array<string>> = [[
    "path",
    "TTFT p50 ms",
    "TTFT p99",
    "added TTFT p50",
    "gap mean ms",
    "gap p99",
    "added gap mean",
    "added gap p99",
    `streams/s c=${SETTINGS.concurrency}`,
    "ratio to floor",
    "proxy CPU µs/stream",
    "errors"
  ]]
  for (const t of targets) {
    const x = v(t.key)
    unaryRows.push([
      t.label,
      ms(x.latency.p50),
      ms(x.latency.p99),
      t.key === "direct" ? "—" : signedMs(x.latency.p50 - direct.latency.p50),
      t.key === "direct" ? "—" : signedMs(x.latency.p99 - direct.latency.p99),
      rate(x.reqPerSec),
      ratioText(toFloor(x.reqPerSec)),
      t.key === "direct" ? "—" : `${cpuText(x.proxyCpuUsPerReqC1)}, ${cpuText(x.proxyCpuUsPerReq)}`,
      String(x.latencyErrors + x.unaryFailed)
    ])
    streamRows.push([
      t.label,
      ms(x.ttft.p50),
      ms(x.ttft.p99),
      t.key === "direct" ? "—" : signedMs(x.ttft.p50 - direct.ttft.p50),
      ms(x.gaps.mean),
      ms(x.gaps.p99),
      t.key === "direct" ? "—" : signedMs(x.gaps.mean - direct.gaps.mean),
      t.key === "direct" ? "—" : signedMs(x.gaps.p99 - direct.gaps.p99),
      rate(x.streamsPerSec),
      ratioText(streamsToFloor(x.streamsPerSec)),
      cpuText(x.proxyCpuUsPerStream),
      String(x.streamErrors + x.streamedFailed)
    ])
  }

  const keys = view.get("keys")
  const off = view.get("twin") ?? gateway
  const keysLines = keys === undefined ? [] : [
    {
      name: `keys+ledger req/s at c=${SETTINGS.concurrency} within 10 % of keys off (its twin)`,
      value: `${(keys.reqPerSec.median / off.reqPerSec.median).toFixed(3)} × (${keys.reqPerSec.median.toFixed(0)} vs ${
        off.reqPerSec.median.toFixed(0)
      } req/s); streams/s ${(keys.streamsPerSec.median / off.streamsPerSec.median).toFixed(3)} ×; p50 at c=1 ${
        signedMs(keys.latency.p50 - off.latency.p50)
      } ms; gateway CPU per request ${((keys.proxyCpuUsPerReq ?? NaN) / (off.proxyCpuUsPerReq ?? NaN)).toFixed(3)} ×`,
      pass: keys.reqPerSec.median >= 0.9 * off.reqPerSec.median
    }
  ]
  const addedP50 = gateway.latency.p50 - direct.latency.p50
  const throughputRatio = toFloor(gateway.reqPerSec)
  const targetLines = [
    {
      name: `gateway added p50 at c=1 < ${TARGETS.addedP50Ms} ms`,
      value: `${signedMs(addedP50)} ms (floor ${signedMs(floor.latency.p50 - direct.latency.p50)} ms)`,
      pass: addedP50 < TARGETS.addedP50Ms
    },
    {
      name: `gateway req/s at c=${SETTINGS.concurrency} ≥ ${TARGETS.throughputRatio} × floor`,
      value: `${throughputRatio.toFixed(2)} × (${gateway.reqPerSec.median.toFixed(0)} vs ${
        floor.reqPerSec.median.toFixed(0)
      } req/s)`,
      pass: throughputRatio >= TARGETS.throughputRatio
    }
  ]
  const translation = {
    unaryRatio: anthropic.reqPerSec.median / gateway.reqPerSec.median,
    streamRatio: anthropic.streamsPerSec.median / gateway.streamsPerSec.median,
    addedP50Ms: anthropic.latency.p50 - gateway.latency.p50,
    /** CPU per request is steadier than req/s when other work shares the machine. */
    cpuRatio: (anthropic.proxyCpuUsPerReq ?? NaN) / (gateway.proxyCpuUsPerReq ?? NaN),
    streamCpuRatio: (anthropic.proxyCpuUsPerStream ?? NaN) / (gateway.proxyCpuUsPerStream ?? NaN)
  }
  /** Each peer against the gateway path of its dialect: ratios are cortex / peer. */
  const peerComparisons = peerInfo.peers.map((peer) => {
    const x = v(peer.key)
    const ours = peer.dialect === "openai" ? gateway : anthropic
    const ourLabel = peer.dialect === "openai" ? "gateway (OpenAI)" : "gateway (Anthropic)"
    return {
      peer,
      ourLabel,
      reqPerSecRatio: ours.reqPerSec.median / x.reqPerSec.median,
      streamsPerSecRatio: ours.streamsPerSec.median / x.streamsPerSec.median,
      added: {
        p50: { cortex: ours.latency.p50 - direct.latency.p50, peer: x.latency.p50 - direct.latency.p50 },
        p99: { cortex: ours.latency.p99 - direct.latency.p99, peer: x.latency.p99 - direct.latency.p99 },
        ttftP50: { cortex: ours.ttft.p50 - direct.ttft.p50, peer: x.ttft.p50 - direct.ttft.p50 },
        gapMean: { cortex: ours.gaps.mean - direct.gaps.mean, peer: x.gaps.mean - direct.gaps.mean }
      },
      cpuPerRequestRatio: (ours.proxyCpuUsPerReq ?? NaN) / (x.proxyCpuUsPerReq ?? NaN),
      ours,
      x
    }
  })
  const PEER_GOAL = { portkey: 3 } as const satisfies Partial<Record<PeerKey, number>>
  const peerLines = peerComparisons.flatMap((c) => {
    const goal = c.peer.key === "portkey" ? PEER_GOAL.portkey : undefined
    return [
      ...(goal === undefined ? [] : [{
        name: `${c.ourLabel} req/s at c=${SETTINGS.concurrency} ≥ ${goal} × ${c.peer.label} (goal)`,
        value: `${ratioText(c.reqPerSecRatio)} × (${c.ours.reqPerSec.median.toFixed(0)} vs ${
          c.x.reqPerSec.median.toFixed(0)
        } req/s)`,
        pass: c.reqPerSecRatio >= goal
      }]),
      {
        name: `${c.ourLabel} added p50 at c=1 below ${c.peer.label}'s (goal)`,
        value: `${signedMs(c.added.p50.cortex)} vs ${signedMs(c.added.p50.peer)} ms`,
        pass: c.added.p50.cortex < c.added.p50.peer
      }
    ]
  })
  const cpu = cpuInfo()
  const after = os.loadavg()
  const loadText = (l: ReadonlyArray<number>) => l.map((x) => x.toFixed(2)).join(" ")

  console.log("")
  console.log(
    `machine:  ${cpu.model}, ${cpu.logicalCores} logical cores (available parallelism ${cpu.availableParallelism}), `
      + `${cpu.totalMemMb} MB RAM, node ${cpu.node}, load average ${loadText(load.before)} before, ${
        loadText(after)
      } after`
  )
  console.log(
    `settings: upstream latency ${SETTINGS.upstreamLatencyMs} ms, ${SETTINGS.frames} frames ${SETTINGS.frameGapMs} ms apart; `
      + `${SETTINGS.requests} requests and ${SETTINGS.streams} streams at c=1 per path, ${SETTINGS.rounds} rounds of `
      + `${SETTINGS.durationMs} ms at c=${SETTINGS.concurrency} per path; keep-alive agents (maxSockets 64); `
      + `processes: client (this), upstream, floor, gateway${
        peerInfo.peers.map((p) => `, ${p.key}`).join("")
      } (one node each)${quick ? "; --quick" : ""}`
  )
  console.log(
    `startup:  ${
      Object.entries(startupMs).map(([name, t]) => `${name} ${(t ?? NaN).toFixed(0)} ms`).join(", ")
    } (spawn → ready), not part of any figure`
  )
  if (profiles.length > 0) {
    console.log("NOTE: the gateway ran under --cpu-prof; its figures are slower than unprofiled ones")
  }
  console.log("")
  console.log("Non-streaming chat (added = this path's percentile minus direct's)")
  console.log(table(unaryRows))
  console.log("")
  console.log("Streaming (TTFT = request start → first content frame; gap = between content frames at the client)")
  console.log(table(streamRows))
  console.log("")
  console.log(
    `translation (Anthropic in, OpenAI out) vs OpenAI through the gateway: req/s ${
      ratioText(translation.unaryRatio)
    } ×, streams/s ${ratioText(translation.streamRatio)} ×, added p50 at c=1 ${signedMs(translation.addedP50Ms)} ms; `
      + `gateway CPU per request ${ratioText(translation.cpuRatio)} ×, per stream ${
        ratioText(translation.streamCpuRatio)
      } ×`
  )
  if (peerComparisons.length > 0 || peerInfo.skipped.length > 0) {
    console.log("")
    console.log("Peers: the same upstream, measured in the same interleaved rounds (ratios are cortex / peer)")
    for (const c of peerComparisons) {
      const pair = (a: { cortex: number; peer: number }) => `${signedMs(a.cortex)} vs ${signedMs(a.peer)} ms`
      console.log(
        `  ${c.peer.label} (${
          c.peer.dialect === "openai" ? "OpenAI" : "Anthropic"
        } in) vs ${c.ourLabel}: req/s c=${SETTINGS.concurrency} ${c.ours.reqPerSec.median.toFixed(0)} vs ${
          c.x.reqPerSec.median.toFixed(0)
        } = ${ratioText(c.reqPerSecRatio)} ×; streams/s ${ratioText(c.streamsPerSecRatio)} ×; CPU per request ${
          ratioText(c.cpuPerRequestRatio)
        } ×`
      )
      console.log(
        `    added at c=1, cortex vs peer: p50 ${pair(c.added.p50)}, p99 ${pair(c.added.p99)}, TTFT p50 ${
          pair(c.added.ttftP50)
        }, frame gap mean ${pair(c.added.gapMean)}`
      )
      console.log(`    setup: ${c.peer.setup}`)
      if (c.peer.note !== undefined) console.log(`    note: ${c.peer.note}`)
    }
    for (const skip of peerInfo.skipped) console.log(`  skipped: ${skip.name}: ${skip.reason}`)
  }
  console.log(
    `cores busy at c=${SETTINGS.concurrency} non-streaming (median; CPU time / wall time per process): ${
      targets.map((t) => {
        const busy = Object.fromEntries(Object.entries(v(t.key).coresBusy).filter(([, c]) => c >= 0.03))
        return `${t.label}: ${coresText(busy)}`
      }).join("; ")
    }`
  )
  console.log("")
  console.log("targets:")
  for (const t of [...targetLines, ...keysLines, ...peerLines]) {
    console.log(`  ${t.pass ? "PASS" : "MISS"}  ${t.name}: ${t.value}`)
  }
  const shareLines = (list: ReadonlyArray<{ name: string; ms: number; percent: number }>) =>
    list.map((s) => `    ${s.percent.toFixed(1).padStart(5)}%  ${s.ms.toFixed(0).padStart(6)} ms  ${s.name}`).join("\n")
  for (const { summary, title } of profiles) {
    console.log("")
    console.log(`gateway CPU profile, ${title}: busy ${summary.busyMs} ms of ${summary.wallMs} ms sampled`)
    console.log("  self time by origin (% of busy):")
    console.log(shareLines(summary.selfByOrigin))
    console.log("  inclusive time by origin (anywhere on the stack; shares overlap):")
    console.log(shareLines(summary.inclusiveByOrigin))
    console.log("  top functions by self time (src/ positions are in tsx's output):")
    console.log(shareLines(summary.topFunctions))
  }
  if (profiles[0]) {
    console.log(`  profile file: ${profiles[0].summary.file}`)
    console.log(
      "  V8 samples on a wall-clock timer: time the gateway sat descheduled inside a system call (a writev that\n"
        + "  woke the process it writes to, on a busy box) is counted as that call's self time, so writev looks far\n"
        + "  heavier here than on-CPU sampling shows (perf record -e cpu-clock with node --perf-basic-prof); the\n"
        + "  proxy CPU µs/req column is the CPU measure"
    )
  }
  console.log("")

  const pathJson = (key: PathKey) => {
    const x = v(key)
    return {
      latencyMs: x.latency,
      addedP50Ms: key === "direct" ? 0 : round(x.latency.p50 - direct.latency.p50),
      addedP99Ms: key === "direct" ? 0 : round(x.latency.p99 - direct.latency.p99),
      reqPerSec: x.reqPerSec,
      reqPerSecRatioToFloor: round(toFloor(x.reqPerSec)),
      proxyCpuUsPerReq: x.proxyCpuUsPerReq ?? null,
      proxyCpuUsPerReqC1: x.proxyCpuUsPerReqC1 ?? null,
      coresBusy: x.coresBusy,
      errors: x.latencyErrors + x.unaryFailed,
      stream: {
        ttftMs: x.ttft,
        addedTtftP50Ms: key === "direct" ? 0 : round(x.ttft.p50 - direct.ttft.p50),
        gapMs: x.gaps,
        addedGapMeanMs: key === "direct" ? 0 : round(x.gaps.mean - direct.gaps.mean),
        addedGapP99Ms: key === "direct" ? 0 : round(x.gaps.p99 - direct.gaps.p99),
        streamsPerSec: x.streamsPerSec,
        streamsPerSecRatioToFloor: round(streamsToFloor(x.streamsPerSec)),
        proxyCpuUsPerStream: x.proxyCpuUsPerStream ?? null,
        coresBusy: x.coresBusyStreaming,
        errors: x.streamErrors + x.streamedFailed
      }
    }
  }
  console.log(JSON.stringify({
    bench: "gateway",
    machine: {
      ...cpu,
      loadavgBefore: load.before.map((x) => round(x, 2)),
      loadavgAfter: after.map((x) => round(x, 2))
    },
    settings: { ...SETTINGS, cpuProfile: profiles.length > 0 },
    startupMs: Object.fromEntries(Object.entries(startupMs).map(([name, t]) => [name, Math.round(t ?? NaN)])),
    paths: Object.fromEntries(targets.map((t) => [t.key, pathJson(t.key)])),
    translation: {
      reqPerSecRatio: round(translation.unaryRatio),
      streamsPerSecRatio: round(translation.streamRatio),
      addedP50MsOverOpenai: round(translation.addedP50Ms),
      cpuPerRequestRatio: round(translation.cpuRatio),
      cpuPerStreamRatio: round(translation.streamCpuRatio)
    },
    targets: {
      addedP50: { valueMs: round(addedP50), limitMs: TARGETS.addedP50Ms, pass: targetLines[0]!.pass },
      throughput: { ratio: round(throughputRatio), limit: TARGETS.throughputRatio, pass: targetLines[1]!.pass },
      ...(keys !== undefined
        ? {
          keysVsOff: {
            reqPerSecRatio: round(keys.reqPerSec.median / off.reqPerSec.median),
            streamsPerSecRatio: round(keys.streamsPerSec.median / off.streamsPerSec.median),
            addedP50MsOverOff: round(keys.latency.p50 - off.latency.p50),
            cpuPerRequestRatio: round((keys.proxyCpuUsPerReq ?? NaN) / (off.proxyCpuUsPerReq ?? NaN)),
            pass: keysLines[0]!.pass
          }
        }
        : {})
    },
    peers: Object.fromEntries(peerComparisons.map((c) => [c.peer.key, {
      name: c.peer.label,
      version: c.peer.version,
      dialect: c.peer.dialect,
      setup: c.peer.setup,
      ...(c.peer.note !== undefined ? { note: c.peer.note } : {}),
      comparedWith: c.ourLabel,
      reqPerSecRatio: round(c.reqPerSecRatio),
      streamsPerSecRatio: round(c.streamsPerSecRatio),
      cpuPerRequestRatio: round(c.cpuPerRequestRatio),
      addedP50Ms: { cortex: round(c.added.p50.cortex), peer: round(c.added.p50.peer) },
      addedP99Ms: { cortex: round(c.added.p99.cortex), peer: round(c.added.p99.peer) },
      addedTtftP50Ms: { cortex: round(c.added.ttftP50.cortex), peer: round(c.added.ttftP50.peer) },
      addedGapMeanMs: { cortex: round(c.added.gapMean.cortex), peer: round(c.added.gapMean.peer) },
      ...(c.peer.key === "portkey"
        ? { reqPerSecGoal: PEER_GOAL.portkey, reqPerSecGoalPass: c.reqPerSecRatio >= PEER_GOAL.portkey }
        : {})
    }])),
    peersSkipped: peerInfo.skipped,
    ...(profiles.length > 0
      ? {
        profiles: profiles.map(({ summary, title }) => ({
          title,
          file: summary.file,
          busyMs: summary.busyMs,
          selfByOrigin: summary.selfByOrigin.slice(0, 8),
          inclusiveByOrigin: summary.inclusiveByOrigin.slice(0, 8)
        }))
      }
      : {})
  }))
}

// ---------------------------------------------------------------------------------------------
// Main

let tempDir: string | undefined
const agents: Array<http.Agent> = []

const cleanup = async () => {
  await Promise.all([...children].map((c) => c.stop(3000)))
  for (const agent of agents) agent.destroy()
  if (tempDir) await rm(tempDir, { recursive: true, force: true })
}

stopChildrenOnExit(cleanup)

const agent = () => {
  const a = new http.Agent({ keepAlive: true, maxSockets: 64 })
  agents.push(a)
  return a
}

const waitGateway = async (gateway: BenchChild, base: string, timeoutMs: number) => {
  const deadline = Date.now() + timeoutMs
  let last = "no answer yet"
  while (Date.now() < deadline) {
    if (!gateway.alive) throw new Error(`gateway exited before it was ready: ${gateway.describeExit()}`)
    try {
      const health = await fetch(`${base}/health`, { signal: AbortSignal.timeout(2000) })
      const body = (await health.json()) as { status?: string }
      if (body.status === "ok") {
        const models = await fetch(`${base}/v1/models`, { signal: AbortSignal.timeout(2000) })
        const list = (await models.json()) as { data?: Array<{ id: string; loaded?: boolean }> }
        if (list.data?.some((m) => m.id === MODEL && m.loaded === true)) return
        last = `models: ${JSON.stringify(list).slice(0, 200)}`
      } else {
        last = `health: ${JSON.stringify(body).slice(0, 200)}`
      }
    } catch (error) {
      last = (error as Error).message
    }
    await sleep(100)
  }
  throw new Error(`gateway not ready within ${timeoutMs} ms (${last}): ${gateway.describeExit()}`)
}

const childEnv = () => {
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) {
    // The gateway's own overrides would win over the config file written here.
    if (value !== undefined && !key.startsWith("CORTEX_")) env[key] = value
  }
  return env
}

/**
 * Another gateway, started the same way for both sides of the keys comparison: with the store,
 * the embedded store and one issued key (limits with --key-limits) that every request sends; the
 * twin without, the same header going unrecognised. (A second gateway process measured slower
 * than the first even with identical configs on a shared box, so keys on is compared with its
 * twin, not with the first gateway.)
 */
const startKeysGateway = async (
  upstreamUrl: string,
  profileFlags: ReadonlyArray<string>,
  withStore: boolean
): Promise<{ readonly target: Target; readonly child: BenchChild }> => {
  const [port, metricsPort] = [await freePort(), await freePort()]
  const dir = path.join(tempDir!, withStore ? "keys" : "twin")
  await mkdir(dir, { recursive: true })
  const config = path.join(dir, "cortex.toml")
  const adminKey = "bench-admin-key-0123456789"
  await writeFile(
    config,
    [
      "[gateway]",
      `listen = "127.0.0.1:${port}"`,
      `metrics_listen = "127.0.0.1:${metricsPort}"`,
      "poll_interval_secs = 1",
      ...(withStore ? ["[auth]", `admin_key_env = "CORTEX_BENCH_ADMIN_KEY"`, "[store]", `path = "cortex-data"`] : []),
      "[[neurons]]",
      `name = "up"`,
      `endpoint = "${upstreamUrl}"`,
      ""
    ].join("\n")
  )
  const t0 = performance.now()
  const name = withStore ? "gateway-keys" : "gateway-twin"
  const gateway = start(
    name,
    [...profileFlags, "--import", ORPHAN_GUARD, path.join(ROOT, "bin/cortex.js"), "serve", "--config", config],
    { ...childEnv(), CORTEX_BENCH_ADMIN_KEY: adminKey }
  )
  const base = `http://127.0.0.1:${port}`
  await waitGateway(gateway, base, 120_000)
  let secret = "ck-0000000000000000-not-an-issued-key-at-all"
  if (withStore) {
    const created = await fetch(`${base}/admin/keys`, {
      method: "POST",
      headers: { authorization: `Bearer ${adminKey}`, "content-type": "application/json" },
      body: JSON.stringify({ name: "bench", ...(args["key-limits"] ? { rpm: 1e9, tpm: 1e9 } : {}) })
    })
    if (created.status !== 201) throw new Error(`could not issue the bench key: ${await created.text()}`)
    secret = ((await created.json()) as { secret: string }).secret
  }
  log(`${name} on ${base} (pid ${gateway.pid}), ready after ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  probes.push({ name, pid: gateway.pid })
  const target: Target = {
    key: withStore ? "keys" : "twin",
    label: !withStore
      ? "gateway twin (keys off)"
      : args["key-limits"]
      ? "gateway (keys+ledger+limits)"
      : "gateway (keys+ledger)",
    host: "127.0.0.1",
    port,
    agent: agent(),
    dialect: "openai",
    proxyPid: gateway.pid,
    headers: { authorization: `Bearer ${secret}` }
  }
  return { target, child: gateway }
}

const main = async () => {
  const load: Load = { before: os.loadavg() }
  tempDir = await mkdtemp(path.join(os.tmpdir(), "cortex-gateway-bench-"))
  const tsx = ["--import", "tsx"]

  let t0 = performance.now()
  const upstream = start("upstream", [
    ...tsx,
    path.join(HERE, "upstream.ts"),
    "--latency-ms",
    String(SETTINGS.upstreamLatencyMs),
    "--frames",
    String(SETTINGS.frames),
    "--frame-gap-ms",
    String(SETTINGS.frameGapMs),
    "--model",
    MODEL
  ])
  const upstreamPort = await upstream.port(30_000)
  const upstreamMs = performance.now() - t0
  const upstreamUrl = `http://127.0.0.1:${upstreamPort}`
  log(`upstream on ${upstreamUrl} (pid ${upstream.pid})`)

  t0 = performance.now()
  const floor = start("floor", [...tsx, path.join(HERE, "floor.ts"), "--upstream", upstreamUrl])
  const floorPort = await floor.port(30_000)
  const floorMs = performance.now() - t0
  log(`floor on http://127.0.0.1:${floorPort} (pid ${floor.pid})`)

  const [gatewayPort, metricsPort] = [await freePort(), await freePort()]
  const config = path.join(tempDir, "cortex.toml")
  await writeFile(
    config,
    [
      "[gateway]",
      `listen = "127.0.0.1:${gatewayPort}"`,
      `metrics_listen = "127.0.0.1:${metricsPort}"`,
      "poll_interval_secs = 1",
      "",
      "[[neurons]]",
      `name = "up"`,
      `endpoint = "${upstreamUrl}"`,
      ""
    ].join("\n")
  )
  const profileDir = args["cpu-prof"] !== undefined ? path.resolve(args["cpu-prof"]) : undefined
  if (profileDir) await mkdir(profileDir, { recursive: true })
  const profileFlags = profileDir ? ["--cpu-prof", "--cpu-prof-dir", profileDir] : []
  const profilesBefore = profileDir ? new Set(await readdir(profileDir)) : new Set<string>()
  t0 = performance.now()
  const gateway = start(
    "gateway",
    [...profileFlags, "--import", ORPHAN_GUARD, path.join(ROOT, "bin/cortex.js"), "serve", "--config", config],
    childEnv()
  )
  const gatewayBase = `http://127.0.0.1:${gatewayPort}`
  await waitGateway(gateway, gatewayBase, 60_000)
  const gatewayMs = performance.now() - t0
  log(`gateway on ${gatewayBase} (pid ${gateway.pid}), ready after ${(gatewayMs / 1000).toFixed(1)} s`)
  probes.push({ name: "upstream", pid: upstream.pid }, { name: "floor", pid: floor.pid }, {
    name: "gateway",
    pid: gateway.pid
  })

  const host = "127.0.0.1"
  const targets: Array<Target> = [
    {
      key: "direct",
      label: "direct",
      host,
      port: upstreamPort,
      agent: agent(),
      dialect: "openai",
      proxyPid: undefined
    },
    { key: "floor", label: "floor", host, port: floorPort, agent: agent(), dialect: "openai", proxyPid: floor.pid },
    {
      key: "gateway",
      label: "gateway (OpenAI)",
      host,
      port: gatewayPort,
      agent: agent(),
      dialect: "openai",
      proxyPid: gateway.pid
    },
    {
      key: "anthropic",
      label: "gateway (Anthropic)",
      host,
      port: gatewayPort,
      agent: agent(),
      dialect: "anthropic",
      proxyPid: gateway.pid
    }
  ]
  const twinGateway = args.keys ? await startKeysGateway(upstreamUrl, profileFlags, false) : undefined
  const keysGateway = args.keys ? await startKeysGateway(upstreamUrl, profileFlags, true) : undefined
  if (twinGateway && keysGateway) targets.push(twinGateway.target, keysGateway.target)
  for (const t of targets) await validate(t)

  const peerRun = args["no-peers"]
    ? { peers: [], skipped: [] as Array<PeerSkip> }
    : await startPeers({ root: ROOT, upstreamUrl, tempDir, verbose: args.verbose })
  const peers: Array<Peer> = []
  for (const peer of peerRun.peers) {
    const target: Target = {
      key: peer.key,
      label: `${peer.label} (${peer.dialect === "openai" ? "OpenAI" : "Anthropic"})`,
      host,
      port: peer.port,
      agent: agent(),
      dialect: peer.dialect,
      proxyPid: peer.child.pid,
      headers: peer.headers
    }
    try {
      await validate(target)
    } catch (error) {
      // A peer that answers wrong is left out, not timed; the rest of the run goes on.
      peerRun.skipped.push({ key: peer.key, name: peer.label, reason: (error as Error).message.slice(0, 600) })
      await peer.child.stop(3000)
      continue
    }
    log(
      `${peer.label} on http://127.0.0.1:${peer.port} (pid ${peer.child.pid}), ready after ${
        (peer.startupMs / 1000).toFixed(1)
      } s: ${peer.setup}`
    )
    peers.push(peer)
    targets.push(target)
    probes.push({ name: peer.key, pid: peer.child.pid })
  }
  for (const skip of peerRun.skipped) log(`peer skipped: ${skip.name}: ${skip.reason}`)
  log("all paths answer correctly; warming up")
  for (const t of targets) await warmUp(t)
  const results = await measure(targets)

  const profiles: Array<{ title: string; summary: ProfileSummary }> = []
  if (profileDir) {
    await gateway.stop(10_000)
    await keysGateway?.child.stop(10_000)
    await twinGateway?.child.stop(10_000)
    const fresh = (await readdir(profileDir)).filter((f) => f.endsWith(".cpuprofile") && !profilesBefore.has(f))
    // Node names profiles CPU.<date>.<time>.<pid>.<thread>.<seq>: thread 0 is the main one (tsx's
    // loader runs in a worker that writes its own).
    const profiled = [
      { child: gateway, key: "gateway" as const, label: "OpenAI" },
      ...(keysGateway ? [{ child: keysGateway.child, key: "keys" as const, label: "keys+ledger" }] : []),
      ...(twinGateway ? [{ child: twinGateway.child, key: "twin" as const, label: "twin (keys off)" }] : [])
    ]
    for (const { child, key, label } of profiled) {
      const main = fresh.find((f) => f.includes(`.${child.pid}.0.`))
      const file = main === undefined ? undefined : path.join(profileDir, main)
      if (file) {
        // The phases beside the profile, for a closer look later (monotonic µs, as the samples).
        await writeFile(`${file}.phases.json`, JSON.stringify(phases))
        for (const kind of ["unary", "stream"] as const) {
          const windows = phases.filter((p) => p.key === key && p.kind === kind)
          const title = `${label} ${
            kind === "unary" ? "non-streaming" : "streaming"
          } c=${SETTINGS.concurrency} phases only`
          profiles.push({ title, summary: await summarizeProfile(file, windows, 20) })
        }
      } else {
        log(`no new .cpuprofile for ${label} in ${profileDir} (the gateway did not exit cleanly?)`)
      }
    }
  }
  report(
    targets,
    results,
    load,
    {
      upstream: upstreamMs,
      floor: floorMs,
      gateway: gatewayMs,
      ...Object.fromEntries(peers.map((p) => [p.key, p.startupMs]))
    },
    profiles,
    { peers, skipped: peerRun.skipped }
  )
}

try {
  await main()
} catch (error) {
  console.error(error instanceof Error ? (error.stack ?? error.message) : error)
  process.exitCode = 1
} finally {
  await cleanup()
}
