/**
 * The gateway's metrics, under the predecessor's names (dashboard continuity). Every histogram
 * has explicit buckets (lesson 4). Labels: model, node, route, reason, device.
 */
import { Metric, MetricLabel } from "effect"
import { loadSeconds, seconds, tokensPerSecond } from "../domain/buckets.js"
import type { Usage } from "../domain/openai-output.js"
import type { RecentRequest } from "./console/ConsoleFeed.js"

export const requests = Metric.counter("cortex_requests_total", {
  description: "Requests received, by model, node, route and HTTP status",
  incremental: true
})
export const requestErrors = Metric.counter("cortex_request_errors_total", {
  description: "Requests that failed, by model, node, route and reason",
  incremental: true
})
export const coldStarts = Metric.counter("cortex_cold_starts_total", {
  description: "Requests that had to load their model first",
  incremental: true
})
export const evictions = Metric.counter("cortex_evictions_total", {
  description: "Models unloaded to make room, by reason",
  incremental: true
})
export const requestDuration = Metric.histogram(
  "cortex_request_duration_seconds",
  seconds,
  "Time from request to the last byte of the answer"
)
export const timeToFirstToken = Metric.histogram(
  "cortex_time_to_first_token_seconds",
  seconds,
  "Time from request to the first content or reasoning token (not the first byte)"
)
export const decodeRate = Metric.histogram(
  "cortex_tokens_per_second",
  tokensPerSecond,
  "Decode speed of each request (completion tokens over decode time)"
)
export const promptTokens = Metric.counter("cortex_prompt_tokens_total", {
  description: "Prompt tokens processed",
  incremental: true
})
export const completionTokens = Metric.counter("cortex_completion_tokens_total", {
  description: "Completion tokens generated",
  incremental: true
})
export const cachedPromptTokens = Metric.counter("cortex_cached_prompt_tokens_total", {
  description: "Prompt tokens served from a cached prefix",
  incremental: true
})
export const modelLoad = Metric.histogram("cortex_model_load_seconds", loadSeconds, "Time to load a model on a node")
export const modelLoadWait = Metric.histogram(
  "cortex_model_load_wait_seconds",
  loadSeconds,
  "Time a cold load spent placing and waiting (busy or just-loaded victims, evictions) before loading"
)
export const modelInFlight = Metric.gauge("cortex_model_in_flight", {
  description: "Requests running, per model and node"
})
export const modelQueueDepth = Metric.gauge("cortex_model_queue_depth", {
  description: "Requests waiting for a seat, per model and node"
})
export const deviceVramUsed = Metric.gauge("cortex_device_vram_used_mb", {
  description: "Memory used on a device, MB"
})
export const deviceVramFree = Metric.gauge("cortex_device_vram_free_mb", {
  description: "Memory free on a device, MB"
})

/** What one request came to, for the request metrics. */
export interface Outcome {
  readonly status: number
  readonly usage?: Usage | null | undefined
  readonly ttftMs?: number | undefined
  readonly error?: string | undefined
}

/** The model label for unknown names: clients choose model names, so they never become labels. */
export const UNKNOWN_MODEL = "unknown"

/**
 * A `reason` label from an error code: codes are short snake_case words; anything else (a
 * free-text upstream message) is folded into one value, so every label set stays bounded.
 */
export const reasonLabel = (reason: string): string =>
  /^[A-Za-z_]{1,48}$/.test(reason) ? reason : reason.startsWith("upstream") ? "upstream_failed" : "other"

/**
 * The per-request metrics, with their tagged instruments built once per (model, node, route):
 * tagging on every request showed in the gateway's profile. `modelLabel` maps the client's
 * model name to a catalogue id or UNKNOWN_MODEL, so /metrics stays bounded whatever names
 * clients send (a 30 MB name once made it too large to render, and the gateway exited).
 */
export class RequestRecorder {
  private readonly cache = new Map<string, ReturnType<typeof tagged>>()

