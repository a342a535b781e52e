/**
 * The scheduler: what a cold load should do now, as one pure function of a snapshot (the fleet
 * as last polled, the memory other loads hold, the replicas claimed for unloading, this gateway's
 * in-flight counts and the clock). Like llama-swap's `Swapper`, it only decides; ColdLoader takes
 * the snapshot under its plan lock and carries the plan out, the Evictor does the unloads.
 *
 * A plan is one of: load on node N after evicting V (in order); wait (something transient may
 * change the answer: a victim still serving or just loaded, within the waiter's swap deadline; a
 * load or unload under way on a node that could take the model; the model itself being unloaded);
 * refuse with the error the client gets (404 infeasible, 503 unavailable).
 */
import { type ApiError, ModelInfeasible, ModelUnavailable } from "../domain/errors.js"
import { isHfId, neuronIdOf } from "../domain/modelSource.js"
import type { CatalogueModel } from "./Catalogue.js"
import type { ModelProfile } from "./GatewayConfig.js"
import { place, type PlacementNode, residencyPriority, type Strategy, swapOrWait } from "./Placement.js"
import type { FleetState, NodeState } from "./Poller.js"

export interface Reservation {
  readonly mb: number
  /** The device group the load goes to. */
  readonly group: string
}

export interface Snapshot {
  readonly fleet: FleetState
  /** Memory held per node by loads in flight (neuron model id → MB on a group): the poll cannot see it yet. */
  readonly reserved: ReadonlyMap<string, ReadonlyMap<string, Reservation>>
  /** A replica claimed for unloading (a plan's victim, or the idle sweep's): neither evictable nor free. */
  readonly claimed: (node: string, model: string) => boolean
  /** Requests this gateway has in flight on a replica. */
  readonly inFlight: (node: string, model: string) => number
  /** When this gateway last used a replica (ms epoch, 0 = never). */
  readonly lastUse: (node: string, model: string) => number
  /** ms epoch. */
  readonly now: number
}

export interface SchedulerSettings {
  readonly profiles: ReadonlyArray<ModelProfile>
  readonly strategy: Strategy
  /** A model loaded more recently than this is busy (goes last, and a waiter waits for it). */
  readonly minResidentMs: number
  /** How long a load may wait for transient states before it refuses. */
  readonly loadTimeoutMs: number
}

export interface LoadAsk {
  readonly model: CatalogueModel
  /** When the load began (ms epoch). */
  readonly started: number
  /** Until when it may wait for busy or young victims (ms epoch); past it, it swaps. */
  readonly swapDeadline: number
}

export type Plan =
  | {
    readonly _tag: "Load"
    readonly node: string
    /** The device group on that node. */
    readonly group: string
    /** Residents to unload first, in victim order (the Evictor stops once the model fits). */
    readonly evict: ReadonlyArray<string>
    readonly requiredMb: number
  }
  /** Plan again shortly; `node` is where the model will go when the wait is for its victims. */
  | { readonly _tag: "Wait"; readonly node: string | undefined; readonly reason: string }
  | { readonly _tag: "Refuse"; readonly error: ApiError }

const MB = 1024 * 1024
const residentStatuses = new Set(["loaded", "loading", "recovering", "unloading"])

export const profileOf = (profiles: ReadonlyArray<ModelProfile>, neuronId: string): ModelProfile | undefined =>
  profiles.find((p) => neuronIdOf(p) === neuronId)

/** Memory held on `node` (on its `group` when given) by loads in flight, but for `except`'s own reservation. */
export const reservedOn = (
  reserved: Snapshot["reserved"],
  node: string,
  except?: string,
  group?: string
): number => {
  let sum = 0
  for (const [id, r] of reserved.get(node) ?? []) {
    if (id !== except && (group === undefined || r.group === group)) sum += r.mb
  }
  return sum
}

/** A device's group as the neuron reports it (an older neuron: each device alone). */
export const deviceGroup = (d: { readonly id: string; readonly group?: string | undefined }) => d.group ?? d.id

/** The memory the model needs: its profile's vram_mb, else the largest estimate a neuron gave. */
export const requiredMb = (model: CatalogueModel, fleet: FleetState): number => {
  if (model.profile?.vram_mb !== undefined) return model.profile.vram_mb
  const estimates = [...fleet.values()].flatMap((n) =>
    n.models.filter((m) => m.id === model.neuronId).map((m) =>
      m.memory_estimate_mb ?? Math.ceil(m.size_bytes / MB * 1.2)
    )
  )
  return estimates.length > 0 ? Math.max(...estimates) : 0
}

/** Devices with in-flight loads' memory taken off their group's free figures (largest free first). */
const withReservations = (node: NodeState, reserved: Snapshot["reserved"]) => {
  const held = new Map<string, number>()
  return [...node.devices].sort((a, b) => b.freeMb - a.freeMb || (a.id < b.id ? -1 : 1)).map((d) => {
    const group = deviceGroup(d)
    const left = held.get(group) ?? reservedOn(reserved, node.name, undefined, group)
    const take = Math.min(left, d.freeMb)
    held.set(group, left - take)
    return { id: d.id, group, totalMb: d.totalMb, freeMb: d.freeMb - take }
  })
}

