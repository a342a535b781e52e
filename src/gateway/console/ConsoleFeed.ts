/**
 * What the web console shows besides the fleet state: the gateway's own recent requests (fed by
 * the RequestRecorder, src/gateway/Metrics.ts) and its recent log lines (an extra Effect
 * logger), each in a bounded ring, and a sliding PubSub that tells open consoles about each new
 * entry. Everything is synchronous and bounded: a request costs one array write and one offer.
 */
import { Cause, Effect, HashMap, Layer, Logger, PubSub } from "effect"

/** One finished request, as the console's per-model window keeps it. */
export interface RecentRequest {
  readonly at: number
  readonly model: string
  readonly node: string
  readonly route: string
  readonly status: number
  readonly duration_ms: number
  readonly ttft_ms: number | null
  readonly tokens_per_second: number | null
  readonly prompt_tokens: number | null
  readonly completion_tokens: number | null
  readonly error: string | null
}

export interface LogLine {
  readonly at: number
  readonly level: string
  readonly message: string
}

export type FeedEvent =
  | { readonly type: "request"; readonly entry: RecentRequest }
  | { readonly type: "log"; readonly entry: LogLine }

/** A fixed-capacity ring, oldest first when read. */
class Ring<A> {
  private readonly items: Array<A> = []
  private next = 0
  constructor(private readonly capacity: number) {}
  push(item: A) {
    if (this.items.length < this.capacity) this.items.push(item)
    else this.items[this.next] = item
    this.next = (this.next + 1) % this.capacity
  }
  toArray(): Array<A> {
    return this.items.length < this.capacity
      ? [...this.items]
      : [...this.items.slice(this.next), ...this.items.slice(0, this.next)]
  }
}

export const RECENT_REQUESTS = 1000
export const RECENT_LOG_LINES = 500
const LOG_LINE_MAX = 2000

export class ConsoleFeed extends Effect.Service<ConsoleFeed>()("cortex/ConsoleFeed", {
  effect: Effect.gen(function*() {
    const requests = new Ring<RecentRequest>(RECENT_REQUESTS)
    const logs = new Ring<LogLine>(RECENT_LOG_LINES)
    // Sliding: a console that reads slowly loses old events, never holds up a request.
    const events = yield* PubSub.sliding<FeedEvent>(1024)
    return {
      request: (entry: RecentRequest) => {
        requests.push(entry)
        events.unsafeOffer({ type: "request", entry })
      },
      log: (entry: LogLine) => {
        logs.push(entry)
        events.unsafeOffer({ type: "log", entry })
      },
      recentRequests: () => requests.toArray(),
      recentLogs: () => logs.toArray(),
      events
    } as const
  })
}) {}

const text = (message: unknown): string => {
  const parts = Array.isArray(message) ? message : [message]
  return parts.map((p) => (typeof p === "string" ? p : p instanceof Error ? p.message : JSON.stringify(p)))
    .join(" ")
}

/** Every Effect log line also goes to the console's log tail. */
export const ConsoleLogger = Layer.unwrapEffect(
  Effect.map(ConsoleFeed, (feed) =>
    Logger.add(Logger.make(({ annotations, cause, date, logLevel, message }) => {
      let line = text(message)
      if (!Cause.isEmpty(cause)) line += ` ${Cause.pretty(cause).split("\n")[0]}`
      if (HashMap.size(annotations) > 0) {
        line += ` ${[...HashMap.entries(annotations)].map(([k, v]) => `${k}=${String(v)}`).join(" ")}`
      }
      feed.log({ at: date.getTime(), level: logLevel.label, message: line.slice(0, LOG_LINE_MAX) })
    })))
)
