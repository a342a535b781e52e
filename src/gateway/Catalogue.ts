/**
 * The catalogue: models.toml profiles × what the neurons have on disk and in memory, plus
 * aliases. Models a neuron serves that no profile names are listed too, under their own id.
 * `buildCatalogue` is pure; the `Catalogue` service builds it once per fleet state.
 */
import { Effect } from "effect"
import type { CatalogueList } from "../domain/admin.js"
import { neuronIdOf } from "../domain/modelSource.js"
import { GatewayConfig, type ModelProfile } from "./GatewayConfig.js"
import { type FleetState, type NeuronModel, Poller } from "./Poller.js"

export interface Location {
  readonly node: string
  readonly status: NeuronModel["status"]
  readonly healthy: boolean
  readonly in_flight: number
  readonly queue_depth: number
  readonly context_limit: number | null
  readonly memory_estimate_mb: number | null
  readonly error: string | null
}

export interface CatalogueModel {
  readonly id: string
  /** The id the neurons know it by. */
  readonly neuronId: string
  readonly profile: ModelProfile | undefined
  readonly locations: ReadonlyArray<Location>
  readonly capabilities: ReadonlyArray<string>
  readonly limit: { readonly context: number | null; readonly output: number | null }
}

export const buildCatalogue = (
  profiles: ReadonlyArray<ModelProfile>,
  fleet: FleetState
): ReadonlyMap<string, CatalogueModel> => {
  const byNeuronId = new Map<string, Array<Location & { readonly capabilities: ReadonlyArray<string> }>>()
  for (const node of fleet.values()) {
    for (const m of node.models) {
      const list = byNeuronId.get(m.id) ?? []
      list.push({
        node: node.name,
        status: m.status,
        healthy: node.healthy,
        in_flight: m.in_flight,
        queue_depth: m.queue_depth,
        context_limit: m.context_limit,
        memory_estimate_mb: m.memory_estimate_mb,
        error: m.error,
        capabilities: m.capabilities
      })
      byNeuronId.set(m.id, list)
    }
  }
  const entry = (id: string, neuronId: string, profile: ModelProfile | undefined): CatalogueModel => {
    const found = byNeuronId.get(neuronId) ?? []
    const contexts = found.map((l) => l.context_limit).filter((c): c is number => c !== null)
    return {
      id,
      neuronId,
      profile,
      locations: found.map(({ capabilities: _, ...location }) => location),
      capabilities: profile?.capabilities ?? [...new Set(found.flatMap((l) => l.capabilities))],
      limit: {
        context: profile?.limit?.context ?? (contexts.length > 0 ? Math.min(...contexts) : null),
        output: profile?.limit?.output ?? null
      }
    }
  }
  const catalogue = new Map<string, CatalogueModel>()
  const covered = new Set<string>()
  for (const profile of profiles) {
    const neuronId = neuronIdOf(profile)
    covered.add(neuronId)
    catalogue.set(profile.id, entry(profile.id, neuronId, profile))
  }
  for (const neuronId of [...byNeuronId.keys()].sort()) {
    if (!covered.has(neuronId) && !catalogue.has(neuronId)) {
      catalogue.set(neuronId, entry(neuronId, neuronId, undefined))
    }
  }
  return catalogue
}

export const resolveAlias = (aliases: Readonly<Record<string, string>>, name: string) => aliases[name] ?? name

/** /v1/models: OpenAI's fields plus where each model is and what it can do. */
export const catalogueList = (
  catalogue: ReadonlyMap<string, CatalogueModel>,
  aliases: Readonly<Record<string, string>>,
  created: number
): CatalogueList => {
  const model = (m: CatalogueModel, id = m.id) => ({
    id,
    object: "model" as const,
    created,
    owned_by: "cortex",
    loaded: m.locations.some((l) => l.status === "loaded" && l.healthy),
    locations: m.locations.map((l) => ({ node: l.node, status: l.status, healthy: l.healthy })),
    feasible_on: m.locations.filter((l) => l.healthy && l.status !== "failed").map((l) => l.node),
    capabilities: m.capabilities,
    limit: m.limit,
    ...(m.profile?.cost ? { cost: m.profile.cost } : {}),
    ...(id !== m.id ? { alias_of: m.id } : {})
  })
  const data = [...catalogue.values()].map((m) => model(m))
  for (const [alias, target] of Object.entries(aliases)) {
    const m = catalogue.get(target)
    if (m && !catalogue.has(alias)) data.push(model(m, alias))
  }
  return { object: "list" as const, data }
}

/** The catalogue of the poller's current state, rebuilt only when that state changes. */
export class Catalogue extends Effect.Service<Catalogue>()("cortex/Catalogue", {
  effect: Effect.gen(function*() {
    const config = yield* GatewayConfig
    const poller = yield* Poller
    let cached:
      | { state: FleetState; profiles: ReadonlyArray<ModelProfile>; catalogue: ReadonlyMap<string, CatalogueModel> }
      | undefined
    const of = (state: FleetState) => {
      // Rebuilt when the fleet changes or a config reload brings other profiles.
      const profiles = config.models
      if (cached?.state !== state || cached.profiles !== profiles) {
        cached = { state, profiles, catalogue: buildCatalogue(profiles, state) }
      }
      return cached.catalogue
    }
    return {
      get: Effect.map(poller.get, of),
      /** Fiber-free, for the inference fast path. */
      now: () => of(poller.now())
    } as const
  }),
  dependencies: [Poller.Default]
}) {}
