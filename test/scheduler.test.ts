/**
 * planLoad (Scheduler.ts) as a pure function of a snapshot: properties over random fleets,
 * reservations, claims and in-flight counts.
 */
import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import type { NeuronModel } from "../src/domain/contract.js"
import { buildCatalogue } from "../src/gateway/Catalogue.js"
import type { ModelProfile } from "../src/gateway/GatewayConfig.js"
import { residencyPriority } from "../src/gateway/Placement.js"
import type { FleetState, NodeState } from "../src/gateway/Poller.js"
import {
  type Plan,
  planLoad,
  requiredMb,
  type Reservation,
  reservedOn,
  type SchedulerSettings,
  type Snapshot
} from "../src/gateway/Scheduler.js"

const NOW = 10_000_000
const MIN_RESIDENT_MS = 30_000
const IDS = ["m0", "m1", "m2", "m3", "m4"]
const NODES = ["n0", "n1", "n2"]

const arbModel = (id: string) =>
  fc.record({
    status: fc.constantFrom(
      "available",
      "available",
      "loaded",
      "loaded",
      "loaded",
      "loading",
      "unloading",
      "failed",
      "recovering"
    ),
    mb: fc.integer({ min: 10, max: 600 }),
    inFlight: fc.integer({ min: 0, max: 2 }),
    young: fc.boolean()
  }).map(({ inFlight, mb, status, young }): NeuronModel => ({
    id,
    status: status as NeuronModel["status"],
    error: null,
    device: null,
    size_bytes: mb * 1024 * 1024,
    memory_estimate_mb: mb,
    context_limit: 2048,
    capabilities: [],
    in_flight: status === "loaded" ? inFlight : 0,
    queue_depth: 0,
    loaded_at: status === "available" ? null : new Date(NOW - (young ? 1000 : 3_600_000)).toISOString(),
    last_used_at: null
  }))

const arbNode = (name: string) =>
  fc.record({
    healthy: fc.integer({ min: 0, max: 5 }).map((x) => x > 0),
    seen: fc.integer({ min: 0, max: 5 }).map((x) => x > 0),
    total: fc.integer({ min: 200, max: 1500 }),
    freeShare: fc.double({ min: 0, max: 0.6, noNaN: true }),
    models: fc.subarray(IDS, { minLength: 2 }).chain((ids) => fc.tuple(...ids.map(arbModel)))
  }).map(({ freeShare, healthy, models, seen, total }): NodeState => ({
    name,
    endpoint: { name, endpoint: `http://${name}`, token: undefined },
    healthy: healthy && seen,
    misses: 0,
    status: "ok",
    lastSeen: seen ? NOW - 1000 : undefined,
    lastError: undefined,
    discovery: undefined,
    models,
    devices: [{
      id: "gpu0",
      kind: "cuda",
      name: "gpu",
      totalMb: total,
      freeMb: Math.floor(total * freeShare),
      usedMb: 0
    }]
  }))

const arbProfile = (id: string) =>
  fc.record({
    priority: fc.option(fc.constantFrom(50, 100, 100, 200), { nil: undefined }),
    pinnedOn: fc.oneof(
      { weight: 8, arbitrary: fc.constant(undefined) },
      { weight: 1, arbitrary: fc.constantFrom(...NODES) }
    )
  }).map(({ pinnedOn, priority }): ModelProfile =>
    ({
      id,
      ...(priority !== undefined ? { residency_priority: priority } : {}),
      ...(pinnedOn !== undefined ? { pinned_on: pinnedOn } : {})
    }) as ModelProfile
  )

interface World {
  readonly fleet: FleetState
  readonly profiles: ReadonlyArray<ModelProfile>
  readonly target: string
  readonly reserved: ReadonlyMap<string, ReadonlyMap<string, Reservation>>
  readonly claimed: ReadonlySet<string>
  readonly inFlight: ReadonlyMap<string, number>
  readonly waitedMs: number
  readonly strategy: "lru" | "priority"
}

const k = (node: string, model: string) => `${node}/${model}`

