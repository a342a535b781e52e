/**
 * The gateway's metrics, under the predecessor's names (dashboard continuity). Every histogram
 * has explicit buckets (lesson 4). Labels: model, node, route, reason, device.
 */
import { Metric, MetricBoundaries } from "effect"

const seconds = MetricBoundaries.fromIterable([
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
  60,
  120,
  300
])
const loadSeconds = MetricBoundaries.fromIterable([0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600])
const tokensPerSecond = MetricBoundaries.fromIterable([1, 5, 10, 20, 40, 60, 80, 100, 150, 200, 300, 500, 1000, 2500])

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

export const upstreamRetries = Metric.counter("cortex_upstream_retries_total", {
  description:
    "Upstream calls tried again before any byte reached the client, by the node that failed and the reason (connect, reset, timeout, an HTTP status, reused_socket)",
  incremental: true
})
