/**
 * Per-device figures the neurons report, as the gateway shows them: the operator status view of
 * a device, and the device telemetry gauges (utilisation, temperature, power), labelled by node
 * and device. Only what a neuron's source measured is exported: a CPU device gets no GPU figures.
 */
import { Effect, Metric, MetricLabel } from "effect"
import type { NeuronDevice } from "../domain/contract.js"
import type { NodeState } from "./Poller.js"

export const deviceUtilization = Metric.gauge("cortex_device_utilization_ratio", {
  description: "GPU utilisation over the driver's last sample period (0..1), per node and device"
})
export const deviceTemperature = Metric.gauge("cortex_device_temperature_celsius", {
  description: "GPU temperature, per node and device"
})
export const devicePower = Metric.gauge("cortex_device_power_watts", {
  description: "GPU power draw, per node and device"
})

export const deviceView = (d: NeuronDevice) => ({
  id: d.id,
  name: d.name,
  total_mb: d.totalMb,
  free_mb: d.freeMb,
  used_mb: d.usedMb,
  ...(d.group !== undefined ? { group: d.group } : {}),
  ...(d.utilization !== undefined ? { utilization: d.utilization } : {}),
  ...(d.temperatureC !== undefined ? { temperature_c: d.temperatureC } : {}),
  ...(d.powerW !== undefined ? { power_w: d.powerW } : {})
})

/** Set the telemetry gauges of a node's devices from its last poll. */
export const deviceGauges = (node: NodeState) =>
  Effect.forEach(node.devices, (d) => {
    const labels = [MetricLabel.make("node", node.name), MetricLabel.make("device", d.id)]
    return Effect.all([
      d.utilization !== undefined
        ? Metric.set(Metric.taggedWithLabels(deviceUtilization, labels), d.utilization)
        : Effect.void,
      d.temperatureC !== undefined
        ? Metric.set(Metric.taggedWithLabels(deviceTemperature, labels), d.temperatureC)
        : Effect.void,
      d.powerW !== undefined ? Metric.set(Metric.taggedWithLabels(devicePower, labels), d.powerW) : Effect.void
    ], { discard: true })
  }, { discard: true })
