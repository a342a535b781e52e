/**
 * The host's devices and their workers: devices discovered at start (and their free memory
 * refreshed in the background), one scoped `DeviceWorker` per device group, and the `PubSub`
 * on which every worker's `Crashed` / `Restarted` events arrive. Closing the scope stops the
 * workers (each bounded by drain_secs, then killed).
 */
import { Deferred, Effect, Exit, PubSub, Schedule, Scope } from "effect"
import * as DeviceWorker from "./DeviceWorker.js"
import { type Device, discoverDevices } from "./Discovery.js"
import { NeuronConfig } from "./NeuronConfig.js"
import type { WorkerEngineKind } from "./worker/harness.js"
import type { WorkerError } from "./worker/protocol.js"

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
    const workerOptions = (engine: WorkerEngineKind): DeviceWorker.Options => ({
      threads: config.threads,
      events,
      stopTimeout: `${Math.max(1000, config.drainSecs * 1000)} millis`,
      engine
    })
    const groups = groupDevices(devices)
    for (const group of groups) {
      const worker = yield* DeviceWorker.make(group, workerOptions("text")).pipe(Effect.orDie)
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

    // A device group's vision worker is started on the first multimodal load (most hosts never
    // need one), in this service's scope, once: concurrent loads await the same start.
    const scope = yield* Effect.scope
    const vision = new Map<string, Deferred.Deferred<DeviceWorker.DeviceWorker, WorkerError>>()
    const visionByDevice = new Map<string, DeviceWorker.DeviceWorker>()
    const visionWorker = (deviceId: string): Effect.Effect<DeviceWorker.DeviceWorker, WorkerError> =>
      Effect.suspend(() => {
        const group = groups.find((g) => g.some((d) => d.id === deviceId)) ?? [devices[0]!]
        const key = group.map((d) => d.id).join("+")
        const started = vision.get(key)
        if (started) return Deferred.await(started)
        return Effect.gen(function*() {
          const done = yield* Deferred.make<DeviceWorker.DeviceWorker, WorkerError>()
          vision.set(key, done)
          const exit = yield* DeviceWorker.make(group, workerOptions("vision")).pipe(Scope.extend(scope), Effect.exit)
          if (Exit.isSuccess(exit)) {
            const worker = exit.value
            all.push(worker)
            for (const d of group) visionByDevice.set(d.id, worker)
            yield* Effect.logInfo(`worker ${worker.id} ready (pid ${worker.pid}, vision engine)`)
          } else {
            vision.delete(key)
          }
          yield* Deferred.done(done, exit)
          return yield* exit
        })
      })

    return {
      /** The devices with their last measured free memory (a cached read). */
      devices: (): ReadonlyArray<Device> => devices,
      /** The worker serving a device. */
      worker: (deviceId: string): DeviceWorker.DeviceWorker | undefined => byDevice.get(deviceId),
      /** The device's worker for an engine; the vision one only once started. */
      workerFor: (deviceId: string, engine: WorkerEngineKind): DeviceWorker.DeviceWorker | undefined =>
        engine === "text" ? byDevice.get(deviceId) : visionByDevice.get(deviceId),
      /** The device's vision worker, started on first use. */
      visionWorker,
      workers: (): ReadonlyArray<DeviceWorker.DeviceWorker> => all,
      /** Crash and restart events from now on, for the life of the caller's scope. */
      subscribe: PubSub.subscribe(events),
      engine: () => all[0]?.info
    } as const
  })
}) {}
