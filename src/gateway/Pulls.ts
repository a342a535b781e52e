/**
 * The gateway's side of model sources: a catalogued `hf:` model is sized for placement from the
 * repository (the neuron's `/models/resolve`) until a node has its file; a waiting stream's
 * keep-alives carry the pull's progress; `cortex pull` / `cortex rm` act on a node; and
 * `/admin/status` shows the downloads the poller saw. The pulls themselves run on the neurons.
 */
import { Effect, Metric, MetricBoundaries, MetricLabel, Schedule } from "effect"
import type { AdminDownload } from "../domain/admin.js"
import { PullRecord, RemoveAnswer, ResolveAnswer } from "../domain/contract.js"
import { type ApiError, InternalError, InvalidRequest, UpstreamError } from "../domain/errors.js"
import { isHfId } from "../domain/modelSource.js"
import { Catalogue, type CatalogueModel, resolveAlias } from "./Catalogue.js"
import { GatewayConfig } from "./GatewayConfig.js"
import { callNeuron, type NeuronError } from "./NeuronClient.js"
import { type NodeState, Poller } from "./Poller.js"

const MB = 1024 * 1024

/**
 * The fleet's pulls as the gateway sees them (each neuron also serves its own on metrics_port):
 * bytes counted from the growth of each pull's bytes_done between polls, durations when a pull
 * is seen to end. Labels: model (the neuron id), node, and outcome on the histogram.
 */
export const pullBytes = Metric.counter("cortex_model_pull_bytes_total", {
  description: "Bytes downloaded by model pulls, per model and node",
  incremental: true
})
export const pullSeconds = Metric.histogram(
  "cortex_model_pull_seconds",
  MetricBoundaries.fromIterable([1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600, 7200]),
  "How long model pulls took, by model, node and outcome (done, failed)"
)

const asApiError = (node: string) => (error: NeuronError): ApiError =>
  error._tag === "NeuronRefused"
    ? new UpstreamError({ upstreamStatus: error.status, upstreamBody: error.body, retryAfter: error.retryAfter })
    : new InternalError({ detail: `${node}: ${error.detail}` })

const mb = (bytes: number) => (bytes / MB).toFixed(1)

/** "pulling hf:… 12.3/45.6 MB (4.5 MB/s)": what a waiting client's keep-alive says. */
export const progressLine = (
  model: string,
  download: { readonly bytes_done: number; readonly bytes_total: number; readonly rate_bps: number },
  node: string
) =>
  `pulling ${model} on ${node}: ${mb(download.bytes_done)}/${mb(download.bytes_total)} MB${
    download.rate_bps > 0 ? ` (${mb(download.rate_bps)} MB/s)` : ""
  }`

