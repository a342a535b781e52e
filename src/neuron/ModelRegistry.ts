/**
 * The neuron's model table: what is in models_dir (scanned at start, every few seconds, and once
 * more for a name not seen yet), each model's state (status, device, admission), GGUF memory
 * estimates (cached per file, context and device kind, so a load estimates once), memory
 * accounting per device, and the cached views `/health` and `/models` answer from (synchronous
 * reads: never behind inference). Every state change is signalled on `changed`, so waiters use
 * `waitUntil` instead of polling.
 */
import { type Deferred, type Duration, Effect, Option, Schedule, Stream, SubscriptionRef } from "effect"
import { statSync } from "node:fs"
import { ModelNotFound } from "../domain/errors.js"
import * as Admission from "./Admission.js"
import type { DeviceWorker, WorkerError } from "./DeviceWorker.js"
import { DeviceWorkers } from "./DeviceWorkers.js"
import type { Device } from "./Discovery.js"
import { scanCache } from "./HfCache.js"
import { isModelId, type ModelFile, scanModels } from "./ModelStore.js"
import { NeuronConfig } from "./NeuronConfig.js"
import type { WorkerEngineKind } from "./worker/harness.js"
import { type LoadedInfo, ModelEstimate } from "./worker/protocol.js"

export type ModelStatus = "downloading" | "available" | "loading" | "loaded" | "unloading" | "recovering" | "failed"

/** A pull in progress (src/neuron/Puller.ts updates it; `/models` shows it). */
export interface DownloadProgress {
  bytesDone: number
  bytesTotal: number
  rateBps: number
  readonly startedAt: number
}

export interface Entry {
  file: ModelFile
  status: ModelStatus
  error: string | undefined
  /** The device group (its worker's id: "cuda:0", "cuda:0+cuda:1", "cpu") it is on. */
  device: string | undefined
  /** Its memory per device of that group (split by free memory at load; see DeviceGroups.ts). */
  shares: ReadonlyArray<{ readonly id: string; readonly mb: number }> | undefined
  requestedContext: number | undefined
  loaded: LoadedInfo | undefined
  /** The estimate at the default context on the first worker, for `/models` before a load. */
  estimate: ModelEstimate | undefined
  /** Whether the background estimate was tried for this version of the file (once: it may fail). */
  estimateTried: boolean
  /** Estimates by `context:deviceKind` for this version of the file; cleared when it changes. */
  readonly estimates: Map<string, ModelEstimate>
  /** Memory held for a load in progress, so a concurrent load cannot count it as free. */
  reservedMb: number | undefined
  loadedAt: number | undefined
  lastUsedAt: number | undefined
  admission: Admission.State
  readonly waiters: Map<number, Deferred.Deferred<void>>
  /** Set while the model is being pulled (status `downloading`). */
  download: DownloadProgress | undefined
}

export interface ModelView {
  readonly id: string
  readonly status: ModelStatus
  readonly error: string | null
  readonly device: string | null
  readonly group: string | null
  readonly device_memory_mb: Readonly<Record<string, number>> | null
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
  readonly download?: {
    readonly bytes_done: number
    readonly bytes_total: number
    readonly rate_bps: number
    readonly started_at: string
  }
}

export interface DeviceView extends Device {
  readonly usedMb: number
  readonly budgetMb: number | null
  /** The group (worker id) the device belongs to. */
  readonly group: string
  readonly worker: { readonly pid: number | null; readonly alive: boolean; readonly restarts: number }
}

/** Statuses whose model holds (or is about to hold) memory on its device. */
export const residentStatuses: ReadonlySet<ModelStatus> = new Set(["loaded", "loading", "unloading", "recovering"])

/** Whether a worker's models live in VRAM (a real GPU; a simulated one runs on the CPU). */
export const onGpu = (worker: DeviceWorker | undefined) =>
  worker?.devices.some((d) => d.kind === "cuda" && d.simulated !== true) ?? false

export const memoryOf = (estimate: ModelEstimate, gpu: boolean) => gpu ? estimate.vramMb : estimate.ramMb

const fileKey = (file: ModelFile) => `${file.path}:${file.mtimeMs}:${file.projector ?? ""}`

/** Which engine serves a model: a projector makes it a vision model (worker/harness.ts). */
export const engineOf = (e: Entry): WorkerEngineKind => e.file.projector !== undefined ? "vision" : "text"

const MB = 1024 * 1024
/** The projector's weights, held beside the language model's (its compute is the request's encoder_mb). */
const projectorMb = (file: ModelFile) => {
  if (file.projector === undefined) return 0
  try {
    return Math.ceil(statSync(file.projector).size / MB)
  } catch {
    return 0
  }
}

const newEntry = (file: ModelFile): Entry => ({
  file,
  status: "available",
  error: undefined,
  device: undefined,
  shares: undefined,
  requestedContext: undefined,
  loaded: undefined,
  estimate: undefined,
  estimateTried: false,
  estimates: new Map(),
  reservedMb: undefined,
  loadedAt: undefined,
  lastUsedAt: undefined,
  admission: Admission.empty,
  waiters: new Map(),
  download: undefined
})

