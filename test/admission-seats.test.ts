/**
 * Admission with tickets that need several seats (a request for n choices holds up to n
 * sequences): the seats in use never pass max_in_flight, nothing waits while its seats are free,
 * and the ticket chosen to go next is not overtaken by smaller ones.
 */
import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import * as Admission from "../src/neuron/Admission.js"

const limits: Admission.Limits = { maxInFlight: 4, maxQueueDepth: 8, maxPerPrincipal: undefined }

type Op =
  | { readonly kind: "admit"; readonly principal: string; readonly seats: number }
  | { readonly kind: "leave"; readonly pick: number }

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    kind: fc.constant("admit" as const),
    principal: fc.constantFrom("a", "b"),
    seats: fc.integer({ min: 1, max: 4 })
  }),
  fc.record({ kind: fc.constant("leave" as const), pick: fc.nat() })
)

describe("Admission with multi-seat tickets", () => {
  it("runs a ticket for 2 seats only when 2 are free, and keeps it ahead of later small ones", () => {
    let state = Admission.empty
    let decision: Admission.Decision
    ;[decision, state] = Admission.admit(state, limits, { id: 1, principal: "a", seats: 3 })
    expect(decision).toBe("run")
    ;[decision, state] = Admission.admit(state, limits, { id: 2, principal: "b", seats: 2 })
    expect(decision).toBe("queue")
    ;[decision, state] = Admission.admit(state, limits, { id: 3, principal: "b" })
    expect(decision).toBe("queue")
    expect(Admission.seatsInUse(state)).toBe(3)
    const [started, after] = Admission.leave(state, limits, 1)
    expect(started.map((t) => t.id)).toEqual([2, 3])
    expect(Admission.seatsInUse(after)).toBe(3)
  })

  it.prop("never uses more seats than max_in_flight, and never leaves seats idle with a fitting head", [
    fc.array(opArb, { maxLength: 60 })
  ], ([ops]) => {
    let state = Admission.empty
    let nextId = 1
    for (const op of ops) {
      if (op.kind === "admit") {
        ;[, state] = Admission.admit(state, limits, { id: nextId++, principal: op.principal, seats: op.seats })
      } else if (state.running.length + state.queue.length > 0) {
        const all = [...state.running, ...state.queue]
        ;[, state] = Admission.leave(state, limits, all[op.pick % all.length]!.id)
      }
      expect(Admission.seatsInUse(state)).toBeLessThanOrEqual(limits.maxInFlight)
      // Nothing is queued while every seat is free.
      if (state.running.length === 0) expect(state.queue).toHaveLength(0)
    }
  })
})
