/**
 * Where a V8 CPU profile (`node --cpu-prof`) spends its time: self time by function, and self and
 * inclusive time by origin (a package under node_modules, a Node built-in, a file of src/, or
 * V8's own buckets such as GC). Used by the gateway benchmark's `--cpu-prof`.
 */
import { readFile } from "node:fs/promises"

interface CallFrame {
  readonly functionName: string
  readonly url: string
  readonly lineNumber: number
  readonly columnNumber: number
}

interface ProfileNode {
  readonly id: number
  readonly callFrame: CallFrame
  readonly children?: ReadonlyArray<number>
}

interface CpuProfile {
  readonly nodes: ReadonlyArray<ProfileNode>
  readonly samples: ReadonlyArray<number>
  readonly timeDeltas: ReadonlyArray<number>
  readonly startTime: number
  readonly endTime: number
}

export interface Share {
  readonly name: string
  readonly ms: number
  /** Of the busy (non-idle) time. */
  readonly percent: number
}

/** A span of time on the system's monotonic clock, µs (what `process.hrtime` and V8's profiler read). */
export interface Window {
  readonly fromUs: number
  readonly toUs: number
}

export const monotonicUs = () => Number(process.hrtime.bigint() / 1000n)

export interface ProfileSummary {
  readonly file: string
  /** Sampled time inside the windows asked for (all of the profile when none were). */
  readonly wallMs: number
  readonly busyMs: number
  readonly idleMs: number
  /** Self time by origin. */
  readonly selfByOrigin: ReadonlyArray<Share>
  /** Time with the origin anywhere on the stack (shares overlap). */
  readonly inclusiveByOrigin: ReadonlyArray<Share>
  readonly topFunctions: ReadonlyArray<Share>
}

const V8_BUCKETS = new Set(["(idle)", "(program)", "(garbage collector)", "(root)"])

/** What a frame belongs to: `effect`, `node:http`, `src/gateway/Proxy.ts`, `(garbage collector)`. */
export const originOf = (frame: CallFrame): string => {
  if (V8_BUCKETS.has(frame.functionName) && frame.url === "") return frame.functionName
  const url = frame.url
  if (url === "") return "(native code)"
  const modules = url.lastIndexOf("/node_modules/")
  if (modules >= 0) {
    const parts = url.slice(modules + "/node_modules/".length).split("/")
    const first = parts[0] ?? "?"
    return first.startsWith("@") ? `${first}/${parts[1] ?? "?"}` : first
  }
  if (url.startsWith("node:")) {
    const name = url.slice("node:".length)
    if (name.includes("undici")) return "node:undici (fetch)"
    const parts = name.split("/")
    return `node:${parts[0] === "internal" ? parts[1] ?? "internal" : parts[0] ?? "?"}`.replace(/\.js$/, "")
  }
  const src = url.indexOf("/src/")
  if (src >= 0) return url.slice(src + 1)
  const bench = url.indexOf("/bench/")
  if (bench >= 0) return url.slice(bench + 1)
  return url
}

const shares = (totals: Map<string, number>, busyMs: number, limit: number): Array<Share> =>
  [...totals.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, limit)
    .map(([name, ms]) => ({
      name,
      ms: Math.round(ms * 10) / 10,
      percent: Math.round((ms / Math.max(busyMs, 1e-9)) * 1000) / 10
    }))

/**
 * Summarize `file`, counting only samples inside `windows` when given. V8 stamps samples with the
 * monotonic clock, so windows taken with `monotonicUs()` in another process line up with them.
 */
export const summarizeProfile = async (
  file: string,
  windows: ReadonlyArray<Window> | undefined,
  limit = 15
): Promise<ProfileSummary> => {
  const profile = JSON.parse(await readFile(file, "utf8")) as CpuProfile
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const parent = new Map<number, number>()
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id)

  // Each sample's time is the delta to the next sample (the last one gets the mean).
  const selfUs = new Map<number, number>()
  const n = profile.samples.length
  const meanDelta = n > 0 ? (profile.endTime - profile.startTime) / n : 0
  const inside = (t: number) => windows === undefined || windows.some((w) => t >= w.fromUs && t < w.toUs)
  let stamp = profile.startTime
  for (let i = 0; i < n; i++) {
    stamp += profile.timeDeltas[i] ?? 0
    if (!inside(stamp)) continue
    const id = profile.samples[i]!
    const delta = i + 1 < n ? profile.timeDeltas[i + 1]! : meanDelta
    selfUs.set(id, (selfUs.get(id) ?? 0) + Math.max(0, delta))
  }

  let idleMs = 0
  let wallMs = 0
  const selfByOrigin = new Map<string, number>()
  const inclusiveByOrigin = new Map<string, number>()
  const byFunction = new Map<string, number>()
  for (const [id, us] of selfUs) {
    const node = byId.get(id)
    if (!node) continue
    const ms = us / 1000
    wallMs += ms
    if (node.callFrame.functionName === "(idle)") {
      idleMs += ms
      continue
    }
    const origin = originOf(node.callFrame)
    selfByOrigin.set(origin, (selfByOrigin.get(origin) ?? 0) + ms)
    // Line and column of the code V8 ran: for src/ files that is tsx's output, not the .ts source.
    const frame = node.callFrame
    const name = `${frame.functionName || "(anonymous)"} ${origin}:${frame.lineNumber + 1}:${frame.columnNumber + 1}`
    byFunction.set(name, (byFunction.get(name) ?? 0) + ms)
    const seen = new Set<string>()
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const caller = byId.get(at)?.callFrame
      if (!caller || caller.functionName === "(root)") continue
      const o = originOf(caller)
      if (seen.has(o)) continue
      seen.add(o)
      inclusiveByOrigin.set(o, (inclusiveByOrigin.get(o) ?? 0) + ms)
    }
  }
  const busyMs = wallMs - idleMs
  return {
    file,
    wallMs: Math.round(wallMs),
    busyMs: Math.round(busyMs),
    idleMs: Math.round(idleMs),
    selfByOrigin: shares(selfByOrigin, busyMs, limit),
    inclusiveByOrigin: shares(inclusiveByOrigin, busyMs, limit),
    topFunctions: shares(byFunction, busyMs, limit)
  }
}
