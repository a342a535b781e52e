/**
 * The host's devices and their workers: devices from the DeviceSource (nvidia-smi, or simulated),
 * grouped by `[[device_groups]]` (DeviceGroups.ts), one scoped `DeviceWorker` per group, and the
 * `PubSub` on which every worker's `Crashed` / `Restarted` events arrive. Closing the scope stops
 * the workers (each bounded by drain_secs, then killed).
 */
import { Effect, PubSub } from "effect"
import { ConfigError } from "../domain/contract.js"
import { resolveGroups } from "./DeviceGroups.js"
import { DeviceSource } from "./DeviceSource.js"
import * as DeviceWorker from "./DeviceWorker.js"
import type { Device, DriverInfo } from "./Discovery.js"
import { NeuronConfig } from "./NeuronConfig.js"

export class DeviceWorkers extends Effect.Service<DeviceWorkers>()("cortex/DeviceWorkers", {
  scoped: Effect.gen(function*() {
    const config = yield* NeuronConfig
    const source = yield* DeviceSource
    const groups = resolveGroups(config.configFile ?? "neuron.toml", source.devices(), config.deviceGroups)
    if (groups instanceof ConfigError) return yield* groups
    const events = yield* Effect.acquireRelease(PubSub.unbounded<DeviceWorker.WorkerEvent>(), PubSub.shutdown)
    const byId = new Map<string, DeviceWorker.DeviceWorker>()
    const all: Array<DeviceWorker.DeviceWorker> = []
    for (const group of groups) {
      const worker = yield* DeviceWorker.make(group, {
        threads: config.threads,
        events,
        stopTimeout: `${Math.max(1000, config.drainSecs * 1000)} millis`
      }).pipe(Effect.orDie)
      all.push(worker)
      byId.set(worker.id, worker)
      for (const d of group) byId.set(d.id, worker)
      yield* Effect.logInfo(
        `worker ${worker.id} ready (pid ${worker.pid}, ${group.map((d) => d.name).join(", ")}${
          group.length > 1 ? `, CUDA_VISIBLE_DEVICES=${group.map((d) => d.index).join(",")}` : ""
        })`
      )
    }

    return {
      /** The devices with their last reading (a cached read). */
      devices: (): ReadonlyArray<Device> => source.devices(),
      /** The worker serving a device, or the group of that id ("cuda:0+cuda:1"). */
      worker: (id: string): DeviceWorker.DeviceWorker | undefined => byId.get(id),
      workers: (): ReadonlyArray<DeviceWorker.DeviceWorker> => all,
      /** Crash and restart events from now on, for the life of the caller's scope. */
      subscribe: PubSub.subscribe(events),
      engine: () => all[0]?.info,
      driver: (): DriverInfo => source.driver()
    } as const
  }),
  dependencies: [DeviceSource.Default]
}) {}
