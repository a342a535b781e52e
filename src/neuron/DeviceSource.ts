/**
 * Where the neuron's device figures come from, as a service: live, nvidia-smi read at start and
 * every few seconds in the background (memory, utilisation, temperature, power, driver and CUDA
 * version), so `/health` and `/discovery` answer from the last reading and never wait on it; or,
 * with `[simulate] devices = [...]` in neuron.toml, declared GPUs for tests on CPU-only machines.
 * A simulated GPU has a total and no measured free figure: ModelRegistry accounts its used and
 * free memory from the estimates of the models loaded on it. Its worker still runs on the CPU
 * (with CUDA_VISIBLE_DEVICES listing its group, as a real one would).
 */
import { Effect, Layer, Schedule } from "effect"
import type { SimulatedDevice } from "./DeviceGroups.js"
import { cpuDevice, type Device, type DriverInfo, readCudaVersion, readGpus } from "./Discovery.js"
import { NeuronConfig } from "./NeuronConfig.js"

export const simulatedDevices = (specs: ReadonlyArray<SimulatedDevice>): Array<Device> =>
  specs.map((spec, index) => ({
    id: `cuda:${index}`,
    kind: "cuda",
    index,
    name: spec.name ?? `simulated GPU ${index}`,
    totalMb: spec.totalMb,
    freeMb: spec.totalMb,
    ...(spec.utilization !== undefined ? { utilization: spec.utilization } : {}),
    ...(spec.temperatureC !== undefined ? { temperatureC: spec.temperatureC } : {}),
    ...(spec.powerW !== undefined ? { powerW: spec.powerW } : {}),
    simulated: true
  }))

const POLL = Schedule.spaced("5 seconds")

const live = (gpu: "auto" | "off") =>
  Effect.gen(function*() {
    const first = gpu === "auto" ? yield* Effect.promise(readGpus) : undefined
    if (!first) {
      // A CPU host: RAM figures, refreshed; no GPU telemetry to invent.
      let cpu = cpuDevice()
      yield* Effect.forkScoped(Effect.sync(() => (cpu = cpuDevice())).pipe(Effect.repeat(POLL)))
      return { devices: () => [cpu], driver: (): DriverInfo => ({}), simulated: false }
    }
    let devices = first.devices
    const cudaVersion = yield* Effect.promise(readCudaVersion)
    const driver: DriverInfo = {
      ...(first.driverVersion !== undefined ? { driverVersion: first.driverVersion } : {}),
      ...(cudaVersion !== undefined ? { cudaVersion } : {})
    }
    yield* Effect.forkScoped(
      Effect.promise(readGpus).pipe(
        Effect.map((reading) => {
          // The set of GPUs is fixed at start (workers are built on it); figures are refreshed.
          if (reading) devices = devices.map((d) => reading.devices.find((r) => r.id === d.id) ?? d)
        }),
        Effect.repeat(POLL)
      )
    )
    return { devices: () => devices, driver: () => driver, simulated: false }
  })

export class DeviceSource extends Effect.Service<DeviceSource>()("cortex/DeviceSource", {
  scoped: Effect.gen(function*() {
    const config = yield* NeuronConfig
    if (config.simulate !== undefined) {
      const devices = simulatedDevices(config.simulate)
      yield* Effect.logWarning(
        `simulating ${devices.length} GPU(s) from [simulate] (${
          devices.map((d) => `${d.totalMb} MB`).join(", ")
        }): for tests only, models run on the CPU`
      )
      return { devices: (): ReadonlyArray<Device> => devices, driver: (): DriverInfo => ({}), simulated: true }
    }
    const source = yield* live(config.gpu)
    return {
      devices: (): ReadonlyArray<Device> => source.devices(),
      driver: source.driver,
      simulated: source.simulated
    }
  })
}) {
  /** Declared devices, whatever neuron.toml says (service tests). */
  static readonly Simulated = (specs: ReadonlyArray<SimulatedDevice>) => {
    const devices = simulatedDevices(specs)
    return Layer.succeed(
      DeviceSource,
      new DeviceSource({ devices: () => devices, driver: () => ({}), simulated: true })
    )
  }
}
