/**
 * Effect metrics → OpenTelemetry → a Prometheus endpoint on metrics_listen; spans go through the
 * same SDK (W3C trace context), exported nowhere by default but continued by the neurons.
 */
import { NodeSdk } from "@effect/opentelemetry"
import { PrometheusExporter } from "@opentelemetry/exporter-prometheus"

export const TelemetryLive = (metrics: { readonly host: string; readonly port: number } | undefined) =>
  metrics === undefined
    ? NodeSdk.layer(() => ({ resource: { serviceName: "cortex-gateway" } }))
    : NodeSdk.layer(() => ({
      resource: { serviceName: "cortex-gateway" },
      metricReader: new PrometheusExporter({ host: metrics.host, port: metrics.port, endpoint: "/metrics" })
    }))
