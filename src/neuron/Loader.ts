/**
 * Loading and unloading models on device workers. Loads are single-flight per model (every
 * caller awaits one `Deferred`) and run one at a time per neuron, so one load's pre-flight sees
 * the memory another has reserved. The pre-flight compares the model's estimate with the
 * device's free memory (a typed 507 `InsufficientVram`, never a hang); a reload with another
 * context is pre-flighted before the resident copy is unloaded, so a refusal leaves it serving.
 * Unloads refuse the queue and wait (bounded) for running requests. Worker events arrive on the
 * DeviceWorkers `PubSub`: a crash marks the device's models `recovering` and refuses their
 * queues; a restart reloads them.
 */
import { Deferred, Effect, Exit, Queue, Schema } from "effect"
import {
  InsufficientVram,
  InvalidRequest,
  ModelLoadFailed,
  type ModelNotFound,
  ModelUnavailable,
  ShuttingDown,
  type WorkerCrashed
} from "../domain/errors.js"
import { isHfId } from "../domain/modelSource.js"
import { splitByFree } from "./DeviceGroups.js"
import type { DeviceWorker, WorkerError, WorkerEvent } from "./DeviceWorker.js"
import { DeviceWorkers } from "./DeviceWorkers.js"
import { engineOf, type Entry, memoryOf, ModelRegistry, onGpu, residentStatuses } from "./ModelRegistry.js"
import { NeuronConfig } from "./NeuronConfig.js"
import { Puller, type PullError } from "./Puller.js"
import { Seats } from "./Seats.js"
import { LoadedInfo, type ModelEstimate } from "./worker/protocol.js"

export type LoadFailure =
  | InsufficientVram
  | ModelLoadFailed
  | WorkerCrashed
  | ModelUnavailable
  | PullError
  | InvalidRequest

interface Target {
  readonly worker: DeviceWorker
  readonly free: number
  readonly required: number
  readonly estimate: ModelEstimate
  /** The load's memory per device of the group. */
  readonly shares: ReadonlyArray<{ readonly id: string; readonly mb: number }>
}

const toLoadError = (id: string) => (error: WorkerError) =>
  new ModelLoadFailed({
    model: id,
    detail: error.reason.tag === "Crashed" ? `the worker crashed while loading (${error.reason.detail})` : error.message
  })

