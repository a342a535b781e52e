/**
 * Span export that never holds up a request: the SDK's BatchSpanProcessor (a timer sends
 * batches in the background), behind a bounded queue whose overflow is dropped and counted.
 * The batch processor drops on overflow too, but silently (a debug log); this wrapper keeps its
 * own count of spans handed over and not yet passed to the exporter, so the queue bound and the
 * `cortex_trace_spans_dropped_total` series agree. Failed exports (an endpoint down, a timeout)
 * are counted as dropped as well: the spans are gone.
 */
import { TraceFlags } from "@opentelemetry/api"
import { OTLPTraceExporter as JsonExporter } from "@opentelemetry/exporter-trace-otlp-http"
import { OTLPTraceExporter as ProtoExporter } from "@opentelemetry/exporter-trace-otlp-proto"
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ParentBasedSampler,
  type ReadableSpan,
  type Sampler,
  type SpanExporter,
  type SpanProcessor,
  TraceIdRatioBasedSampler
} from "@opentelemetry/sdk-trace-base"
import { Metric, MetricLabel } from "effect"
import type { SamplerName, TraceExport } from "./TelemetryConfig.js"

export const spansDropped = Metric.counter("cortex_trace_spans_dropped_total", {
  description: "Finished spans not exported, by reason (queue_full: the export queue was full; export_failed)",
  incremental: true
})
export const spansExported = Metric.counter("cortex_trace_spans_exported_total", {
  description: "Spans the OTLP endpoint accepted",
  incremental: true
})
const none: ReadonlyArray<MetricLabel.MetricLabel> = []
const queueFull = Metric.tagged(spansDropped, "reason", "queue_full")
const exportFailed = Metric.tagged(spansDropped, "reason", "export_failed")

/** The SDK's ExportResultCode.SUCCESS. */
const SUCCESS = 0

class CountingExporter implements SpanExporter {
  constructor(private readonly inner: SpanExporter, private readonly queue: { size: number }) {}
  export(spans: Array<ReadableSpan>, done: Parameters<SpanExporter["export"]>[1]) {
    this.queue.size = Math.max(0, this.queue.size - spans.length)
    this.inner.export(spans, (result) => {
      if (result.code === SUCCESS) spansExported.unsafeUpdate(spans.length, none)
      else exportFailed.unsafeUpdate(spans.length, none)
      done(result)
    })
  }
  shutdown() {
    return this.inner.shutdown()
  }
  forceFlush() {
    return this.inner.forceFlush?.() ?? Promise.resolve()
  }
}

class BoundedProcessor implements SpanProcessor {
  constructor(
    private readonly inner: SpanProcessor,
    private readonly queue: { size: number },
    private readonly max: number
  ) {}
  onStart(...args: Parameters<SpanProcessor["onStart"]>) {
    this.inner.onStart(...args)
  }
  onEnd(span: ReadableSpan) {
    if ((span.spanContext().traceFlags & TraceFlags.SAMPLED) === 0) return
    if (this.queue.size >= this.max) return queueFull.unsafeUpdate(1, none)
    this.queue.size++
    this.inner.onEnd(span)
  }
  forceFlush() {
    return this.inner.forceFlush()
  }
  shutdown() {
    return this.inner.shutdown()
  }
}

/** Export timeout per batch: a dead endpoint costs a background timer, never a request. */
const EXPORT_TIMEOUT_MS = 10_000

export const makeSpanProcessor = (target: TraceExport): SpanProcessor => {
  const config = { url: target.url, headers: { ...target.headers }, timeoutMillis: EXPORT_TIMEOUT_MS }
  const exporter = target.protocol === "http/json" ? new JsonExporter(config) : new ProtoExporter(config)
  const queue = { size: 0 }
  // Batch size and delay come from OTEL_BSP_MAX_EXPORT_BATCH_SIZE / OTEL_BSP_SCHEDULE_DELAY when set.
  const batch = new BatchSpanProcessor(new CountingExporter(exporter, queue), {
    maxQueueSize: target.maxQueueSize,
    exportTimeoutMillis: EXPORT_TIMEOUT_MS
  })
  return new BoundedProcessor(batch, queue, target.maxQueueSize)
}

export const makeSampler = (name: SamplerName, ratio: number): Sampler => {
  switch (name) {
    case "always_on":
      return new AlwaysOnSampler()
    case "always_off":
      return new AlwaysOffSampler()
    case "traceidratio":
      return new TraceIdRatioBasedSampler(ratio)
    case "parentbased_always_on":
      return new ParentBasedSampler({ root: new AlwaysOnSampler() })
    case "parentbased_always_off":
      return new ParentBasedSampler({ root: new AlwaysOffSampler() })
    case "parentbased_traceidratio":
      return new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(ratio) })
  }
}