const arbWorld = (quiet: boolean): fc.Arbitrary<World> =>
  fc.record({
    nodes: fc.tuple(...NODES.map(arbNode)),
    profiles: fc.tuple(...IDS.map(arbProfile)),
    target: fc.constantFrom(...IDS),
    reserved: quiet
      ? fc.constant([] as Array<[string, string, number]>)
      : fc.array(fc.tuple(fc.constantFrom(...NODES), fc.constantFrom(...IDS), fc.integer({ min: 1, max: 300 })), {
        maxLength: 1
      }),
    claimed: quiet
      ? fc.constant([] as Array<string>)
      : fc.array(fc.constantFrom(...NODES.flatMap((n) => IDS.map((m) => k(n, m)))), { maxLength: 2 }),
    inFlight: quiet ? fc.constant([] as Array<[string, number]>) : fc.array(
      fc.tuple(fc.constantFrom(...NODES.flatMap((n) => IDS.map((m) => k(n, m)))), fc.integer({ min: 1, max: 3 })),
      { maxLength: 3 }
    ),
    waitedMs: fc.integer({ min: 0, max: 120_000 }),
    strategy: fc.constantFrom("lru" as const, "priority" as const)
  }).map(({ claimed, inFlight, nodes, profiles, reserved, strategy, target, waitedMs }) => {
    const byNode = new Map<string, Map<string, Reservation>>()
    for (const [node, model, mb] of reserved) {
      byNode.set(node, (byNode.get(node) ?? new Map()).set(model, { mb, group: "gpu0" }))
    }
    const quietNodes = quiet
      ? nodes.map((n) => ({
        ...n,
        models: n.models.map((m) => ({
          ...m,
          status: m.status === "loading" || m.status === "unloading" ? "loaded" as const : m.status,
          in_flight: 0,
          loaded_at: m.loaded_at === null ? null : new Date(NOW - 3_600_000).toISOString()
        }))
      }))
      : nodes
    return {
      fleet: new Map(quietNodes.map((n) => [n.name, n])),
      profiles,
      target,
      reserved: byNode,
      claimed: new Set(claimed),
      inFlight: new Map(inFlight),
      waitedMs,
      strategy
    }
  })

const plan = (w: World): Plan => {
  const settings: SchedulerSettings = {
    profiles: w.profiles,
    strategy: w.strategy,
    minResidentMs: MIN_RESIDENT_MS,
    loadTimeoutMs: 60_000
  }
  const snapshot: Snapshot = {
    fleet: w.fleet,
    reserved: w.reserved,
    claimed: (n, m) => w.claimed.has(k(n, m)),
    inFlight: (n, m) => w.inFlight.get(k(n, m)) ?? 0,
    lastUse: () => 0,
    now: NOW
  }
  const model = buildCatalogue(w.profiles, w.fleet).get(w.target)!
  return planLoad({ model, started: NOW - w.waitedMs, swapDeadline: NOW - w.waitedMs + 30_000 }, snapshot, settings)
}

const profileOf = (w: World, id: string) => w.profiles.find((p) => p.id === id)!

