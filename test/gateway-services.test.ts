/**
 * Router and Evictor at service level, over small fake layers (Effect-TS/examples' makeTestLayer
 * style): a fake Poller whose state the test writes, a NeuronClient that records each call and
 * answers it (an unload frees the model's memory in the fake state), a ColdLoader stand-in.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Fiber, Layer } from "effect"
import type { NeuronModel } from "../src/domain/contract.js"
import { Catalogue } from "../src/gateway/Catalogue.js"
import { ColdLoader } from "../src/gateway/ColdLoader.js"
import { Evictor } from "../src/gateway/Evictor.js"
import { GatewayConfig, loadGatewayConfig, type ModelProfile } from "../src/gateway/GatewayConfig.js"
import { InFlight } from "../src/gateway/InFlight.js"
import { NeuronClient } from "../src/gateway/NeuronClient.js"
import { type FleetState, type NodeState, Poller } from "../src/gateway/Poller.js"
import { Router } from "../src/gateway/Router.js"

/** A service from the members a test needs; any other member dies when used. */
const makeTestLayer = <I, S extends object>(tag: Context.Tag<I, S>) => (service: Partial<S>): Layer.Layer<I> =>
  Layer.succeed(
    tag,
    new globalThis.Proxy({ ...service } as S, {
      get: (target, prop) =>
        prop in target ? target[prop as keyof S] : () => {
          throw new Error(`${tag.key}.${String(prop)} is not implemented in this test`)
        }
    })
  )

const HOUR = 3_600_000

const model = (id: string, status: NeuronModel["status"], fields: Partial<NeuronModel> = {}): NeuronModel => ({
  id,
  status,
  error: null,
  device: null,
  size_bytes: 0,
  memory_estimate_mb: 100,
  context_limit: 2048,
  capabilities: [],
  in_flight: 0,
  queue_depth: 0,
  loaded_at: status === "loaded" ? new Date(Date.now() - HOUR).toISOString() : null,
  last_used_at: null,
  ...fields
})

const node = (name: string, models: ReadonlyArray<NeuronModel>, freeMb = 0, healthy = true): NodeState => ({
  name,
  endpoint: { name, endpoint: `http://${name}.test`, token: undefined },
  healthy,
  misses: 0,
  status: "ok",
  lastSeen: Date.now(),
  lastError: undefined,
  discovery: undefined,
  models,
  devices: [{ id: "gpu0", kind: "cuda", name: "gpu", totalMb: 1000, freeMb, usedMb: 1000 - freeMb }]
})

/** The fake fleet: the test's state, read by the fake Poller, changed by the fake neuron. */
class World {
  state: FleetState
  readonly calls: Array<{ readonly node: string; readonly path: string; readonly body: unknown }> = []
  readonly refreshes: Array<string> = []
  constructor(nodes: ReadonlyArray<NodeState>) {
    this.state = new Map(nodes.map((n) => [n.name, n]))
  }
  update(name: string, f: (n: NodeState) => NodeState) {
    const next = new Map(this.state)
    next.set(name, f(this.state.get(name)!))
    this.state = next
  }
}

const fakePoller = (world: World) =>
  Layer.succeed(
    Poller,
    Poller.make({
      get: Effect.sync(() => world.state),
      now: () => world.state,
      refresh: (name: string) => Effect.sync(() => void world.refreshes.push(name)),
      reconcile: Effect.void,
      remove: () => Effect.void
    })
  )

/** Records every call; an unload frees the model's memory, a restart answers restarted. */
const fakeNeuron = (world: World) =>
  Layer.succeed(
    NeuronClient,
    NeuronClient.make({
      call: <A, I>(endpoint: { readonly name: string }, path: string, _schema: unknown, options: { body?: unknown }) =>
        Effect.sync(() => {
          world.calls.push({ node: endpoint.name, path, body: options.body })
          if (path === "/models/unload") {
            const id = (options.body as { model: string }).model
            world.update(endpoint.name, (n) => {
              const m = n.models.find((x) => x.id === id)!
              return {
                ...n,
                models: n.models.map((x) => x.id === id ? { ...x, status: "available" as const } : x),
                devices: n.devices.map((d) => ({ ...d, freeMb: d.freeMb + (m.memory_estimate_mb ?? 0) }))
              }
            })
            return { ...model(id, "available") } as unknown as A
          }
          return { restarted: true } as unknown as A
        }) as Effect.Effect<A, never> & { readonly _I?: I }
    })
  )

