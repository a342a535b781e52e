/**
 * Placement: where to cold-load a model (a node and one of its device groups) and which residents
 * to evict there first, as pure functions. A device group is the devices one neuron worker owns
 * (`[[device_groups]]`, else each GPU alone): a model loaded there is split across the group's
 * devices by their free memory (llama.cpp's default split), so it fits a group when the group's
 * free memory adds up to it, and evicting a model frees memory only on its own group's devices.
 * Nothing is pooled across groups. The Evictor carries out the answer and re-checks free memory
 * after each unload; this module only decides.
 */
export type Strategy = "lru" | "priority"

export interface PlacementModel {
  readonly id: string
  /** Memory it needs when loaded. */
  readonly requiredMb: number
  /** Devices it must span (default 1; values below 1 count as 1). */
  readonly minDevices: number
  /** Each counted device must have at least this much total memory, when set. */
  readonly minDeviceVramMb: number | undefined
  /** Node name: only that node is considered. */
  readonly pinnedOn: string | undefined
  /** Residency class (see `residencyPriority`). */
  readonly priority: number
}

export interface ResidentModel {
  readonly id: string
  /** The device group it occupies. */
  readonly group: string
  readonly footprintMb: number
  readonly priority: number
  /** Pinned to this node: never evicted. */
  readonly pinned: boolean
  /** ms epoch (0 = never). */
  readonly lastUsed: number
  /** Requests running on it now. */
  readonly inFlight: number
}

export interface PlacementDevice {
  readonly id: string
  /** Its device group (absent: a group of its own, as a neuron without groups runs). */
  readonly group?: string | undefined
  readonly totalMb: number
  readonly freeMb: number
}

export interface PlacementNode {
  readonly name: string
  /**
   * The node has answered a poll at least once. A node never seen is unknown, not empty: it may
   * have the model's file, so it keeps the model Unavailable (503) rather than Infeasible (404).
   */
  readonly known: boolean
  readonly healthy: boolean
  /** The model's file is on this node (only such nodes can load it). */
  readonly hasModel: boolean
  readonly devices: ReadonlyArray<PlacementDevice>
  readonly resident: ReadonlyArray<ResidentModel>
}

export type Placement =
  | {
    readonly _tag: "Place"
    readonly node: string
    /** The device group on that node. */
    readonly group: string
    /** Ids to unload first (all on that group), in victim order. */
    readonly evict: ReadonlyArray<string>
    /** The group's free memory now. */
    readonly freeMb: number
    /** Its free memory once the victims are unloaded. */
    readonly freeAfterMb: number
  }
  /** No node could ever hold it (and every node has been seen): the caller answers 404. */
  | { readonly _tag: "Infeasible"; readonly reason: string }
  /** It could fit, but not now: the caller answers 503 + Retry-After. */
  | { readonly _tag: "Unavailable"; readonly reason: string; readonly retryAfterSecs: number }

const RETRY_AFTER_SECS = 5

/** Explicit `residency_priority`; else 1000 when pinned somewhere; else 100. */
export const residencyPriority = (
  profile: { readonly residency_priority?: number | undefined; readonly pinned_on?: string | undefined }
): number =>
  profile.residency_priority !== undefined
    ? profile.residency_priority
    : profile.pinned_on !== undefined
    ? 1000
    : 100

const byId = (a: ResidentModel, b: ResidentModel) => a.id < b.id ? -1 : a.id > b.id ? 1 : a.footprintMb - b.footprintMb

const lruOrder = (a: ResidentModel, b: ResidentModel) => a.lastUsed - b.lastUsed || byId(a, b)

const compareVictims = (strategy: Strategy) => (a: ResidentModel, b: ResidentModel): number => {
  const busy = Number(a.inFlight > 0) - Number(b.inFlight > 0)
  if (busy !== 0) return busy
  if (strategy === "priority" && a.priority !== b.priority) return a.priority - b.priority
  return lruOrder(a, b)
}

