import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import type { Placement, PlacementModel, PlacementNode, ResidentModel, Strategy } from "../src/gateway/Placement.js"
import { chooseVictims, place, residencyPriority, shares, swapOrWait, victimOrder } from "../src/gateway/Placement.js"

const model = (fields: Partial<PlacementModel> = {}): PlacementModel => ({
  id: "m",
  requiredMb: 8000,
  minDevices: 1,
  minDeviceVramMb: undefined,
  pinnedOn: undefined,
  priority: 100,
  ...fields
})

const resident = (id: string, fields: Partial<ResidentModel> = {}): ResidentModel => ({
  id,
  group: "0",
  footprintMb: 4000,
  priority: 100,
  pinned: false,
  lastUsed: 0,
  inFlight: 0,
  ...fields
})

/** A healthy polled node holding the model's file, with one device of `totalMb` and `freeMb`. */
const node = (
  name: string,
  fields: Partial<PlacementNode> & { readonly totalMb?: number; readonly freeMb?: number } = {}
): PlacementNode => {
  const { freeMb = 24000, totalMb = 24000, ...rest } = fields
  return {
    name,
    known: true,
    healthy: true,
    hasModel: true,
    devices: [{ id: "0", totalMb, freeMb }],
    resident: [],
    ...rest
  }
}

const expectPlace = (placement: Placement) => {
  if (placement._tag !== "Place") expect.fail(`expected Place, got ${JSON.stringify(placement)}`)
  return placement
}

const expectTag = <T extends Placement["_tag"]>(placement: Placement, tag: T) => {
  if (placement._tag !== tag) expect.fail(`expected ${tag}, got ${JSON.stringify(placement)}`)
  return placement as Extract<Placement, { _tag: T }>
}

describe("residencyPriority", () => {
  it("takes the explicit class, else 1000 when pinned, else 100", () => {
    expect(residencyPriority({ residency_priority: 7, pinned_on: "a" })).toBe(7)
    expect(residencyPriority({ residency_priority: 0 })).toBe(0)
    expect(residencyPriority({ pinned_on: "a" })).toBe(1000)
    expect(residencyPriority({})).toBe(100)
  })
})

describe("victimOrder", () => {
  const residents = [
    resident("busy-old", { lastUsed: 1, inFlight: 2, priority: 0 }),
    resident("new-low", { lastUsed: 50, priority: 10 }),
    resident("old-high", { lastUsed: 5, priority: 100 }),
    resident("b-tie", { lastUsed: 20, priority: 100 }),
    resident("a-tie", { lastUsed: 20, priority: 100 })
  ]

  it("lru: least recently used first, ties by id, busy last", () => {
    expect(victimOrder(residents, "lru").map((r) => r.id)).toEqual([
      "old-high",
      "a-tie",
      "b-tie",
      "new-low",
      "busy-old"
    ])
  })

  it("priority: lowest class first, then lru, busy last", () => {
    expect(victimOrder(residents, "priority").map((r) => r.id)).toEqual([
      "new-low",
      "old-high",
      "a-tie",
      "b-tie",
      "busy-old"
    ])
  })
})

describe("chooseVictims", () => {
  it("needs none when nothing is needed, and gives up when all are not enough", () => {
    expect(chooseVictims([resident("a")], 0, "lru")).toEqual([])
    expect(chooseVictims([resident("a"), resident("b")], 8001, "lru")).toBeUndefined()
    expect(chooseVictims([], 1, "lru")).toBeUndefined()
  })

  it("stays fast with 16 candidates and no early answer", () => {
    const candidates = Array.from({ length: 16 }, (_, i) => resident(`r${i}`, { footprintMb: 1000, lastUsed: i }))
    const started = performance.now()
    const victims = chooseVictims(candidates, 15_500, "lru")
    expect(victims?.map((r) => r.id)).toEqual(candidates.map((r) => r.id))
    expect(performance.now() - started).toBeLessThan(50)
  })
})

