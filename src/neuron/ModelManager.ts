/**
 * The neuron's model lifecycle: what is on disk, what is resident on which device worker,
 * single-flight loads with a memory pre-flight, unloads that drain first, per-model admission,
 * and recovery after a worker crash. Control-plane reads (`snapshot`) are synchronous reads of
 * cached state: they never wait behind inference.
 */
import { Deferred, Effect, Exit, Runtime, Schedule, type Scope } from "effect"
import {
  InsufficientVram,
  InvalidRequest,
  ModelLoadFailed,
  ModelNotFound,
  ModelUnavailable,
  Overloaded,
  ShuttingDown,
  WorkerCrashed
} from "../domain/errors.js"
import * as Admission from "./Admission.js"
import { DeviceWorker, WorkerCrash, WorkerFailed } from "./DeviceWorker.js"
import { type Device, discoverDevices } from "./Discovery.js"
import { isModelId, type ModelFile, scanModels } from "./ModelStore.js"
import { NeuronConfig } from "./NeuronConfig.js"
import type { LoadedInfo, ModelEstimate } from "./worker/protocol.js"

export type ModelStatus = "available" | "loading" | "loaded" | "unloading" | "recovering" | "failed"

interface Entry {
  file: ModelFile
  status: ModelStatus
  error: string | undefined
  device: string | undefined
  requestedContext: number | undefined
  loaded: LoadedInfo | undefined
  estimate: ModelEstimate | undefined
  estimateKey: string | undefined
  /** Memory held for a load in progress, so a concurrent load cannot count it as free. */
  reservedMb: number | undefined
  loadedAt: number | undefined
  lastUsedAt: number | undefined
  admission: Admission.State
  readonly waiters: Map<number, Deferred.Deferred<void>>
  loading: Promise<Exit.Exit<LoadedInfo, LoadFailure>> | undefined
}

type LoadFailure = InsufficientVram | ModelLoadFailed | WorkerCrashed | ModelUnavailable

export interface ModelView {
  readonly id: string
  readonly status: ModelStatus
  readonly error: string | null
  readonly device: string | null
  readonly size_bytes: number
  readonly memory_estimate_mb: number | null
  readonly context_limit: number | null
  readonly train_context: number | null
  readonly capabilities: ReadonlyArray<string>
  readonly in_flight: number
  readonly queue_depth: number
  readonly loaded_at: string | null
  readonly last_used_at: string | null
  readonly load_ms: number | null
}

export interface DeviceView extends Device {
  readonly usedMb: number
  readonly budgetMb: number | null
  readonly worker: { readonly pid: number | null; readonly alive: boolean; readonly restarts: number }
}

/** Who asks, and whether a model on disk may be loaded for them (the gateway places loads itself). */
export interface Caller {
  readonly principal: string
  readonly autoLoad?: boolean
}

export interface Seat {
  readonly model: string
  readonly worker: DeviceWorker
  readonly contextSize: number
  readonly maxTokenBytes: number
  readonly freeMb: number
  readonly device: string
  readonly queueMs: number
  /** Sequences this request holds (several for a request with n choices). */
  readonly seats: number
}

const loadedStatuses: ReadonlySet<ModelStatus> = new Set(["loaded", "loading", "unloading", "recovering"])

