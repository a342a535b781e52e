/**
 * The Evictor carries out unloads: a plan's victims (`makeRoom`: one at a time, re-reading the
 * node's free memory after each, lesson 13), the idle sweep (models past their profile's
 * idle_unload_secs) and defragmentation (a node's worker restarted after N load/unload cycles,
 * while idle). It owns the claims: a replica claimed for unloading is not routed to, and no plan
 * may evict it or count it as free. Which models to evict is the Scheduler's decision.
 */
import { Effect, Metric, MetricLabel } from "effect"
import { NeuronModel, RestartWorkerAnswer } from "../domain/contract.js"
import { traceHeaders } from "../telemetry/TraceHeaders.js"
import { GatewayConfig } from "./GatewayConfig.js"
import { InFlight } from "./InFlight.js"
import * as M from "./Metrics.js"
import { NeuronClient, type NeuronError } from "./NeuronClient.js"
import { type NodeState, Poller } from "./Poller.js"
import { deviceGroup, profileOf } from "./Scheduler.js"

export type EvictionReason = "make_room" | "idle"

const key = (node: string, model: string) => `${node}\u0000${model}`
/** Free memory on one device group of a node (evicting elsewhere frees nothing there). */
const freeOf = (node: NodeState, group: string) =>
  node.devices.reduce((sum, d) => deviceGroup(d) === group ? sum + d.freeMb : sum, 0)

