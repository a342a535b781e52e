/**
 * Effect metrics → OpenTelemetry → a Prometheus endpoint (the gateway's metrics_listen, the
 * neuron's metrics_port); spans through the same SDK (W3C trace context). With an OTLP endpoint
 * configured ([telemetry] or OTEL_EXPORTER_OTLP_*), spans go out in batches from a bounded
 * queue (src/telemetry/SpanExport.ts); without one, spans still carry the trace id to the
 * neurons, and nothing is exported.
 */
import { NodeSdk } from "@effect/opentelemetry"
import { PrometheusExporter } from "@opentelemetry/exporter-prometheus"
import { makeSampler, makeSpanProcessor } from "../telemetry/SpanExport.js"
import type { TelemetrySettings } from "../telemetry/TelemetryConfig.js"

export const TelemetryLive = (options: {
  readonly metrics: { readonly host: string; readonly port: number } | undefined
  readonly telemetry: TelemetrySettings
}) =>
  NodeSdk.layer(() => {
    const { metrics, telemetry } = options
    return {
      resource: { serviceName: telemetry.serviceName },
      ...(metrics !== undefined
        ? { metricReader: new PrometheusExporter({ host: metrics.host, port: metrics.port, endpoint: "/metrics" }) }
        : {}),
      ...(telemetry.export !== undefined
        ? {
          spanProcessor: makeSpanProcessor(telemetry.export),
          tracerConfig: { sampler: makeSampler(telemetry.sampler, telemetry.samplerArg) }
        }
        : {}),
      // On shutdown the last batch gets this long to go out; a dead endpoint never holds the exit.
      shutdownTimeout: "2 seconds"
    }
  })
