/** How `cortex status` writes one device: memory, its group when shared, and telemetry where measured. */
import type { NodeView } from "../domain/admin.js"

export const deviceCell = (d: NodeView["devices"][number]) => {
  const parts = [`${d.id} ${d.free_mb}/${d.total_mb}`]
  if (d.group !== undefined && d.group !== d.id) parts.push(`[${d.group}]`)
  const telemetry = [
    d.utilization !== undefined ? `${Math.round(d.utilization * 100)}%` : undefined,
    d.temperature_c !== undefined ? `${d.temperature_c}C` : undefined,
    d.power_w !== undefined ? `${Math.round(d.power_w)}W` : undefined
  ].filter((x) => x !== undefined)
  if (telemetry.length > 0) parts.push(`(${telemetry.join(" ")})`)
  return parts.join(" ")
}
