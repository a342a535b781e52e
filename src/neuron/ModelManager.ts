/**
 * The neuron's models as one API for the HTTP routes and inference: a thin facade over
 * ModelRegistry (what is on disk, state, estimates, cached views), Loader (loads, unloads,
 * recovery, defragmentation) and Seats (admission), which run on DeviceWorkers.
 * Control-plane reads (`snapshot`, `deviceViews`, `totals`) are synchronous reads of cached
 * state: they never wait behind inference.
 */
import { Effect, type Scope } from "effect"
import type { ModelNotFound, Overloaded, ShuttingDown } from "../domain/errors.js"
import { DeviceWorkers } from "./DeviceWorkers.js"
import { Loader, type LoadFailure } from "./Loader.js"
import { engineOf, ModelRegistry } from "./ModelRegistry.js"
import { NeuronConfig } from "./NeuronConfig.js"
import { Puller } from "./Puller.js"
import { type Caller, type Seat, Seats } from "./Seats.js"

export type { DeviceView, ModelStatus, ModelView } from "./ModelRegistry.js"
export type { Caller, Seat } from "./Seats.js"

export class ModelManager extends Effect.Service<ModelManager>()("cortex/ModelManager", {
  effect: Effect.gen(function*() {
    const config = yield* NeuronConfig
    const registry = yield* ModelRegistry
    const loader = yield* Loader
    const seats = yield* Seats
    const workers = yield* DeviceWorkers
    const puller = yield* Puller

    /**
     * A seat on a loaded model for the life of the current scope. Loads on demand (auto_load),
     * waits in the bounded queue, and gives the seat back on success, failure or interruption.
     * `wanted` > 1 takes several sequences at once (clamped to max_in_flight), for n choices.
     */
    const acquire = (id: string, caller: Caller, wanted = 1): Effect.Effect<
      Seat,
      ModelNotFound | Overloaded | ShuttingDown | LoadFailure,
      Scope.Scope
    > =>
      Effect.gen(function*() {
        const arrived = Date.now()
        const e = yield* loader.resident(id, caller.autoLoad ?? config.autoLoad)
        return yield* seats.take(e, caller, wanted, arrived)
      })

    /** The worker serving a loaded model, without taking a seat (tokenizing needs no sequence). */
    const peek = (id: string, autoLoad = config.autoLoad) =>
      Effect.map(loader.resident(id, autoLoad), (e) => seats.peek(e))

    /** The model's image limits when a vision engine serves it; undefined for text models (and unknown ids). */
    const visionOf = (id: string) =>
      registry.find(id).pipe(
        Effect.map((e) => engineOf(e) === "vision" ? config.vision.limits : undefined),
        Effect.orElseSucceed(() => undefined)
      )

    return {
      visionOf,
      snapshot: registry.snapshot,
      deviceViews: registry.deviceViews,
      load: loader.load,
      unload: loader.unload,
      acquire,
      peek,
      restartWorker: loader.restartWorker,
      loadDefaults: loader.loadDefaults,
      drain: seats.drain,
      totals: seats.totals,
      isDraining: seats.isDraining,
      engine: workers.engine,
      driver: workers.driver,
      pull: puller.pull,
      resolveSource: puller.resolve,
      removeCached: puller.remove,
      pulls: puller.records
    } as const
  }),
  dependencies: [Loader.Default, Seats.Default, ModelRegistry.Default, DeviceWorkers.Default, Puller.Default]
}) {}
