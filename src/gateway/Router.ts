/**
 * Routing: for model X (after aliases), the least-busy healthy replica where X is loaded; else
 * 503 + Retry-After while X recovers; else a cold load through ColdLoader (placement, eviction,
 * single-flight); else 404. Busy-ness adds the gateway's own in-flight count to the last poll,
 * so a burst between polls still spreads. A node never polled is unknown, not empty: while one
 * is silent, a model no polled node has answers 503 + Retry-After, not 404.
 */
import { Effect } from "effect"
import { ModelLoadFailed, ModelNotFound, ModelUnavailable } from "../domain/errors.js"
import { Catalogue, type CatalogueModel, type Location, resolveAlias } from "./Catalogue.js"
import { ColdLoader } from "./ColdLoader.js"
import { Evictor } from "./Evictor.js"
import { GatewayConfig } from "./GatewayConfig.js"
import { InFlight } from "./InFlight.js"
import { type FleetState, type NodeState, Poller } from "./Poller.js"

export interface Route {
  readonly model: CatalogueModel
  readonly node: NodeState
  /** Other healthy replicas to try, in order, if this one fails before the first byte. */
  readonly fallbacks: ReadonlyArray<NodeState>
  readonly coldLoad: boolean
}

export class Router extends Effect.Service<Router>()("cortex/Router", {
  effect: Effect.gen(function*() {
    const config = yield* GatewayConfig
    const poller = yield* Poller
    const catalogue = yield* Catalogue
    const inFlight = yield* InFlight
    const evictor = yield* Evictor
    const loader = yield* ColdLoader

    const busy = (l: Location, neuronId: string) => l.in_flight + l.queue_depth + inFlight.busy(l.node, neuronId)

    /** Nodes that have never answered a poll: what they hold is unknown, not nothing. */
    const silentNodes = (state: FleetState) =>
      [...state.values()].filter((n) => n.lastSeen === undefined).map((n) => n.name)

    const lookup = (name: string) =>
      Effect.gen(function*() {
        const id = resolveAlias(config.aliases, name)
        const model = (yield* catalogue.get).get(id)
        if (model) return model
        // Until every node has answered once, "unknown" may only mean "not polled yet".
        const silent = silentNodes(yield* poller.get)
        if (silent.length > 0) {
          return yield* new ModelUnavailable({
            model: name,
            state: "unavailable",
            detail: `no answer yet from ${silent.join(", ")}`
          })
        }
        return yield* new ModelNotFound({ model: name })
      })

    /** Healthy replicas holding the model and not being evicted, least busy first. */
    const ready = (model: CatalogueModel) =>
      model.locations
        .filter((l) => l.healthy && l.status === "loaded" && !evictor.isClaimed(l.node, model.neuronId))
        .sort((a, b) => busy(a, model.neuronId) - busy(b, model.neuronId) || a.node.localeCompare(b.node))

    const toRoute = (
      model: CatalogueModel,
      replicas: ReadonlyArray<Location>,
      state: FleetState,
      coldLoad: boolean
    ) => {
      const nodes = replicas.map((l) => state.get(l.node)).filter((n): n is NodeState => n !== undefined)
      return { model, node: nodes[0]!, fallbacks: nodes.slice(1), coldLoad } satisfies Route
    }

    /**
     * The common case without a fiber: the model is loaded on a healthy replica. undefined means
     * "ask `route`" (cold load, recovering, unknown, not polled yet).
     */
    const routeNow = (name: string): Route | undefined => {
      const model = catalogue.now().get(resolveAlias(config.aliases, name))
      if (!model) return undefined
      const replicas = ready(model)
      return replicas.length > 0 ? toRoute(model, replicas, poller.now(), false) : undefined
    }

    const route = (name: string) =>
      Effect.gen(function*() {
        let model = yield* lookup(name)
        let coldLoaded = false
        let replicas = ready(model)
        if (replicas.length === 0) {
          if (model.locations.some((l) => l.healthy && l.status === "recovering")) {
            return yield* new ModelUnavailable({ model: model.id, state: "recovering" })
          }
          const healthy = model.locations.filter((l) => l.healthy)
          const failed = healthy.filter((l) => l.status === "failed")
          // It failed to load everywhere it could: say so (an operator retries with `cortex load`),
          // rather than crash a worker again on every request.
          if (failed.length > 0 && failed.length === healthy.length) {
            return yield* new ModelLoadFailed({ model: model.id, detail: failed[0]!.error ?? "the last load failed" })
          }
          // No polled node has its file: only a node not heard from yet may. Retry once it answers.
          const pinnedOn = model.profile?.pinned_on
          const silent = silentNodes(yield* poller.get).filter((n) => pinnedOn === undefined || n === pinnedOn)
          if (model.locations.length === 0 && silent.length > 0) {
            return yield* new ModelUnavailable({
              model: model.id,
              state: "unavailable",
              detail: `no answer yet from ${silent.join(", ")}`
            })
          }
          if (model.locations.length > 0 && !model.locations.some((l) => l.healthy)) {
            return yield* new ModelUnavailable({
              model: model.id,
              state: "unavailable",
              detail: "no healthy node serves it"
            })
          }
          yield* loader.ensureLoaded(model)
          coldLoaded = true
          model = yield* lookup(name)
          replicas = ready(model)
          if (replicas.length === 0) return yield* new ModelUnavailable({ model: model.id, state: "loading" })
        }
        return toRoute(model, replicas, yield* poller.get, coldLoaded)
      })

    return { route, routeNow, lookup } as const
  }),
  dependencies: [Poller.Default, Catalogue.Default, InFlight.Default, Evictor.Default, ColdLoader.Default]
}) {}
