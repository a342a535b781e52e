/**
 * Fleet lifecycle: cold loads on demand with placement and eviction, and the housekeeping
 * around them (idle unload, defragmentation). A load is single-flight per model; it places the
 * model (Placement.ts), waits a bounded time for busy or just-loaded victims so models contending
 * for a node are served in batches rather than swapped on every request, unloads the victims one
 * at a time re-reading the node's free memory after each (lesson 13), then loads.
 *
 * Deciding is fleet-wide and serial (the plan lock); waiting is not. A plan reserves its memory
 * and claims its victims under the lock, then drains and unloads them and loads outside it, so a
 * load on another node never queues behind a victim's long stream.
 */
import { Deferred, Effect, Fiber, Metric, MetricLabel, Schedule } from "effect"
import { NeuronModel, RestartWorkerAnswer } from "../domain/contract.js"
import { type ApiError, ModelInfeasible, ModelUnavailable, UpstreamError } from "../domain/errors.js"
import { traceHeaders } from "../telemetry/TraceHeaders.js"
import { buildCatalogue, type CatalogueModel } from "./Catalogue.js"
import { GatewayConfig, type ModelProfile } from "./GatewayConfig.js"
import * as M from "./Metrics.js"
import { callNeuron, describeNeuronError, type NeuronError } from "./NeuronClient.js"
import { place, type PlacementNode, residencyPriority, swapOrWait } from "./Placement.js"
import { type NodeState, Poller } from "./Poller.js"

export type LoadReason = "first_load" | "after_eviction" | "after_idle_unload" | "after_unload"

export interface LoadRecord {
  readonly model: string
  readonly node: string
  readonly reason: LoadReason
  readonly evicted: ReadonlyArray<string>
  readonly wait_ms: number
  readonly load_ms: number
  readonly at: string
}

export interface LoadInProgress {
  readonly model: string
  readonly node: string | null
  readonly since: string
  readonly waiters: number
}

/** What a planned load holds until it ends: its node's memory reservation and its claimed victims. */
interface Hold {
  node: string | undefined
  victims: ReadonlyArray<string>
}

const MB = 1024 * 1024
const residentStatuses = new Set(["loaded", "loading", "recovering", "unloading"])