export class Pulls extends Effect.Service<Pulls>()("cortex/Pulls", {
  scoped: Effect.gen(function*() {
    const config = yield* GatewayConfig
    const poller = yield* Poller
    const catalogue = yield* Catalogue
    /** Bytes a pull of each `hf:` model would fetch, asked once per model. */
    const sizes = new Map<string, number>()

    const healthyNodes = (fleet: ReadonlyMap<string, NodeState>) => [...fleet.values()].filter((n) => n.healthy)

    /**
     * The model as placement should see it: an `hf:` model that no node lists yet and whose
     * profile gives no vram_mb needs memory for its weights, estimated from the repository's file
     * size (as a local file's size is: × 1.2). The first healthy node resolves it; a source that
     * does not resolve (no such repository, an ambiguous quant) fails here, before any load.
     */
    const sized = (model: CatalogueModel): Effect.Effect<CatalogueModel, ApiError> =>
      Effect.gen(function*() {
        if (!isHfId(model.neuronId) || model.profile?.vram_mb !== undefined) return model
        const fleet = yield* poller.get
        const listed = [...fleet.values()].some((n) =>
          n.models.some((m) => m.id === model.neuronId && m.size_bytes > 0)
        )
        if (listed) return model
        let bytes = sizes.get(model.neuronId)
        if (bytes === undefined) {
          const node = healthyNodes(fleet)[0]
          if (!node) return model
          const answer = yield* callNeuron(node.endpoint, "/models/resolve", ResolveAnswer, {
            body: { model: model.neuronId },
            timeoutMs: 30_000
          }).pipe(Effect.mapError(asApiError(node.name)))
          bytes = answer.bytes_total
          sizes.set(model.neuronId, bytes)
        }
        return {
          ...model,
          profile: { ...(model.profile ?? { id: model.id }), vram_mb: Math.ceil(bytes / MB * 1.2) }
        }
      })

    /** The progress of a pull of `name` (a catalogue id or alias) on any node, for a keep-alive. */
    const progressFor = (name: string): string | undefined => {
      const model = catalogue.now().get(resolveAlias(config.aliases, name))
      if (!model || !isHfId(model.neuronId)) return undefined
      for (const node of poller.now().values()) {
        const m = node.models.find((x) => x.id === model.neuronId && x.status === "downloading")
        if (m?.download) return progressLine(model.neuronId, m.download, node.name)
      }
      return undefined
    }

    /** Every pull the poller saw: under way, and the recent ones each neuron still lists. */
    const downloads = (): Array<AdminDownload> =>
      [...poller.now().values()].flatMap((node) => (node.pulls ?? []).map((p) => ({ node: node.name, ...p })))

    const lookup = (name: string) =>
      Effect.gen(function*() {
        const id = resolveAlias(config.aliases, name)
        const model = (yield* catalogue.get).get(id)
        const neuronId = model?.neuronId ?? id
        if (!isHfId(neuronId)) {
          return yield* new InvalidRequest({
            message: `'${name}' has no source to pull from (give models.toml a source, or name an hf: model)`,
            param: "model"
          })
        }
        return neuronId
      })

    const nodeNamed = (fleet: ReadonlyMap<string, NodeState>, name: string) =>
      fleet.get(name) ?? new InvalidRequest({ message: `no neuron named '${name}'`, param: "node" })

    /**
     * Start a pull on `node`, or on the node that lists the model already, else the healthy node
     * with the most free device memory (where placement would load it first). Answers at once.
     */
    const pull = Effect.fn("Pulls.pull")(function*(name: string, nodeName: string | undefined) {
      const neuronId = yield* lookup(name)
      const fleet = yield* poller.get
      let node: NodeState | undefined
      if (nodeName !== undefined) {
        const found = nodeNamed(fleet, nodeName)
        if (found instanceof InvalidRequest) return yield* found
        node = found
      } else {
        const healthy = healthyNodes(fleet)
        const free = (n: NodeState) => n.devices.reduce((s, d) => s + d.freeMb, 0)
        node = healthy.find((n) => n.models.some((m) => m.id === neuronId)) ??
          [...healthy].sort((a, b) => free(b) - free(a) || a.name.localeCompare(b.name))[0]
      }
      if (!node) return yield* new InvalidRequest({ message: "no healthy neuron to pull on", param: "node" })
      const record = yield* callNeuron(node.endpoint, "/models/pull", PullRecord, {
        body: { model: neuronId },
        timeoutMs: 60_000
      }).pipe(Effect.mapError(asApiError(node.name)))
      yield* poller.refresh(node.name)
      return { node: node.name, ...record }
    })

    /** Delete a cached download on `node`, or on every node that lists it. */
    const remove = Effect.fn("Pulls.remove")(function*(name: string, nodeName: string | undefined) {
      const neuronId = yield* lookup(name)
      const fleet = yield* poller.get
      let targets: Array<NodeState>
      if (nodeName !== undefined) {
        const found = nodeNamed(fleet, nodeName)
        if (found instanceof InvalidRequest) return yield* found
        targets = [found]
      } else {
        targets = [...fleet.values()].filter((n) => n.models.some((m) => m.id === neuronId))
      }
      const results = yield* Effect.forEach(
        targets,
        (node) =>
          callNeuron(node.endpoint, "/models/remove", RemoveAnswer, { body: { model: neuronId }, timeoutMs: 30_000 })
            .pipe(
              Effect.mapError(asApiError(node.name)),
              Effect.tap(() => poller.refresh(node.name)),
              Effect.map((r) => ({ node: node.name, removed: r.removed, freed_bytes: r.freed_bytes }))
            ),
        { concurrency: "unbounded" }
      )
      return { model: neuronId, results }
    })

    /** Pull metrics from the poller's view: what each pull grew by, and each pull that ended. */
    const seen = new Map<string, number>()
    const ended = new Set<string>()
    const record = Effect.sync(() => {
      for (const node of poller.now().values()) {
        for (const p of node.pulls ?? []) {
          const key = `${node.name}\u0000${p.model}\u0000${p.started_at}`
          const labels = [MetricLabel.make("model", p.model), MetricLabel.make("node", node.name)]
          const before = seen.get(key) ?? 0
          if (p.bytes_done > before) pullBytes.unsafeUpdate(p.bytes_done - before, labels)
          seen.set(key, Math.max(before, p.bytes_done))
          if (p.status !== "downloading" && p.finished_at !== null && !ended.has(key)) {
            ended.add(key)
            const seconds = (Date.parse(p.finished_at) - Date.parse(p.started_at)) / 1000
            pullSeconds.unsafeUpdate(Math.max(0, seconds), [...labels, MetricLabel.make("outcome", p.status)])
          }
        }
      }
    })
    yield* Effect.forkScoped(record.pipe(Effect.repeat(Schedule.spaced(`${config.pollIntervalSecs} seconds`))))

    return { sized, progressFor, downloads, pull, remove } as const
  }),
  dependencies: [Poller.Default, Catalogue.Default]
}) {}
