import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import * as Admission from "../src/neuron/Admission.js"

type Op =
  | { readonly kind: "admit"; readonly principal: string }
  | { readonly kind: "leave"; readonly pick: number; readonly unknown: boolean }

const limitsArb: fc.Arbitrary<Admission.Limits> = fc.record({
  maxInFlight: fc.integer({ min: 1, max: 4 }),
  maxQueueDepth: fc.integer({ min: 0, max: 5 }),
  maxPerPrincipal: fc.option(fc.integer({ min: 1, max: 4 }), { nil: undefined })
})

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.record({ kind: fc.constant("admit" as const), principal: fc.constantFrom("a", "b", "c") })
  },
  {
    weight: 2,
    arbitrary: fc.record({ kind: fc.constant("leave" as const), pick: fc.nat(), unknown: fc.boolean() })
  }
)

const ticket = (id: number, principal: string): Admission.Ticket => ({ id, principal })
const ids = (tickets: ReadonlyArray<Admission.Ticket>) => tickets.map((t) => t.id)
const count = (tickets: ReadonlyArray<Admission.Ticket>, principal: string) =>
  tickets.filter((t) => t.principal === principal).length

const checkInvariants = (
  state: Admission.State,
  limits: Admission.Limits,
  present: ReadonlyMap<number, string>
) => {
  expect(state.running.length).toBeLessThanOrEqual(limits.maxInFlight)
  expect(state.queue.length).toBeLessThanOrEqual(limits.maxQueueDepth)
  if (state.running.length < limits.maxInFlight) expect(state.queue).toHaveLength(0)
  if (limits.maxPerPrincipal !== undefined) {
    for (const principal of new Set(present.values())) {
      expect(count(state.running, principal) + count(state.queue, principal)).toBeLessThanOrEqual(
        limits.maxPerPrincipal
      )
    }
  }
  // Every admitted-and-not-left ticket sits in exactly one place, with its own principal.
  const all = [...state.running, ...state.queue]
  expect(new Set(ids(all)).size).toBe(all.length)
  expect([...ids(all)].sort((x, y) => x - y)).toEqual([...present.keys()].sort((x, y) => x - y))
  for (const t of all) expect(t.principal).toBe(present.get(t.id))
}

/**
 * Replays a promotion: each started ticket must be, at its turn, the earliest queued ticket whose
 * principal holds the fewest running seats.
 */
const checkPromotionOrder = (
  before: Admission.State,
  started: ReadonlyArray<Admission.Ticket>
) => {
  let running = [...before.running]
  let queue = [...before.queue]
  for (const next of started) {
    const load = (p: string) => count(running, p)
    const minLoad = Math.min(...queue.map((t) => load(t.principal)))
    const expected = queue.find((t) => load(t.principal) === minLoad)
    expect(next).toEqual(expected)
    running = [...running, next]
    queue = queue.filter((t) => t.id !== next.id)
  }
}

