/**
 * Fleet benchmark: the gateway's thrash-guarded eviction ("batched": a just-loaded model stays
 * for min_resident_secs, a waiting load waits for busy victims up to max_swap_wait_secs) against
 * the naive policy (both 0: swap on every request that needs it), with more models than the fleet
 * holds, measured in one run.
 *
 *   npx tsx bench/fleet/run.ts [--quick] [--models N] [--clients N] [--requests N] [--turns N]
 *     [--fanout N] [--budget-mb N] [--load-delay-ms N] [--min-resident-secs S] [--max-swap-wait-secs S]
 *     [--logs DIR] [--verbose]
 *
 * The fleet: 2 real neurons, each a host whose memory budget holds 2 of the generated tiny models
 * (NEURON_MEMORY_BUDGET_MB=100, max_in_flight 1, every load made `--load-delay-ms` slower to stand
 * in for a GPU load of seconds), serving `--models` models (default 6, all on both nodes; the
 * fleet holds 4). Workloads:
 *   interleaved  `--clients` concurrent clients, each sending `--requests` requests back to back
 *                over its own three models in the pattern A B A C A B A C …
 *   fan-out      `--turns` agent turns; a turn sends `--fanout` requests at once (a main model
 *                every turn, the others rotating through the rest) and waits for all of them
 * Each (workload, policy) cell runs on fresh neurons and a fresh gateway, so every cell starts
 * from an empty fleet. Loads come from the gateway's /admin/status `recent_loads` (polled, so its
 * 100-entry cap does not matter) and from the neurons' own logs (which also see loads the neuron
 * made on its own, auto_load); evictions from the gateway's `cortex_evictions_total`.
 *
 * Not part of the test suite: about 3 minutes (2 with --quick; each of the 4 fleets takes 10–20 s
 * to start on a 2-core box, not timed); wants the CPU to itself.
 */
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { writeModel } from "../../src/gguf/ModelGenerator.js"
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

// ---------------------------------------------------------------------------------------------
// Settings

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..")
const CLI = path.join(ROOT, "bin/cortex.js")

const USAGE = `usage: npx tsx bench/fleet/run.ts [options]

  --quick                  fewer requests and turns (a smoke run, not a figure to quote)
  --models N               models served (default 6, at least 3)
  --clients N              concurrent clients (default 4)
  --requests N             requests per client in the interleaved workload (default 12; quick 6)
  --turns N                turns per client in the fan-out workload (default 8; quick 4)
  --fanout N               models each fan-out turn touches (default 3)
  --budget-mb N            each neuron's memory budget (default 100)
  --load-delay-ms N        each load held this long, as a slow GPU load (default 1000)
  --min-resident-secs N    the thrash guard's minimum residency (default 5)
  --max-swap-wait-secs N   the thrash guard's longest wait (default 10)
  --logs DIR               keep the neurons' and gateways' logs in DIR
  --verbose                show the children's logs
  --help                   this text`

const args = parseCli({
  quick: { type: "boolean", default: false },
  models: { type: "string", default: "6" },
  clients: { type: "string", default: "4" },
  requests: { type: "string" },
  turns: { type: "string" },
  fanout: { type: "string", default: "3" },
  "budget-mb": { type: "string", default: "100" },
  "load-delay-ms": { type: "string", default: "1000" },
  "min-resident-secs": { type: "string", default: "5" },
  "max-swap-wait-secs": { type: "string", default: "10" },
  logs: { type: "string" },
  verbose: { type: "boolean", default: false }
}, USAGE)

const quick = args.quick
const SETTINGS = {
  quick,
  nodes: 2,
  models: numberArg("models", args.models, 3, true),
  clients: numberArg("clients", args.clients, 1, true),
  /** Requests per client in the interleaved workload. */
  requests: numberArg("requests", args.requests ?? (quick ? "6" : "12"), 1, true),
  turns: numberArg("turns", args.turns ?? (quick ? "4" : "8"), 1, true),
  fanout: numberArg("fanout", args.fanout, 1, true),
  budgetMb: numberArg("budget-mb", args["budget-mb"], 1, false),
  loadDelayMs: numberArg("load-delay-ms", args["load-delay-ms"], 0, true),
  maxInFlight: 1,
  maxTokens: 8,
  temperature: 0,
  minResidentSecs: numberArg("min-resident-secs", args["min-resident-secs"], 0, false),
  maxSwapWaitSecs: numberArg("max-swap-wait-secs", args["max-swap-wait-secs"], 0, false),
  /** A request that has not answered by then counts as an error (a load that never finishes). */
  requestTimeoutMs: 120_000,
  statusPollMs: 250
} as const

if (SETTINGS.fanout > SETTINGS.models) {
  console.error(`--fanout (${SETTINGS.fanout}) cannot exceed --models (${SETTINGS.models})`)
  process.exit(2)
}

const MODELS = Array.from({ length: SETTINGS.models }, (_, i) => `m${i + 1}`)
const NODES = Array.from({ length: SETTINGS.nodes }, (_, i) => `n${i + 1}`)

