/**
 * The host's devices and their workers: devices discovered at start (and their free memory
 * refreshed in the background), one scoped `DeviceWorker` per device group, and the `PubSub`
 * on which every worker's `Crashed` / `Restarted` events arrive. Closing the scope stops the
 * workers (each bounded by drain_secs, then killed).
 */
import { Effect, PubSub, Schedule } from "effect"
import * as DeviceWorker from "./DeviceWorker.js"
import { type Device, discoverDevices } from "./Discovery.js"
import { NeuronConfig } from "./NeuronConfig.js"

/**
 * Which devices share a worker. One group per device for now; a model split across GPUs will
 * put several devices in one group (one process sees them all through CUDA_VISIBLE_DEVICES).
 */
export const groupDevices = (devices: ReadonlyArray<Device>): ReadonlyArray<ReadonlyArray<Device>> =>
  devices.map((d) => [d])

export class DeviceWorkers extends Effect.Service<DeviceWorkers>()("cortex/DeviceWorkers", {
  scoped: Effect.gen(function*() {
    const config = yield* NeuronConfig
    let devices = yield* Effect.promise(() => discoverDevices(config.gpu))
    const events = yield* Effect.acquireRelease(PubSub.unbounded<DeviceWorker.WorkerEvent>(), PubSub.shutdown)
    const byDevice = new Map<string, DeviceWorker.DeviceWorker>()
    const all: Array<DeviceWorker.DeviceWorker> = []
    for (const group of groupDevices(devices)) {
      const worker = yield* DeviceWorker.make(group, {
        threads: config.threads,
        events,
        stopTimeout: `${Math.max(1000, config.drainSecs * 1000)} millis`
      }).pipe(Effect.orDie)
      all.push(worker)
      for (const d of group) byDevice.set(d.id, worker)
      yield* Effect.logInfo(`worker ${worker.id} ready (pid ${worker.pid}, ${group.map((d) => d.name).join(", ")})`)
    }

    yield* Effect.forkScoped(
      Effect.promise(() => discoverDevices(config.gpu)).pipe(
        Effect.map((found) => {
          devices = devices.map((d) => found.find((f) => f.id === d.id) ?? d)
        }),
        Effect.repeat(Schedule.spaced("5 seconds"))
      )
    )

    return {
      /** The devices with their last measured free memory (a cached read). */
      devices: (): ReadonlyArray<Device> => devices,
      /** The worker serving a device. */
      worker: (deviceId: string): DeviceWorker.DeviceWorker | undefined => byDevice.get(deviceId),
      workers: (): ReadonlyArray<DeviceWorker.DeviceWorker> => all,
      /** Crash and restart events from now on, for the life of the caller's scope. */
      subscribe: PubSub.subscribe(events),
      engine: () => all[0]?.info
    } as const
  })
}) {}