/**
 * The order in which residents should go: `lru` least recently used first, `priority` lowest class
 * first and then LRU; either way busy models (requests in flight) after every idle one; id breaks ties.
 */
export const victimOrder = (
  resident: ReadonlyArray<ResidentModel>,
  strategy: Strategy
): ReadonlyArray<ResidentModel> => [...resident].sort(compareVictims(strategy))

/** Sum of the `count` largest sizes in `sizes[from..]`. */
const largestSum = (sizes: ReadonlyArray<number>, from: number, count: number): number =>
  count <= 0 ? 0 : sizes.slice(from).sort((a, b) => b - a).slice(0, count).reduce((s, x) => s + x, 0)

/**
 * The fewest candidates whose footprints add up to `neededMb`, and among sets of that size the one
 * first in victim order (sorted index lists compared lexicographically); `[]` when nothing is
 * needed, `undefined` when even all of them are not enough. The caller passes only models it may
 * evict.
 *
 * Not brute force: the smallest size is the least k whose k largest footprints suffice, and the
 * lexicographically first set of that size is built index by index, taking at each step the
 * earliest candidate that still leaves a sufficient completion (the largest ones after it).
 * Polynomial in the number of residents.
 */
export const chooseVictims = (
  candidates: ReadonlyArray<ResidentModel>,
  neededMb: number,
  strategy: Strategy
): ReadonlyArray<ResidentModel> | undefined => {
  if (neededMb <= 0) return []
  const ordered = victimOrder(candidates, strategy)
  const sizes = ordered.map((r) => r.footprintMb)
  for (let k = 1; k <= ordered.length; k++) {
    if (largestSum(sizes, 0, k) < neededMb) continue
    const picked: Array<number> = []
    let freed = 0
    let from = 0
    for (let slot = 0; slot < k; slot++) {
      const rest = k - slot - 1
      let chosen = -1
      for (let i = from; i <= sizes.length - rest - 1; i++) {
        if (freed + sizes[i]! + largestSum(sizes, i + 1, rest) >= neededMb) {
          chosen = i
          break
        }
      }
      if (chosen < 0) break
      picked.push(chosen)
      freed += sizes[chosen]!
      from = chosen + 1
    }
    // Only floating-point rounding between the two sums can leave a slot unfilled: try one more.
    if (picked.length === k) return picked.map((i) => ordered[i]!)
  }
  return undefined
}

const sum = (xs: ReadonlyArray<number>) => xs.reduce((s, x) => s + x, 0)

export const groupOf = (d: PlacementDevice) => d.group ?? d.id

export interface DeviceGroup {
  readonly id: string
  readonly devices: ReadonlyArray<PlacementDevice>
}

/** A node's devices by group, groups in name order. */
export const groupsOf = (node: PlacementNode): Array<DeviceGroup> => {
  const byId = new Map<string, Array<PlacementDevice>>()
  for (const d of node.devices) byId.set(groupOf(d), [...(byId.get(groupOf(d)) ?? []), d])
  return [...byId].map(([id, devices]) => ({ id, devices: devices.sort((a, b) => nameOrder(a.id, b.id)) }))
    .sort((a, b) => nameOrder(a.id, b.id))
}

const freeOf = (group: DeviceGroup) => sum(group.devices.map((d) => d.freeMb))
const totalOf = (group: DeviceGroup) => sum(group.devices.map((d) => d.totalMb))

/**
 * A load of `requiredMb` split across a group's devices by their free memory (llama.cpp's
 * default split; evenly when none is free). Each share fits its device iff the sum fits.
 */
export const shares = (
  requiredMb: number,
  devices: ReadonlyArray<{ readonly id: string; readonly freeMb: number }>
) => {
  const free = sum(devices.map((d) => Math.max(0, d.freeMb)))
  return devices.map((d) => ({
    id: d.id,
    mb: free > 0 ? requiredMb * Math.max(0, d.freeMb) / free : requiredMb / devices.length
  }))
}

