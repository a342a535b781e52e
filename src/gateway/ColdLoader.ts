/**
 * Cold loads on demand, single-flight per model. Deciding is fleet-wide and serial (the plan
 * lock): a snapshot is taken, `planLoad` (Scheduler.ts) decides, and a Load plan reserves its
 * memory and claims its victims (Evictor) before the lock is let go. Waiting is not serial: the
 * victims are drained and unloaded (Evictor.makeRoom) and the model loaded outside the lock, so a
 * load on another node never queues behind a victim's long stream. A Wait plan (busy or
 * just-loaded victims, a load or unload under way) plans again shortly, so models contending for
 * a node are served in batches rather than swapped on every request.
 */
import { Deferred, Effect, Fiber, Metric, MetricLabel } from "effect"
import { NeuronModel } from "../domain/contract.js"
import { type ApiError, ModelUnavailable, UpstreamError } from "../domain/errors.js"
import { traceHeaders } from "../telemetry/TraceHeaders.js"
import type { CatalogueModel } from "./Catalogue.js"
import { Evictor } from "./Evictor.js"
import { GatewayConfig } from "./GatewayConfig.js"
import { InFlight } from "./InFlight.js"
import * as M from "./Metrics.js"
import { describeNeuronError, NeuronClient, type NeuronError } from "./NeuronClient.js"
import { Poller } from "./Poller.js"
import { Pulls } from "./Pulls.js"
import { planLoad, type Reservation, reservedOn, type SchedulerSettings } from "./Scheduler.js"

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
  group: string | undefined
  victims: ReadonlyArray<string>
}