describe("place (examples)", () => {
  it("fits in free memory without evicting", () => {
    const placement = expectPlace(
      place(model(), [node("a", { freeMb: 10000, resident: [resident("x", { footprintMb: 14000 })] })], "lru")
    )
    expect(placement).toEqual({ _tag: "Place", node: "a", group: "0", evict: [], freeMb: 10000, freeAfterMb: 10000 })
  })

  it("evicts the least recently used model", () => {
    const a = node("a", {
      freeMb: 4000,
      resident: [
        resident("recent", { lastUsed: 300 }),
        resident("oldest", { lastUsed: 100 }),
        resident("middle", { lastUsed: 200 })
      ]
    })
    expect(expectPlace(place(model(), [a], "lru"))).toEqual({
      _tag: "Place",
      node: "a",
      group: "0",
      evict: ["oldest"],
      freeMb: 4000,
      freeAfterMb: 8000
    })
  })

  it("priority strategy takes the lowest class first, lru the oldest", () => {
    const a = node("a", {
      freeMb: 4000,
      resident: [resident("old-100", { lastUsed: 1, priority: 100 }), resident("new-10", { lastUsed: 9, priority: 10 })]
    })
    expect(expectPlace(place(model(), [a], "priority")).evict).toEqual(["new-10"])
    expect(expectPlace(place(model(), [a], "lru")).evict).toEqual(["old-100"])
  })

  it("never evicts a higher class for a lower one: Unavailable", () => {
    const a = node("a", { freeMb: 4000, resident: [resident("vip", { priority: 200 })] })
    const placement = expectTag(place(model({ priority: 100 }), [a], "lru"), "Unavailable")
    expect(placement.retryAfterSecs).toBeGreaterThan(0)
    expect(placement.reason).toContain("vip")
  })

  it("equal classes swap both ways", () => {
    const nodeWith = (id: string) => node("a", { freeMb: 4000, resident: [resident(id, { priority: 50 })] })
    const a = model({ id: "A", priority: 50 })
    const b = model({ id: "B", priority: 50 })
    expect(expectPlace(place(a, [nodeWith("B")], "lru")).evict).toEqual(["B"])
    expect(expectPlace(place(b, [nodeWith("A")], "lru")).evict).toEqual(["A"])
    expect(expectPlace(place(b, [nodeWith("A")], "priority")).evict).toEqual(["A"])
  })

  it("never evicts a pinned model, even of a lower class", () => {
    const a = node("a", { freeMb: 4000, resident: [resident("stay", { pinned: true, priority: 0 })] })
    const placement = expectTag(place(model({ priority: 1000 }), [a], "priority"), "Unavailable")
    expect(placement.reason).toContain("stay")
    const b = node("b", { freeMb: 1000, resident: [resident("go", { footprintMb: 8000 })] })
    expect(expectPlace(place(model({ priority: 1000 }), [a, b], "priority"))).toMatchObject({
      node: "b",
      evict: ["go"]
    })
  })

  it("puts a pinned model on its node, even when another has more free memory", () => {
    const nodes = [
      node("big", { freeMb: 24000 }),
      node("home", { freeMb: 2000, resident: [resident("x", { footprintMb: 8000 })] })
    ]
    expect(expectPlace(place(model({ pinnedOn: "home" }), nodes, "lru"))).toMatchObject({
      node: "home",
      evict: ["x"]
    })
    expectTag(place(model({ pinnedOn: "home" }), [nodes[0]!], "lru"), "Infeasible")
    expectTag(
      place(model({ pinnedOn: "home" }), [nodes[0]!, node("home", { healthy: false })], "lru"),
      "Unavailable"
    )
  })

  it("evicts a busy model only after every idle one", () => {
    const a = node("a", {
      freeMb: 0,
      resident: [
        resident("busy-oldest", { lastUsed: 1, inFlight: 1, priority: 0 }),
        resident("idle-new", { lastUsed: 100 })
      ]
    })
    expect(expectPlace(place(model({ requiredMb: 4000 }), [a], "lru")).evict).toEqual(["idle-new"])
    expect(expectPlace(place(model({ requiredMb: 4000 }), [a], "priority")).evict).toEqual(["idle-new"])
    expect(expectPlace(place(model({ requiredMb: 8000 }), [a], "lru")).evict).toEqual(["idle-new", "busy-oldest"])
  })

  it("evicts the fewest models: one big rather than two small older ones", () => {
    const a = node("a", {
      freeMb: 0,
      resident: [
        resident("small-1", { footprintMb: 4000, lastUsed: 1 }),
        resident("small-2", { footprintMb: 4000, lastUsed: 2 }),
        resident("big", { footprintMb: 8000, lastUsed: 3 })
      ]
    })
    expect(expectPlace(place(model({ requiredMb: 8000 }), [a], "lru"))).toEqual({
      _tag: "Place",
      node: "a",
      group: "0",
      evict: ["big"],
      freeMb: 0,
      freeAfterMb: 8000
    })
  })

  it("is Infeasible when no node has the file, none is big enough, or too few devices qualify", () => {
    const noFile = expectTag(place(model(), [node("a", { hasModel: false })], "lru"), "Infeasible")
    expect(noFile.reason).toContain("file")
    const small = expectTag(place(model({ requiredMb: 30000 }), [node("a")], "lru"), "Infeasible")
    expect(small.reason).toContain("30000")
    const twoDevices = expectTag(place(model({ minDevices: 2 }), [node("a")], "lru"), "Infeasible")
    expect(twoDevices.reason).toContain("device")
    const mixed = node("a", {
      devices: [
        { id: "0", group: "0+1", totalMb: 24000, freeMb: 24000 },
        { id: "1", group: "0+1", totalMb: 6000, freeMb: 6000 }
      ]
    })
    expectTag(place(model({ minDevices: 2, minDeviceVramMb: 8000 }), [mixed], "lru"), "Infeasible")
    expectPlace(place(model({ minDevices: 2, minDeviceVramMb: 6000 }), [mixed], "lru"))
    expectTag(place(model(), [], "lru"), "Infeasible")
    // Unhealthy does not make it Infeasible: an unhealthy capable node may come back.
    expectTag(place(model(), [node("a", { healthy: false })], "lru"), "Unavailable")
  })

  it("pools the devices of one group, never devices of different groups", () => {
    const group = node("a", {
      devices: [
        { id: "0", group: "0+1", totalMb: 12000, freeMb: 5000 },
        { id: "1", group: "0+1", totalMb: 12000, freeMb: 5000 }
      ]
    })
    expect(expectPlace(place(model({ requiredMb: 10000 }), [group], "lru"))).toMatchObject({
      group: "0+1",
      evict: [],
      freeMb: 10000
    })
    // The same cards as two groups (the default, one worker per GPU): 10 GB fits neither.
    const apart = node("a", {
      devices: [{ id: "0", totalMb: 12000, freeMb: 12000 }, { id: "1", totalMb: 12000, freeMb: 12000 }]
    })
    const infeasible = expectTag(place(model({ requiredMb: 20000 }), [apart], "lru"), "Infeasible")
    expect(infeasible.reason).toContain("group 0 (0 12000 MB) has 12000 MB in total, needs 20000 MB")
    expect(infeasible.reason).toContain("group 1 (1 12000 MB)")
  })

  it("evicts only on the group it places on", () => {
    const a = node("a", {
      devices: [
        { id: "0", totalMb: 24000, freeMb: 0 },
        { id: "1", group: "1+2", totalMb: 12000, freeMb: 2000 },
        { id: "2", group: "1+2", totalMb: 12000, freeMb: 2000 }
      ],
      resident: [
        resident("on-0", { group: "0", footprintMb: 24000, lastUsed: 1 }),
        resident("on-12", { group: "1+2", footprintMb: 20000, lastUsed: 2 })
      ]
    })
    // 22 GB: both groups could hold it after one eviction; 1+2 has more free memory, and its
    // victim is its own resident, though the model on GPU 0 is older.
    expect(expectPlace(place(model({ requiredMb: 22000 }), [a], "lru"))).toMatchObject({
      group: "1+2",
      evict: ["on-12"],
      freeMb: 4000,
      freeAfterMb: 24000
    })
    // Devices of >= 20 GB only: group 0 alone qualifies, and evicts there.
    expect(expectPlace(place(model({ requiredMb: 22000, minDeviceVramMb: 20000 }), [a], "lru"))).toMatchObject({
      group: "0",
      evict: ["on-0"],
      freeMb: 0,
      freeAfterMb: 24000
    })
  })

  it("prefers the most free memory, then the name", () => {
    const nodes = [node("a", { freeMb: 10000 }), node("c", { freeMb: 20000 }), node("b", { freeMb: 20000 })]
    expect(expectPlace(place(model(), nodes, "lru")).node).toBe("b")
    expect(expectPlace(place(model(), nodes.slice(0, 2), "lru")).node).toBe("c")
  })

  it("prefers a node where it fits now over one that needs an eviction", () => {
    const nodes = [
      node("a", { freeMb: 6000, resident: [resident("x")] }),
      node("z", { freeMb: 9000 })
    ]
    expect(expectPlace(place(model(), nodes, "lru"))).toMatchObject({ node: "z", evict: [] })
  })

  it("is Unavailable, not Infeasible, while a node that may have the file has never answered", () => {
    const silent = node("late", { known: false, healthy: false, hasModel: false, devices: [], resident: [] })
    const waiting = expectTag(place(model(), [node("a", { hasModel: false }), silent], "lru"), "Unavailable")
    expect(waiting.reason).toContain("no answer yet from late")
    expect(waiting.retryAfterSecs).toBeGreaterThan(0)
    expectTag(place(model({ pinnedOn: "late" }), [node("a"), silent], "lru"), "Unavailable")
    // A capable node that can take it now still wins, and once every node is seen, 404 as before.
    expect(expectPlace(place(model(), [node("a"), silent], "lru")).node).toBe("a")
    expectTag(place(model(), [node("a", { hasModel: false }), { ...silent, known: true }], "lru"), "Infeasible")
  })

  it("skips unhealthy nodes, and is Unavailable when only those could take it", () => {
    const nodes = [node("a", { healthy: false, freeMb: 24000 }), node("b", { freeMb: 9000 })]
    expect(expectPlace(place(model(), nodes, "lru")).node).toBe("b")
    const down = expectTag(place(model(), [nodes[0]!], "lru"), "Unavailable")
    expect(down.reason).toContain("unhealthy")
  })
})