  constructor(
    private readonly modelLabel: (model: string) => string,
    /** The console's recent-request window (console/ConsoleFeed.ts), fed the same figures. */
    private readonly recent?: (entry: RecentRequest) => void
  ) {}

  record(model: string, node: string, route: string, received: number, outcome: Outcome) {
    const label = this.modelLabel(model)
    const key = `${label}\u0000${node}\u0000${route}`
    let t = this.cache.get(key)
    if (!t) {
      t = tagged(label, node, route)
      this.cache.set(key, t)
    }
    const usage = outcome.usage
    const none: ReadonlyArray<MetricLabel.MetricLabel> = []
    if (outcome.status === 200) t.ok.unsafeUpdate(1, none)
    else requests.unsafeUpdate(1, [...t.labels, MetricLabel.make("status", String(outcome.status))])
    t.duration.unsafeUpdate((Date.now() - received) / 1000, none)
    if (outcome.error !== undefined) {
      requestErrors.unsafeUpdate(1, [...t.labels, MetricLabel.make("reason", reasonLabel(outcome.error))])
    }
    if (outcome.ttftMs !== undefined) t.ttft.unsafeUpdate(outcome.ttftMs / 1000, none)
    if (usage) {
      t.prompt.unsafeUpdate(usage.prompt_tokens, none)
      t.completion.unsafeUpdate(usage.completion_tokens, none)
      t.cached.unsafeUpdate(usage.prompt_tokens_details?.cached_tokens ?? 0, none)
    }
    const rate = usage?.timing && usage.timing.decode_ms > 0 && usage.completion_tokens > 1
      ? (usage.completion_tokens - 1) / (usage.timing.decode_ms / 1000)
      : undefined
    if (rate !== undefined) t.rate.unsafeUpdate(rate, none)
    this.recent?.({
      at: Date.now(),
      model: label,
      node,
      route,
      status: outcome.status,
      duration_ms: Date.now() - received,
      ttft_ms: outcome.ttftMs ?? null,
      tokens_per_second: rate ?? null,
      prompt_tokens: usage?.prompt_tokens ?? null,
      completion_tokens: usage?.completion_tokens ?? null,
      error: outcome.error ?? null
    })
  }
}

const tagged = (model: string, node: string, route: string) => {
  const labels = [MetricLabel.make("model", model), MetricLabel.make("node", node), MetricLabel.make("route", route)]
  return {
    labels,
    ok: Metric.taggedWithLabels(requests, [...labels, MetricLabel.make("status", "200")]),
    duration: Metric.taggedWithLabels(requestDuration, labels),
    ttft: Metric.taggedWithLabels(timeToFirstToken, labels),
    prompt: Metric.taggedWithLabels(promptTokens, labels),
    completion: Metric.taggedWithLabels(completionTokens, labels),
    cached: Metric.taggedWithLabels(cachedPromptTokens, labels),
    rate: Metric.taggedWithLabels(decodeRate, labels)
  }
}

export const upstreamRetries = Metric.counter("cortex_upstream_retries_total", {
  description:
    "Upstream calls tried again before any byte reached the client, by the node that failed and the reason (connect, reset, timeout, an HTTP status, reused_socket)",
  incremental: true
})

export const upstreamErrors = Metric.counter("cortex_upstream_errors_total", {
  description:
    "Upstream calls that failed, by node and reason (connect, reset, timeout, an HTTP status of 429 or 5xx, or mid-stream: upstream_timeout, truncated, stream_error)",
  incremental: true
})
export const nodeHealthy = Metric.gauge("cortex_node_healthy", {
  description: "1 while the poller reaches the node (3 missed polls make it 0)"
})

/** Statuses that count as the upstream failing (a 4xx other than 408/429 is the request's own fault). */
export const isUpstreamFailureStatus = (status: number) => status >= 500 || status === 429 || status === 408

/** One failed upstream call; `reason` comes from a fixed set or is a 3-digit status, so labels stay bounded. */
export const countUpstreamError = (node: string, reason: string) =>
  upstreamErrors.unsafeUpdate(1, [MetricLabel.make("node", node), MetricLabel.make("reason", reason)])
