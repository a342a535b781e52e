/**
 * Routing: for model X (after aliases), the least-busy healthy replica where X is loaded; else
 * 503 + Retry-After while X recovers; else a load on the feasible node with the most free memory
 * (single-flight per model); else 404. Busy-ness adds the gateway's own in-flight count to the
 * last poll, so a burst between polls still spreads.
 */
import { Deferred, Effect } from "effect"
import { type ApiError, ModelNotFound, ModelUnavailable, UpstreamError } from "../domain/errors.js"
import { buildCatalogue, type CatalogueModel, type Location, resolveAlias } from "./Catalogue.js"
import { Fleet, type NodeState } from "./Fleet.js"
import { GatewayConfig } from "./GatewayConfig.js"
import { callNeuron } from "./NeuronClient.js"

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
    const fleet = yield* Fleet
    const inFlight = new Map<string, number>()
    const loads = new Map<string, Deferred.Deferred<string, ApiError>>()
    const key = (node: string, model: string) => `${node}\u0000${model}`

    const busy = (l: Location, neuronId: string) =>
      l.in_flight + l.queue_depth + (inFlight.get(key(l.node, neuronId)) ?? 0)

    const catalogue = Effect.map(fleet.get, (state) => buildCatalogue(config.models, state))

    const lookup = (name: string) =>
      Effect.gen(function*() {
        const id = resolveAlias(config.aliases, name)
        const model = (yield* catalogue).get(id)
        if (!model) return yield* new ModelNotFound({ model: name })
        return model
      })

    const freeMemory = (node: NodeState) => node.devices.reduce((sum, d) => sum + d.freeMb, 0)

    /** Ask the best feasible node to load the model; concurrent callers share one load. */
    const coldLoad = (model: CatalogueModel) =>
      Effect.gen(function*() {
        const pending = loads.get(model.id)
        if (pending) return yield* Deferred.await(pending)
        const deferred = yield* Deferred.make<string, ApiError>()
        loads.set(model.id, deferred)
        const attempt = Effect.gen(function*() {
          const state = yield* fleet.get
          const candidates = model.locations
            .filter((l) => l.healthy && l.status !== "failed" && l.status !== "unloading")
            .map((l) => state.get(l.node)!)
            .sort((a, b) => freeMemory(b) - freeMemory(a) || a.name.localeCompare(b.name))
          const target = candidates[0]
          if (!target) {
            return yield* new ModelUnavailable({
              model: model.id,
              state: "unavailable",
              detail: "no healthy node has it"
            })
          }
          yield* Effect.logInfo(`cold load of ${model.id} on ${target.name}`)
          yield* callNeuron(target.endpoint, "/models/load", {
            body: {
              model: model.neuronId,
              ...(model.profile?.context_size !== undefined ? { context_size: model.profile.context_size } : {})
            },
            timeoutMs: config.loadTimeoutSecs * 1000
          }).pipe(
            Effect.mapError((error): ApiError =>
              error._tag === "NeuronRefused"
                ? new UpstreamError({
                  upstreamStatus: error.status,
                  upstreamBody: error.body,
                  retryAfter: error.retryAfter
                })
                : new ModelUnavailable({ model: model.id, state: "unavailable", detail: error.detail })
            )
          )
          yield* fleet.refresh(target.name)
          return target.name
        })
        const exit = yield* Effect.exit(attempt)
        loads.delete(model.id)
        yield* Deferred.done(deferred, exit)
        return yield* exit
      })

    const route = Effect.fn("Router.route")(function*(name: string) {
      let model = yield* lookup(name)
      let coldLoaded = false
      const state = yield* fleet.get
      const ready = () =>
        model.locations
          .filter((l) => l.healthy && l.status === "loaded")
          .sort((a, b) => busy(a, model.neuronId) - busy(b, model.neuronId) || a.node.localeCompare(b.node))
      let replicas = ready()
      if (replicas.length === 0) {
        if (model.locations.some((l) => l.healthy && l.status === "recovering")) {
          return yield* new ModelUnavailable({ model: model.id, state: "recovering" })
        }
        if (model.locations.length > 0 && !model.locations.some((l) => l.healthy)) {
          return yield* new ModelUnavailable({
            model: model.id,
            state: "unavailable",
            detail: "no healthy node serves it"
          })
        }
        yield* coldLoad(model)
        coldLoaded = true
        model = yield* lookup(name)
        replicas = ready()
        if (replicas.length === 0) {
          return yield* new ModelUnavailable({ model: model.id, state: "loading" })
        }
      }
      const fresh = yield* fleet.get
      const nodes = replicas.map((l) => fresh.get(l.node) ?? state.get(l.node)!)
      return { model, node: nodes[0]!, fallbacks: nodes.slice(1), coldLoad: coldLoaded } satisfies Route
    })

    /** Count a request against a node until the returned release runs. */
    const track = (node: string, model: string) => {
      const k = key(node, model)
      inFlight.set(k, (inFlight.get(k) ?? 0) + 1)
      let released = false
      return () => {
        if (released) return
        released = true
        const n = (inFlight.get(k) ?? 1) - 1
        if (n <= 0) inFlight.delete(k)
        else inFlight.set(k, n)
      }
    }

    return { route, lookup, catalogue, track, loadsInProgress: () => [...loads.keys()] } as const
  })
}) {}