describe("planLoad", () => {
  it.prop("never evicts a pinned, higher-class, unsettled or claimed model", [arbWorld(false)], ([w]) => {
    const p = plan(w)
    if (p._tag !== "Load") return
    const node = w.fleet.get(p.node)!
    const own = residencyPriority(profileOf(w, w.target))
    for (const victim of p.evict) {
      const profile = profileOf(w, victim)
      expect(profile.pinned_on).not.toBe(p.node)
      expect(residencyPriority(profile)).toBeLessThanOrEqual(own)
      expect(node.models.find((m) => m.id === victim)?.status).toBe("loaded")
      expect(w.claimed.has(k(p.node, victim))).toBe(false)
      expect(victim).not.toBe(w.target)
    }
  }, { fastCheck: { numRuns: 400 } })

  it.prop("plans only onto a healthy node with the file (the pinned one, when pinned)", [arbWorld(false)], ([w]) => {
    const p = plan(w)
    if (p._tag !== "Load") return
    const node = w.fleet.get(p.node)!
    expect(node.healthy).toBe(true)
    expect(node.models.some((m) => m.id === w.target && m.status !== "failed")).toBe(true)
    const pinned = profileOf(w, w.target).pinned_on
    if (pinned !== undefined) expect(p.node).toBe(pinned)
  }, { fastCheck: { numRuns: 400 } })

  it.prop("a plan's memory fits after its evictions (other loads' reservations counted)", [arbWorld(false)], ([w]) => {
    const p = plan(w)
    if (p._tag !== "Load") return
    const node = w.fleet.get(p.node)!
    const free = node.devices.reduce((s, d) => s + d.freeMb, 0) - reservedOn(w.reserved, p.node)
    const freed = p.evict.reduce((s, id) => s + (node.models.find((m) => m.id === id)?.memory_estimate_mb ?? 0), 0)
    expect(p.requiredMb).toBe(requiredMb(buildCatalogue(w.profiles, w.fleet).get(w.target)!, w.fleet))
    expect(Math.max(0, free) + freed).toBeGreaterThanOrEqual(p.requiredMb)
  }, { fastCheck: { numRuns: 400 } })

  it.prop(
    "waits only when something transient could change the answer",
    [arbWorld(true)],
    ([w]) => {
      // No reservations, claims, requests in flight, loads or unloads under way, young models.
      expect(plan(w)._tag).not.toBe("Wait")
    }
  )

  it("the generated worlds cover loads with evictions, waits and refusals", () => {
    const plans = fc.sample(arbWorld(false), { numRuns: 2000, seed: 10 }).map(plan)
    expect(plans.some((p) => p._tag === "Load" && p.evict.length > 0)).toBe(true)
    expect(plans.some((p) => p._tag === "Wait")).toBe(true)
    expect(plans.some((p) => p._tag === "Refuse")).toBe(true)
  })

  it.prop("is deterministic", [arbWorld(false)], ([w]) => {
    const a = plan(w)
    const b = plan(w)
    expect(a._tag).toBe(b._tag)
    if (a._tag === "Load" && b._tag === "Load") expect([a.node, a.evict]).toEqual([b.node, b.evict])
  })

  it("waits for a busy victim until the swap deadline, then swaps", () => {
    const node = (inFlight: number): NodeState => ({
      name: "n0",
      endpoint: { name: "n0", endpoint: "http://n0", token: undefined },
      healthy: true,
      misses: 0,
      status: "ok",
      lastSeen: NOW,
      lastError: undefined,
      discovery: undefined,
      models: [
        {
          id: "a",
          status: "loaded",
          error: null,
          device: null,
          size_bytes: 0,
          memory_estimate_mb: 400,
          context_limit: 2048,
          capabilities: [],
          in_flight: inFlight,
          queue_depth: 0,
          loaded_at: new Date(NOW - 3_600_000).toISOString(),
          last_used_at: null
        },
        {
          id: "b",
          status: "available",
          error: null,
          device: null,
          size_bytes: 0,
          memory_estimate_mb: 400,
          context_limit: 2048,
          capabilities: [],
          in_flight: 0,
          queue_depth: 0,
          loaded_at: null,
          last_used_at: null
        }
      ],
      devices: [{ id: "gpu0", kind: "cuda", name: "gpu", totalMb: 500, freeMb: 100, usedMb: 400 }]
    })
    const fleet = new Map([["n0", node(1)]])
    const settings: SchedulerSettings = { profiles: [], strategy: "lru", minResidentMs: 0, loadTimeoutMs: 60_000 }
    const snapshot: Snapshot = {
      fleet,
      reserved: new Map(),
      claimed: () => false,
      inFlight: () => 0,
      lastUse: () => 0,
      now: NOW
    }
    const model = buildCatalogue([], fleet).get("b")!
    expect(planLoad({ model, started: NOW, swapDeadline: NOW + 1 }, snapshot, settings)).toMatchObject({
      _tag: "Wait",
      node: "n0"
    })
    expect(planLoad({ model, started: NOW, swapDeadline: NOW }, snapshot, settings)).toEqual({
      _tag: "Load",
      node: "n0",
      group: "gpu0",
      evict: ["a"],
      requiredMb: 400
    })
    const claimed = { ...snapshot, claimed: (_: string, m: string) => m === "b" }
    expect(planLoad({ model, started: NOW, swapDeadline: NOW }, claimed, settings)._tag).toBe("Wait")
  })

  it("plans per device group: residents and other loads' reservations count only on their own group", () => {
    const model = (id: string, status: NeuronModel["status"], group: string | null, mb: number): NeuronModel => ({
      id,
      status,
      error: null,
      device: group,
      group,
      size_bytes: 0,
      memory_estimate_mb: mb,
      context_limit: 2048,
      capabilities: [],
      in_flight: 0,
      queue_depth: 0,
      loaded_at: status === "loaded" ? new Date(NOW - 3_600_000).toISOString() : null,
      last_used_at: null
    })
    const pair = "cuda:0+cuda:1"
    const device = (id: string, group: string, freeMb: number) =>
      ({ id, group, kind: "cuda", name: "gpu", totalMb: 500, freeMb, usedMb: 500 - freeMb }) as const
    const node: NodeState = {
      name: "n0",
      endpoint: { name: "n0", endpoint: "http://n0", token: undefined },
      healthy: true,
      misses: 0,
      status: "ok",
      lastSeen: NOW,
      lastError: undefined,
      discovery: undefined,
      models: [
        model("old", "loaded", "cuda:2", 450),
        model("mid", "loaded", pair, 600),
        model("big", "available", null, 700)
      ],
      devices: [device("cuda:0", pair, 200), device("cuda:1", pair, 200), device("cuda:2", "cuda:2", 50)]
    }
    const fleet = new Map([["n0", node]])
    const settings: SchedulerSettings = { profiles: [], strategy: "lru", minResidentMs: 0, loadTimeoutMs: 60_000 }
    const snapshot: Snapshot = {
      fleet,
      reserved: new Map(),
      claimed: () => false,
      inFlight: () => 0,
      lastUse: (_, m) => (m === "old" ? 1 : 2),
      now: NOW
    }
    const big = buildCatalogue([], fleet).get("big")!
    // 700 MB fits only the pair (1000 MB); 400 free there, so "mid" goes, not the older "old" on cuda:2.
    expect(planLoad({ model: big, started: NOW, swapDeadline: NOW }, snapshot, settings)).toEqual({
      _tag: "Load",
      node: "n0",
      group: pair,
      evict: ["mid"],
      requiredMb: 700
    })
    // A load in flight on cuda:2 takes nothing from the pair; one on the pair does.
    const elsewhere = new Map([["n0", new Map([["x", { mb: 50, group: "cuda:2" }]])]])
    expect(planLoad({ model: big, started: NOW, swapDeadline: NOW }, { ...snapshot, reserved: elsewhere }, settings))
      .toMatchObject({ _tag: "Load", group: pair, evict: ["mid"] })
    const small = model("small", "available", null, 300)
    const withSmall = new Map([["n0", { ...node, models: [...node.models, small] }]])
    const smallModel = buildCatalogue([], withSmall).get("small")!
    const fresh = { ...snapshot, fleet: withSmall }
    expect(planLoad({ model: smallModel, started: NOW, swapDeadline: NOW }, fresh, settings)).toMatchObject({
      _tag: "Load",
      group: pair,
      evict: []
    })
    const onPair = new Map([["n0", new Map([["x", { mb: 200, group: pair }]])]])
    // 200 of the pair's 400 free MB are spoken for: 300 MB no longer fit without an eviction there.
    expect(planLoad({ model: smallModel, started: NOW, swapDeadline: NOW }, { ...fresh, reserved: onPair }, settings))
      .toMatchObject({ _tag: "Load", group: pair, evict: ["mid"] })
  })
})