/** The node's one device group, when it has exactly one (where any resident must be). */
const onlyGroup = (node: NodeState) => {
  const groups = new Set(node.devices.map(deviceGroup))
  return groups.size === 1 ? [...groups][0] : undefined
}

const placementNodes = (
  model: CatalogueModel,
  snapshot: Snapshot,
  settings: SchedulerSettings
): Array<PlacementNode> =>
  [...snapshot.fleet.values()].map((node) => ({
    name: node.name,
    known: node.lastSeen !== undefined,
    healthy: node.healthy,
    // An `hf:` model can be pulled by any node: until one has it, each is a candidate.
    hasModel: isHfId(model.neuronId) || node.models.some((m) => m.id === model.neuronId && m.status !== "failed"),
    devices: withReservations(node, snapshot.reserved),
    // A victim claimed by another plan is spoken for: neither evictable nor free yet.
    resident: node.models
      .filter((m) => m.id !== model.neuronId && residentStatuses.has(m.status) && !snapshot.claimed(node.name, m.id))
      .map((m) => {
        const profile = profileOf(settings.profiles, m.id)
        const loadedAt = m.loaded_at ? Date.parse(m.loaded_at) : 0
        const young = snapshot.now - loadedAt < settings.minResidentMs
        return {
          id: m.id,
          group: m.group ?? m.device ?? onlyGroup(node) ?? "",
          footprintMb: m.memory_estimate_mb ?? 0,
          priority: residencyPriority(profile ?? {}),
          // Only a settled model can go; one loading or recovering is never a victim.
          pinned: profile?.pinned_on === node.name || m.status !== "loaded",
          lastUsed: Math.max(
            snapshot.lastUse(node.name, m.id),
            m.last_used_at ? Date.parse(m.last_used_at) : 0,
            loadedAt
          ),
          // Requests running or waiting here, and a just-loaded model, count as busy: they go last.
          inFlight: snapshot.inFlight(node.name, m.id) + m.in_flight + m.queue_depth + (young ? 1 : 0)
        }
      })
  }))

/** A load or unload under way on a node that could take the model: the answer may change shortly. */
const transientOn = (model: CatalogueModel, snapshot: Snapshot) => {
  const candidates = new Set(model.locations.map((l) => l.node))
  return [...snapshot.reserved].some(([node, m]) => candidates.has(node) && m.size > 0) ||
    [...snapshot.fleet.values()].some((n) =>
      candidates.has(n.name) && n.healthy &&
      n.models.some((m) => m.status === "loading" || m.status === "unloading")
    )
}

/** Where and how to cold-load `ask.model` now, or why to wait, or why not. */
export const planLoad = (ask: LoadAsk, snapshot: Snapshot, settings: SchedulerSettings): Plan => {
  const { model } = ask
  const fleet = snapshot.fleet
  // Being unloaded somewhere: plan again once that unload is done.
  if ([...fleet.keys()].some((node) => snapshot.claimed(node, model.neuronId))) {
    return { _tag: "Wait", node: undefined, reason: `${model.id} is being unloaded` }
  }
  const required = requiredMb(model, fleet)
  const profile = model.profile
  const placement = place(
    {
      id: model.neuronId,
      requiredMb: required,
      minDevices: profile?.min_devices ?? 1,
      minDeviceVramMb: profile?.min_device_vram_mb,
      pinnedOn: profile?.pinned_on,
      priority: residencyPriority(profile ?? {})
    },
    placementNodes(model, snapshot, settings),
    settings.strategy
  )
  if (placement._tag === "Infeasible") {
    return { _tag: "Refuse", error: new ModelInfeasible({ model: model.id, reason: placement.reason }) }
  }
  if (placement._tag === "Unavailable") {
    // Models still loading (or unloading) block only for a moment: wait for them, within the load
    // timeout, rather than refuse a request the fleet can serve shortly. Only on nodes that could
    // take it: another node's long drain is no reason to wait.
    if (transientOn(model, snapshot) && snapshot.now - ask.started < settings.loadTimeoutMs) {
      return { _tag: "Wait", node: undefined, reason: placement.reason }
    }
    return {
      _tag: "Refuse",
      error: new ModelUnavailable({ model: model.id, state: "unavailable", detail: placement.reason })
    }
  }
  const node = fleet.get(placement.node)!
  const step = swapOrWait(
    placement.evict.map((victim) => {
      const m = node.models.find((x) => x.id === victim)
      return {
        id: victim,
        inFlight: snapshot.inFlight(node.name, victim) + (m?.in_flight ?? 0),
        loadedAt: m?.loaded_at ? Date.parse(m.loaded_at) : 0
      }
    }),
    snapshot.now,
    ask.swapDeadline,
    settings.minResidentMs
  )
  if (step._tag === "Wait") {
    return { _tag: "Wait", node: node.name, reason: `victims busy or just loaded: ${step.blocking.join(", ")}` }
  }
  return { _tag: "Load", node: node.name, group: placement.group, evict: placement.evict, requiredMb: required }
}