describe("Admission", () => {
  it.prop(
    "keeps its invariants over random admit/leave sequences",
    [limitsArb, fc.array(opArb, { maxLength: 60 })],
    ([limits, ops]) => {
      let state = Admission.empty
      let nextId = 1
      const present = new Map<number, string>()
      const issued: Array<number> = []
      for (const op of ops) {
        if (op.kind === "admit") {
          const id = nextId++
          const t = ticket(id, op.principal)
          const seatFree = state.running.length < limits.maxInFlight && state.queue.length === 0
          const held = count(state.running, op.principal) + count(state.queue, op.principal)
          const [decision, after] = Admission.admit(state, limits, t)
          switch (decision) {
            case "run":
              expect(seatFree).toBe(true)
              expect(after.running).toEqual([...state.running, t])
              expect(after.queue).toEqual(state.queue)
              present.set(id, op.principal)
              issued.push(id)
              break
            case "queue":
              expect(seatFree).toBe(false)
              expect(after.queue).toEqual([...state.queue, t])
              expect(after.running).toEqual(state.running)
              present.set(id, op.principal)
              issued.push(id)
              break
            case "queue_full":
              expect(seatFree).toBe(false)
              expect(state.queue.length).toBeGreaterThanOrEqual(limits.maxQueueDepth)
              expect(after).toBe(state)
              break
            case "principal_limit":
              expect(limits.maxPerPrincipal).toBeDefined()
              expect(held).toBeGreaterThanOrEqual(limits.maxPerPrincipal!)
              expect(after).toBe(state)
              break
          }
          // A ticket is refused for its principal only when the principal is really at its limit.
          if (limits.maxPerPrincipal !== undefined && held < limits.maxPerPrincipal) {
            expect(decision).not.toBe("principal_limit")
          }
          if (seatFree && (limits.maxPerPrincipal === undefined || held < limits.maxPerPrincipal)) {
            expect(decision).toBe("run")
          }
          state = after
        } else {
          const id = op.unknown || issued.length === 0 ? -1 - op.pick : issued[op.pick % issued.length]!
          const wasRunning = Admission.isRunning(state, id)
          const wasQueued = state.queue.some((t) => t.id === id)
          const [started, after] = Admission.leave(state, limits, id)
          if (!wasRunning && !wasQueued) {
            expect(started).toEqual([])
            expect(after).toEqual(state)
          } else {
            expect(Admission.isRunning(after, id)).toBe(false)
            expect(after.queue.some((t) => t.id === id)).toBe(false)
            // A freed seat goes to the queue; leaving the queue frees no seat.
            expect(started.length).toBe(wasRunning && state.queue.length > 0 ? 1 : 0)
            const removed = {
              running: state.running.filter((t) => t.id !== id),
              queue: state.queue.filter((t) => t.id !== id)
            }
            checkPromotionOrder(removed, started)
            expect(after.running).toEqual([...removed.running, ...started])
          }
          present.delete(id)
          state = after
        }
        checkInvariants(state, limits, present)
      }
    },
    { fastCheck: { numRuns: 300 } }
  )

  it.prop(
    "promote fills every free seat, preferring principals with fewer running seats",
    [
      fc.integer({ min: 1, max: 6 }),
      fc.array(fc.constantFrom("a", "b", "c"), { maxLength: 4 }),
      fc.array(fc.constantFrom("a", "b", "c"), { maxLength: 8 })
    ],
    ([maxInFlight, runningPrincipals, queuedPrincipals]) => {
      const limits: Admission.Limits = { maxInFlight, maxQueueDepth: 8, maxPerPrincipal: undefined }
      let id = 0
      const state: Admission.State = {
        running: runningPrincipals.slice(0, maxInFlight).map((p) => ticket(id++, p)),
        queue: queuedPrincipals.map((p) => ticket(id++, p))
      }
      const [started, after] = Admission.promote(state, limits)
      const free = maxInFlight - state.running.length
      expect(started).toHaveLength(Math.min(free, state.queue.length))
      checkPromotionOrder(state, started)
      expect(after.running).toEqual([...state.running, ...started])
      expect(after.queue).toEqual(state.queue.filter((t) => !started.includes(t)))
    },
    { fastCheck: { numRuns: 300 } }
  )

  it("gives a freed seat to the principal holding fewer seats, not the earliest arrival", () => {
    const limits: Admission.Limits = { maxInFlight: 2, maxQueueDepth: 4, maxPerPrincipal: undefined }
    const steps: Array<[string, Admission.Ticket]> = [
      ["run", ticket(1, "busy")],
      ["run", ticket(2, "busy")],
      ["queue", ticket(3, "busy")],
      ["queue", ticket(4, "busy")],
      ["queue", ticket(5, "quiet")]
    ]
    let state = Admission.empty
    for (const [expected, t] of steps) {
      const [decision, next] = Admission.admit(state, limits, t)
      expect(decision).toBe(expected)
      state = next
    }
    const [started, after] = Admission.leave(state, limits, 1)
    expect(ids(started)).toEqual([5])
    expect(ids(after.running)).toEqual([2, 5])
    expect(ids(after.queue)).toEqual([3, 4])
    // With equal loads, arrival order decides.
    const [startedNext, last] = Admission.leave(after, limits, 2)
    expect(ids(startedNext)).toEqual([3])
    expect(ids(last.queue)).toEqual([4])
  })

  it("recomputes the preference after each seat it fills", () => {
    const limits: Admission.Limits = { maxInFlight: 3, maxQueueDepth: 4, maxPerPrincipal: undefined }
    const state: Admission.State = {
      running: [],
      queue: [ticket(1, "a"), ticket(2, "a"), ticket(3, "a"), ticket(4, "b")]
    }
    const [started, after] = Admission.promote(state, limits)
    expect(ids(started)).toEqual([1, 4, 2])
    expect(ids(after.queue)).toEqual([3])
  })

  it("refuses with queue_full once seats and queue are taken", () => {
    const limits: Admission.Limits = { maxInFlight: 1, maxQueueDepth: 2, maxPerPrincipal: undefined }
    let state = Admission.empty
    const decisions: Array<Admission.Decision> = []
    for (let id = 1; id <= 5; id++) {
      const [decision, next] = Admission.admit(state, limits, ticket(id, `p${id}`))
      decisions.push(decision)
      state = next
    }
    expect(decisions).toEqual(["run", "queue", "queue", "queue_full", "queue_full"])
    expect(ids(state.running)).toEqual([1])
    expect(ids(state.queue)).toEqual([2, 3])
    // Leaving the queue makes room for one more.
    const [started, shorter] = Admission.leave(state, limits, 2)
    expect(started).toEqual([])
    expect(Admission.admit(shorter, limits, ticket(6, "p6"))[0]).toBe("queue")
  })

  it("refuses with principal_limit counting seats and queue places together", () => {
    const limits: Admission.Limits = { maxInFlight: 1, maxQueueDepth: 10, maxPerPrincipal: 2 }
    let state = Admission.empty
    const admitAs = (id: number, principal: string) => {
      const [decision, next] = Admission.admit(state, limits, ticket(id, principal))
      state = next
      return decision
    }
    expect(admitAs(1, "a")).toBe("run")
    expect(admitAs(2, "a")).toBe("queue")
    expect(admitAs(3, "a")).toBe("principal_limit")
    // Another principal is unaffected.
    expect(admitAs(4, "b")).toBe("queue")
    expect(ids(state.queue)).toEqual([2, 4])
    // Once one of a's tickets leaves, a may queue again.
    const [started, next] = Admission.leave(state, limits, 1)
    state = next
    expect(ids(started)).toEqual([2])
    expect(admitAs(5, "a")).toBe("queue")
    expect(admitAs(6, "a")).toBe("principal_limit")
  })

  it("ignores a leave for an unknown id", () => {
    const limits: Admission.Limits = { maxInFlight: 1, maxQueueDepth: 2, maxPerPrincipal: undefined }
    const [, one] = Admission.admit(Admission.empty, limits, ticket(1, "a"))
    const [, two] = Admission.admit(one, limits, ticket(2, "a"))
    const [started, after] = Admission.leave(two, limits, 99)
    expect(started).toEqual([])
    expect(after).toEqual(two)
  })
})