type PolicyKey = "batched" | "naive"
type WorkloadKey = "interleaved" | "fanout"

const POLICIES: Record<PolicyKey, { readonly minResidentSecs: number; readonly maxSwapWaitSecs: number }> = {
  batched: { minResidentSecs: SETTINGS.minResidentSecs, maxSwapWaitSecs: SETTINGS.maxSwapWaitSecs },
  naive: { minResidentSecs: 0, maxSwapWaitSecs: 0 }
}

/** Client c's models: its own A, then B and C shared with other clients. */
const clientModels = (c: number): readonly [string, string, string] => [
  MODELS[c % MODELS.length]!,
  MODELS[(c + SETTINGS.clients) % MODELS.length]!,
  MODELS[(c + SETTINGS.clients + 1) % MODELS.length]!
]

/** A B A C A B A C … */
const clientSequence = (c: number): Array<string> => {
  const [a, b, cc] = clientModels(c)
  return Array.from({ length: SETTINGS.requests }, (_, i) => (i % 2 === 0 ? a : i % 4 === 1 ? b : cc))
}

/** Turn t: the main model (m1) and `fanout - 1` others rotating through the rest. */
const turnModels = (t: number): Array<string> => {
  const pool = MODELS.slice(1)
  const k = SETTINGS.fanout - 1
  return [MODELS[0]!, ...Array.from({ length: k }, (_, j) => pool[(k * t + j) % pool.length]!)]
}

// ---------------------------------------------------------------------------------------------
// BenchChild processes

/** Start a child in the repository root that exits with this bench (ORPHAN_GUARD). */
const start = (name: string, argv: ReadonlyArray<string>, env: NodeJS.ProcessEnv) =>
  BenchChild.spawn(name, ["--import", ORPHAN_GUARD, ...argv], { cwd: ROOT, env, verbose: args.verbose })

/** The environment without variables of ours that would override what this bench sets. */
const baseEnv = () => {
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && !key.startsWith("NEURON_") && !key.startsWith("CORTEX_")) env[key] = value
  }
  return env
}

const getJson = async <A>(url: string, timeoutMs = 5000): Promise<A> => {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) })
  if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}`)
  return (await res.json()) as A
}

const waitUntil = async (what: string, child: BenchChild, probe: () => Promise<boolean>, timeoutMs: number) => {
  const deadline = Date.now() + timeoutMs
  let last = "no answer yet"
  while (Date.now() < deadline) {
    if (!child.alive) throw new Error(`${child.name} exited before ${what}: ${child.describeExit()}`)
    try {
      if (await probe()) return
      last = "not yet"
    } catch (error) {
      last = (error as Error).message
    }
    await sleep(100)
  }
  throw new Error(`${child.name}: no ${what} within ${timeoutMs} ms (${last}): ${child.describeExit()}`)
}

// ---------------------------------------------------------------------------------------------
// The fleet: neurons and a gateway, fresh for every cell

interface Fleet {
  readonly neurons: ReadonlyArray<BenchChild>
  readonly gateway: BenchChild
  readonly base: string
  readonly metricsUrl: string
  readonly startupMs: number
}

const startFleet = async (dir: string, modelsDir: string, policy: PolicyKey): Promise<Fleet> => {
  const started = performance.now()
  await mkdir(dir, { recursive: true })
  const neuronPorts = await Promise.all(NODES.map(() => freePort()))
  const neurons = NODES.map((name, i) =>
    start(name, [CLI, "neuron", "--port", String(neuronPorts[i]!)], {
      ...baseEnv(),
      NEURON_HOST: "127.0.0.1",
      NEURON_THREADS: "1",
      NEURON_GPU: "off",
      NEURON_MODELS_DIR: modelsDir,
      NEURON_DEFAULT_MODELS: "",
      NEURON_MEMORY_BUDGET_MB: String(SETTINGS.budgetMb),
      NEURON_MAX_IN_FLIGHT: String(SETTINGS.maxInFlight),
      NEURON_LOAD_DELAY_MS: String(SETTINGS.loadDelayMs)
    })
  )
  const [port, metricsPort] = [await freePort(), await freePort()]
  const { minResidentSecs, maxSwapWaitSecs } = POLICIES[policy]
  const config = path.join(dir, "cortex.toml")
  await writeFile(
    config,
    [
      "[gateway]",
      `listen = "127.0.0.1:${port}"`,
      `metrics_listen = "127.0.0.1:${metricsPort}"`,
      "poll_interval_secs = 0.5",
      `load_timeout_secs = ${SETTINGS.requestTimeoutMs / 1000}`,
      "",
      "[eviction]",
      `strategy = "lru"`,
      `min_resident_secs = ${minResidentSecs}`,
      `max_swap_wait_secs = ${maxSwapWaitSecs}`,
      "",
      ...NODES.flatMap((name, i) => [
        "[[neurons]]",
        `name = "${name}"`,
        `endpoint = "http://127.0.0.1:${neuronPorts[i]!}"`,
        ""
      ])
    ].join("\n")
  )
  const gateway = start("gateway", [CLI, "serve", "--config", config], baseEnv())
  const base = `http://127.0.0.1:${port}`
  await Promise.all(neurons.map((n, i) =>
    waitUntil(
      "health",
      n,
      async () => (await getJson<{ status?: string }>(`http://127.0.0.1:${neuronPorts[i]!}/health`)).status === "ok",
      90_000
    )
  ))
  // Ready: every node healthy and every model listed on every node, none loaded.
  await waitUntil("catalogue", gateway, async () => {
    const list = await getJson<{ data?: Array<{ id: string; locations?: Array<{ healthy?: boolean }> }> }>(
      `${base}/v1/models`
    )
    return MODELS.every((id) => {
      const locations = list.data?.find((m) => m.id === id)?.locations ?? []
      return locations.length === NODES.length && locations.every((l) => l.healthy === true)
    })
  }, 60_000)
  return {
    neurons,
    gateway,
    base,
    metricsUrl: `http://127.0.0.1:${metricsPort}/metrics`,
    startupMs: performance.now() - started
  }
}

