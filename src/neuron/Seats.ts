/**
 * Seats on loaded models: per-model admission (the pure state machine in Admission.ts) with
 * state, waiters and cancellation-safe accounting. A seat is held for the life of the caller's
 * scope and given back on success, failure or interruption (a client that hangs up during
 * prefill frees its seat). Queued requests wait on a `Deferred` each; refusing them (a crash,
 * an unload, shutdown) completes those at once. Draining stops admission and waits, bounded,
 * for the running ones, signalled by the registry's `changed`.
 */
import { Deferred, Effect, Exit, type Scope } from "effect"
import { ModelUnavailable, Overloaded, ShuttingDown } from "../domain/errors.js"
import * as Admission from "./Admission.js"
import type { DeviceWorker } from "./DeviceWorker.js"
import { DeviceWorkers } from "./DeviceWorkers.js"
import { engineOf, type Entry, ModelRegistry } from "./ModelRegistry.js"
import { NeuronConfig } from "./NeuronConfig.js"

/** Who asks, and whether a model on disk may be loaded for them (the gateway places loads itself). */
export interface Caller {
  readonly principal: string
  readonly autoLoad?: boolean
}

export interface Seat {
  readonly model: string
  readonly worker: DeviceWorker
  readonly contextSize: number
  readonly maxTokenBytes: number
  readonly freeMb: number
  readonly device: string
  readonly queueMs: number
  /** Sequences this request holds (several for a request with n choices). */
  readonly seats: number
}

export class Seats extends Effect.Service<Seats>()("cortex/Seats", {
  effect: Effect.gen(function*() {
    const config = yield* NeuronConfig
    const registry = yield* ModelRegistry
    const workers = yield* DeviceWorkers
    let draining = false
    let nextTicket = 1

    const limits: Admission.Limits = {
      maxInFlight: config.maxInFlight,
      maxQueueDepth: config.maxQueueDepth,
      maxPerPrincipal: config.maxPerPrincipal
    }

    /** Wake every queued request of a model with a refusal; `take` answers it from the model's status. */
    const refuseQueued = (e: Entry, why: string) => {
      for (const t of e.admission.queue) {
        const waiter = e.waiters.get(t.id)
        if (waiter) Deferred.unsafeDone(waiter, Exit.die(why))
      }
    }

    /** Refuse the queued requests and forget the model's seats (a crash, or a finished unload). */
    const reset = (e: Entry, why: string) =>
      Effect.sync(() => {
        refuseQueued(e, why)
        e.admission = Admission.empty
      }).pipe(Effect.zipRight(registry.changed))

    const leave = (e: Entry, ticket: number) =>
      Effect.sync(() => {
        const [started, next] = Admission.leave(e.admission, limits, ticket)
        e.admission = next
        e.waiters.delete(ticket)
        for (const t of started) {
          const waiter = e.waiters.get(t.id)
          if (waiter) Deferred.unsafeDone(waiter, Exit.void)
        }
      }).pipe(Effect.zipRight(registry.changed))

    /** The worker serving a loaded model and its limits, without taking a seat (tokenizing needs none). */
    const peek = (e: Entry, queueMs = 0, seats = 1): Seat => {
      const worker = workers.worker(e.device!)!
      return {
        model: e.file.id,
        worker: workers.workerFor(e.device!, engineOf(e))!,
        contextSize: e.loaded!.contextSize,
        maxTokenBytes: e.loaded!.maxTokenBytes,
        // A request's memory is split across the group as the model is.
        freeMb: registry.groupFreeMb(worker),
        device: worker.id,
        queueMs,
        seats
      }
    }

    /**
     * A loaded model whose worker has just died is recovering already: the exit is seen (and the
     * worker's jobs failed) before the crash event reaches the Loader, and a seat freed by a
     * failed job must not start a queued request on a dead worker.
     */
    const servable = (e: Entry) => {
      const down = e.device !== undefined ? workers.workerFor(e.device, engineOf(e))?.down : undefined
      return down
        ? Effect.fail(new ModelUnavailable({ model: e.file.id, state: "recovering", detail: down.message }))
        : Effect.void
    }

    /**
     * A seat on the loaded model `e` for the life of the current scope: now, after a wait in the
     * bounded queue, or a fast refusal. `wanted` > 1 takes several sequences at once (clamped to
     * max_in_flight), for n choices. `arrived` is when the request came in (queue_ms counts from it).
     */
    const take = (
      e: Entry,
      caller: Caller,
      wanted: number,
      arrived: number
    ): Effect.Effect<Seat, ModelUnavailable | Overloaded | ShuttingDown, Scope.Scope> =>
      Effect.gen(function*() {
        const id = e.file.id
        yield* servable(e)
        const seats = Math.max(1, Math.min(wanted, limits.maxInFlight))
        const ticket: Admission.Ticket = seats === 1
          ? { id: nextTicket++, principal: caller.principal }
          : { id: nextTicket++, principal: caller.principal, seats }
        const [decision, next] = Admission.admit(e.admission, limits, ticket)
        if (decision === "queue_full" || decision === "principal_limit") {
          return yield* new Overloaded({ model: id, reason: decision, retry_after_secs: 1 })
        }
        e.admission = next
        yield* Effect.addFinalizer(() => leave(e, ticket.id))
        if (decision === "queue") {
          const waiter = yield* Deferred.make<void>()
          e.waiters.set(ticket.id, waiter)
          const admitted = yield* Deferred.await(waiter).pipe(
            Effect.as(true),
            Effect.catchAllCause(() => Effect.succeed(false)),
            Effect.timeoutTo({
              duration: `${config.maxWaitSecs} seconds`,
              onTimeout: () => "timeout" as const,
              onSuccess: (ok) => ok
            })
          )
          if (draining) return yield* new ShuttingDown()
          if (admitted === "timeout") {
            return yield* new Overloaded({ model: id, reason: "queue_timeout", retry_after_secs: 2 })
          }
          if (!admitted || e.status !== "loaded") {
            return yield* new ModelUnavailable({
              model: id,
              state: e.status,
              ...(e.status === "recovering" && e.error ? { detail: e.error } : {})
            })
          }
          yield* servable(e)
        }
        e.lastUsedAt = Date.now()
        return peek(e, Date.now() - arrived, seats)
      })

    const busy = (e: Entry) => e.admission.running.length + e.admission.queue.length > 0

    /** Wait (bounded) until no request runs on `e`; queued ones should be refused first. */
    const awaitIdle = (e: Entry) =>
      registry.waitUntil(() => e.admission.running.length === 0, `${config.drainSecs} seconds`)

    /** Stop admitting, refuse the queued, wait (bounded) for running requests to finish. */
    const drain = Effect.gen(function*() {
      draining = true
      // Queued requests would only wait to be cut off: refuse them now.
      for (const e of registry.entries()) refuseQueued(e, "shutting down")
      const anyBusy = () => [...registry.entries()].some(busy)
      if (anyBusy()) yield* Effect.logInfo("draining in-flight requests")
      yield* registry.waitUntil(() => !anyBusy(), `${config.drainSecs} seconds`)
    })

    const totals = () => {
      let inFlight = 0
      let queued = 0
      for (const e of registry.entries()) {
        inFlight += Admission.seatsInUse(e.admission)
        queued += e.admission.queue.length
      }
      return { inFlight, queued }
    }

    return {
      take,
      peek,
      refuseQueued,
      reset,
      busy,
      awaitIdle,
      drain,
      totals,
      isDraining: () => draining
    } as const
  }),
  dependencies: [ModelRegistry.Default, DeviceWorkers.Default]
}) {}