export class Loader extends Effect.Service<Loader>()("cortex/Loader", {
  scoped: Effect.gen(function*() {
    const config = yield* NeuronConfig
    const registry = yield* ModelRegistry
    const workers = yield* DeviceWorkers
    const seats = yield* Seats
    const puller = yield* Puller
    // Loads run in the service's scope: a caller that goes away does not cancel a load others await.
    const scope = yield* Effect.scope
    const loadLock = yield* Effect.makeSemaphore(1)
    const loading = new Map<Entry, Deferred.Deferred<LoadedInfo, LoadFailure>>()

    const loadOn = (worker: DeviceWorker, e: Entry, estimate: ModelEstimate | undefined) => {
      const contextSize = e.requestedContext ?? config.contextSize
      return worker.request({
        _tag: "load",
        model: e.file.id,
        path: e.file.path,
        contextSize,
        sequences: config.maxInFlight,
        batchSize: config.prefillChunkTokens,
        ...(e.file.projector !== undefined ? { projector: e.file.projector } : {}),
        ...(estimate ? { estimate } : {})
      }, LoadedInfo)
    }

    /**
     * The device group with the most free memory where `e` fits with `contextSize` (only `wanted`
     * when the gateway names one). A group's load is split across its devices by their free
     * memory (llama.cpp's default split), so it fits when the group's free memory adds up to it;
     * a refusal names the group's devices and their free figures. When `e` is being reloaded,
     * the memory it holds now counts as free on its own devices: that is what the reload would
     * give back first.
     */
    const pickDevice = (e: Entry, contextSize: number, reloading = false, wanted?: string) =>
      Effect.gen(function*() {
        let best: Target | undefined
        let refusal: InsufficientVram | undefined
        const groups = workers.workers().filter((w) => wanted === undefined || w.id === wanted)
        for (const worker of groups) {
          if (!worker.alive) continue
          const estimate = yield* registry.estimate(e, contextSize, worker).pipe(
            Effect.mapError(toLoadError(e.file.id))
          )
          const required = memoryOf(estimate, onGpu(worker))
          const devices = registry.groupDevices(worker).map((d) => ({
            id: d.id,
            freeMb: registry.freeMb(d) + (reloading && e.device === worker.id ? registry.shareOn(e, d.id) : 0)
          }))
          const free = devices.reduce((sum, d) => sum + d.freeMb, 0)
          if (required > free) {
            refusal ??= new InsufficientVram({
              model: e.file.id,
              device: devices.length > 1
                ? devices.map((d) => `${d.id} (${Math.floor(d.freeMb)} MB free)`).join(" + ")
                : worker.id,
              required_mb: required,
              free_mb: Math.floor(free),
              phase: "load"
            })
            continue
          }
          if (!best || free > best.free) {
            best = { worker, free, required, estimate, shares: splitByFree(required, devices) }
          }
        }
        if (best) return best
        return yield* refusal ??
          new ModelUnavailable({ model: e.file.id, state: "unavailable", detail: "no device worker is running" })
      })

    /** Start the load of `e` in the service's scope; its outcome completes `done`. */
    const startLoad = (e: Entry, done: Deferred.Deferred<LoadedInfo, LoadFailure>, group: string | undefined) => {
      const id = e.file.id
      const previous = e.status
      e.status = "loading"
      e.error = undefined
      const attempt = Effect.gen(function*() {
        const target = yield* pickDevice(e, e.requestedContext ?? config.contextSize, false, group)
        e.device = target.worker.id
        e.reservedMb = target.required
        e.shares = target.shares
        yield* registry.changed
        if (config.loadDelayMs > 0) yield* Effect.sleep(`${config.loadDelayMs} millis`)
        yield* Effect.logInfo(
          `loading ${id} on ${target.worker.id} (needs ~${target.required} MB${
            target.shares.length > 1
              ? `: ${target.shares.map((s) => `${Math.round(s.mb)} MB on ${s.id}`).join(", ")}`
              : ""
          }; ${Math.floor(target.free)} MB free)`
        )
        // Estimated on the device's text worker; a vision model loads on the device's vision worker.
        const worker = engineOf(e) === "vision"
          ? yield* workers.visionWorker(target.worker.id).pipe(Effect.mapError(toLoadError(id)))
          : target.worker
        return yield* loadOn(worker, e, target.estimate).pipe(Effect.mapError(toLoadError(id)))
      }).pipe(loadLock.withPermits(1))
      return attempt.pipe(
        Effect.tapBoth({
          onSuccess: (info) =>
            Effect.sync(() => {
              e.status = "loaded"
              e.reservedMb = undefined
              e.loaded = info
              e.loadedAt = Date.now()
            }).pipe(
              Effect.zipRight(seats.reset(e, "loaded")),
              Effect.zipRight(Effect.logInfo(`loaded ${id} in ${info.loadMs} ms (context ${info.contextSize})`))
            ),
          onFailure: (error) =>
            Effect.sync(() => {
              e.device = undefined
              e.shares = undefined
              e.reservedMb = undefined
              e.loaded = undefined
              e.status = error._tag === "InsufficientVram" && previous !== "failed" ? "available" : "failed"
              e.error = error.message
            }).pipe(Effect.zipRight(Effect.logWarning(`load of ${id} failed: ${error.message}`)))
        }),
        Effect.exit,
        Effect.flatMap((exit) =>
          Effect.sync(() => loading.delete(e)).pipe(
            Effect.zipRight(Deferred.done(done, exit)),
            Effect.zipRight(registry.changed)
          )
        ),
        Effect.forkIn(scope)
      )
    }

    /**
     * The model's entry; an `hf:` model that is not on disk yet (or still downloading) is pulled
     * first, joining any pull of it under way.
     */
    const findOrPull = (id: string): Effect.Effect<Entry, ModelNotFound | PullError | InvalidRequest> =>
      registry.find(id).pipe(
        Effect.catchTag(
          "ModelNotFound",
          (error) => isHfId(id) ? Effect.zipRight(puller.ensure(id), registry.find(id)) : Effect.fail(error)
        ),
        Effect.flatMap((e) =>
          e.status === "downloading" ? Effect.zipRight(puller.ensure(id), registry.find(id)) : Effect.succeed(e)
        )
      )

    /** Load `id` (on device group `group` when given: the gateway places loads itself). */
    const load = Effect.fn("Loader.load")(function*(id: string, contextSize?: number, group?: string) {
      if (seats.isDraining()) return yield* new ShuttingDown()
      const e = yield* findOrPull(id)
      if (e.status === "loaded" && (contextSize === undefined || contextSize === e.requestedContext)) {
        return registry.view(e)
      }
      if (e.status === "recovering" || e.status === "unloading") {
        return yield* new ModelUnavailable({ model: id, state: e.status })
      }
      if (e.status === "loaded") {
        // A different context size was asked for: reload with it, but only once the pre-flight
        // says the new size fits (counting what this model gives back), so a refused reload
        // (507) leaves the model loaded and serving. A concurrent load may still take the
        // memory between this check and the reload; the reload then fails as any load would.
        // The estimate is cached: the reload's own pre-flight does not ask the worker again.
        yield* pickDevice(e, contextSize ?? config.contextSize, true, group)
        yield* unload(id)
      }
      let done = loading.get(e)
      if (!done) {
        done = yield* Deferred.make<LoadedInfo, LoadFailure>()
        loading.set(e, done)
        e.requestedContext = contextSize ?? e.requestedContext
        yield* startLoad(e, done, group)
      }
      yield* Deferred.await(done)
      return registry.view(e)
    })

    const unload = Effect.fn("Loader.unload")(function*(id: string) {
      const e = yield* registry.find(id)
      const inFlight = loading.get(e)
      if (inFlight) yield* Effect.exit(Deferred.await(inFlight))
      if (e.status !== "loaded" && e.status !== "recovering") return registry.view(e)
      const worker = e.device ? workers.workerFor(e.device, engineOf(e)) : undefined
      e.status = "unloading"
      // Let running requests finish (bounded), refuse queued ones.
      seats.refuseQueued(e, "unloading")
      yield* registry.changed
      yield* seats.awaitIdle(e)
      if (worker?.alive) yield* worker.request({ _tag: "unload", model: id }, Schema.Unknown).pipe(Effect.ignore)
      e.status = "available"
      e.device = undefined
      e.shares = undefined
      e.loaded = undefined
      e.loadedAt = undefined
      yield* seats.reset(e, "unloaded")
      yield* Effect.logInfo(`unloaded ${id}`)
      return registry.view(e)
    })

    /** The entry of a loaded model, loading it first when it is on disk and auto_load is on. */
    const resident = (
      id: string,
      autoLoad = config.autoLoad
    ): Effect.Effect<Entry, ModelNotFound | LoadFailure | ShuttingDown> =>
      Effect.gen(function*() {
        if (seats.isDraining()) return yield* new ShuttingDown()
        const e = autoLoad ? yield* findOrPull(id) : yield* registry.find(id)
        if ((e.status === "available" || e.status === "loading") && autoLoad) yield* load(id)
        if (e.status !== "loaded") {
          return yield* new ModelUnavailable({
            model: id,
            state: e.status === "available" ? "not_loaded" : e.status,
            ...(e.error ? { detail: e.error } : {})
          })
        }
        return e
      })

    const onWorker = (worker: DeviceWorker) => (e: Entry) =>
      worker.engine === engineOf(e) && e.device === worker.devices.map((d) => d.id).join("+")

    const crashed = (worker: DeviceWorker, error: WorkerError) =>
      Effect.forEach([...registry.entries()], (e) => {
        if (!onWorker(worker)(e) || (e.status !== "loaded" && e.status !== "unloading")) return Effect.void
        e.status = "recovering"
        e.error = error.message
        // Queued requests are answered now (503 model_recovering + Retry-After, see Seats)
        // rather than kept waiting for the reload: it takes an unknown time, may fail, and a
        // client (or the gateway, which retries another replica before the first byte) does
        // better with a prompt answer than with a seat max_wait_secs later.
        return seats.reset(e, "worker crashed")
      }, { discard: true })

    /** After a restart, reload what was resident on the worker, one model at a time. */
    const recover = (worker: DeviceWorker) =>
      Effect.forEach([...registry.entries()], (e) => {
        if (!onWorker(worker)(e) || e.status !== "recovering") return Effect.void
        const contextSize = e.requestedContext ?? config.contextSize
        return loadOn(worker, e, registry.cachedEstimate(e, contextSize, worker)).pipe(
          Effect.exit,
          Effect.flatMap((exit) => {
            if (Exit.isSuccess(exit)) {
              e.status = "loaded"
              e.error = undefined
              e.loaded = exit.value
              e.loadedAt = Date.now()
              return Effect.logInfo(`model ${e.file.id} recovered on ${e.device}`)
            }
            e.status = "failed"
            e.error = `recovery failed: ${exit.cause}`
            e.device = undefined
            e.shares = undefined
            e.loaded = undefined
            return Effect.logWarning(`model ${e.file.id} could not be recovered`)
          }),
          Effect.zipRight(registry.changed)
        )
      }, { discard: true })

    const events = yield* workers.subscribe
    const handle = (event: WorkerEvent) => {
      const worker = workers.all().find((w) => w.id === event.worker)
      if (!worker) return Effect.void
      return event._tag === "Crashed" ? crashed(worker, event.error) : recover(worker)
    }
    yield* Effect.forkScoped(
      Queue.take(events).pipe(
        Effect.flatMap(handle),
        Effect.catchAllCause((cause) => Effect.logWarning("handling a worker event failed", cause)),
        Effect.forever
      )
    )

    /**
     * Defragmentation: restart a device's worker while it is idle, then wait for what was
     * resident to be reloaded. Refused (not queued) when requests are running there.
     */
    const restartWorker = (deviceId: string | undefined) =>
      Effect.gen(function*() {
        const device = deviceId ?? workers.devices()[0]?.id
        const worker = device ? workers.worker(device) : undefined
        if (!device || !worker) {
          return yield* new InvalidRequest({
            message: `This neuron has no device '${deviceId ?? ""}'`,
            param: "device"
          })
        }
        const resident = [...registry.entries()].filter((e) => onWorker(worker)(e) && residentStatuses.has(e.status))
        if (resident.some((e) => seats.busy(e) || e.status !== "loaded")) {
          return { device, restarted: false, reason: "busy", models: resident.map((e) => e.file.id) }
        }
        for (const e of resident) e.status = "recovering"
        yield* registry.changed
        yield* Effect.logInfo(`restarting worker ${device} (defragmentation); ${resident.length} model(s) to reload`)
        yield* worker.restart
        yield* registry.waitUntil(() => !resident.some((e) => e.status === "recovering"), "120 seconds")
        return { device, restarted: true, reason: null, models: resident.map((e) => `${e.file.id}:${e.status}`) }
      })

    const loadDefaults = Effect.forEach(config.defaultModels, (id) =>
      load(id).pipe(
        Effect.tapError((error) => Effect.logWarning(`default model ${id} not loaded: ${error.message}`)),
        Effect.ignore
      ), { discard: true })

    /** A load as the API asks for it: a group that does not exist is the caller's mistake (422 naming `group`). */
    const loadIn = (id: string, contextSize?: number, group?: string) =>
      Effect.gen(function*() {
        if (group !== undefined && !workers.workers().some((w) => w.id === group)) {
          return yield* new InvalidRequest({
            message: `This neuron has no device group '${group}' (its groups: ${
              workers.workers().map((w) => w.id).join(", ")
            })`,
            param: "group"
          })
        }
        return yield* load(id, contextSize, group)
      })

    return { load: loadIn, unload, resident, restartWorker, loadDefaults } as const
  }),
  dependencies: [Seats.Default, ModelRegistry.Default, DeviceWorkers.Default, Puller.Default]
}) {}