const stopFleet = async (fleet: Fleet) => {
  await fleet.gateway.stop()
  await Promise.all(fleet.neurons.map((n) => n.stop()))
}

// ---------------------------------------------------------------------------------------------
// Client

interface Sample {
  readonly model: string
  /** Request start, ms after the workload started. */
  readonly startMs: number
  readonly latencyMs: number
  /** When the answer (or the failure) came, ms since the epoch. */
  readonly endAt: number
  readonly ok: boolean
  readonly error?: string
}

const chat = async (base: string, model: string, prompt: string, t0: number): Promise<Sample> => {
  const started = performance.now()
  const done = (ok: boolean, error?: string): Sample => ({
    model,
    startMs: started - t0,
    latencyMs: performance.now() - started,
    endAt: Date.now(),
    ok,
    ...(error !== undefined ? { error } : {})
  })
  try {
    const res = await fetch(`${base}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model,
        messages: [{ role: "user", content: prompt }],
        max_tokens: SETTINGS.maxTokens,
        temperature: SETTINGS.temperature
      }),
      signal: AbortSignal.timeout(SETTINGS.requestTimeoutMs)
    })
    const text = await res.text()
    if (res.status !== 200) return done(false, `HTTP ${res.status}: ${text.slice(0, 300)}`)
    const body = JSON.parse(text) as { choices?: Array<{ message?: { content?: string } }> }
    if (typeof body.choices?.[0]?.message?.content !== "string") return done(false, `no content: ${text.slice(0, 300)}`)
    return done(true)
  } catch (error) {
    return done(false, (error as Error).name === "TimeoutError" ? "client timeout" : (error as Error).message)
  }
}

// ---------------------------------------------------------------------------------------------
// What the gateway says: /admin/status (polled) and /metrics

interface LoadRecord {
  readonly model: string
  readonly node: string
  readonly reason: string
  readonly evicted: ReadonlyArray<string>
  readonly wait_ms: number
  readonly load_ms: number
  readonly at: string
}

interface AdminStatus {
  readonly nodes?: ReadonlyArray<{
    readonly name: string
    readonly models?: ReadonlyArray<{ readonly id: string; readonly status: string }>
  }>
  readonly loads_in_progress?: ReadonlyArray<{ readonly model: string; readonly node: string | null; since: string }>
  readonly recent_loads?: ReadonlyArray<LoadRecord>
}

class StatusPoller {
  readonly loads = new Map<string, LoadRecord>()
  maxLoadsInProgress = 0
  /** The longest any load was seen in progress, ms. */
  longestLoadInProgressMs = 0
  failedPolls = 0
  private running = true
  private readonly done: Promise<void>

  constructor(private readonly base: string) {
    this.done = this.loop()
  }

  private async loop() {
    while (this.running) {
      await this.poll()
      await sleep(SETTINGS.statusPollMs)
    }
  }

  async poll(): Promise<AdminStatus | undefined> {
    try {
      const status = await getJson<AdminStatus>(`${this.base}/admin/status`)
      for (const l of status.recent_loads ?? []) this.loads.set(`${l.at}|${l.model}|${l.node}`, l)
      const inProgress = status.loads_in_progress ?? []
      this.maxLoadsInProgress = Math.max(this.maxLoadsInProgress, inProgress.length)
      for (const l of inProgress) {
        this.longestLoadInProgressMs = Math.max(this.longestLoadInProgressMs, Date.now() - Date.parse(l.since))
      }
      return status
    } catch {
      this.failedPolls++
      return undefined
    }
  }

  async stop() {
    this.running = false
    await this.done
  }
}

/** Sum of every series of a metric in Prometheus text, optionally only those with a label value. */
const metricSum = (text: string, name: string, label?: string) =>
  text.split("\n").filter((line) =>
    (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) && (label === undefined || line.includes(label))
  ).reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(" ") + 1)), 0)

// ---------------------------------------------------------------------------------------------
// Workloads

const interleaved = async (base: string, t0: number): Promise<Array<Sample>> => {
  const samples: Array<Sample> = []
  await Promise.all(Array.from({ length: SETTINGS.clients }, async (_, c) => {
    const sequence = clientSequence(c)
    for (const [i, model] of sequence.entries()) {
      samples.push(await chat(base, model, `Client ${c}, step ${i}: say something short.`, t0))
    }
  }))
  return samples
}

const fanout = async (base: string, t0: number): Promise<Array<Sample>> => {
  const samples: Array<Sample> = []
  for (let t = 0; t < SETTINGS.turns; t++) {
    const turn = await Promise.all(
      turnModels(t).map((model, j) => chat(base, model, `Turn ${t}, tool ${j}: say something short.`, t0))
    )
    samples.push(...turn)
  }
  return samples
}

const WORKLOADS: Record<WorkloadKey, {
  readonly title: string
  readonly run: (base: string, t0: number) => Promise<Array<Sample>>
}> = {
  interleaved: { title: "interleaved streams", run: interleaved },
  fanout: { title: "agent fan-out", run: fanout }
}

// ---------------------------------------------------------------------------------------------
// One cell: a workload under a policy, on a fresh fleet

interface Cell {
  readonly workload: WorkloadKey
  readonly policy: PolicyKey
  readonly wallMs: number
  readonly samples: ReadonlyArray<Sample>
  /** Loads the gateway made (recent_loads). */
  readonly gatewayLoads: ReadonlyArray<LoadRecord>
  /** The gateway's cortex_model_load_seconds count. */
  readonly metricLoads: number
  /** Loads the gateway started ("loading X on N" in its log), finished or not. */
  readonly gatewayLoadAttempts: number
  /** Loads and unloads as the neurons logged them (gateway-made or auto_load). */
  readonly neuronLoads: number
  readonly neuronUnloads: number
  readonly neuronLoadFailures: number
  /** cortex_evictions_total, and the gateway's "evicting X from N" log lines. */
  readonly evictions: number
  readonly evictionLines: number
  /** Models loaded at the end, over all nodes. */
  readonly residentAtEnd: number
  /** Per node: models loaded there at the end, and how many evictions the gateway made there. */
  readonly byNode: Readonly<
    Record<string, { readonly residentAtEnd: ReadonlyArray<string>; readonly evictions: number }>
  >
  readonly maxLoadsInProgress: number
  readonly longestLoadInProgressMs: number
  readonly loadsStuckAtEnd: ReadonlyArray<string>
  readonly startupMs: number
  /** Every line the gateway and the neurons printed, prefixed with who printed it. */
  readonly lines: ReadonlyArray<{ readonly at: number; readonly text: string }>
}

const runCell = async (
  workload: WorkloadKey,
  policy: PolicyKey,
  modelsDir: string,
  workDir: string
): Promise<Cell> => {
  const tag = `${workload}/${policy}`
  const fleet = await startFleet(path.join(workDir, `${workload}-${policy}`), modelsDir, policy)
  try {
    log(`${tag}: fleet ready after ${(fleet.startupMs / 1000).toFixed(1)} s; running`)
    const poller = new StatusPoller(fleet.base)
    let samples: Array<Sample>
    let wallMs: number
    let final: AdminStatus | undefined
    try {
      const t0 = performance.now()
      samples = await WORKLOADS[workload].run(fleet.base, t0)
      wallMs = performance.now() - t0
      // Loads still running once every client has its answer (a waiter gave up, say): give them time.
      const settle = Date.now() + 15_000
      do {
        final = await poller.poll()
        if ((final?.loads_in_progress?.length ?? 0) === 0) break
        await sleep(250)
      } while (Date.now() < settle)
    } finally {
      await poller.stop()
    }
    final = (await poller.poll()) ?? final
    const metrics = await (await fetch(fleet.metricsUrl, { signal: AbortSignal.timeout(5000) })).text()
    const tagged = (c: BenchChild) => c.lines.map((l) => ({ at: l.at, text: `[${c.name}] ${l.text}` }))
    const lines = [fleet.gateway, ...fleet.neurons].flatMap(tagged).sort((a, b) => a.at - b.at)
    const neuronText = fleet.neurons.flatMap(tagged).map((l) => l.text)
    const gatewayText = fleet.gateway.lines.map((l) => l.text)
    const count = (re: RegExp) => neuronText.filter((l) => re.test(l)).length
    const gatewayLoads = [...poller.loads.values()].sort((a, b) => Date.parse(a.at) - Date.parse(b.at))
    const cell: Cell = {
      workload,
      policy,
      wallMs,
      samples,
      gatewayLoads,
      metricLoads: metricSum(metrics, "cortex_model_load_seconds_count"),
      gatewayLoadAttempts: gatewayText.filter((l) => /\bloading m\d+ on n\d+/.test(l)).length,
      neuronLoads: count(/\bloaded m\d+ in \d+ ms/),
      neuronUnloads: count(/\bunloaded m\d+/),
      neuronLoadFailures: count(/load of m\d+ failed/),
      evictions: metricSum(metrics, "cortex_evictions_total"),
      evictionLines: gatewayText.filter((l) => /\bevicting m\d+ from n\d+/.test(l)).length,
      residentAtEnd: (final?.nodes ?? []).reduce(
        (sum, n) => sum + (n.models ?? []).filter((m) => m.status === "loaded").length,
        0
      ),
      byNode: Object.fromEntries(NODES.map((name) => [name, {
        residentAtEnd: (final?.nodes?.find((n) => n.name === name)?.models ?? [])
          .filter((m) => m.status === "loaded")
          .map((m) => m.id)
          .sort(),
        evictions: gatewayText.filter((l) => new RegExp(`\\bevicting m\\d+ from ${name}\\b`).test(l)).length
      }])),
      maxLoadsInProgress: poller.maxLoadsInProgress,
      longestLoadInProgressMs: poller.longestLoadInProgressMs,
      loadsStuckAtEnd: (final?.loads_in_progress ?? []).map((l) => `${l.model} on ${l.node ?? "?"} since ${l.since}`),
      startupMs: fleet.startupMs,
      lines
    }
    const errors = samples.filter((s) => !s.ok).length
    log(
      `${tag}: ${(wallMs / 1000).toFixed(1)} s, ${samples.length} requests (${errors} failed), `
        + `${gatewayLoads.length} loads, ${cell.evictions} evictions`
    )
    if (args.logs !== undefined) {
      const dir = path.resolve(args.logs)
      await mkdir(dir, { recursive: true })
      await writeFile(path.join(dir, `${workload}-${policy}.log`), lines.map((l) => l.text).join("\n") + "\n")
      await writeFile(
        path.join(dir, `${workload}-${policy}.samples.json`),
        JSON.stringify({ samples, loads: gatewayLoads }, null, 1)
      )
    }
    return cell
  } finally {
    await stopFleet(fleet)
  }
}

// ---------------------------------------------------------------------------------------------
// Statistics and report

const round = (x: number, digits = 1) => {
  const f = 10 ** digits
  return Math.round(x * f) / f
}

const mean = (xs: ReadonlyArray<number>) => (xs.length === 0 ? NaN : xs.reduce((s, x) => s + x, 0) / xs.length)

const percentile = (xs: ReadonlyArray<number>, q: number) => {
  if (xs.length === 0) return NaN
  const sorted = [...xs].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!
}

interface Latency {
  readonly n: number
  readonly errors: number
  readonly meanMs: number
  readonly p50Ms: number
  readonly maxMs: number
}

/** Over answered requests; failed ones are counted, not timed. */
const latency = (samples: ReadonlyArray<Sample>): Latency => {
  const ok = samples.filter((s) => s.ok).map((s) => s.latencyMs)
  return {
    n: samples.length,
    errors: samples.length - ok.length,
    meanMs: round(mean(ok)),
    p50Ms: round(percentile(ok, 0.5)),
    maxMs: round(ok.length === 0 ? NaN : Math.max(...ok))
  }
}

interface CellView {
  readonly wallS: number
  readonly requests: number
  readonly errors: number
  readonly loads: number
  readonly neuronLoads: number
  readonly evictions: number
  /** Evictions beyond what the loads needed: unloads − (loads − models resident at the end). */
  readonly excessEvictions: number
  readonly loadWaitMeanMs: number
  readonly loadWaitMaxMs: number
  readonly loadMeanMs: number
  readonly latency: Latency
  readonly perModel: Readonly<Record<string, Latency>>
}

const viewOf = (cell: Cell): CellView => {
  const perModel: Record<string, Latency> = {}
  for (const m of MODELS) {
    const of = cell.samples.filter((s) => s.model === m)
    if (of.length > 0) perModel[m] = latency(of)
  }
  const all = latency(cell.samples)
  return {
    wallS: round(cell.wallMs / 1000, 2),
    requests: cell.samples.length,
    errors: all.errors,
    loads: cell.gatewayLoads.length,
    neuronLoads: cell.neuronLoads,
    evictions: cell.evictions,
    excessEvictions: cell.neuronUnloads - (cell.neuronLoads - cell.residentAtEnd),
    loadWaitMeanMs: round(mean(cell.gatewayLoads.map((l) => l.wait_ms)), 0),
    loadWaitMaxMs: round(Math.max(0, ...cell.gatewayLoads.map((l) => l.wait_ms)), 0),
    loadMeanMs: round(mean(cell.gatewayLoads.map((l) => l.load_ms)), 0),
    latency: all,
    perModel
  }
}

const table = (rows: ReadonlyArray<ReadonlyArray<string>>) => {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? "").length)))
  const line = (r: ReadonlyArray<string>) => `| ${r.map((cell, c) => cell.padEnd(widths[c]!)).join(" | ")} |`
  const sep = `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`
  return [line(rows[0]!), sep, ...rows.slice(1).map(line)].join("\n")
}

const num = (x: number, digits = 0) => (Number.isFinite(x) ? x.toFixed(digits) : "—")
const ratio = (a: number, b: number) => (Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? a / b : NaN)
const ratioText = (a: number, b: number) => {
  const r = ratio(a, b)
  return Number.isFinite(r) ? `${r.toFixed(2)}×` : "—"
}

/** What looks wrong in a cell. */
const anomalies = (cell: Cell, v: CellView): Array<string> => {
  const out: Array<string> = []
  if (v.errors > 0) {
    const byMessage = new Map<string, number>()
    for (const s of cell.samples) if (!s.ok) byMessage.set(s.error ?? "?", (byMessage.get(s.error ?? "?") ?? 0) + 1)
    for (const [message, n] of byMessage) out.push(`${n} failed request(s): ${message}`)
  }
  if (cell.loadsStuckAtEnd.length > 0) {
    out.push(`loads still in progress 15 s after the last answer: ${cell.loadsStuckAtEnd.join("; ")}`)
  }
  if (cell.metricLoads !== cell.gatewayLoads.length) {
    out.push(`recent_loads saw ${cell.gatewayLoads.length} loads, cortex_model_load_seconds counts ${cell.metricLoads}`)
  }
  const neuronStarted = cell.neuronLoads + cell.neuronLoadFailures
  if (cell.neuronLoadFailures > 0 || neuronStarted !== cell.gatewayLoadAttempts) {
    out.push(
      `the gateway started ${cell.gatewayLoadAttempts} loads (${cell.gatewayLoads.length} completed); the neurons `
        + `started ${neuronStarted} (${cell.neuronLoads} loaded, ${cell.neuronLoadFailures} refused)`
    )
  }
  if (cell.evictions !== cell.neuronUnloads || cell.evictionLines !== cell.neuronUnloads) {
    out.push(
      `the gateway counted ${cell.evictions} evictions (${cell.evictionLines} "evicting" log lines); the neurons `
        + `unloaded ${cell.neuronUnloads} times`
    )
  }
  const nodes = Object.entries(cell.byNode)
  const spared = nodes.filter(([, n]) => n.evictions === 0)
  if (cell.evictions >= 3 && spared.length > 0) {
    const share = (ids: ReadonlyArray<string>) => cell.samples.filter((s) => ids.includes(s.model)).length
    out.push(
      `every eviction was on ${nodes.filter(([, n]) => n.evictions > 0).map(([name]) => name).join(", ")}; `
        + spared.map(([name, n]) =>
          `${name} was never evicted from and still holds ${n.residentAtEnd.join(", ") || "nothing"} `
          + `(${share(n.residentAtEnd)} of ${cell.samples.length} requests)`
        ).join("; ")
    )
  }
  if (v.excessEvictions > 0) {
    out.push(
      `${cell.neuronUnloads} unloads for ${cell.neuronLoads} loads with ${cell.residentAtEnd} models resident at the `
        + `end: ${v.excessEvictions} more than the loads needed`
    )
  }
  return out
}

const lifecycleLine = (line: string) => /\b(loading|loaded|evicting|unloaded|WARN|ERROR|FATAL)\b|fail/.test(line)

/** An error's kind: its HTTP status and API error code, or the message. */
const errorKind = (error: string) => {
  const status = /^HTTP (\d+)/.exec(error)?.[1]
  const code = /"code":"([^"]+)"/.exec(error)?.[1]
  return status !== undefined ? `HTTP ${status}${code !== undefined ? ` ${code}` : ""}` : error.slice(0, 60)
}

/**
 * For the first failed request of each kind (and the first warning in any log, when no request
 * failed), the gateway's and neurons' lifecycle lines from 5 s before it to 0.3 s after (the last 20).
 */
const contextLines = (cell: Cell): Array<{ readonly title: string; readonly lines: ReadonlyArray<string> }> => {
  const firsts = new Map<string, number>()
  for (const s of [...cell.samples].sort((a, b) => a.endAt - b.endAt)) {
    if (!s.ok && !firsts.has(errorKind(s.error ?? "?"))) firsts.set(errorKind(s.error ?? "?"), s.endAt)
  }
  const warning = cell.lines.find((l) => /\b(WARN|ERROR|FATAL)\b/.test(l.text))
  if (firsts.size === 0 && warning) firsts.set("first warning", warning.at)
  return [...firsts].map(([kind, at]) => ({
    title: `${kind} at ${new Date(at).toISOString().slice(11, 23)}`,
    lines: cell.lines
      .filter((l) => l.at >= at - 5000 && l.at <= at + 300 && lifecycleLine(l.text))
      .map((l) => l.text)
      .slice(-20)
  }))
}

const cpuInfo = () => {
  const cpus = os.cpus()
  return {
    model: cpus[0]?.model.trim() ?? "unknown",
    logicalCores: cpus.length,
    totalMemMb: Math.round(os.totalmem() / (1024 * 1024)),
    node: process.version
  }
}

const report = (cells: ReadonlyArray<Cell>, loadBefore: ReadonlyArray<number>, totalMs: number) => {
  const cellOf = (w: WorkloadKey, p: PolicyKey) => cells.find((c) => c.workload === w && c.policy === p)!
  const views = new Map(cells.map((c) => [`${c.workload}/${c.policy}`, viewOf(c)] as const))
  const viewFor = (w: WorkloadKey, p: PolicyKey) => views.get(`${w}/${p}`)!
  const cpu = cpuInfo()
  const loadText = (l: ReadonlyArray<number>) => l.map((x) => x.toFixed(2)).join(" ")

  console.log("")
  console.log(
    `machine:  ${cpu.model}, ${cpu.logicalCores} logical cores, ${cpu.totalMemMb} MB RAM, node ${cpu.node}, `
      + `load average ${loadText(loadBefore)} before, ${loadText(os.loadavg())} after`
  )
  console.log(
    `fleet:    ${SETTINGS.nodes} neurons, each memory_budget_mb ${SETTINGS.budgetMb} (holds 2 tiny models), `
      + `max_in_flight ${SETTINGS.maxInFlight}, load_delay_ms ${SETTINGS.loadDelayMs}; ${SETTINGS.models} models `
      + `(${MODELS.join(" ")}) on every node; gateway eviction lru, poll 0.5 s${quick ? "; --quick" : ""}`
  )
  console.log(
    `policies: batched min_resident_secs ${POLICIES.batched.minResidentSecs}, max_swap_wait_secs `
      + `${POLICIES.batched.maxSwapWaitSecs}; naive 0 and 0. Fresh neurons and gateway per cell.`
  )
  console.log(
    `interleaved: ${SETTINGS.clients} clients × ${SETTINGS.requests} requests back to back: ${
      Array.from({ length: SETTINGS.clients }, (_, c) => `c${c} ${clientSequence(c).slice(0, 4).join(" ")} …`).join(
        "; "
      )
    }`
  )
  console.log(
    `fan-out:  ${SETTINGS.turns} turns of ${SETTINGS.fanout} requests at once: ${
      Array.from({ length: Math.min(SETTINGS.turns, 4) }, (_, t) => `[${turnModels(t).join(" ")}]`).join(" ")
    }${SETTINGS.turns > 4 ? " …" : ""}`
  )
  console.log(
    `requests: chat completions, max_tokens ${SETTINGS.maxTokens}, temperature ${SETTINGS.temperature}, `
      + `not streamed; latency = client-side request → full answer; total run ${(totalMs / 1000).toFixed(0)} s`
  )

  for (const w of ["interleaved", "fanout"] as const) {
    for (const p of ["batched", "naive"] as const) {
      const cell = cellOf(w, p)
      const v = viewFor(w, p)
      console.log("")
      console.log(
        `${WORKLOADS[w].title}, ${p}: wall ${v.wallS.toFixed(2)} s, ${v.requests} requests, ${v.errors} errors; `
          + `${v.loads} loads completed by the gateway (${cell.gatewayLoadAttempts} started; the neurons loaded `
          + `${v.neuronLoads}, refused ${cell.neuronLoadFailures}); ${v.evictions} evictions; load wait mean `
          + `${num(v.loadWaitMeanMs)} ms (max ${num(v.loadWaitMaxMs)}), load mean ${num(v.loadMeanMs)} ms; `
          + `fleet startup ${(cell.startupMs / 1000).toFixed(1)} s (not timed)`
      )
      const rows: Array<Array<string>> = [["model", "requests", "errors", "mean ms", "p50 ms", "max ms"]]
      for (const [m, l] of Object.entries(v.perModel)) {
        rows.push([m, String(l.n), String(l.errors), num(l.meanMs), num(l.p50Ms), num(l.maxMs)])
      }
      rows.push([
        "all",
        String(v.latency.n),
        String(v.latency.errors),
        num(v.latency.meanMs),
        num(v.latency.p50Ms),
        num(v.latency.maxMs)
      ])
      console.log(table(rows))
      console.log(
        `  per node: ${
          Object.entries(cell.byNode).map(([name, n]) =>
            `${name} ${n.evictions} evictions, ${
              cell.gatewayLoads.filter((l) => l.node === name).length
            } loads, holds ${n.residentAtEnd.join(" ") || "nothing"} at the end`
          ).join("; ")
        }`
      )
      const found = anomalies(cell, v)
      if (found.length > 0) {
        console.log("  anomalies:")
        for (const a of found) console.log(`    ${a}`)
        for (const { lines, title } of contextLines(cell)) {
          console.log(`  lifecycle log lines before the first failure of its kind: ${title}`)
          for (const l of lines) console.log(`    ${l.slice(0, 240)}`)
        }
      }
    }
  }

  console.log("")
  console.log("Side by side (ratio = batched / naive; below 1 means batched is lower)")
  const side: Array<Array<string>> = [["workload", "metric", "batched", "naive", "ratio"]]
  for (const w of ["interleaved", "fanout"] as const) {
    const b = viewFor(w, "batched")
    const n = viewFor(w, "naive")
    const row = (metric: string, x: number, y: number, digits = 0) =>
      side.push([WORKLOADS[w].title, metric, num(x, digits), num(y, digits), ratioText(x, y)])
    const bc = cellOf(w, "batched")
    const nc = cellOf(w, "naive")
    row("wall s", b.wallS, n.wallS, 2)
    row("requests", b.requests, n.requests)
    row("errors", b.errors, n.errors)
    row("loads (gateway, completed)", b.loads, n.loads)
    row("loads (neurons, incl. auto_load)", b.neuronLoads, n.neuronLoads)
    row("loads refused by neurons", bc.neuronLoadFailures, nc.neuronLoadFailures)
    row("evictions", b.evictions, n.evictions)
    row("load wait mean ms", b.loadWaitMeanMs, n.loadWaitMeanMs)
    row("latency mean ms", b.latency.meanMs, n.latency.meanMs)
    row("latency p50 ms", b.latency.p50Ms, n.latency.p50Ms)
    row("latency max ms", b.latency.maxMs, n.latency.maxMs)
    for (const m of MODELS) {
      const bm = b.perModel[m]
      const nm = n.perModel[m]
      if (!bm || !nm) continue
      side.push([
        WORKLOADS[w].title,
        `${m} mean / max ms (errors)`,
        `${num(bm.meanMs)} / ${num(bm.maxMs)} (${bm.errors})`,
        `${num(nm.meanMs)} / ${num(nm.maxMs)} (${nm.errors})`,
        `${ratioText(bm.meanMs, nm.meanMs)} / ${ratioText(bm.maxMs, nm.maxMs)}`
      ])
    }
  }
  console.log(table(side))
  if (cells.some((c) => c.samples.some((s) => !s.ok))) {
    console.log("note: failed requests are counted, not timed; a cell whose requests fail fast also finishes sooner")
  }
  console.log("")

  const cellJson = (c: Cell) => {
    const v = viewFor(c.workload, c.policy)
    return {
      ...v,
      metricLoads: c.metricLoads,
      gatewayLoadAttempts: c.gatewayLoadAttempts,
      neuronUnloads: c.neuronUnloads,
      evictionLines: c.evictionLines,
      neuronLoadFailures: c.neuronLoadFailures,
      residentAtEnd: c.residentAtEnd,
      byNode: c.byNode,
      maxLoadsInProgress: c.maxLoadsInProgress,
      longestLoadInProgressMs: Math.round(c.longestLoadInProgressMs),
      loadsStuckAtEnd: c.loadsStuckAtEnd,
      startupMs: Math.round(c.startupMs),
      loadsByReason: c.gatewayLoads.reduce<Record<string, number>>((acc, l) => {
        acc[l.reason] = (acc[l.reason] ?? 0) + 1
        return acc
      }, {}),
      anomalies: anomalies(c, v)
    }
  }
  const ratios = (w: WorkloadKey) => {
    const b = viewFor(w, "batched")
    const n = viewFor(w, "naive")
    const r = (x: number, y: number) => {
      const q = ratio(x, y)
      return Number.isFinite(q) ? round(q, 3) : null
    }
    return {
      wall: r(b.wallS, n.wallS),
      loads: r(b.loads, n.loads),
      evictions: r(b.evictions, n.evictions),
      latencyMean: r(b.latency.meanMs, n.latency.meanMs),
      latencyMax: r(b.latency.maxMs, n.latency.maxMs)
    }
  }
  console.log(JSON.stringify({
    bench: "fleet",
    machine: {
      ...cpu,
      loadavgBefore: loadBefore.map((x) => round(x, 2)),
      loadavgAfter: os.loadavg().map((x) => round(x, 2))
    },
    settings: { ...SETTINGS, policies: POLICIES, modelIds: MODELS },
    totalMs: Math.round(totalMs),
    workloads: Object.fromEntries((["interleaved", "fanout"] as const).map((w) => [w, {
      batched: cellJson(cellOf(w, "batched")),
      naive: cellJson(cellOf(w, "naive")),
      ratioBatchedToNaive: ratios(w)
    }]))
  }))
}

// ---------------------------------------------------------------------------------------------
// Main

let tempDir: string | undefined

const cleanup = async () => {
  await Promise.all([...children].map((c) => c.stop(3000)))
  if (tempDir) await rm(tempDir, { recursive: true, force: true })
}

stopChildrenOnExit(cleanup)

const main = async () => {
  const loadBefore = os.loadavg()
  const t0 = performance.now()
  tempDir = await mkdtemp(path.join(os.tmpdir(), "cortex-fleet-bench-"))
  const modelsDir = path.join(tempDir, "models")
  for (const [i, id] of MODELS.entries()) {
    await writeModel(path.join(modelsDir, `${id}.gguf`), { shape: "tiny", seed: 1000 + i })
  }
  log(`generated ${MODELS.length} tiny models in ${modelsDir}`)
  const cells: Array<Cell> = []
  // Policies alternate so that drift in the machine's load lands on both alike.
  const order: Array<[WorkloadKey, PolicyKey]> = [
    ["interleaved", "batched"],
    ["interleaved", "naive"],
    ["fanout", "naive"],
    ["fanout", "batched"]
  ]
  for (const [w, p] of order) cells.push(await runCell(w, p, modelsDir, tempDir))
  report(cells, loadBefore, performance.now() - t0)
}

try {
  await main()
} catch (error) {
  console.error(error instanceof Error ? (error.stack ?? error.message) : error)
  process.exitCode = 1
} finally {
  await cleanup()
}
