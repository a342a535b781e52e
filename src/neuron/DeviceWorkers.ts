/**
 * The host's devices and their workers: devices from the DeviceSource (nvidia-smi, or simulated),
 * grouped by `[[device_groups]]` (DeviceGroups.ts), one scoped `DeviceWorker` per group, and the
 * `PubSub` on which every worker's `Crashed` / `Restarted` events arrive. Closing the scope stops
 * the workers (each bounded by drain_secs, then killed).
 */
import { Deferred, Effect, Exit, PubSub, Scope } from "effect"
import { ConfigError } from "../domain/contract.js"
import { resolveGroups } from "./DeviceGroups.js"
import { DeviceSource } from "./DeviceSource.js"
import * as DeviceWorker from "./DeviceWorker.js"
import type { Device, DriverInfo } from "./Discovery.js"
import { NeuronConfig } from "./NeuronConfig.js"
import type { WorkerEngineKind } from "./worker/harness.js"
import type { WorkerError } from "./worker/protocol.js"

export class DeviceWorkers extends Effect.Service<DeviceWorkers>()("cortex/DeviceWorkers", {
  scoped: Effect.gen(function*() {
    const config = yield* NeuronConfig
    const source = yield* DeviceSource
    const groups = resolveGroups(config.configFile ?? "neuron.toml", source.devices(), config.deviceGroups)
    if (groups instanceof ConfigError) return yield* groups
    const events = yield* Effect.acquireRelease(PubSub.unbounded<DeviceWorker.WorkerEvent>(), PubSub.shutdown)
    const byId = new Map<string, DeviceWorker.DeviceWorker>()
    const all: Array<DeviceWorker.DeviceWorker> = []
    const workerOptions = (engine: WorkerEngineKind): DeviceWorker.Options => ({
      threads: config.threads,
      events,
      stopTimeout: `${Math.max(1000, config.drainSecs * 1000)} millis`,
      engine
    })
    for (const group of groups) {
      const worker = yield* DeviceWorker.make(group, workerOptions("text")).pipe(Effect.orDie)
      all.push(worker)
      byId.set(worker.id, worker)
      for (const d of group) byId.set(d.id, worker)
      yield* Effect.logInfo(
        `worker ${worker.id} ready (pid ${worker.pid}, ${group.map((d) => d.name).join(", ")}${
          group.length > 1 ? `, CUDA_VISIBLE_DEVICES=${group.map((d) => d.index).join(",")}` : ""
        }${worker.info?.binary ? `, ${worker.info.binary} llama.cpp binary` : ""})`
      )
    }

    // A device group's vision worker is started on the first multimodal load (most hosts never
    // need one), in this service's scope, once: concurrent loads await the same start.
    const groupWorkers = [...all]
    const scope = yield* Effect.scope
    const vision = new Map<string, Deferred.Deferred<DeviceWorker.DeviceWorker, WorkerError>>()
    const visionById = new Map<string, DeviceWorker.DeviceWorker>()
    /** The vision worker of the group `id` names (a group id such as "cuda:0+cuda:1", or a device's id). */
    const visionWorker = (id: string): Effect.Effect<DeviceWorker.DeviceWorker, WorkerError> =>
      Effect.suspend(() => {
        const text = byId.get(id) ?? all[0]!
        const group = text.devices
        const started = vision.get(text.id)
        if (started) return Deferred.await(started)
        return Effect.gen(function*() {
          const done = yield* Deferred.make<DeviceWorker.DeviceWorker, WorkerError>()
          vision.set(text.id, done)
          const exit = yield* DeviceWorker.make(group, workerOptions("vision")).pipe(Scope.extend(scope), Effect.exit)
          if (Exit.isSuccess(exit)) {
            const worker = exit.value
            all.push(worker)
            visionById.set(text.id, worker)
            for (const d of group) visionById.set(d.id, worker)
            yield* Effect.logInfo(`worker ${worker.id} ready (pid ${worker.pid}, vision engine)`)
          } else {
            vision.delete(text.id)
          }
          yield* Deferred.done(done, exit)
          return yield* exit
        })
      })

    return {
      /** The devices with their last reading (a cached read). */
      devices: (): ReadonlyArray<Device> => source.devices(),
      /** The (text) worker serving a device, or the group of that id ("cuda:0+cuda:1"). */
      worker: (id: string): DeviceWorker.DeviceWorker | undefined => byId.get(id),
      /** The group's (or device's) worker for an engine; the vision one only once started. */
      workerFor: (id: string, engine: WorkerEngineKind): DeviceWorker.DeviceWorker | undefined =>
        engine === "text" ? byId.get(id) : visionById.get(id),
      /** The group's vision worker, started on first use. */
      visionWorker,
      /** One (text) worker per device group: the groups models are placed on. */
      workers: (): ReadonlyArray<DeviceWorker.DeviceWorker> => groupWorkers,
      /** Every worker, the vision ones started so far included (crash events name any of them). */
      all: (): ReadonlyArray<DeviceWorker.DeviceWorker> => all,
      /** Crash and restart events from now on, for the life of the caller's scope. */
      subscribe: PubSub.subscribe(events),
      engine: () => all[0]?.info,
      driver: (): DriverInfo => source.driver()
    } as const
  }),
  dependencies: [DeviceSource.Default]
}) {}