export class ModelManager extends Effect.Service<ModelManager>()("cortex/ModelManager", {
  scoped: Effect.gen(function*() {
    const config = yield* NeuronConfig
    // Callbacks from worker processes run in this service's runtime (its logger, its services).
    const runtime = yield* Effect.runtime<never>()
    const runFork = Runtime.runFork(runtime)
    const runPromiseExit = Runtime.runPromiseExit(runtime)
    const log = (message: string) => runFork(Effect.logInfo(message))
    const entries = new Map<string, Entry>()
    let devices = yield* Effect.promise(() => discoverDevices(config.gpu))
    const workers = new Map<string, DeviceWorker>()
    let draining = false
    let nextTicket = 1
    // Loads run one at a time per neuron: the pre-flight of one sees the reservation of the other.
    const loadLock = yield* Effect.makeSemaphore(1)

    const limits: Admission.Limits = {
      maxInFlight: config.maxInFlight,
      maxQueueDepth: config.maxQueueDepth,
      maxPerPrincipal: config.maxPerPrincipal
    }

    // ---- memory -------------------------------------------------------------------------
    const footprint = (e: Entry) => e.loaded ? memoryOf(e.loaded.estimate, e.device) : e.reservedMb ?? 0
    const memoryOf = (estimate: ModelEstimate, deviceId: string | undefined) =>
      deviceId?.startsWith("cuda") ? estimate.vramMb : estimate.ramMb
    const usedMb = (deviceId: string) => {
      let used = 0
      for (const e of entries.values()) if (e.device === deviceId && loadedStatuses.has(e.status)) used += footprint(e)
      return used
    }
    const freeMb = (device: Device) =>
      config.memoryBudgetMb !== undefined ? Math.max(0, config.memoryBudgetMb - usedMb(device.id)) : device.freeMb

    // ---- workers ------------------------------------------------------------------------
    const startWorker = (device: Device) =>
      Effect.acquireRelease(
        Effect.tryPromise({
          try: async () => {
            const worker = new DeviceWorker(device, { threads: config.threads, log })
            await worker.start()
            return worker
          },
          catch: (e) => new WorkerCrashed({ device: device.id, detail: (e as Error).message })
        }),
        (worker) => Effect.promise(() => worker.stop(Math.max(1000, config.drainSecs * 1000)))
      )

    for (const device of devices) {
      const worker = yield* startWorker(device).pipe(Effect.orDie)
      workers.set(device.id, worker)
      worker.onCrash((crash) => {
        for (const e of entries.values()) {
          if (e.device !== device.id) continue
          if (e.status === "loaded" || e.status === "unloading") {
            e.status = "recovering"
            e.error = crash.message
            // Queued requests are answered now (503 model_recovering + Retry-After, see
            // `acquire`) rather than kept waiting for the reload: it takes an unknown time, may
            // fail, and a client (or the gateway, which retries another replica before the
            // first byte) does better with a prompt answer than with a seat max_wait_secs later.
            refuseQueued(e, "worker crashed")
            e.admission = Admission.empty
          }
        }
      })
      worker.onRestart(() => {
        runFork(recover(device.id))
      })
      yield* Effect.logInfo(`worker ${device.id} ready (pid ${worker.pid}, ${device.name})`)
    }

    /** Wake every queued request of a model with a refusal; `acquire` answers it from the model's status. */
    function refuseQueued(e: Entry, why: string) {
      for (const t of e.admission.queue) {
        const waiter = e.waiters.get(t.id)
        if (waiter) Deferred.unsafeDone(waiter, Exit.die(why))
      }
    }

    /** After a restart, reload what was resident on the device, one model at a time. */
    const recover = (deviceId: string) =>
      Effect.gen(function*() {
        const worker = workers.get(deviceId)!
        for (const e of entries.values()) {
          if (e.device !== deviceId || e.status !== "recovering") continue
          const exit = yield* Effect.exit(Effect.tryPromise(() => loadOn(worker, e)))
          if (Exit.isSuccess(exit)) {
            e.status = "loaded"
            e.error = undefined
            e.loaded = exit.value
            e.loadedAt = Date.now()
            yield* Effect.logInfo(`model ${e.file.id} recovered on ${deviceId}`)
          } else {
            e.status = "failed"
            e.error = `recovery failed: ${String(exit.cause)}`
            e.device = undefined
            e.loaded = undefined
            yield* Effect.logWarning(`model ${e.file.id} could not be recovered`)
          }
        }
      })

    const loadOn = (worker: DeviceWorker, e: Entry) =>
      worker.request<LoadedInfo>({
        _tag: "load",
        model: e.file.id,
        path: e.file.path,
        contextSize: e.requestedContext ?? config.contextSize,
        sequences: config.maxInFlight,
        batchSize: config.prefillChunkTokens
      })

    // ---- the models directory -----------------------------------------------------------
    const rescan = Effect.promise(() => scanModels(config.modelsDir)).pipe(
      Effect.map((files) => {
        const seen = new Set<string>()
        for (const file of files) {
          seen.add(file.id)
          const e = entries.get(file.id)
          if (e) e.file = file
          else {
            entries.set(file.id, {
              file,
              status: "available",
              error: undefined,
              device: undefined,
              requestedContext: undefined,
              loaded: undefined,
              estimate: undefined,
              estimateKey: undefined,
              reservedMb: undefined,
              loadedAt: undefined,
              lastUsedAt: undefined,
              admission: Admission.empty,
              waiters: new Map(),
              loading: undefined
            })
          }
        }
        for (const [id, e] of entries) {
          if (!seen.has(id) && (e.status === "available" || e.status === "failed")) entries.delete(id)
        }
      })
    )

    /** Fill in memory estimates for models on disk (default context), off the request path. */
    const refreshEstimates = Effect.gen(function*() {
      const worker = [...workers.values()].find((w) => w.alive)
      if (!worker) return
      for (const e of entries.values()) {
        const key = `${e.file.path}:${e.file.mtimeMs}`
        if (e.estimateKey === key) continue
        e.estimateKey = key
        const estimate = yield* Effect.tryPromise(() =>
          worker.request<ModelEstimate>({
            _tag: "estimate",
            path: e.file.path,
            contextSize: config.contextSize,
            sequences: config.maxInFlight,
            batchSize: config.prefillChunkTokens
          })
        ).pipe(Effect.option)
        if (estimate._tag === "Some") e.estimate = estimate.value
      }
    })

    const refreshDevices = Effect.promise(() => discoverDevices(config.gpu)).pipe(
      Effect.map((found) => {
        devices = devices.map((d) => found.find((f) => f.id === d.id) ?? d)
      })
    )

    yield* rescan
    yield* Effect.forkScoped(
      Effect.all([rescan, refreshDevices, refreshEstimates], { discard: true }).pipe(
        Effect.catchAllCause((cause) => Effect.logWarning("background refresh failed", cause)),
        Effect.repeat(Schedule.spaced("5 seconds"))
      )
    )

    // ---- lookups ------------------------------------------------------------------------
    const find = (id: string) =>
      Effect.suspend(() => {
        const e = entries.get(id)
        if (e) return Effect.succeed(e)
        if (!isModelId(id)) return Effect.fail(new ModelNotFound({ model: id }))
        // A file copied in since the last scan: look once more before saying 404.
        return rescan.pipe(
          Effect.flatMap(() => {
            const again = entries.get(id)
            return again ? Effect.succeed(again) : Effect.fail(new ModelNotFound({ model: id }))
          })
        )
      })

    const capabilities = (e: Entry) => {
      const caps = ["chat", "completion", "tools", "json_schema"]
      if ((e.loaded?.embeddingSize ?? e.estimate?.embeddingSize) != null) caps.push("embeddings")
      return caps
    }

    const view = (e: Entry): ModelView => ({
      id: e.file.id,
      status: e.status,
      error: e.error ?? null,
      device: e.device ?? null,
      size_bytes: e.file.sizeBytes,
      memory_estimate_mb: e.loaded
        ? memoryOf(e.loaded.estimate, e.device)
        : e.estimate
        ? memoryOf(e.estimate, devices[0]?.id)
        : null,
      context_limit: e.loaded?.contextSize ??
        (e.estimate?.trainContextSize != null
          ? Math.min(config.contextSize, e.estimate.trainContextSize)
          : null),
      train_context: e.loaded?.trainContextSize ?? e.estimate?.trainContextSize ?? null,
      capabilities: capabilities(e),
      // Seats, not requests: a request for n choices holds up to n sequences.
      in_flight: Admission.seatsInUse(e.admission),
      queue_depth: e.admission.queue.length,
      loaded_at: e.loadedAt ? new Date(e.loadedAt).toISOString() : null,
      last_used_at: e.lastUsedAt ? new Date(e.lastUsedAt).toISOString() : null,
      load_ms: e.loaded?.loadMs ?? null
    })

    const snapshot = () => [...entries.values()].map(view)

    const deviceViews = (): Array<DeviceView> =>
      devices.map((d) => {
        const w = workers.get(d.id)
        return {
          ...d,
          ...(config.memoryBudgetMb !== undefined ? { totalMb: config.memoryBudgetMb } : {}),
          freeMb: freeMb(d),
          usedMb: usedMb(d.id),
          budgetMb: config.memoryBudgetMb ?? null,
          worker: { pid: w?.pid ?? null, alive: w?.alive ?? false, restarts: w?.restarts ?? 0 }
        }
      })

    // ---- load / unload ------------------------------------------------------------------
    const toLoadError = (id: string, device: string) => (error: unknown) => {
      if (error instanceof WorkerCrash) {
        return new ModelLoadFailed({ model: id, detail: `the worker crashed while loading (${error.detail})` })
      }
      if (error instanceof WorkerFailed) return new ModelLoadFailed({ model: id, detail: error.message })
      if (error instanceof InsufficientVram) return error
      return new ModelLoadFailed({ model: id, detail: `${(error as Error)?.message ?? error} on ${device}` })
    }

    /**
     * The device with the most free memory where `e` fits with `contextSize`. When `e` is being
     * reloaded, the memory it holds now counts as free on its own device: that is what the
     * reload would give back first.
     */
    const pickDevice = (e: Entry, contextSize: number, reloading = false) =>
      Effect.gen(function*() {
        let best: { device: Device; worker: DeviceWorker; free: number; required: number } | undefined
        let refusal: InsufficientVram | undefined
        for (const device of devices) {
          const worker = workers.get(device.id)
          if (!worker?.alive) continue
          const estimate = yield* Effect.tryPromise({
            try: () =>
              worker.request<ModelEstimate>({
                _tag: "estimate",
                path: e.file.path,
                contextSize,
                sequences: config.maxInFlight,
                batchSize: config.prefillChunkTokens
              }),
            catch: toLoadError(e.file.id, device.id)
          })
          const required = memoryOf(estimate, device.id)
          const free = freeMb(device) + (reloading && e.device === device.id ? footprint(e) : 0)
          if (required > free) {
            refusal ??= new InsufficientVram({
              model: e.file.id,
              device: device.id,
              required_mb: required,
              free_mb: free,
              phase: "load"
            })
            continue
          }
          if (!best || free > best.free) best = { device, worker, free, required }
        }
        if (best) return best
        return yield* refusal ??
          new ModelUnavailable({ model: e.file.id, state: "unavailable", detail: "no device worker is running" })
      })

    const load = Effect.fn("ModelManager.load")(function*(id: string, contextSize?: number) {
      if (draining) return yield* new ShuttingDown()
      const e = yield* find(id)
      if (e.status === "loaded" && (contextSize === undefined || contextSize === e.requestedContext)) {
        return view(e)
      }
      if (e.status === "recovering" || e.status === "unloading") {
        return yield* new ModelUnavailable({ model: id, state: e.status })
      }
      if (e.status === "loaded") {
        // A different context size was asked for: reload with it, but only once the pre-flight
        // says the new size fits (counting what this model gives back), so a refused reload
        // (507) leaves the model loaded and serving. A concurrent load may still take the
        // memory between this check and the reload; the reload then fails as any load would.
        yield* pickDevice(e, contextSize ?? config.contextSize, true)
        yield* unload(id)
      }
      if (!e.loading) {
        e.requestedContext = contextSize ?? e.requestedContext
        const previous = e.status
        e.status = "loading"
        e.error = undefined
        const attempt = Effect.gen(function*() {
          const target = yield* pickDevice(e, e.requestedContext ?? config.contextSize)
          e.device = target.device.id
          e.reservedMb = target.required
          if (config.loadDelayMs > 0) yield* Effect.sleep(`${config.loadDelayMs} millis`)
          yield* Effect.logInfo(
            `loading ${id} on ${target.device.id} (needs ~${target.required} MB, ${target.free} MB free)`
          )
          return yield* Effect.tryPromise({
            try: () => loadOn(target.worker, e),
            catch: toLoadError(id, target.device.id)
          })
        }).pipe(loadLock.withPermits(1))
        e.loading = runPromiseExit(
          attempt.pipe(
            Effect.tapBoth({
              onSuccess: (info) =>
                Effect.sync(() => {
                  e.status = "loaded"
                  e.reservedMb = undefined
                  e.loaded = info
                  e.loadedAt = Date.now()
                  e.admission = Admission.empty
                }).pipe(
                  Effect.zipRight(Effect.logInfo(`loaded ${id} in ${info.loadMs} ms (context ${info.contextSize})`))
                ),
              onFailure: (error) =>
                Effect.sync(() => {
                  e.device = undefined
                  e.reservedMb = undefined
                  e.loaded = undefined
                  if (error._tag === "InsufficientVram") {
                    e.status = previous === "failed" ? "failed" : "available"
                    e.error = error.message
                  } else {
                    e.status = "failed"
                    e.error = error.message
                  }
                }).pipe(Effect.zipRight(Effect.logWarning(`load of ${id} failed: ${error.message}`)))
            })
          )
        ).finally(() => {
          e.loading = undefined
        })
      }
      const loading = e.loading
      yield* Effect.flatten(Effect.promise(() => loading))
      return view(e)
    })

    const unload = Effect.fn("ModelManager.unload")(function*(id: string) {
      const e = yield* find(id)
      if (e.loading) yield* Effect.promise(() => e.loading!)
      if (e.status !== "loaded" && e.status !== "recovering") return view(e)
      const worker = e.device ? workers.get(e.device) : undefined
      e.status = "unloading"
      // Let running requests finish (bounded), refuse queued ones.
      refuseQueued(e, "unloading")
      const deadline = Date.now() + config.drainSecs * 1000
      while (e.admission.running.length > 0 && Date.now() < deadline) yield* Effect.sleep("50 millis")
      if (worker?.alive) {
        yield* Effect.tryPromise(() => worker.request({ _tag: "unload", model: id })).pipe(Effect.ignore)
      }
      e.status = "available"
      e.device = undefined
      e.loaded = undefined
      e.loadedAt = undefined
      e.admission = Admission.empty
      yield* Effect.logInfo(`unloaded ${id}`)
      return view(e)
    })

    // ---- admission ----------------------------------------------------------------------
    const leave = (e: Entry, ticket: number) => {
      const [started, next] = Admission.leave(e.admission, limits, ticket)
      e.admission = next
      e.waiters.delete(ticket)
      for (const t of started) {
        const waiter = e.waiters.get(t.id)
        if (waiter) Deferred.unsafeDone(waiter, Exit.void)
      }
    }

    /** The entry of a loaded model, loading it first when it is on disk and auto_load is on. */
    const resident = (id: string, autoLoad = config.autoLoad) =>
      Effect.gen(function*() {
        if (draining) return yield* new ShuttingDown()
        let e = yield* find(id)
        if ((e.status === "available" || e.status === "loading") && autoLoad) {
          yield* load(id)
          e = yield* find(id)
        }
        if (e.status !== "loaded") {
          return yield* new ModelUnavailable({
            model: id,
            state: e.status === "available" ? "not_loaded" : e.status,
            ...(e.error ? { detail: e.error } : {})
          })
        }
        return e
      })

    const seatOn = (entry: Entry, queueMs: number, seats = 1): Seat => {
      const device = devices.find((d) => d.id === entry.device)!
      return {
        model: entry.file.id,
        worker: workers.get(device.id)!,
        contextSize: entry.loaded!.contextSize,
        maxTokenBytes: entry.loaded!.maxTokenBytes,
        freeMb: freeMb(device),
        device: device.id,
        queueMs,
        seats
      }
    }

    /** The worker serving a loaded model, without taking a seat (tokenizing needs no sequence). */
    const peek = (id: string, autoLoad = config.autoLoad) => Effect.map(resident(id, autoLoad), (e) => seatOn(e, 0))

    /**
     * A seat on a loaded model for the life of the current scope. Loads on demand (auto_load),
     * waits in the bounded queue, and gives the seat back on success, failure or interruption.
     * `seats` > 1 takes several sequences at once (clamped to max_in_flight), for n choices.
     */
    const acquire = (id: string, caller: Caller, wanted = 1): Effect.Effect<
      Seat,
      ModelNotFound | ModelUnavailable | Overloaded | ShuttingDown | InsufficientVram | ModelLoadFailed | WorkerCrashed,
      Scope.Scope
    > =>
      Effect.gen(function*() {
        const arrived = Date.now()
        const e = yield* resident(id, caller.autoLoad ?? config.autoLoad)
        const seats = Math.max(1, Math.min(wanted, limits.maxInFlight))
        const ticket: Admission.Ticket = seats === 1
          ? { id: nextTicket++, principal: caller.principal }
          : { id: nextTicket++, principal: caller.principal, seats }
        const [decision, next] = Admission.admit(e.admission, limits, ticket)
        if (decision === "queue_full" || decision === "principal_limit") {
          return yield* new Overloaded({ model: id, reason: decision, retry_after_secs: 1 })
        }
        e.admission = next
        const entry = e
        yield* Effect.addFinalizer(() => Effect.sync(() => leave(entry, ticket.id)))
        if (decision === "queue") {
          const waiter = yield* Deferred.make<void>()
          e.waiters.set(ticket.id, waiter)
          const admitted = yield* Deferred.await(waiter).pipe(
            Effect.as(true),
            Effect.catchAllCause(() => Effect.succeed(false)),
            Effect.timeoutTo({
              duration: `${config.maxWaitSecs} seconds`,
              onTimeout: () => "timeout" as const,
              onSuccess: (ok) => ok
            })
          )
          if (draining) return yield* new ShuttingDown()
          if (admitted === "timeout") {
            return yield* new Overloaded({ model: id, reason: "queue_timeout", retry_after_secs: 2 })
          }
          if (!admitted || entry.status !== "loaded") {
            return yield* new ModelUnavailable({
              model: id,
              state: entry.status,
              ...(entry.status === "recovering" && entry.error ? { detail: entry.error } : {})
            })
          }
        }
        entry.lastUsedAt = Date.now()
        return seatOn(entry, Date.now() - arrived, seats)
      })

    const loadDefaults = Effect.forEach(config.defaultModels, (id) =>
      load(id).pipe(
        Effect.tapError((error) => Effect.logWarning(`default model ${id} not loaded: ${error.message}`)),
        Effect.ignore
      ), { discard: true })

    /** Stop admitting, wait (bounded) for running requests to finish. */
    const drain = Effect.gen(function*() {
      draining = true
      // Queued requests would only wait to be cut off: refuse them now.
      for (const e of entries.values()) refuseQueued(e, "shutting down")
      const deadline = Date.now() + config.drainSecs * 1000
      const busy = () => [...entries.values()].some((e) => e.admission.running.length + e.admission.queue.length > 0)
      if (busy()) yield* Effect.logInfo("draining in-flight requests")
      while (busy() && Date.now() < deadline) yield* Effect.sleep("50 millis")
    })

    /**
     * Defragmentation: restart a device's worker while it is idle, then reload what was resident.
     * Refused (not queued) when requests are running there.
     */
    const restartWorker = (deviceId: string | undefined) =>
      Effect.gen(function*() {
        const device = deviceId ?? devices[0]?.id
        const worker = device ? workers.get(device) : undefined
        if (!device || !worker) {
          return yield* new InvalidRequest({
            message: `This neuron has no device '${deviceId ?? ""}'`,
            param: "device"
          })
        }
        const resident = [...entries.values()].filter((e) => e.device === device && loadedStatuses.has(e.status))
        if (resident.some((e) => e.admission.running.length + e.admission.queue.length > 0 || e.status !== "loaded")) {
          return { device, restarted: false, reason: "busy", models: resident.map((e) => e.file.id) }
        }
        for (const e of resident) e.status = "recovering"
        yield* Effect.logInfo(`restarting worker ${device} (defragmentation); ${resident.length} model(s) to reload`)
        yield* Effect.promise(() => worker.restart(Math.max(1000, config.drainSecs * 1000)))
        const deadline = Date.now() + 120_000
        while (resident.some((e) => e.status === "recovering") && Date.now() < deadline) {
          yield* Effect.sleep("50 millis")
        }
        return { device, restarted: true, reason: null, models: resident.map((e) => `${e.file.id}:${e.status}`) }
      })

    const totals = () => {
      let inFlight = 0
      let queued = 0
      for (const e of entries.values()) {
        inFlight += Admission.seatsInUse(e.admission)
        queued += e.admission.queue.length
      }
      return { inFlight, queued }
    }

    return {
      snapshot,
      deviceViews,
      load,
      unload,
      acquire,
      peek,
      restartWorker,
      loadDefaults,
      drain,
      totals,
      isDraining: () => draining,
      engine: () => [...workers.values()][0]?.info
    } as const
  })
}) {}