export class ColdLoader extends Effect.Service<ColdLoader>()("cortex/ColdLoader", {
  effect: Effect.gen(function*() {
    const config = yield* GatewayConfig
    const poller = yield* Poller
    const inFlight = yield* InFlight
    const evictor = yield* Evictor
    const neuron = yield* NeuronClient
    const pulls = yield* Pulls
    const history: Array<LoadRecord> = []
    // Planning runs one at a time across the fleet: two loads planned from the same poll would
    // otherwise both spend the same free memory, or evict the same model.
    const planLock = yield* Effect.makeSemaphore(1)
    /** Memory held for loads in flight, per node and group: the poll cannot see it yet. */
    const reserved = new Map<string, Map<string, Reservation>>()
    const loads = new Map<string, {
      readonly deferred: Deferred.Deferred<string, ApiError>
      node: string | null
      readonly since: number
      waiters: number
    }>()
    // Getters: a config reload (LiveConfig.ts) changes profiles and eviction settings.
    const settings: SchedulerSettings = {
      get profiles() {
        return config.models
      },
      get strategy() {
        return config.eviction.strategy
      },
      get minResidentMs() {
        return config.eviction.minResidentSecs * 1000
      },
      get loadTimeoutMs() {
        return config.loadTimeoutSecs * 1000
      }
    }

    const neuronError = (model: string) => (error: NeuronError): ApiError =>
      error._tag === "NeuronRefused"
        ? new UpstreamError({ upstreamStatus: error.status, upstreamBody: error.body, retryAfter: error.retryAfter })
        : new ModelUnavailable({ model, state: "unavailable", detail: `${error.node}: ${describeNeuronError(error)}` })

    const labels = (model: string, node: string) => [MetricLabel.make("model", model), MetricLabel.make("node", node)]

    /** Let go of everything a load holds: its claimed victims and its memory reservation. */
    const releaseHold = (model: string, hold: Hold) =>
      Effect.sync(() => {
        if (hold.node === undefined) return
        evictor.release(hold.node, hold.victims)
        reserved.get(hold.node)?.delete(model)
        hold.node = undefined
        hold.victims = []
      })

    /** The load call itself, in its own span (the neuron's load span continues it). */
    const callLoad = (
      model: CatalogueModel,
      nodeName: string,
      group: string,
      reason: LoadReason,
      evicted: ReadonlyArray<string>
    ) =>
      Effect.gen(function*() {
        const node = (yield* poller.get).get(nodeName)!
        const profile = model.profile
        return yield* neuron.call(node.endpoint, "/models/load", NeuronModel, {
          body: {
            model: model.neuronId,
            // The neuron loads on the group placement chose (its devices' memory was counted).
            ...(node.devices.some((d) => d.group !== undefined) ? { group } : {}),
            ...(profile?.context_size !== undefined ? { context_size: profile.context_size } : {})
          },
          timeoutMs: config.loadTimeoutSecs * 1000,
          headers: yield* traceHeaders
        })
      }).pipe(
        Effect.withSpan("gateway.model_load", {
          kind: "client",
          captureStackTrace: false,
          attributes: {
            "gen_ai.request.model": model.id,
            "cortex.node": nodeName,
            "cortex.device_group": group,
            "cortex.load_reason": reason,
            "cortex.evicted": evicted.join(",")
          }
        }),
        Effect.mapError(neuronError(model.id)),
        // The reservation (released by the caller) ends after this, once the poll can see the model.
        Effect.ensuring(poller.refresh(nodeName))
      )

    /** Carry out a Load plan outside the lock: unload the victims still needed, then load. */
    const drainAndLoad = (
      model: CatalogueModel,
      nodeName: string,
      group: string,
      hold: Hold,
      required: number,
      started: number
    ) =>
      Effect.gen(function*() {
        const victims = hold.victims
        const evicted = yield* evictor.makeRoom(
          nodeName,
          group,
          victims,
          required,
          () => reservedOn(reserved, nodeName, model.neuronId, group)
        ).pipe(
          Effect.mapError(neuronError(model.id)),
          // Victims not unloaded serve again at once.
          Effect.ensuring(Effect.sync(() => {
            evictor.release(nodeName, victims)
            hold.victims = []
          }))
        )
        const last = evictor.unloadedBecause(model.neuronId)
        const reason: LoadReason = last === "idle" ? "after_idle_unload" : last ? "after_eviction" : "first_load"
        const loadStarted = Date.now()
        yield* Effect.logInfo(
          `loading ${model.id} on ${nodeName} ${group} (${reason}${
            evicted.length > 0 ? `, evicted ${evicted.join(", ")}` : ""
          })`
        )
        yield* evictor.whileLoading(nodeName, model.neuronId, callLoad(model, nodeName, group, reason, evicted))
        const loadMs = Date.now() - loadStarted
        yield* Metric.update(Metric.taggedWithLabels(M.modelLoad, labels(model.id, nodeName)), loadMs / 1000)
        yield* Metric.update(
          Metric.taggedWithLabels(M.modelLoadWait, labels(model.id, nodeName)),
          (loadStarted - started) / 1000
        )
        inFlight.markUsed(nodeName, model.neuronId)
        history.push({
          model: model.id,
          node: nodeName,
          reason,
          evicted,
          wait_ms: loadStarted - started,
          load_ms: loadMs,
          at: new Date().toISOString()
        })
        if (history.length > 100) history.shift()
        return nodeName
      })

    /** One decision under the plan lock, on fresh figures; a Load plan is held before the lock goes. */
    const planOnce = (model: CatalogueModel, hold: Hold, started: number, swapDeadline: number) =>
      planLock.withPermits(1)(Effect.gen(function*() {
        // A poll from moments ago can still show a finished request: re-read the nodes that hold it.
        const holders = [...(yield* poller.get).values()].filter((n) => n.models.some((m) => m.id === model.neuronId))
        yield* Effect.forEach(holders, (n) => poller.refresh(n.name), { concurrency: "unbounded", discard: true })
        const plan = planLoad({ model, started, swapDeadline }, {
          fleet: yield* poller.get,
          reserved,
          claimed: evictor.isClaimed,
          inFlight: inFlight.busy,
          lastUse: inFlight.lastUse,
          now: Date.now()
        }, settings)
        if (plan._tag === "Load") {
          // One synchronous step, recorded in `hold`, so however the load ends it lets them go.
          const onNode = reserved.get(plan.node) ?? new Map<string, Reservation>()
          onNode.set(model.neuronId, { mb: plan.requiredMb, group: plan.group })
          reserved.set(plan.node, onNode)
          evictor.claim(plan.node, plan.evict)
          hold.node = plan.node
          hold.group = plan.group
          hold.victims = plan.evict
        }
        return plan
      }))

    /** Plan until the plan is to load (or to refuse), then carry it out. Returns the node's name. */
    const loadNow = (named: CatalogueModel, entry: { node: string | null }) => {
      const hold: Hold = { node: undefined, group: undefined, victims: [] }
      return Effect.gen(function*() {
        const started = Date.now()
        // An `hf:` model on no disk yet is sized from its repository (src/gateway/Pulls.ts).
        const model = yield* pulls.sized(named)
        const swapDeadline = started + config.eviction.maxSwapWaitSecs * 1000
        for (;;) {
          const plan = yield* planOnce(model, hold, started, swapDeadline)
          if (plan._tag === "Refuse") return yield* Effect.fail(plan.error)
          if (plan.node !== undefined) entry.node = plan.node
          if (plan._tag === "Load") {
            return yield* drainAndLoad(model, plan.node, plan.group, hold, plan.requiredMb, started)
          }
          yield* Effect.sleep("100 millis")
          if (plan.node !== undefined) yield* poller.refresh(plan.node)
        }
      }).pipe(Effect.ensuring(releaseHold(named.neuronId, hold)))
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

    return {
      ensureLoaded,
      /** The last 100 loads, oldest first. */
      history: () => [...history],
      loadsInProgress: (): Array<LoadInProgress> =>
        [...loads.entries()].map(([model, l]) => ({
          model,
          node: l.node,
          since: new Date(l.since).toISOString(),
          waiters: l.waiters
        }))
    } as const
  }),
  dependencies: [Poller.Default, InFlight.Default, Evictor.Default, NeuronClient.Default, Pulls.Default]
}) {}