// --- properties over random fleets ---------------------------------------------------------------

const CLASSES = [0, 50, 100, 1000] as const

const residentsArb = (nodeIndex: number) =>
  fc.array(
    fc.record({
      footprintMb: fc.integer({ min: 1, max: 10 }).map((x) => x * 1000),
      priority: fc.constantFrom(...CLASSES),
      pinned: fc.boolean().chain((b) => (b ? fc.boolean() : fc.constant(false))),
      lastUsed: fc.integer({ min: 0, max: 6 }),
      inFlight: fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, {
        weight: 1,
        arbitrary: fc.integer({ min: 1, max: 3 })
      })
    }),
    { maxLength: 8 }
  ).map((rs) => rs.map((r, i): ResidentModel => ({ id: `r${nodeIndex}-${i}`, group: "g", ...r })))

/** A node never polled: unhealthy, nothing known about it. */
const unseenArb = (index: number): fc.Arbitrary<PlacementNode> =>
  fc.constant({ name: `n${index}`, known: false, healthy: false, hasModel: false, devices: [], resident: [] })

const seenNodeArb = (index: number): fc.Arbitrary<PlacementNode> =>
  fc.record({
    known: fc.constant(true),
    healthy: fc.oneof({ weight: 4, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
    hasModel: fc.oneof({ weight: 5, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
    devices: fc.array(
      fc.integer({ min: 1, max: 24 }).chain((total) =>
        // Free memory skews low so that evictions are common.
        fc.oneof(fc.integer({ min: 0, max: Math.min(total, 4) }), fc.integer({ min: 0, max: total }))
          .map((free) => ({ totalMb: total * 1000, freeMb: free * 1000 }))
      ),
      { minLength: 1, maxLength: 3 }
    ),
    resident: residentsArb(index)
  }).map((n) => ({ ...n, name: `n${index}`, devices: n.devices.map((d, i) => ({ id: `${i}`, group: "g", ...d })) }))

const nodeArb = (index: number): fc.Arbitrary<PlacementNode> =>
  fc.oneof({ weight: 8, arbitrary: seenNodeArb(index) }, { weight: 1, arbitrary: unseenArb(index) })

const fleetArb: fc.Arbitrary<ReadonlyArray<PlacementNode>> = fc.integer({ min: 1, max: 4 }).chain((count) =>
  fc.tuple(...Array.from({ length: count }, (_, i) => nodeArb(i)))
)

/** Mostly `undefined`, sometimes a value. */
const rarely = <A>(value: fc.Arbitrary<A>) =>
  fc.oneof({ weight: 3, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: value })

const modelArb: fc.Arbitrary<PlacementModel> = fc.record({
  id: fc.constant("m"),
  requiredMb: fc.integer({ min: 1, max: 30 }).map((x) => x * 1000),
  minDevices: fc.oneof({ weight: 5, arbitrary: fc.constant(1) }, {
    weight: 1,
    arbitrary: fc.integer({ min: 2, max: 3 })
  }),
  minDeviceVramMb: rarely(fc.integer({ min: 1, max: 16 }).map((x) => x * 1000)),
  pinnedOn: rarely(fc.constantFrom("n0", "n1", "n2", "elsewhere")),
  priority: fc.constantFrom(...CLASSES)
})

const strategyArb = fc.constantFrom<Strategy>("lru", "priority")

const sumOf = (xs: ReadonlyArray<number>) => xs.reduce((s, x) => s + x, 0)
const freeOf = (n: PlacementNode) => sumOf(n.devices.map((d) => d.freeMb))

/** The oracle's own capability check, written from the rules. */
const capable = (m: PlacementModel, n: PlacementNode) =>
  n.hasModel &&
  (m.pinnedOn === undefined || m.pinnedOn === n.name) &&
  n.devices.filter((d) => m.minDeviceVramMb === undefined || d.totalMb >= m.minDeviceVramMb).length >=
    m.minDevices &&
  sumOf(n.devices.map((d) => d.totalMb)) >= m.requiredMb

const mayEvict = (m: PlacementModel, r: ResidentModel) => !r.pinned && r.priority <= m.priority

/** Index combinations of `n` items by size, each size in lexicographic order. */
const combinations = (n: number, k: number): Array<Array<number>> => {
  if (k === 0) return [[]]
  const out: Array<Array<number>> = []
  const walk = (from: number, acc: Array<number>) => {
    if (acc.length === k) {
      out.push([...acc])
      return
    }
    for (let i = from; i < n; i++) walk(i + 1, [...acc, i])
  }
  walk(0, [])
  return out
}

/** Brute force: the first set, by size then lexicographic victim order, that frees `needed`. */
const bruteVictims = (candidates: ReadonlyArray<ResidentModel>, needed: number, strategy: Strategy) => {
  if (needed <= 0) return []
  const ordered = victimOrder(candidates, strategy)
  for (let k = 1; k <= ordered.length; k++) {
    for (const combo of combinations(ordered.length, k)) {
      if (sumOf(combo.map((i) => ordered[i]!.footprintMb)) >= needed) return combo.map((i) => ordered[i]!)
    }
  }
  return undefined
}

const shuffled = <A>(xs: ReadonlyArray<A>, keys: ReadonlyArray<number>): Array<A> =>
  xs.map((x, i) => [x, keys[i % Math.max(1, keys.length)] ?? 0, i] as const)
    .sort((a, b) => a[1] - b[1] || b[2] - a[2])
    .map(([x]) => x)

describe("place (properties)", () => {
  it.prop(
    "a Place is on a healthy capable node and evicts only what it may, no more than it must",
    [modelArb, fleetArb, strategyArb],
    ([m, nodes, strategy]) => {
      const placement = place(m, nodes, strategy)
      if (placement._tag !== "Place") return
      const chosen = nodes.find((n) => n.name === placement.node)
      expect(chosen).toBeDefined()
      if (chosen === undefined) return
      expect(chosen.healthy).toBe(true)
      expect(chosen.hasModel).toBe(true)
      expect(capable(m, chosen)).toBe(true)

      const free = freeOf(chosen)
      const victims = placement.evict.map((id) => chosen.resident.find((r) => r.id === id))
      expect(new Set(placement.evict).size).toBe(placement.evict.length)
      for (const v of victims) {
        expect(v).toBeDefined()
        expect(v?.pinned).toBe(false)
        expect(v!.priority).toBeLessThanOrEqual(m.priority)
      }
      if (free >= m.requiredMb) expect(placement.evict).toEqual([])
      expect(placement.freeMb).toBe(free)
      expect(placement.freeAfterMb).toBe(free + sumOf(victims.map((v) => v!.footprintMb)))
      expect(placement.freeAfterMb).toBeGreaterThanOrEqual(m.requiredMb)

      // Fewest victims, and the first set of that size in victim order.
      const eligible = chosen.resident.filter((r) => mayEvict(m, r))
      const brute = bruteVictims(eligible, m.requiredMb - free, strategy)
      expect(placement.evict).toEqual(brute?.map((r) => r.id))
      // And that order is the victim order: idle before busy.
      const busyAt = placement.evict.findIndex((id) => chosen.resident.find((r) => r.id === id)!.inFlight > 0)
      if (busyAt >= 0) {
        for (const id of placement.evict.slice(busyAt)) {
          expect(chosen.resident.find((r) => r.id === id)!.inFlight).toBeGreaterThan(0)
        }
      }
    },
    { fastCheck: { numRuns: 500 } }
  )

  it.prop(
    "the tag follows the fleet: Infeasible iff no capable node and none unseen, Unavailable iff no healthy one can make room",
    [modelArb, fleetArb, strategyArb],
    ([m, nodes, strategy]) => {
      const placement = place(m, nodes, strategy)
      const capableNodes = nodes.filter((n) => capable(m, n))
      const unseen = nodes.filter((n) => !n.known && (m.pinnedOn === undefined || m.pinnedOn === n.name))
      const ready = capableNodes.filter((n) =>
        n.healthy && bruteVictims(n.resident.filter((r) => mayEvict(m, r)), m.requiredMb - freeOf(n), strategy)
      )
      if (capableNodes.length === 0 && unseen.length === 0) expect(placement._tag).toBe("Infeasible")
      else if (ready.length === 0) {
        expect(placement._tag).toBe("Unavailable")
        if (placement._tag === "Unavailable") expect(placement.retryAfterSecs).toBeGreaterThan(0)
      } else expect(placement._tag).toBe("Place")
      if (placement._tag !== "Place") expect(placement.reason.length).toBeGreaterThan(0)
    },
    { fastCheck: { numRuns: 500 } }
  )

  it.prop(
    "the chosen node ranks first: fits now, then fits after eviction, then most free memory, then name",
    [modelArb, fleetArb, strategyArb],
    ([m, nodes, strategy]) => {
      const placement = place(m, nodes, strategy)
      if (placement._tag !== "Place") return
      const rank = (n: PlacementNode) => [freeOf(n) >= m.requiredMb ? 0 : 1, -freeOf(n)] as const
      const chosen = nodes.find((n) => n.name === placement.node)!
      for (const other of nodes) {
        if (other === chosen || !other.healthy || !capable(m, other)) continue
        if (!bruteVictims(other.resident.filter((r) => mayEvict(m, r)), m.requiredMb - freeOf(other), strategy)) {
          continue
        }
        const [ct, cf] = rank(chosen)
        const [ot, of] = rank(other)
        const chosenFirst = ct < ot || (ct === ot && (cf < of || (cf === of && chosen.name < other.name)))
        expect(chosenFirst, `${chosen.name} chosen over ${other.name}`).toBe(true)
      }
    },
    { fastCheck: { numRuns: 500 } }
  )

  it.prop(
    "is deterministic and ignores the order of nodes, devices and residents",
    [modelArb, fleetArb, strategyArb, fc.array(fc.integer(), { minLength: 1, maxLength: 12 })],
    ([m, nodes, strategy, keys]) => {
      const first = place(m, nodes, strategy)
      expect(place(m, nodes, strategy)).toEqual(first)
      const reordered = shuffled(nodes, keys).map((n) => ({
        ...n,
        devices: shuffled(n.devices, [...keys].reverse()),
        resident: shuffled(n.resident, keys.map((k) => k * 31 + 7))
      }))
      expect(place(m, reordered, strategy)).toEqual(first)
    },
    { fastCheck: { numRuns: 300 } }
  )
})

describe("README worked example: 2x24 GB, a 70B Q4 model and two 8B models", () => {
  const card = (id: string, group: string | undefined, freeMb = 24564) => ({ id, group, totalMb: 24564, freeMb })
  const big = model({ id: "llama-70b", requiredMb: 44000, minDevices: 2, minDeviceVramMb: 20000, priority: 200 })
  const small = (id: string) => model({ id, requiredMb: 5500, priority: 100 })
  const pair = "cuda:0+cuda:1"

  it("with devices = [0, 1] the 70B splits over the pair, the 8B models wait for it or are evicted for it", () => {
    const empty = node("duo", { devices: [card("cuda:0", pair), card("cuda:1", pair)] })
    expect(expectPlace(place(big, [empty], "lru"))).toMatchObject({ group: pair, evict: [] })
    const with70b = node("duo", {
      devices: [card("cuda:0", pair, 2564), card("cuda:1", pair, 2564)],
      resident: [resident("llama-70b", { group: pair, footprintMb: 44000, priority: 200 })]
    })
    const refused = expectTag(place(small("llama-8b"), [with70b], "lru"), "Unavailable")
    expect(refused.reason).toContain("higher-class models in the way: llama-70b")
    const with8bs = node("duo", {
      devices: [card("cuda:0", pair, 24564 - 5500), card("cuda:1", pair, 24564 - 5500)],
      resident: [
        resident("llama-8b", { group: pair, footprintMb: 5500, lastUsed: 1 }),
        resident("qwen-8b", { group: pair, footprintMb: 5500, lastUsed: 2 })
      ]
    })
    expect(expectPlace(place(big, [with8bs], "lru")).evict).toEqual(["llama-8b", "qwen-8b"])
  })

  it("with each card its own group the 8B models go one per card, and the 70B is 404 naming both cards", () => {
    const apart = node("duo", { devices: [card("cuda:0", undefined), card("cuda:1", undefined)] })
    expect(expectPlace(place(small("llama-8b"), [apart], "lru")).group).toBe("cuda:0")
    const one = node("duo", {
      devices: [card("cuda:0", undefined, 24564 - 5500), card("cuda:1", undefined)],
      resident: [resident("llama-8b", { group: "cuda:0", footprintMb: 5500 })]
    })
    expect(expectPlace(place(small("qwen-8b"), [one], "lru"))).toMatchObject({ group: "cuda:1", evict: [] })
    const infeasible = expectTag(place(big, [one], "lru"), "Infeasible")
    expect(infeasible.reason).toContain("group cuda:0 has 1 device(s) of >= 20000 MB, needs 2")
    expect(infeasible.reason).toContain("group cuda:1 has 1 device(s)")
    const noMinimums = expectTag(
      place({ ...big, minDevices: 1, minDeviceVramMb: undefined }, [one], "lru"),
      "Infeasible"
    )
    expect(noMinimums.reason).toContain("group cuda:0 (cuda:0 24564 MB) has 24564 MB in total, needs 44000 MB")
  })
})

/** A node whose 1–4 devices are partitioned into groups, residents spread over the groups. */
const groupedNodeArb = (index: number): fc.Arbitrary<PlacementNode> =>
  fc.record({
    healthy: fc.oneof({ weight: 4, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
    devices: fc.array(
      fc.record({
        group: fc.integer({ min: 0, max: 2 }),
        total: fc.integer({ min: 1, max: 24 }),
        freeShare: fc.integer({ min: 0, max: 4 })
      }),
      { minLength: 1, maxLength: 4 }
    ),
    resident: residentsArb(index),
    homes: fc.array(fc.nat(), { minLength: 8, maxLength: 8 })
  }).map(({ devices, healthy, homes, resident }) => {
    const placed = devices.map((d, i) => ({
      id: `${i}`,
      group: `g${d.group}`,
      totalMb: d.total * 1000,
      freeMb: Math.floor(d.total * d.freeShare / 4) * 1000
    }))
    const groups = [...new Set(placed.map((d) => d.group))]
    return {
      name: `n${index}`,
      known: true,
      healthy,
      hasModel: true,
      devices: placed,
      resident: resident.map((r, i) => ({ ...r, group: groups[homes[i]! % groups.length]! }))
    }
  })

const groupedFleetArb = fc.integer({ min: 1, max: 3 }).chain((count) =>
  fc.tuple(...Array.from({ length: count }, (_, i) => groupedNodeArb(i)))
)

const inGroup = (n: PlacementNode, group: string) => n.devices.filter((d) => (d.group ?? d.id) === group)

/** The oracle's capability check for one group, from the rules. */
const groupCapable = (m: PlacementModel, n: PlacementNode, group: string) => {
  const devices = inGroup(n, group)
  return devices.filter((d) => m.minDeviceVramMb === undefined || d.totalMb >= m.minDeviceVramMb).length >=
      Math.max(1, m.minDevices) &&
    sumOf(devices.map((d) => d.totalMb)) >= m.requiredMb
}

describe("place by device group (properties)", () => {
  const modelOnGroupsArb = modelArb.map((m) => ({ ...m, pinnedOn: undefined }))

  it.prop(
    "places on one capable group, evicts only models on that group, and every device's share fits",
    [modelOnGroupsArb, groupedFleetArb, strategyArb],
    ([m, nodes, strategy]) => {
      const placement = place(m, nodes, strategy)
      if (placement._tag !== "Place") return
      const chosen = nodes.find((n) => n.name === placement.node)!
      const devices = inGroup(chosen, placement.group)
      expect(devices.length).toBeGreaterThan(0)
      expect(groupCapable(m, chosen, placement.group)).toBe(true)
      const victims = placement.evict.map((id) => chosen.resident.find((r) => r.id === id)!)
      // Evicting a model on another group frees nothing on this one.
      for (const v of victims) expect(v.group).toBe(placement.group)
      const free = sumOf(devices.map((d) => d.freeMb))
      expect(placement.freeMb).toBe(free)
      expect(placement.freeAfterMb).toBe(free + sumOf(victims.map((v) => v.footprintMb)))
      // Freed memory returns to the group's devices (a victim was split across them by size);
      // the load is then split by free memory: each device's share must fit that device.
      const total = sumOf(devices.map((d) => d.totalMb))
      const after = devices.map((d) => ({
        id: d.id,
        freeMb: d.freeMb + sumOf(victims.map((v) => v.footprintMb)) * d.totalMb / total
      }))
      for (const share of shares(m.requiredMb, after)) {
        expect(share.mb).toBeLessThanOrEqual(after.find((d) => d.id === share.id)!.freeMb + 1e-6)
      }
      // No more victims than needed on that group.
      const eligible = chosen.resident.filter((r) => r.group === placement.group && mayEvict(m, r))
      expect(placement.evict).toEqual(bruteVictims(eligible, m.requiredMb - free, strategy)?.map((r) => r.id))
    },
    { fastCheck: { numRuns: 500 } }
  )

  it.prop(
    "Infeasible iff no group of any node is capable, and the reason names each node's groups",
    [modelOnGroupsArb, groupedFleetArb, strategyArb],
    ([m, nodes, strategy]) => {
      const placement = place(m, nodes, strategy)
      const anyCapable = nodes.some((n) =>
        [...new Set(n.devices.map((d) => d.group!))].some((g) => groupCapable(m, n, g))
      )
      expect(placement._tag === "Infeasible").toBe(!anyCapable)
      if (placement._tag === "Infeasible") {
        for (const n of nodes) for (const d of n.devices) expect(placement.reason).toContain(`group ${d.group}`)
      }
    },
    { fastCheck: { numRuns: 500 } }
  )

  it.prop(
    "a group that fits now, without evictions, wins over any that needs one",
    [modelOnGroupsArb, groupedFleetArb, strategyArb],
    ([m, nodes, strategy]) => {
      const placement = place(m, nodes, strategy)
      const fitsNow = nodes.some((n) =>
        n.healthy &&
        [...new Set(n.devices.map((d) => d.group!))].some((g) =>
          groupCapable(m, n, g) && sumOf(inGroup(n, g).map((d) => d.freeMb)) >= m.requiredMb
        )
      )
      if (fitsNow) expect(placement).toMatchObject({ _tag: "Place", evict: [] })
    },
    { fastCheck: { numRuns: 500 } }
  )
})

describe("chooseVictims (properties)", () => {
  const candidatesArb = fc.array(
    fc.record({
      footprintMb: fc.integer({ min: 1, max: 10 }),
      priority: fc.constantFrom(...CLASSES),
      lastUsed: fc.integer({ min: 0, max: 4 }),
      inFlight: fc.constantFrom(0, 0, 1)
    }),
    { maxLength: 12 }
  ).map((rs) => rs.map((r, i): ResidentModel => ({ id: `c${i}`, group: "g", pinned: false, ...r })))

  it.prop(
    "matches a brute-force search over all subsets by size, then victim order",
    [candidatesArb, fc.integer({ min: -5, max: 60 }), strategyArb],
    ([candidates, needed, strategy]) => {
      const victims = chooseVictims(candidates, needed, strategy)
      expect(victims?.map((r) => r.id)).toEqual(bruteVictims(candidates, needed, strategy)?.map((r) => r.id))
    },
    { fastCheck: { numRuns: 500 } }
  )
})

describe("swapOrWait (properties)", () => {
  const victimsArb = fc.array(
    fc.record({
      inFlight: fc.constantFrom(0, 0, 1, 3),
      loadedAt: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 2000 }))
    }),
    { maxLength: 5 }
  ).map((vs) => vs.map((v, i) => ({ id: `v${i}`, ...v })))

  it.prop(
    "waits iff a victim is busy or younger than min_resident, and only before the swap deadline",
    [
      victimsArb,
      fc.integer({ min: 1000, max: 3000 }),
      fc.integer({ min: 0, max: 4000 }),
      fc.integer({ min: 0, max: 500 })
    ],
    ([victims, now, deadline, minResidentMs]) => {
      const step = swapOrWait(victims, now, deadline, minResidentMs)
      const blocking = victims.filter((v) => v.inFlight > 0 || (v.loadedAt > 0 && now - v.loadedAt < minResidentMs))
      if (now >= deadline || blocking.length === 0) expect(step).toEqual({ _tag: "Swap" })
      else expect(step).toEqual({ _tag: "Wait", blocking: blocking.map((v) => v.id) })
    },
    { fastCheck: { numRuns: 300 } }
  )

  it("swaps idle, settled victims at once, and busy ones once the waiter has waited long enough", () => {
    const idle = { id: "idle", inFlight: 0, loadedAt: 1 }
    const busy = { id: "busy", inFlight: 1, loadedAt: 1 }
    expect(swapOrWait([idle], 10_000, 20_000, 5_000)._tag).toBe("Swap")
    expect(swapOrWait([idle, busy], 10_000, 20_000, 5_000)).toEqual({ _tag: "Wait", blocking: ["busy"] })
    expect(swapOrWait([idle, busy], 20_000, 20_000, 5_000)._tag).toBe("Swap")
    expect(swapOrWait([{ id: "young", inFlight: 0, loadedAt: 9_000 }], 10_000, 20_000, 5_000)._tag).toBe("Wait")
  })
})