const configLayer = (models: ReadonlyArray<ModelProfile>, eviction: { defragAfterCycles?: number } = {}) =>
  Layer.effect(
    GatewayConfig,
    Effect.map(loadGatewayConfig({ env: {} }), (settings) => ({
      ...settings,
      models,
      loadTimeoutSecs: 5,
      eviction: { ...settings.eviction, defragAfterCycles: eviction.defragAfterCycles ?? 0 }
    }))
  )

const evictorLayer = (world: World, models: ReadonlyArray<ModelProfile> = [], defragAfterCycles = 0) =>
  Evictor.DefaultWithoutDependencies.pipe(
    Layer.provideMerge(InFlight.Default),
    Layer.provide(fakePoller(world)),
    Layer.provide(fakeNeuron(world)),
    Layer.provide(configLayer(models, { defragAfterCycles }))
  )

const unloads = (world: World) => world.calls.filter((c) => c.path === "/models/unload").map((c) => c.body)

describe("Evictor", () => {
  it.scoped("makeRoom unloads victims in order and stops once the model fits (free memory re-read)", () => {
    const world = new World([node("n0", [model("a", "loaded"), model("b", "loaded"), model("c", "loaded")], 50)])
    return Effect.gen(function*() {
      const evictor = yield* Evictor
      evictor.claim("n0", ["a", "b", "c"])
      expect(evictor.isClaimed("n0", "b")).toBe(true)
      // Needs 120 MB: 50 free, each victim frees 100, so one unload is enough.
      const evicted = yield* evictor.makeRoom("n0", "gpu0", ["b", "a", "c"], 120, () => 0)
      expect(evicted).toEqual(["b"])
      expect(unloads(world)).toEqual([{ model: "b" }])
      expect(world.refreshes).toContain("n0")
      expect(evictor.unloadedBecause("b")).toBe("make_room")
      // Other loads' reservations count against free memory: now two more are needed.
      const more = yield* evictor.makeRoom("n0", "gpu0", ["a", "c"], 150, () => 100)
      expect(more).toEqual(["a"])
      evictor.release("n0", ["a", "b", "c"])
      expect(evictor.isClaimed("n0", "b")).toBe(false)
    }).pipe(Effect.provide(evictorLayer(world)))
  })

  it.live("makeRoom drains this gateway's requests on a victim before unloading it", () => {
    const world = new World([node("n0", [model("a", "loaded")], 0)])
    return Effect.gen(function*() {
      const evictor = yield* Evictor
      const inFlight = yield* InFlight
      const release = inFlight.track("n0", "a")
      evictor.claim("n0", ["a"])
      const fiber = yield* Effect.fork(evictor.makeRoom("n0", "gpu0", ["a"], 100, () => 0))
      yield* Effect.sleep("150 millis")
      expect(unloads(world)).toEqual([])
      release()
      expect(yield* Fiber.join(fiber)).toEqual(["a"])
      expect(unloads(world)).toEqual([{ model: "a" }])
    }).pipe(Effect.scoped, Effect.provide(evictorLayer(world)))
  })

  it.scoped("the idle sweep unloads idle models past idle_unload_secs, never pinned, busy or claimed ones", () => {
    const world = new World([
      node("n0", [
        model("idle", "loaded"),
        model("pinned", "loaded"),
        model("busy", "loaded"),
        model("claimed", "loaded"),
        model("fresh", "loaded", { last_used_at: new Date().toISOString() })
      ], 0)
    ])
    const profiles = [
      { id: "idle", idle_unload_secs: 60 },
      { id: "pinned", idle_unload_secs: 60, pinned_on: "n0" },
      { id: "busy", idle_unload_secs: 60 },
      { id: "claimed", idle_unload_secs: 60 },
      { id: "fresh", idle_unload_secs: 60 }
    ] as unknown as ReadonlyArray<ModelProfile>
    return Effect.gen(function*() {
      const evictor = yield* Evictor
      const inFlight = yield* InFlight
      inFlight.track("n0", "busy")
      evictor.claim("n0", ["claimed"])
      yield* evictor.sweep
      expect(unloads(world)).toEqual([{ model: "idle" }])
      expect(evictor.unloadedBecause("idle")).toBe("idle")
      // The sweep's own claim is let go once the unload is done.
      expect(evictor.isClaimed("n0", "idle")).toBe(false)
    }).pipe(Effect.provide(evictorLayer(world, profiles)))
  })

  it.scoped("defragments a node after N cycles, only while it is idle and nothing loads there", () => {
    const world = new World([node("n0", [model("a", "loaded"), model("b", "loaded")], 0)])
    return Effect.gen(function*() {
      const evictor = yield* Evictor
      evictor.claim("n0", ["a", "b"])
      yield* evictor.makeRoom("n0", "gpu0", ["a"], 100, () => 0)
      yield* evictor.sweep
      expect(world.calls.some((c) => c.path === "/admin/restart-worker")).toBe(false)
      yield* evictor.makeRoom("n0", "gpu0", ["b"], 200, () => 0)
      // Two cycles now, but a load is under way there: no restart meanwhile.
      yield* evictor.whileLoading("n0", "c", evictor.sweep)
      expect(world.calls.some((c) => c.path === "/admin/restart-worker")).toBe(false)
      yield* evictor.sweep
      expect(world.calls.filter((c) => c.path === "/admin/restart-worker").map((c) => c.node)).toEqual(["n0"])
    }).pipe(Effect.provide(evictorLayer(world, [], 2)))
  })
})