export class ModelRegistry extends Effect.Service<ModelRegistry>()("cortex/ModelRegistry", {
  scoped: Effect.gen(function*() {
    const config = yield* NeuronConfig
    const workers = yield* DeviceWorkers
    const entries = new Map<string, Entry>()
    const version = yield* SubscriptionRef.make(0)

    /** Signal that some model's state changed (status, admission, memory). */
    const changed = SubscriptionRef.update(version, (n) => n + 1)

    /** Wait until `done()` holds, re-checked on every change; false when `timeout` passes first. */
    const waitUntil = (done: () => boolean, timeout: Duration.DurationInput) =>
      version.changes.pipe(
        Stream.filter(() => done()),
        Stream.runHead,
        Effect.timeoutTo({ duration: timeout, onSuccess: Option.isSome, onTimeout: () => false })
      )

    // ---- the models directory -----------------------------------------------------------
    // Files in models_dir, and verified downloads in the cache (src/neuron/HfCache.ts).
    const rescan = Effect.promise(() =>
      Promise.all([scanModels(config.modelsDir, config.vision.projectors), scanCache(config.sources.cacheDir)]).then((
        [a, b]
      ) => [...a, ...b])
    ).pipe(
      Effect.map((files) => {
        const seen = new Set<string>()
        for (const file of files) {
          seen.add(file.id)
          const e = entries.get(file.id)
          if (!e) entries.set(file.id, newEntry(file))
          else if (e.status === "downloading") continue
          else if (fileKey(e.file) !== fileKey(file)) {
            e.file = file
            e.estimates.clear()
            e.estimate = undefined
            e.estimateTried = false
          }
        }
        for (const [id, e] of entries) {
          if (!seen.has(id) && (e.status === "available" || e.status === "failed")) entries.delete(id)
        }
      })
    )

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

    // ---- estimates ----------------------------------------------------------------------
    const estimateKey = (contextSize: number, worker: DeviceWorker) =>
      `${contextSize}:${onGpu(worker) ? "cuda" : "cpu"}`

    /** Weights + KV cache of `e` at `contextSize` on `worker`'s kind of device, asked of the worker once. */
    const estimate = (e: Entry, contextSize: number, worker: DeviceWorker): Effect.Effect<ModelEstimate, WorkerError> =>
      Effect.suspend(() => {
        const key = estimateKey(contextSize, worker)
        const cached = e.estimates.get(key)
        if (cached) return Effect.succeed(cached)
        const file = e.file
        return worker.request({
          _tag: "estimate",
          path: file.path,
          contextSize,
          sequences: config.maxInFlight,
          batchSize: config.prefillChunkTokens
        }, ModelEstimate).pipe(
          // Estimated by the text worker from the language model's GGUF; the projector comes on top.
          Effect.map((value) => {
            const extra = projectorMb(file)
            return extra === 0 ? value : {
              ...value,
              ramMb: value.ramMb + (value.vramMb === 0 ? extra : 0),
              vramMb: value.vramMb + (value.vramMb > 0 ? extra : 0)
            }
          }),
          Effect.tap((value) =>
            Effect.sync(() => {
              if (e.file === file) e.estimates.set(key, value)
            })
          )
        )
      })

    /** The cached estimate, without asking a worker (a reload after a crash). */
    const cachedEstimate = (e: Entry, contextSize: number, worker: DeviceWorker) =>
      e.estimates.get(estimateKey(contextSize, worker))

    /** Fill in memory estimates for models on disk (default context), off the request path. */
    const refreshEstimates = Effect.gen(function*() {
      const worker = workers.workers().find((w) => w.alive)
      if (!worker) return
      for (const e of entries.values()) {
        if (e.estimateTried || e.status === "downloading") continue
        e.estimateTried = true
        const found = yield* Effect.option(estimate(e, config.contextSize, worker))
        if (Option.isSome(found)) e.estimate = found.value
      }
    })

    yield* rescan
    yield* Effect.forkScoped(
      Effect.all([rescan, refreshEstimates], { discard: true }).pipe(
        Effect.catchAllCause((cause) => Effect.logWarning("background refresh failed", cause)),
        Effect.repeat(Schedule.spaced("5 seconds"))
      )
    )

    // ---- memory -------------------------------------------------------------------------
    const gpuOf = (e: Entry) => onGpu(e.device !== undefined ? workers.worker(e.device) : undefined)
    const footprint = (e: Entry) => e.loaded ? memoryOf(e.loaded.estimate, gpuOf(e)) : e.reservedMb ?? 0
    /** `e`'s memory on one device of its group. */
    const shareOn = (e: Entry, deviceId: string) => {
      const share = e.shares?.find((s) => s.id === deviceId)
      if (share) return share.mb
      return e.device === deviceId ? footprint(e) : 0
    }
    const usedMb = (deviceId: string) => {
      let used = 0
      for (const e of entries.values()) {
        if (residentStatuses.has(e.status)) used += shareOn(e, deviceId)
      }
      return used
    }
    /**
     * Free memory: the budget less what is accounted; a simulated GPU's total less what is
     * accounted; a real device's last measured figure.
     */
    const freeMb = (device: Device) =>
      config.memoryBudgetMb !== undefined
        ? Math.max(0, config.memoryBudgetMb - usedMb(device.id))
        : device.simulated === true
        ? Math.max(0, device.totalMb - usedMb(device.id))
        : device.freeMb
    /** The devices of a worker's group with their current figures. */
    const groupDevices = (worker: DeviceWorker): Array<Device> =>
      worker.devices.map((g) => workers.devices().find((d) => d.id === g.id) ?? g)
    /** Free memory over a worker's whole group. */
    const groupFreeMb = (worker: DeviceWorker) => groupDevices(worker).reduce((sum, d) => sum + freeMb(d), 0)

    // ---- views --------------------------------------------------------------------------
    const capabilities = (e: Entry) => {
      // The vision engine serves chat with images and plain completions (worker/vision-engine.ts).
      if (engineOf(e) === "vision") return ["chat", "completion", "vision"]
      const caps = ["chat", "completion", "tools", "json_schema"]
      if ((e.loaded?.embeddingSize ?? e.estimate?.embeddingSize) != null) caps.push("embeddings")
      return caps
    }

    const view = (e: Entry): ModelView => ({
      id: e.file.id,
      status: e.status,
      error: e.error ?? null,
      device: e.device ?? null,
      group: e.device ?? null,
      device_memory_mb: e.device !== undefined && residentStatuses.has(e.status)
        ? Object.fromEntries(
          (workers.worker(e.device)?.devices ?? []).map((d) => [d.id, Math.round(shareOn(e, d.id) * 10) / 10])
        )
        : null,
      size_bytes: e.file.sizeBytes,
      memory_estimate_mb: e.loaded
        ? memoryOf(e.loaded.estimate, gpuOf(e))
        : e.estimate
        ? memoryOf(e.estimate, onGpu(workers.workers()[0]))
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
      load_ms: e.loaded?.loadMs ?? null,
      ...(e.download
        ? {
          download: {
            bytes_done: e.download.bytesDone,
            bytes_total: e.download.bytesTotal,
            rate_bps: Math.round(e.download.rateBps),
            started_at: new Date(e.download.startedAt).toISOString()
          }
        }
        : {})
    })

    const deviceViews = (): Array<DeviceView> =>
      workers.devices().map((d) => {
        const w = workers.worker(d.id)
        return {
          ...d,
          ...(config.memoryBudgetMb !== undefined ? { totalMb: config.memoryBudgetMb } : {}),
          freeMb: freeMb(d),
          usedMb: usedMb(d.id),
          budgetMb: config.memoryBudgetMb ?? null,
          group: w?.id ?? d.id,
          worker: { pid: w?.pid ?? null, alive: w?.alive ?? false, restarts: w?.restarts ?? 0 }
        }
      })

    /** A model being pulled: listed as `downloading` until it is verified (or forgotten). */
    const track = (id: string, bytesTotal: number) =>
      Effect.suspend(() => {
        const e = entries.get(id) ?? newEntry({ id, path: "", sizeBytes: bytesTotal, mtimeMs: 0 })
        e.status = "downloading"
        e.error = undefined
        e.file = { ...e.file, sizeBytes: bytesTotal }
        e.download = { bytesDone: 0, bytesTotal, rateBps: 0, startedAt: Date.now() }
        entries.set(id, e)
        return Effect.as(changed, e)
      })

    /**
     * The pull of `id` ended: verified (listed from the cache from now on, its file set in the
     * same step as its status, so no load can start on the placeholder) or not (not listed).
     */
    const settle = (id: string, verified: boolean) =>
      Effect.gen(function*() {
        const cached = verified ? yield* Effect.promise(() => scanCache(config.sources.cacheDir)) : []
        const e = entries.get(id)
        if (e?.status === "downloading") {
          e.download = undefined
          const found = cached.find((m) => m.id === id)
          if (found) {
            e.file = { id: found.id, path: found.path, sizeBytes: found.sizeBytes, mtimeMs: found.mtimeMs }
            e.estimates.clear()
            e.estimate = undefined
            e.estimateTried = false
            e.status = "available"
          } else entries.delete(id)
        }
        yield* changed
      })

    /** Drop a model whose files were deleted (only when it holds no memory). */
    const forget = (id: string) =>
      Effect.suspend(() => {
        const e = entries.get(id)
        if (e && !residentStatuses.has(e.status)) entries.delete(id)
        return changed
      })

    return {
      track,
      settle,
      forget,
      rescan,
      find,
      entries: (): Iterable<Entry> => entries.values(),
      estimate,
      cachedEstimate,
      footprint,
      freeMb,
      groupDevices,
      groupFreeMb,
      shareOn,
      view,
      snapshot: () => [...entries.values()].map(view),
      deviceViews,
      changed,
      waitUntil
    } as const
  }),
  dependencies: [DeviceWorkers.Default]
}) {}