export class Lifecycle extends Effect.Service<Lifecycle>()("cortex/Lifecycle", {
  scoped: Effect.gen(function*() {
    const config = yield* GatewayConfig
    const poller = yield* Poller
    const key = (node: string, model: string) => `${node}\u0000${model}`
    const inFlight = new Map<string, number>()
    const lastUse = new Map<string, number>()
    const cycles = new Map<string, number>()
    const unloadedBecause = new Map<string, LoadReason>()
    const history: Array<LoadRecord> = []
    // Planning (place → evict → reserve) runs one at a time across the fleet: two loads planned
    // from the same poll would otherwise both spend the same free memory, or evict the same model.
    const planLock = yield* Effect.makeSemaphore(1)
    /** Memory held for loads in flight, per node: the poll cannot see it yet. */
    const reserved = new Map<string, Map<string, number>>()
    /**
     * Replicas claimed for unloading (a plan's victims, or the idle sweep's), from the decision
     * until the unload ends: not routed to, and no other plan may evict them or count them as free.
     */
    const evicting = new Set<string>()
    /** Memory reserved on a node by loads in flight, but for `except`'s own reservation. */
    const reservedOn = (node: string, except?: string) =>
      [...(reserved.get(node)?.entries() ?? [])].reduce((sum, [id, mb]) => id === except ? sum : sum + mb, 0)
    const loads = new Map<string, {
      readonly deferred: Deferred.Deferred<string, ApiError>
      node: string | null
      readonly since: number
      waiters: number
    }>()
    const profileOf = (neuronId: string): ModelProfile | undefined =>
      config.models.find((p) => (p.file ?? p.id) === neuronId)

    const busy = (node: string, model: string) => inFlight.get(key(node, model)) ?? 0

    /** Count a request against a replica until the returned release runs; it also marks use. */
    const track = (node: string, model: string) => {
      const k = key(node, model)
      inFlight.set(k, (inFlight.get(k) ?? 0) + 1)
      lastUse.set(k, Date.now())
      let released = false
      return () => {
        if (released) return
        released = true
        lastUse.set(k, Date.now())
        const n = (inFlight.get(k) ?? 1) - 1
        if (n <= 0) inFlight.delete(k)
        else inFlight.set(k, n)
      }
    }

    const neuronError = (model: string) => (error: NeuronError): ApiError =>
      error._tag === "NeuronRefused"
        ? new UpstreamError({ upstreamStatus: error.status, upstreamBody: error.body, retryAfter: error.retryAfter })
        : new ModelUnavailable({ model, state: "unavailable", detail: `${error.node}: ${describeNeuronError(error)}` })

    const placementNodes = (model: CatalogueModel, state: ReadonlyMap<string, NodeState>): Array<PlacementNode> =>
      [...state.values()].map((node) => ({
        name: node.name,
        known: node.lastSeen !== undefined,
        healthy: node.healthy,
        hasModel: node.models.some((m) => m.id === model.neuronId && m.status !== "failed"),
        devices: withReservations(node),
        // A victim claimed by another plan is spoken for: neither evictable nor free yet.
        resident: node.models
          .filter((m) =>
            m.id !== model.neuronId && residentStatuses.has(m.status) && !evicting.has(key(node.name, m.id))
          )
          .map((m) => {
            const profile = profileOf(m.id)
            const k = key(node.name, m.id)
            const loadedAt = m.loaded_at ? Date.parse(m.loaded_at) : 0
            const young = Date.now() - loadedAt < config.eviction.minResidentSecs * 1000
            return {
              id: m.id,
              footprintMb: m.memory_estimate_mb ?? 0,
              priority: residencyPriority(profile ?? {}),
              // Only a settled model can go; one loading or recovering is never a victim.
              pinned: profile?.pinned_on === node.name || m.status !== "loaded",
              lastUsed: Math.max(lastUse.get(k) ?? 0, m.last_used_at ? Date.parse(m.last_used_at) : 0, loadedAt),
              // Requests running or waiting here, and a just-loaded model, count as busy: they go last.
              inFlight: (inFlight.get(k) ?? 0) + m.in_flight + m.queue_depth + (young ? 1 : 0)
            }
          })
      }))

    /** Devices with in-flight loads' memory taken off their free figures (largest free first). */
    const withReservations = (node: NodeState) => {
      let held = reservedOn(node.name)
      return [...node.devices].sort((a, b) => b.freeMb - a.freeMb).map((d) => {
        const take = Math.min(held, d.freeMb)
        held -= take
        return { id: d.id, totalMb: d.totalMb, freeMb: d.freeMb - take }
      })
    }

    const requiredMb = (model: CatalogueModel, state: ReadonlyMap<string, NodeState>) => {
      if (model.profile?.vram_mb !== undefined) return model.profile.vram_mb
      const estimates = [...state.values()].flatMap((n) =>
        n.models.filter((m) => m.id === model.neuronId).map((m) =>
          m.memory_estimate_mb ?? Math.ceil(m.size_bytes / MB * 1.2)
        )
      )
      return estimates.length > 0 ? Math.max(...estimates) : 0
    }

    const labels = (model: string, node: string) => [MetricLabel.make("model", model), MetricLabel.make("node", node)]

    /**
     * Unload a replica the caller has claimed (in `evicting`: no new requests go there). Requests
     * this gateway sent finish first (bounded), and the neuron drains its own too.
     */
    const unload = (node: NodeState, model: string, reason: "make_room" | "idle") =>
      Effect.gen(function*() {
        const deadline = Date.now() + config.loadTimeoutSecs * 1000
        while (busy(node.name, model) > 0 && Date.now() < deadline) yield* Effect.sleep("50 millis")
        yield* Effect.logInfo(`evicting ${model} from ${node.name} (${reason})`)
        yield* callNeuron(node.endpoint, "/models/unload", NeuronModel, {
          body: { model },
          timeoutMs: config.loadTimeoutSecs * 1000,
          headers: yield* traceHeaders
        })
        yield* Metric.increment(
          Metric.taggedWithLabels(M.evictions, [...labels(model, node.name), MetricLabel.make("reason", reason)])
        )
        unloadedBecause.set(model, reason === "idle" ? "after_idle_unload" : "after_eviction")
        cycles.set(node.name, (cycles.get(node.name) ?? 0) + 1)
        yield* poller.refresh(node.name)
      }).pipe(Effect.withSpan("gateway.eviction", {
        kind: "client",
        captureStackTrace: false,
        attributes: { "gen_ai.request.model": model, "cortex.node": node.name, "cortex.eviction_reason": reason }
      }))

    /** Let go of a plan's victims that are still claimed (those not unloaded serve again). */
    const releaseVictims = (hold: Hold) =>
      Effect.sync(() => {
        if (hold.node !== undefined) { for (const m of hold.victims) evicting.delete(key(hold.node, m)) }
        hold.victims = []
      })
    /** Let go of everything a load holds: its victims and its memory reservation. */
    const releaseHold = (model: string, hold: Hold) =>
      Effect.sync(() => {
        if (hold.node === undefined) return
        for (const m of hold.victims) evicting.delete(key(hold.node, m))
        reserved.get(hold.node)?.delete(model)
        hold.node = undefined
        hold.victims = []
      })
    const beingEvicted = (state: ReadonlyMap<string, NodeState>, model: string) =>
      [...state.keys()].some((node) => evicting.has(key(node, model)))

    /** Carry out a plan outside the lock: unload the victims still needed, one at a time, then load. */
    const drainAndLoad = (model: CatalogueModel, node: NodeState, hold: Hold, required: number, started: number) =>
      Effect.gen(function*() {
        const evicted: Array<string> = []
        yield* Effect.gen(function*() {
          for (const victim of [...hold.victims]) {
            const current = (yield* poller.get).get(node.name)!
            const free = current.devices.reduce((sum, d) => sum + d.freeMb, 0) - reservedOn(node.name, model.neuronId)
            if (free >= required) break
            yield* unload(current, victim, "make_room").pipe(Effect.mapError(neuronError(model.id)))
            evicted.push(victim)
          }
        }).pipe(Effect.ensuring(releaseVictims(hold)))
        const profile = model.profile
        const reason = unloadedBecause.get(model.neuronId) ?? "first_load"
        const loadStarted = Date.now()
        yield* Effect.logInfo(
          `loading ${model.id} on ${node.name} (${reason}${
            evicted.length > 0 ? `, evicted ${evicted.join(", ")}` : ""
          })`
        )
        yield* Effect.flatMap(traceHeaders, (headers) =>
          callNeuron(node.endpoint, "/models/load", NeuronModel, {
            body: {
              model: model.neuronId,
              ...(profile?.context_size !== undefined ? { context_size: profile.context_size } : {})
            },
            timeoutMs: config.loadTimeoutSecs * 1000,
            headers
          })).pipe(
            // The neuron's load span continues this one (traceparent): one trace from request to load.
            Effect.withSpan("gateway.model_load", {
              kind: "client",
              captureStackTrace: false,
              attributes: {
                "gen_ai.request.model": model.id,
                "cortex.node": node.name,
                "cortex.load_reason": reason,
                "cortex.evicted": evicted.join(",")
              }
            }),
            Effect.mapError(neuronError(model.id)),
            // The reservation (released by the caller) ends after this, once the poll can see the model.
            Effect.ensuring(poller.refresh(node.name))
          )
        const loadMs = Date.now() - loadStarted
        yield* Metric.update(Metric.taggedWithLabels(M.modelLoad, labels(model.id, node.name)), loadMs / 1000)
        yield* Metric.update(
          Metric.taggedWithLabels(M.modelLoadWait, labels(model.id, node.name)),
          (loadStarted - started) / 1000
        )
        cycles.set(node.name, (cycles.get(node.name) ?? 0) + 1)
        unloadedBecause.delete(model.neuronId)
        lastUse.set(key(node.name, model.neuronId), Date.now())
        history.push({
          model: model.id,
          node: node.name,
          reason,
          evicted,
          wait_ms: loadStarted - started,
          load_ms: loadMs,
          at: new Date().toISOString()
        })
        if (history.length > 100) history.shift()
        return node.name
      })

    /**
     * Place, reserve the memory and claim the victims under the plan lock; then, outside it, drain
     * and unload the victims (re-reading free memory after each) and load, so neither a victim's
     * stream nor a load holds up plans for other nodes. Returns the node's name.
     */
    const loadNow = (model: CatalogueModel, entry: { node: string | null }) => {
      const hold: Hold = { node: undefined, victims: [] }
      return Effect.gen(function*() {
        const started = Date.now()
        const swapDeadline = started + config.eviction.maxSwapWaitSecs * 1000
        for (;;) {
          const plan = yield* planLock.withPermits(1)(Effect.gen(function*() {
            // Decide on fresh figures: a poll from moments ago can still show a finished request.
            const holders = [...(yield* poller.get).values()].filter((n) =>
              n.models.some((m) => m.id === model.neuronId)
            )
            yield* Effect.forEach(holders, (n) => poller.refresh(n.name), { concurrency: "unbounded", discard: true })
            const state = yield* poller.get
            // Being unloaded somewhere: plan again once that unload is done.
            if (beingEvicted(state, model.neuronId)) return { _tag: "wait" as const, node: "" }
            const required = requiredMb(model, state)
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
              placementNodes(model, state),
              config.eviction.strategy
            )
            if (placement._tag === "Infeasible") {
              return yield* new ModelInfeasible({ model: model.id, reason: placement.reason })
            }
            if (placement._tag === "Unavailable") {
              // Models still loading (or unloading) block only for a moment: wait for them, within
              // the load timeout, rather than refuse a request the fleet can serve shortly.
              // Only on nodes that could take it: another node's long drain is no reason to wait.
              const candidates = new Set(model.locations.map((l) => l.node))
              const transient = [...reserved].some(([node, m]) => candidates.has(node) && m.size > 0) ||
                [...state.values()].some((n) =>
                  candidates.has(n.name) && n.healthy &&
                  n.models.some((m) => m.status === "loading" || m.status === "unloading")
                )
              if (transient && Date.now() - started < config.loadTimeoutSecs * 1000) {
                return { _tag: "wait" as const, node: "" }
              }
              return yield* new ModelUnavailable({ model: model.id, state: "unavailable", detail: placement.reason })
            }
            const node = state.get(placement.node)!
            entry.node = node.name
            const step = swapOrWait(
              placement.evict.map((victim) => {
                const m = node.models.find((x) => x.id === victim)
                return {
                  id: victim,
                  inFlight: busy(node.name, victim) + (m?.in_flight ?? 0),
                  loadedAt: m?.loaded_at ? Date.parse(m.loaded_at) : 0
                }
              }),
              Date.now(),
              swapDeadline,
              config.eviction.minResidentSecs * 1000
            )
            if (step._tag === "Wait") return { _tag: "wait" as const, node: node.name }
            // Hold the plan: the memory and the victims are this load's until it settles. One
            // synchronous step, recorded in `hold`, so however the load ends it lets them go.
            yield* Effect.sync(() => {
              const onNode = reserved.get(node.name) ?? new Map<string, number>()
              onNode.set(model.neuronId, required)
              reserved.set(node.name, onNode)
              for (const victim of placement.evict) evicting.add(key(node.name, victim))
              hold.node = node.name
              hold.victims = placement.evict
            })
            return { _tag: "load" as const, node, required }
          }))
          if (plan._tag === "wait") {
            yield* Effect.sleep("100 millis")
            if (plan.node !== "") yield* poller.refresh(plan.node)
            continue
          }
          return yield* drainAndLoad(model, plan.node, hold, plan.required, started)
        }
      }).pipe(Effect.ensuring(releaseHold(model.neuronId, hold)))
    }

    /** Make sure the model is loaded somewhere; concurrent callers share one load. */
    const ensureLoaded = (model: CatalogueModel) =>
      Effect.gen(function*() {
        const pending = loads.get(model.id)
        if (pending) {
          if (pending.waiters >= config.eviction.maxLoadWaiters) {
            return yield* new ModelUnavailable({
              model: model.id,
              state: "loading",
              detail: "too many requests wait for this load"
            })
          }
          pending.waiters++
          return yield* Deferred.await(pending.deferred).pipe(Effect.ensuring(Effect.sync(() => pending.waiters--)))
        }
        const deferred = yield* Deferred.make<string, ApiError>()
        const entry = { deferred, node: null as string | null, since: Date.now(), waiters: 1 }
        loads.set(model.id, entry)
        // The load itself runs detached: a caller that hangs up does not cancel it for the others.
        const fiber = yield* loadNow(model, entry).pipe(
          Effect.timeoutFail({
            duration: `${config.loadTimeoutSecs} seconds`,
            onTimeout: () => new ModelUnavailable({ model: model.id, state: "loading", detail: "the load timed out" })
          }),
          Effect.exit,
          Effect.tap((exit) => Deferred.done(deferred, exit)),
          Effect.ensuring(Effect.sync(() => loads.delete(model.id))),
          Effect.forkDaemon
        )
        const exit = yield* Fiber.join(fiber)
        return yield* exit
      })

    // The catalogue only changes when the fleet state does: build it once per state.
    let cachedCatalogue: { state: unknown; catalogue: ReturnType<typeof buildCatalogue> } | undefined
    const catalogueOf = (state: Parameters<typeof buildCatalogue>[1]) => {
      if (cachedCatalogue?.state !== state) cachedCatalogue = { state, catalogue: buildCatalogue(config.models, state) }
      return cachedCatalogue.catalogue
    }

    /** Unload models idle past their profile's idle_unload_secs (never pinned ones). */
    const idleSweep = Effect.gen(function*() {
      const state = yield* poller.get
      for (const node of state.values()) {
        if (!node.healthy) continue
        for (const m of node.models) {
          const profile = profileOf(m.id)
          if (m.status !== "loaded" || !profile?.idle_unload_secs || profile.pinned_on !== undefined) continue
          const k = key(node.name, m.id)
          const used = Math.max(
            lastUse.get(k) ?? 0,
            m.last_used_at ? Date.parse(m.last_used_at) : 0,
            m.loaded_at ? Date.parse(m.loaded_at) : 0
          )
          if (busy(node.name, m.id) > 0 || m.in_flight > 0 || Date.now() - used < profile.idle_unload_secs * 1000) {
            continue
          }
          // Claim it as a plan would; one a plan has claimed already is that plan's to unload.
          yield* Effect.acquireUseRelease(
            Effect.sync(() => !evicting.has(k) && Boolean(evicting.add(k))),
            (claimed) =>
              claimed
                ? unload(node, m.id, "idle").pipe(
                  Effect.catchAll((e) => Effect.logWarning(`idle unload of ${m.id} failed: ${e._tag}`))
                )
                : Effect.void,
            (claimed) => claimed ? Effect.sync(() => evicting.delete(k)) : Effect.void
          )
        }
      }
    })

    /** After N load/unload cycles, restart a node's device worker while it is idle. */
    const defrag = Effect.gen(function*() {
      const threshold = config.eviction.defragAfterCycles
      if (threshold <= 0) return
      const state = yield* poller.get
      for (const node of state.values()) {
        if ((cycles.get(node.name) ?? 0) < threshold || !node.healthy) continue
        const idle = node.models.every((m) => m.in_flight + m.queue_depth === 0 && busy(node.name, m.id) === 0)
        if (!idle || [...loads.values()].some((l) => l.node === node.name)) continue
        const result = yield* callNeuron(node.endpoint, "/admin/restart-worker", RestartWorkerAnswer, {
          body: {},
          timeoutMs: 180_000
        }).pipe(Effect.option)
        if (result._tag === "Some" && result.value.restarted) {
          cycles.set(node.name, 0)
          yield* Effect.logInfo(`defragmented ${node.name}: restarted its worker after ${threshold} load/unload cycles`)
          yield* poller.refresh(node.name)
        }
      }
    })

    yield* Effect.forkScoped(
      Effect.all([idleSweep, defrag], { discard: true }).pipe(
        Effect.catchAllCause((cause) => Effect.logWarning("lifecycle sweep failed", cause)),
        Effect.repeat(Schedule.spaced("1 second"))
      )
    )

    return {
      ensureLoaded,
      track,
      busy,
      isEvicting: (node: string, model: string) => evicting.has(key(node, model)),
      history: () => [...history],
      loadsInProgress: (): Array<LoadInProgress> =>
        [...loads.entries()].map(([model, l]) => ({
          model,
          node: l.node,
          since: new Date(l.since).toISOString(),
          waiters: l.waiters
        })),
      catalogue: Effect.map(poller.get, catalogueOf),
      catalogueNow: () => catalogueOf(poller.now())
    } as const
  })
}) {}