export class Evictor extends Effect.Service<Evictor>()("cortex/Evictor", {
  scoped: Effect.gen(function*() {
    const config = yield* GatewayConfig
    const poller = yield* Poller
    const inFlight = yield* InFlight
    const neuron = yield* NeuronClient
    const claims = new Set<string>()
    /** Loads and unloads per node since its worker last restarted. */
    const cycles = new Map<string, number>()
    /** Why each model was last unloaded (the next load's reason). */
    const unloadedBecause = new Map<string, EvictionReason>()
    /** Loads under way per node: no defragmentation there meanwhile. */
    const loadingOn = new Map<string, number>()

    const isClaimed = (node: string, model: string) => claims.has(key(node, model))
    const claim = (node: string, models: ReadonlyArray<string>) => {
      for (const m of models) claims.add(key(node, m))
    }
    const release = (node: string, models: ReadonlyArray<string>) => {
      for (const m of models) claims.delete(key(node, m))
    }
    const countCycle = (node: string) => cycles.set(node, (cycles.get(node) ?? 0) + 1)

    /**
     * Unload a replica the caller has claimed (no new requests go there). Requests this gateway
     * sent finish first (bounded by the load timeout), and the neuron drains its own too.
     */
    const unload = (node: NodeState, model: string, reason: EvictionReason) =>
      Effect.gen(function*() {
        const deadline = Date.now() + config.loadTimeoutSecs * 1000
        while (inFlight.busy(node.name, model) > 0 && Date.now() < deadline) yield* Effect.sleep("50 millis")
        yield* Effect.logInfo(`evicting ${model} from ${node.name} (${reason})`)
        yield* neuron.call(node.endpoint, "/models/unload", NeuronModel, {
          body: { model },
          timeoutMs: config.loadTimeoutSecs * 1000,
          headers: yield* traceHeaders
        })
        yield* Metric.increment(Metric.taggedWithLabels(M.evictions, [
          MetricLabel.make("model", model),
          MetricLabel.make("node", node.name),
          MetricLabel.make("reason", reason)
        ]))
        unloadedBecause.set(model, reason)
        countCycle(node.name)
        yield* poller.refresh(node.name)
      }).pipe(Effect.withSpan("gateway.eviction", {
        kind: "client",
        captureStackTrace: false,
        attributes: { "gen_ai.request.model": model, "cortex.node": node.name, "cortex.eviction_reason": reason }
      }))

    /**
     * Unload claimed `victims` from `nodeName` in order until `requiredMb` fits on `group`,
     * re-reading the group's free memory (less `heldByOthers()`, other loads' reservations there)
     * before each; the victims stay claimed (the caller releases them). Returns those unloaded.
     */
    const makeRoom = (
      nodeName: string,
      group: string,
      victims: ReadonlyArray<string>,
      requiredMb: number,
      heldByOthers: () => number
    ): Effect.Effect<Array<string>, NeuronError> =>
      Effect.gen(function*() {
        const evicted: Array<string> = []
        for (const victim of victims) {
          const current = (yield* poller.get).get(nodeName)
          if (current === undefined || freeOf(current, group) - heldByOthers() >= requiredMb) break
          yield* unload(current, victim, "make_room")
          evicted.push(victim)
        }
        return evicted
      })

    /** Run a load on `node`: no defragmentation there meanwhile; a load that succeeds counts a cycle. */
    const whileLoading = <A, E, R>(node: string, model: string, load: Effect.Effect<A, E, R>) =>
      Effect.acquireUseRelease(
        Effect.sync(() => loadingOn.set(node, (loadingOn.get(node) ?? 0) + 1)),
        () =>
          Effect.tap(load, () =>
            Effect.sync(() => {
              countCycle(node)
              unloadedBecause.delete(model)
            })),
        () =>
          Effect.sync(() => {
            const n = (loadingOn.get(node) ?? 1) - 1
            if (n <= 0) loadingOn.delete(node)
            else loadingOn.set(node, n)
          })
      )

    /** Unload models idle past their profile's idle_unload_secs (never pinned ones). */
    const idleSweep = Effect.gen(function*() {
      const state = yield* poller.get
      for (const node of state.values()) {
        if (!node.healthy) continue
        for (const m of node.models) {
          const profile = profileOf(config.models, m.id)
          if (m.status !== "loaded" || !profile?.idle_unload_secs || profile.pinned_on !== undefined) continue
          const used = Math.max(
            inFlight.lastUse(node.name, m.id),
            m.last_used_at ? Date.parse(m.last_used_at) : 0,
            m.loaded_at ? Date.parse(m.loaded_at) : 0
          )
          if (
            inFlight.busy(node.name, m.id) > 0 || m.in_flight > 0 ||
            Date.now() - used < profile.idle_unload_secs * 1000
          ) continue
          // Claim it as a plan would; one a plan has claimed already is that plan's to unload.
          yield* Effect.acquireUseRelease(
            Effect.sync(() => {
              if (isClaimed(node.name, m.id)) return false
              claim(node.name, [m.id])
              return true
            }),
            (claimed) =>
              claimed
                ? unload(node, m.id, "idle").pipe(
                  Effect.catchAll((e) => Effect.logWarning(`idle unload of ${m.id} failed: ${e._tag}`))
                )
                : Effect.void,
            (claimed) => claimed ? Effect.sync(() => release(node.name, [m.id])) : Effect.void
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
        const idle = node.models.every((m) => m.in_flight + m.queue_depth === 0 && inFlight.busy(node.name, m.id) === 0)
        if (!idle || (loadingOn.get(node.name) ?? 0) > 0) continue
        const result = yield* neuron.call(node.endpoint, "/admin/restart-worker", RestartWorkerAnswer, {
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

    const sweep = Effect.all([idleSweep, defrag], { discard: true })
    // Every second, the first a second after start (nothing is idle before then).
    yield* Effect.forkScoped(
      sweep.pipe(
        Effect.catchAllCause((cause) => Effect.logWarning("eviction sweep failed", cause)),
        Effect.delay("1 second"),
        Effect.forever
      )
    )

    return {
      isClaimed,
      claim,
      release,
      makeRoom,
      whileLoading,
      /** Why `model` was last unloaded, if it was. */
      unloadedBecause: (model: string): EvictionReason | undefined => unloadedBecause.get(model),
      /** One sweep now (idle unloads, then defragmentation); the service runs one every second. */
      sweep
    } as const
  }),
  dependencies: [Poller.Default, InFlight.Default, NeuronClient.Default]
}) {}