const describeGroup = (group: DeviceGroup) => group.devices.map((d) => `${d.id} ${d.totalMb} MB`).join(" + ")

/** Why `group` can never hold `model`, or undefined when it is capable. */
const groupIncapability = (model: PlacementModel, group: DeviceGroup): string | undefined => {
  const minDevices = Math.max(1, model.minDevices)
  const minVram = model.minDeviceVramMb
  const qualifying = group.devices.filter((d) => minVram === undefined || d.totalMb >= minVram).length
  if (qualifying < minDevices) {
    const each = minVram === undefined ? "" : ` of >= ${minVram} MB`
    return `group ${group.id} has ${qualifying} device(s)${each}, needs ${minDevices}`
  }
  const total = totalOf(group)
  if (total < model.requiredMb) {
    return `group ${group.id} (${describeGroup(group)}) has ${total} MB in total, needs ${model.requiredMb} MB`
  }
  return undefined
}

/** Why `node` can never hold `model` (every group's reason), or undefined when a group is capable. */
const incapability = (model: PlacementModel, node: PlacementNode): string | undefined => {
  if (!node.hasModel) return `${node.name}: does not have the model's file`
  const groups = groupsOf(node)
  if (groups.length === 0) return `${node.name}: has no devices`
  const reasons = groups.map((g) => groupIncapability(model, g))
  if (reasons.some((r) => r === undefined)) return undefined
  return `${node.name}: ${reasons.join("; ")}`
}

const nameOrder = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0)

interface Candidate {
  readonly node: PlacementNode
  readonly group: DeviceGroup
  readonly freeMb: number
  readonly victims: ReadonlyArray<ResidentModel>
}

/** Why a capable group of a healthy node cannot take the model now, even after every eviction it may make. */
const blockage = (
  model: PlacementModel,
  node: PlacementNode,
  group: DeviceGroup,
  eligible: ReadonlyArray<ResidentModel>
) => {
  const ids = (rs: ReadonlyArray<ResidentModel>) => rs.map((r) => r.id).sort(nameOrder)
  const others = node.resident.filter((r) => r.id !== model.id && r.group === group.id)
  const pinned = ids(others.filter((r) => r.pinned))
  const higher = ids(others.filter((r) => !r.pinned && r.priority > model.priority))
  const busy = ids(eligible.filter((r) => r.inFlight > 0))
  const parts = [
    `needs ${model.requiredMb} MB, ${freeOf(group)} MB free, evictable models hold ${
      sum(eligible.map((r) => r.footprintMb))
    } MB`
  ]
  if (higher.length > 0) parts.push(`higher-class models in the way: ${higher.join(", ")}`)
  if (pinned.length > 0) parts.push(`pinned models in the way: ${pinned.join(", ")}`)
  if (busy.length > 0) parts.push(`evictable but busy: ${busy.join(", ")}`)
  return `${node.name} group ${group.id}: ${parts.join("; ")}`
}

/**
 * The node and device group to load `model` on, and what to evict there first (only models on
 * that group: evicting elsewhere frees nothing there). Capable groups of healthy nodes are
 * ranked: the pinned node, fits in free memory now, fits after evicting only what the model may
 * displace, most free memory, node name, group name. Infeasible only when every considered node
 * has been seen and none has a capable group; a node never seen may be the one with the file.
 */
