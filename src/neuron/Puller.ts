/**
 * Pulls: a model named by its source (`hf:Org/Repo:Q4_K_M`, `hf:Org/Repo/file.gguf`) downloaded
 * into the cache with node-llama-cpp's own downloader, `createModelDownloader` (resumable,
 * split-aware, pointed at `[sources.hf] endpoint`), once for the model and once for the projector
 * beside it. Single-flight per model: a pull, a load that needs the file and a second pull all
 * wait on one download. Before it starts: the repository listing (Sources.listRepo), a disk check
 * (InsufficientDisk, 507) and, with `max_cache_gb`, eviction of the least recently used cached
 * models that are not loaded. After it ends: size and sha256 checked against the hub's listing,
 * then the manifest is written and the model listed. A failure leaves nothing listed; a partial
 * file stays as `<file>.ipull` so the next pull resumes it. Downloads run in the service's scope,
 * off every request path: `/health` and inference never wait for them.
 */
import { Deferred, Effect, Exit, Metric, MetricBoundaries, MetricLabel, Redacted } from "effect"
import { mkdir, rm, stat, statfs } from "node:fs/promises"
import * as path from "node:path"
import type { PullRecord } from "../domain/contract.js"
import { InsufficientDisk, InvalidRequest, PullFailed } from "../domain/errors.js"
import {
  type HfRef,
  isRefError,
  isSelectionFailure,
  parseHfRef,
  type RepoFile,
  selectFiles
} from "../domain/modelSource.js"
import {
  type CachedModel,
  type Manifest,
  relativePath,
  removeCached,
  scanCache,
  sha256Of,
  writeManifest
} from "./HfCache.js"
import { ModelRegistry, residentStatuses } from "./ModelRegistry.js"
import { NeuronConfig } from "./NeuronConfig.js"
import { listRepo } from "./Sources.js"

export type PullError = PullFailed | InsufficientDisk

const MB = 1024 * 1024

interface Pull {
  /** Settles once the pull is under way (or failed before its first byte). */
  readonly prepared: Deferred.Deferred<void, PullError>
  readonly done: Deferred.Deferred<void, PullError>
  record: PullRecord
}

const emptyRecord = (model: string, started: number): PullRecord => ({
  model,
  status: "downloading",
  bytes_done: 0,
  bytes_total: 0,
  rate_bps: 0,
  started_at: new Date(started).toISOString(),
  finished_at: null,
  error: null
})

/** Served with the neuron's metrics (metrics_port): pulls happen on the node that downloads. */
export const pullBytes = Metric.counter("cortex_model_pull_bytes_total", {
  description: "Bytes downloaded by model pulls, per model",
  incremental: true
})
export const pullSeconds = Metric.histogram(
  "cortex_model_pull_seconds",
  // A small model over a LAN to a large one over a slow link.
  MetricBoundaries.fromIterable([1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600, 7200]),
  "How long model pulls took, by model and outcome (done, failed)"
)

/** Why node-llama-cpp's download failed, as a typed error. */
const downloadError = (model: string, e: unknown): PullError => {
  const status = (e as { statusCode?: unknown })?.statusCode
  const message = (e as Error)?.message ?? String(e)
  if (status === 401 || status === 403) {
    return new PullFailed({ model, reason: "unauthorized", detail: `the hub answered ${status} for the file` })
  }
  if (status === 404) {
    return new PullFailed({ model, reason: "not_found", detail: `the hub has no such file (${message})` })
  }
  return new PullFailed({ model, reason: "unreachable", detail: `download failed: ${message}` })
}