/** A ColdLoader stand-in: records the models asked for and marks them loaded on n1. */
const fakeLoader = (world: World, asked: Array<string>) =>
  makeTestLayer(ColdLoader)({
    ensureLoaded: (m) =>
      Effect.sync(() => {
        asked.push(m.id)
        world.update("n1", (n) => ({
          ...n,
          models: n.models.map((x) => x.id === m.neuronId ? { ...x, status: "loaded" } : x)
        }))
        return "n1"
      })
  })

const routerLayer = (world: World, asked: Array<string>, claimed: ReadonlySet<string> = new Set()) =>
  Router.DefaultWithoutDependencies.pipe(
    Layer.provideMerge(InFlight.Default),
    Layer.provide(Catalogue.DefaultWithoutDependencies),
    Layer.provide(makeTestLayer(Evictor)({ isClaimed: (n, m) => claimed.has(`${n}/${m}`) })),
    Layer.provide(fakeLoader(world, asked)),
    Layer.provideMerge(fakePoller(world)),
    Layer.provide(configLayer([{ id: "small", file: "a" } as ModelProfile]))
  )

describe("Router", () => {
  it.effect("routeNow: the least busy healthy replica (the neuron's figures plus this gateway's count)", () => {
    const world = new World([
      node("n0", [model("a", "loaded", { in_flight: 1 })]),
      node("n1", [model("a", "loaded")]),
      node("n2", [model("a", "loaded")], 0, false)
    ])
    return Effect.gen(function*() {
      const router = yield* Router
      const inFlight = yield* InFlight
      expect(router.routeNow("small")?.node.name).toBe("n1")
      const release = [inFlight.track("n1", "a"), inFlight.track("n1", "a")]
      const route = router.routeNow("small")!
      expect([route.node.name, route.fallbacks.map((n) => n.name), route.coldLoad]).toEqual(["n0", ["n1"], false])
      for (const r of release) r()
      expect(router.routeNow("missing")).toBeUndefined()
    }).pipe(Effect.provide(routerLayer(world, [])))
  })

  it.effect("a replica claimed for unloading is not routed to", () => {
    const world = new World([node("n0", [model("a", "loaded")]), node("n1", [model("a", "loaded")])])
    return Effect.gen(function*() {
      const router = yield* Router
      expect(router.routeNow("small")?.node.name).toBe("n1")
    }).pipe(Effect.provide(routerLayer(world, [], new Set(["n0/a"]))))
  })

  it.effect("route cold-loads through ColdLoader once when no replica is loaded", () => {
    const world = new World([node("n1", [model("a", "available")])])
    const asked: Array<string> = []
    return Effect.gen(function*() {
      const router = yield* Router
      expect(router.routeNow("small")).toBeUndefined()
      const route = yield* router.route("small")
      expect([route.node.name, route.coldLoad]).toEqual(["n1", true])
      expect(asked).toEqual(["small"])
      const again = yield* router.route("small")
      expect(again.coldLoad).toBe(false)
      expect(asked).toEqual(["small"])
    }).pipe(Effect.provide(routerLayer(world, asked)))
  })

  it.effect("recovering answers 503 recovering, failed everywhere ModelLoadFailed, unknown 404", () => {
    const world = new World([node("n1", [model("a", "recovering")])])
    const asked: Array<string> = []
    return Effect.gen(function*() {
      const router = yield* Router
      const recovering = yield* Effect.flip(router.route("small"))
      expect(recovering._tag).toBe("ModelUnavailable")
      expect((recovering as { state?: string }).state).toBe("recovering")
      world.update("n1", (n) => ({ ...n, models: [model("a", "failed", { error: "bad file" })] }))
      const failed = yield* Effect.flip(router.route("small"))
      expect(failed._tag).toBe("ModelLoadFailed")
      const unknown = yield* Effect.flip(router.route("nope"))
      expect(unknown._tag).toBe("ModelNotFound")
      expect(asked).toEqual([])
    }).pipe(Effect.provide(routerLayer(world, asked)))
  })
})