export const place = (
  model: PlacementModel,
  nodes: ReadonlyArray<PlacementNode>,
  strategy: Strategy
): Placement => {
  const pinnedOn = model.pinnedOn
  const considered = pinnedOn === undefined ? nodes : nodes.filter((n) => n.name === pinnedOn)
  if (pinnedOn !== undefined && considered.length === 0) {
    return { _tag: "Infeasible", reason: `${model.id} is pinned on ${pinnedOn}, which is not a known node` }
  }
  if (considered.length === 0) return { _tag: "Infeasible", reason: `no nodes are known, so ${model.id} fits nowhere` }

  const unseen = considered.filter((n) => !n.known).map((n) => n.name).sort(nameOrder)
  const seen = considered.filter((n) => n.known)
  const incapable = [...seen].sort((a, b) => nameOrder(a.name, b.name)).flatMap((n) => {
    const why = incapability(model, n)
    return why === undefined ? [] : [why]
  })
  const capable = seen.filter((n) => incapability(model, n) === undefined)
    .sort((a, b) => nameOrder(a.name, b.name))
  if (capable.length === 0 && unseen.length === 0) {
    return { _tag: "Infeasible", reason: `no node can ever hold ${model.id} (${incapable.join("; ")})` }
  }

  const blocked: Array<string> = []
  const candidates: Array<Candidate> = []
  for (const node of capable) {
    if (!node.healthy) continue
    for (const group of groupsOf(node)) {
      if (groupIncapability(model, group) !== undefined) continue
      const free = freeOf(group)
      const eligible = node.resident.filter((r) =>
        r.group === group.id && !r.pinned && r.priority <= model.priority && r.id !== model.id
      )
      const victims = chooseVictims(eligible, model.requiredMb - free, strategy)
      if (victims === undefined) blocked.push(blockage(model, node, group, eligible))
      else candidates.push({ node, group, freeMb: free, victims })
    }
  }

  const best = candidates.sort((a, b) =>
    Number(b.node.name === pinnedOn) - Number(a.node.name === pinnedOn) ||
    Number(a.victims.length > 0) - Number(b.victims.length > 0) ||
    b.freeMb - a.freeMb ||
    nameOrder(a.node.name, b.node.name) ||
    nameOrder(a.group.id, b.group.id)
  )[0]
  if (best !== undefined) {
    return {
      _tag: "Place",
      node: best.node.name,
      group: best.group.id,
      evict: best.victims.map((r) => r.id),
      freeMb: best.freeMb,
      freeAfterMb: best.freeMb + sum(best.victims.map((r) => r.footprintMb))
    }
  }

  const unhealthy = capable.filter((n) => !n.healthy).map((n) => n.name)
  const parts = [...blocked]
  if (unhealthy.length > 0) parts.push(`unhealthy: ${unhealthy.join(", ")}`)
  if (unseen.length > 0) parts.push(`no answer yet from ${unseen.join(", ")}`)
  return {
    _tag: "Unavailable",
    reason: `no capable node can take ${model.id} now (${parts.join("; ")})`,
    retryAfterSecs: RETRY_AFTER_SECS
  }
}

export interface SwapVictim {
  readonly id: string
  /** Requests running on it (this gateway's count plus the neuron's). */
  readonly inFlight: number
  /** ms epoch of its load (0 = unknown). */
  readonly loadedAt: number
}

export type SwapStep =
  | { readonly _tag: "Swap" }
  /** Victims still serving or loaded moments ago: plan again shortly. */
  | { readonly _tag: "Wait"; readonly blocking: ReadonlyArray<string> }

/**
 * The thrash guard: a placement's victims that are busy, or younger than `minResidentMs`, keep
 * their node until the waiter's `swapDeadline` (ms epoch) passes; meanwhile their own requests
 * are served as a batch. Past the deadline, or with no such victim, swap now.
 */
export const swapOrWait = (
  victims: ReadonlyArray<SwapVictim>,
  now: number,
  swapDeadline: number,
  minResidentMs: number
): SwapStep => {
  const blocking = victims
    .filter((v) => v.inFlight > 0 || (v.loadedAt > 0 && now - v.loadedAt < minResidentMs))
    .map((v) => v.id)
  return blocking.length > 0 && now < swapDeadline ? { _tag: "Wait", blocking } : { _tag: "Swap" }
}