export class Puller extends Effect.Service<Puller>()("cortex/Puller", {
  scoped: Effect.gen(function*() {
    const config = yield* NeuronConfig
    const registry = yield* ModelRegistry
    const settings = config.sources
    const scope = yield* Effect.scope
    const pulls = new Map<string, Pull>()
    const recent: Array<PullRecord> = []

    const refOf = (id: string): Effect.Effect<HfRef, InvalidRequest> => {
      const ref = parseHfRef(id)
      return isRefError(ref)
        ? Effect.fail(new InvalidRequest({ message: ref.error, param: "model" }))
        : Effect.succeed(ref)
    }

    const isCached = (id: string) =>
      Effect.promise(() => scanCache(settings.cacheDir)).pipe(Effect.map((all) => all.some((m) => m.id === id)))

    /** Free bytes on the cache's disk (statfs; the folder is made first). */
    const freeBytes = async () => {
      await mkdir(settings.cacheDir, { recursive: true })
      const s = await statfs(settings.cacheDir)
      return s.bavail * s.bsize
    }

    /** Bytes of `files` already complete on disk (a re-pull of a file that is there skips it). */
    const presentBytes = async (ref: HfRef, files: ReadonlyArray<RepoFile>) => {
      let n = 0
      for (const f of files) {
        const full = path.join(settings.cacheDir, relativePath(ref.repo, f.path))
        const done = await stat(full).catch(() => undefined)
        if (done?.size === f.size) n += f.size
        else {
          // The partial file is as long as the model (written at offsets): count what is on disk.
          const partial = await stat(`${full}.ipull`).catch(() => undefined)
          if (partial) n += Math.min(partial.blocks * 512, f.size)
        }
      }
      return n
    }

    /**
     * Room in the cache for a model of `total` bytes under max_cache_gb: evict cached models that
     * are not loaded, least recently used first (last use, else when pulled).
     */
    const makeRoom = (id: string, total: number) =>
      Effect.gen(function*() {
        const max = settings.maxCacheBytes
        if (max === undefined) return
        if (total > max) {
          return yield* new InsufficientDisk({
            model: id,
            required_mb: Math.ceil(total / MB),
            free_mb: Math.floor(max / MB),
            detail: "larger than [sources] max_cache_gb"
          })
        }
        const cached = (yield* Effect.promise(() => scanCache(settings.cacheDir))).filter((m) => m.id !== id)
        let used = cached.reduce((s, m) => s + m.sizeBytes, 0)
        if (used + total <= max) return
        const lastUse = (m: CachedModel) => {
          const e = [...registry.entries()].find((x) => x.file.id === m.id)
          return e?.lastUsedAt ?? e?.loadedAt ?? Date.parse(m.manifest.pulled_at)
        }
        const evictable = cached.filter((m) => {
          const e = [...registry.entries()].find((x) => x.file.id === m.id)
          return !e || (!residentStatuses.has(e.status) && e.status !== "downloading")
        }).sort((a, b) => lastUse(a) - lastUse(b))
        for (const victim of evictable) {
          if (used + total <= max) break
          yield* Effect.promise(() => removeCached(settings.cacheDir, victim.manifest))
          yield* registry.forget(victim.id)
          used -= victim.sizeBytes
          yield* Effect.logInfo(`evicted cached model ${victim.id} (${Math.round(victim.sizeBytes / MB)} MB) for ${id}`)
        }
        if (used + total > max) {
          return yield* new InsufficientDisk({
            model: id,
            required_mb: Math.ceil(total / MB),
            free_mb: Math.max(0, Math.floor((max - used) / MB)),
            detail: "[sources] max_cache_gb is taken by loaded models"
          })
        }
      })

    /** Size, then sha256 where the hub gave one; a file that does not match is deleted. */
    const verify = async (ref: HfRef, files: ReadonlyArray<RepoFile>) => {
      for (const f of files) {
        const full = path.join(settings.cacheDir, relativePath(ref.repo, f.path))
        const info = await stat(full).catch(() => undefined)
        if (!info || info.size !== f.size) {
          await rm(full, { force: true })
          throw new PullFailed({
            model: ref.id,
            reason: "checksum_mismatch",
            detail: `${f.path} is ${info?.size ?? 0} bytes, the hub lists ${f.size}`
          })
        }
        if (f.sha256 !== undefined) {
          const sha = await sha256Of(full)
          if (sha !== f.sha256) {
            await rm(full, { force: true })
            throw new PullFailed({
              model: ref.id,
              reason: "checksum_mismatch",
              detail: `${f.path} has sha256 ${sha}, the hub lists ${f.sha256}`
            })
          }
        }
      }
    }

    const download = (
      ref: HfRef,
      entryFile: string,
      projector: string | undefined,
      onProgress: (done: number) => void
    ) =>
      Effect.tryPromise({
        try: async (signal) => {
          // node-llama-cpp loads on the first pull, not with the neuron: most neurons never pull,
          // and the daemon process otherwise never needs it (the workers own inference).
          const { createModelDownloader } = await import("node-llama-cpp")
          const endpoints = { huggingFace: `${settings.hf.endpoint}/` }
          const tokens = settings.hf.token ? { huggingFace: Redacted.value(settings.hf.token) } : {}
          const done = new Map<string, number>()
          const one = (file: string) =>
            createModelDownloader({
              modelUri: `hf:${ref.repo}/${file}`,
              dirPath: path.dirname(path.join(settings.cacheDir, relativePath(ref.repo, file))),
              fileName: path.basename(file),
              endpoints,
              tokens,
              skipExisting: true,
              // Keep a partial file (and its progress) so the next pull resumes it.
              deleteTempFileOnCancel: false,
              onProgress: ({ downloadedSize }) => {
                done.set(file, downloadedSize)
                let sum = 0
                for (const n of done.values()) sum += n
                onProgress(sum)
              }
            })
          // Each set downloads on its own rather than through combineModelDownloaders: in 3.21.1
          // (ipull 3.9.5) a split set inside a combined download is left as `.ipull` files (the
          // nested sequence loses the rename that ends each part).
          const downloaders = await Promise.all([entryFile, ...(projector !== undefined ? [projector] : [])].map(one))
          await Promise.all(downloaders.map((d) => d.download({ signal })))
        },
        catch: (e) => downloadError(ref.id, e)
      })

    /** The files `ref` resolves to on the hub (the listing, then the selection). */
    const resolveFiles = (ref: HfRef) =>
      Effect.gen(function*() {
        const listing = yield* Effect.tryPromise({
          try: (signal) => listRepo(settings, ref, signal),
          catch: (e) => e instanceof PullFailed ? e : downloadError(ref.id, e)
        })
        const selection = selectFiles(ref, listing)
        if (isSelectionFailure(selection)) {
          return yield* new PullFailed({
            model: ref.id,
            reason: selection._tag === "Ambiguous" ? "ambiguous" : "no_match",
            detail: selection.detail
          })
        }
        const files = [...selection.parts, ...(selection.projector ? [selection.projector] : [])]
        return { selection, files, total: files.reduce((s, f) => s + f.size, 0) }
      })

    /** Before any byte: what to fetch, the disk check and room in the cache; then listed as downloading. */
    const prepare = (ref: HfRef, entry: Pull) =>
      Effect.gen(function*() {
        const { files, selection, total } = yield* resolveFiles(ref)
        const present = yield* Effect.promise(() => presentBytes(ref, files))
        const needed = total - present
        const free = yield* Effect.promise(freeBytes)
        if (free - needed < settings.minFreeDiskBytes) {
          return yield* new InsufficientDisk({
            model: ref.id,
            required_mb: Math.ceil(needed / MB),
            free_mb: Math.max(0, Math.floor((free - settings.minFreeDiskBytes) / MB)),
            detail: `${Math.floor(free / MB)} MB free on the cache's disk, ${
              Math.round(settings.minFreeDiskBytes / MB)
            } MB kept free ([sources] min_free_disk_gb)`
          })
        }
        yield* makeRoom(ref.id, total)
        const e = yield* registry.track(ref.id, total)
        entry.record = { ...entry.record, bytes_total: total }
        yield* Effect.logInfo(
          `pulling ${ref.id}: ${files.map((f) => f.path).join(", ")} (${Math.round(total / MB)} MB, ${
            Math.round(present / MB)
          } MB already here) from ${settings.hf.endpoint}`
        )
        return { e, files, selection, present }
      })

    const run = (ref: HfRef, entry: Pull) =>
      Effect.gen(function*() {
        const started = Date.now()
        const { e, files, present, selection } = yield* prepare(ref, entry).pipe(
          Effect.tapBoth({
            onFailure: (error) => Deferred.fail(entry.prepared, error),
            onSuccess: () => Deferred.succeed(entry.prepared, undefined)
          })
        )
        let last = { at: Date.now(), bytes: 0 }
        // A resumed download reports the bytes it had already: they were not fetched now.
        let counted = present
        const onProgress = (done: number) => {
          const now = Date.now()
          const d = e.download
          if (d) {
            d.bytesDone = done
            if (now - last.at >= 500) {
              d.rateBps = (done - last.bytes) * 1000 / (now - last.at)
              last = { at: now, bytes: done }
            }
          }
          entry.record = { ...entry.record, bytes_done: done, rate_bps: Math.round(d?.rateBps ?? 0) }
          if (done > counted) {
            pullBytes.unsafeUpdate(done - counted, [MetricLabel.make("model", ref.id)])
            counted = done
          }
        }
        yield* download(ref, selection.parts[0]!.path, selection.projector?.path, onProgress)
        yield* Effect.tryPromise({ try: () => verify(ref, files), catch: (err) => err as PullFailed })
        const manifest: Manifest = {
          id: ref.id,
          repo: ref.repo,
          files: files.map((f) => ({ path: relativePath(ref.repo, f.path), size: f.size, sha256: f.sha256 ?? null })),
          entry: relativePath(ref.repo, selection.parts[0]!.path),
          projector: selection.projector ? relativePath(ref.repo, selection.projector.path) : null,
          pulled_at: new Date().toISOString()
        }
        yield* Effect.promise(() => writeManifest(settings.cacheDir, manifest))
        yield* Effect.logInfo(`pulled ${ref.id} in ${((Date.now() - started) / 1000).toFixed(1)} s, verified`)
      })

    const finish = (id: string, exit: Exit.Exit<void, PullError>, started: number) =>
      Effect.gen(function*() {
        const current = pulls.get(id)
        const failure = Exit.isFailure(exit)
          ? exit.cause._tag === "Fail"
            ? exit.cause.error
            : new PullFailed({ model: id, reason: "unreachable", detail: "the pull was interrupted" })
          : undefined
        if (failure) yield* Effect.logWarning(`pull of ${id} failed: ${failure.message}`)
        const record: PullRecord = {
          ...(current?.record ?? emptyRecord(id, started)),
          status: failure ? "failed" : "done",
          finished_at: new Date().toISOString(),
          error: failure ? { code: failure.body.error.code ?? failure._tag, message: failure.message } : null
        }
        // Listed (or not) before the pull is seen to end, so whoever watched it finds the model.
        yield* registry.settle(id, !failure)
        recent.unshift(record)
        if (recent.length > 20) recent.pop()
        pulls.delete(id)
        yield* Metric.update(
          Metric.taggedWithLabels(pullSeconds, [
            MetricLabel.make("model", id),
            MetricLabel.make("outcome", failure ? "failed" : "done")
          ]),
          (Date.now() - started) / 1000
        )
        if (current) {
          yield* Deferred.done(current.prepared, failure ? Exit.fail(failure) : Exit.void)
          yield* Deferred.done(current.done, failure ? Exit.fail(failure) : Exit.void)
        }
      })

    /** Start pulling `id` (or join the pull under way). */
    const start = (ref: HfRef) =>
      Effect.gen(function*() {
        const running = pulls.get(ref.id)
        if (running) return running
        const started = Date.now()
        const entry: Pull = {
          prepared: yield* Deferred.make<void, PullError>(),
          done: yield* Deferred.make<void, PullError>(),
          record: emptyRecord(ref.id, started)
        }
        pulls.set(ref.id, entry)
        yield* run(ref, entry).pipe(
          Effect.exit,
          Effect.flatMap((exit) => finish(ref.id, exit, started)),
          Effect.forkIn(scope)
        )
        return entry
      })

    /**
     * `POST /models/pull`: answers once the pull is under way (the listing, the quant and the disk
     * checked: their failures answer here), or at once when the model is cached already.
     */
    const pull = Effect.fn("Puller.pull")(function*(id: string) {
      const ref = yield* refOf(id)
      if (!pulls.has(ref.id) && (yield* isCached(ref.id))) {
        yield* registry.rescan
        const now = new Date().toISOString()
        return { ...emptyRecord(ref.id, Date.now()), status: "done" as const, finished_at: now }
      }
      const entry = yield* start(ref)
      yield* Deferred.await(entry.prepared)
      return entry.record
    })

    /** The model's files, pulled first when they are not here yet (a load of an `hf:` model). */
    const ensure = (id: string): Effect.Effect<void, PullError | InvalidRequest> =>
      Effect.gen(function*() {
        const ref = yield* refOf(id)
        if (!pulls.has(ref.id) && (yield* isCached(ref.id))) return yield* registry.rescan
        const entry = yield* start(ref)
        yield* Deferred.await(entry.done)
      })

    /** What `id` would download, and how much (the gateway's placement estimate before a pull). */
    const resolve = Effect.fn("Puller.resolve")(function*(id: string) {
      const ref = yield* refOf(id)
      const { files, total } = yield* resolveFiles(ref)
      return { model: ref.id, bytes_total: total, files: files.map((f) => ({ path: f.path, size: f.size })) }
    })

    /** Delete a cached download; refused while the model is loaded (or loading, or being pulled). */
    const remove = Effect.fn("Puller.remove")(function*(id: string) {
      const ref = yield* refOf(id)
      const e = [...registry.entries()].find((x) => x.file.id === ref.id)
      if (pulls.has(ref.id) || (e && (residentStatuses.has(e.status) || e.status === "downloading"))) {
        return yield* new InvalidRequest({
          message: `'${ref.id}' is ${e?.status ?? "downloading"}: unload it first`,
          param: "model"
        })
      }
      const cached = (yield* Effect.promise(() => scanCache(settings.cacheDir))).find((m) => m.id === ref.id)
      if (!cached) return { model: ref.id, removed: false, freed_bytes: 0 }
      yield* Effect.promise(() => removeCached(settings.cacheDir, cached.manifest))
      yield* registry.forget(ref.id)
      yield* Effect.logInfo(`removed cached model ${ref.id} (${Math.round(cached.sizeBytes / MB)} MB)`)
      return { model: ref.id, removed: true, freed_bytes: cached.sizeBytes }
    })

    return {
      pull,
      ensure,
      resolve,
      remove,
      /** Pulls under way, then the last 20 that ended (failures with their error). */
      records: (): Array<PullRecord> => [...[...pulls.values()].map((p) => p.record), ...recent]
    } as const
  }),
  dependencies: [ModelRegistry.Default]
}) {}
