/** The telemetry and driver fields of the neuron's answers: only what the source measured. */
import type { Device, DriverInfo } from "./Discovery.js"

export const deviceTelemetry = (d: Device) => ({
  ...(d.uuid !== undefined ? { uuid: d.uuid } : {}),
  ...(d.utilization !== undefined ? { utilization: d.utilization } : {}),
  ...(d.temperatureC !== undefined ? { temperature_c: d.temperatureC } : {}),
  ...(d.powerW !== undefined ? { power_w: d.powerW } : {})
})

export const driverFields = (driver: DriverInfo) => ({
  ...(driver.driverVersion !== undefined ? { driver_version: driver.driverVersion } : {}),
  ...(driver.cudaVersion !== undefined ? { cuda_version: driver.cudaVersion } : {})
})
