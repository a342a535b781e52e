/**
 * The neuron's own metrics, served on metrics_port (off by default). Labels: model (a model id
 * on this host's disk, or "unknown"), device, reason (a short error code). Every histogram has
 * explicit buckets (lesson 4). Per-request series are updated once per request, after it ends;
 * seats, queues and devices follow ModelManager's cached state on a timer.
 */
import { Effect, Metric, MetricLabel } from "effect"
import { loadSeconds, prefillTokensPerSecond as prefillRate, tokensPerSecond } from "../domain/buckets.js"
import type { ModelManager } from "./ModelManager.js"

export const seatsInUse = Metric.gauge("cortex_neuron_seats_in_use", {
  description: "Sequences generating now, per model"
})
export const seatsTotal = Metric.gauge("cortex_neuron_seats", {
  description: "Sequences a loaded model offers (max_in_flight); 0 when not loaded"
})
export const queueDepth = Metric.gauge("cortex_neuron_queue_depth", {
  description: "Requests waiting for a seat, per model"
})
export const modelLoaded = Metric.gauge("cortex_neuron_model_loaded", {
  description: "1 when the model is loaded and servable, else 0"
})
export const admissionRejections = Metric.counter("cortex_neuron_admission_rejections_total", {
  description: "Requests refused a seat, by model and reason (queue_full, principal_limit, queue_timeout, …)",
  incremental: true
})
export const prefillTokensPerSecond = Metric.histogram(
  "cortex_neuron_prefill_tokens_per_second",
  prefillRate,
  "Prefill speed of each request (uncached prompt tokens over prefill time)"
)
export const decodeTokensPerSecond = Metric.histogram(
  "cortex_neuron_decode_tokens_per_second",
  tokensPerSecond,
  "Decode speed of each request (completion tokens after the first, over decode time)"
)
export const modelLoadSeconds = Metric.histogram(
  "cortex_neuron_model_load_seconds",
  loadSeconds,
  "Time to load a model on this host"
)
export const modelUnloadSeconds = Metric.histogram(
  "cortex_neuron_model_unload_seconds",
  loadSeconds,
  "Time to unload a model (running requests drain first)"
)
export const modelLoadFailures = Metric.counter("cortex_neuron_model_load_failures_total", {
  description: "Loads asked for over the API that failed, by model and reason",
  incremental: true
})
export const workerRestarts = Metric.counter("cortex_neuron_worker_restarts_total", {
  description: "Device worker restarts (crash recovery or defragmentation), per device",
  incremental: true
})
export const workerAlive = Metric.gauge("cortex_neuron_worker_up", {
  description: "1 when the device's worker process is running"
})
export const deviceMemoryUsed = Metric.gauge("cortex_neuron_device_memory_used_bytes", {
  description: "Memory used on a device (VRAM, or RAM on CPU hosts), bytes"
})
export const deviceMemoryFree = Metric.gauge("cortex_neuron_device_memory_free_bytes", {
  description: "Memory free on a device, bytes"
})
export const deviceMemoryTotal = Metric.gauge("cortex_neuron_device_memory_total_bytes", {
  description: "Memory of a device, bytes"
})

const MB = 1024 * 1024
const model = (id: string) => [MetricLabel.make("model", id)]

/** A reason label from an error code: short snake_case words only, so label sets stay bounded. */
export const reasonLabel = (code: unknown): string =>
  typeof code === "string" && /^[A-Za-z_]{1,48}$/.test(code) ? code : "other"

/** Once per generation, after it ended: prefill and decode speed. */
export const recordGeneration = (
  id: string,
  figures: { promptTokens: number; cachedTokens: number; completionTokens: number; prefillMs: number; decodeMs: number }
) => {
  const labels = model(id)
  const prefilled = figures.promptTokens - figures.cachedTokens
  if (figures.prefillMs > 0 && prefilled > 0) {
    prefillTokensPerSecond.unsafeUpdate(prefilled / (figures.prefillMs / 1000), labels)
  }
  if (figures.decodeMs > 0 && figures.completionTokens > 1) {
    decodeTokensPerSecond.unsafeUpdate((figures.completionTokens - 1) / (figures.decodeMs / 1000), labels)
  }
}

export const recordRejection = (id: string, reason: string) =>
  admissionRejections.unsafeUpdate(1, [...model(id), MetricLabel.make("reason", reason)])

export const recordLoadFailure = (id: string, reason: string) =>
  modelLoadFailures.unsafeUpdate(1, [...model(id), MetricLabel.make("reason", reason)])

export const recordUnload = (id: string, seconds: number) => modelUnloadSeconds.unsafeUpdate(seconds, model(id))

/**
 * Seats, queues, devices and load times from ModelManager's cached state. Loads are seen here
 * (a new loaded_at) whatever started them: the API, a default model, an on-demand load.
 */
export const makeStateGauges = (models: ModelManager, maxInFlight: number) => {
  const loadedAt = new Map<string, string>()
  const restarts = new Map<string, number>()
  return Effect.sync(() => {
    for (const m of models.snapshot()) {
      const labels = model(m.id)
      const loaded = m.status === "loaded"
      seatsInUse.unsafeUpdate(m.in_flight, labels)
      queueDepth.unsafeUpdate(m.queue_depth, labels)
      seatsTotal.unsafeUpdate(loaded ? maxInFlight : 0, labels)
      modelLoaded.unsafeUpdate(loaded ? 1 : 0, labels)
      if (loaded && m.loaded_at !== null && loadedAt.get(m.id) !== m.loaded_at) {
        loadedAt.set(m.id, m.loaded_at)
        if (m.load_ms !== null) modelLoadSeconds.unsafeUpdate(m.load_ms / 1000, labels)
      }
    }
    for (const d of models.deviceViews()) {
      const labels = [MetricLabel.make("device", d.id)]
      deviceMemoryUsed.unsafeUpdate(d.usedMb * MB, labels)
      deviceMemoryFree.unsafeUpdate(d.freeMb * MB, labels)
      deviceMemoryTotal.unsafeUpdate(d.totalMb * MB, labels)
      workerAlive.unsafeUpdate(d.worker.alive ? 1 : 0, labels)
      const before = restarts.get(d.id)
      // The first sight only sets the baseline (and shows the series at 0).
      workerRestarts.unsafeUpdate(before === undefined ? 0 : Math.max(0, d.worker.restarts - before), labels)
      restarts.set(d.id, d.worker.restarts)
    }
  })
}
