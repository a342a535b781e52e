/**
 * The worker's streamed pieces (worker/coalesce.ts): the first goes at once, pieces within the
 * window share the next message, nothing is lost, reordered or mixed between choices and kinds.
 * Timers and the clock are fake: this checks the policy, not timings.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "@effect/vitest"
import { coalescer } from "../src/neuron/worker/coalesce.js"
import type { ChunkMessage } from "../src/neuron/worker/protocol.js"

let sent: Array<ChunkMessage>
const make = (windowMs: number) => coalescer(7, windowMs, (m) => sent.push(m), () => Date.now())
const lp = (token: string) => ({ token, logprob: -1, bytes: [], top_logprobs: [] })

beforeEach(() => {
  vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "Date"] })
  sent = []
})
afterEach(() => {
  vi.useRealTimers()
})

describe("stream coalescing", () => {
  it("sends the first piece at once and joins the pieces within the window into one message", () => {
    const c = make(10)
    c.push(0, "content", "Once")
    expect(sent).toEqual([{ _tag: "chunk", id: 7, kind: "content", text: "Once" }])
    vi.advanceTimersByTime(2)
    c.push(0, "content", " upon")
    vi.advanceTimersByTime(3)
    c.push(0, "content", " a")
    expect(sent).toHaveLength(1)
    vi.advanceTimersByTime(5)
    expect(sent).toEqual([
      { _tag: "chunk", id: 7, kind: "content", text: "Once" },
      { _tag: "chunk", id: 7, kind: "content", text: " upon a" }
    ])
  })

  it("sends a piece after a quiet window at once", () => {
    const c = make(10)
    c.push(0, "content", "a")
    vi.advanceTimersByTime(50)
    c.push(0, "content", "b")
    expect(sent.map((m) => m.text)).toEqual(["a", "b"])
  })

  it("keeps choices and kinds apart and in order, and appends log-probabilities", () => {
    const c = make(10)
    c.push(0, "reasoning", "think")
    c.push(0, "reasoning", "ing", [lp("ing")])
    c.push(0, "content", "x", [lp("x")])
    c.push(0, "content", "y", [lp("y")])
    c.push(1, "content", "z")
    c.flush()
    expect(sent).toEqual([
      { _tag: "chunk", id: 7, kind: "reasoning", text: "think" },
      { _tag: "chunk", id: 7, kind: "reasoning", text: "ing", choice: 0, logprobs: [lp("ing")] },
      { _tag: "chunk", id: 7, kind: "content", text: "xy", choice: 0, logprobs: [lp("x"), lp("y")] },
      { _tag: "chunk", id: 7, kind: "content", text: "z", choice: 1 }
    ])
  })

  it("flush sends what is held at once (before the job's result) and leaves no timer behind", () => {
    const c = make(10)
    c.push(0, "content", "a")
    c.push(0, "content", "b")
    c.push(0, "content", "c")
    c.flush()
    expect(sent.map((m) => m.text)).toEqual(["a", "bc"])
    expect(vi.getTimerCount()).toBe(0)
    c.flush()
    expect(sent).toHaveLength(2)
  })

  it("sends every piece alone with a window of 0", () => {
    const c = make(0)
    for (const t of ["a", "b", "c"]) c.push(0, "content", t)
    expect(sent.map((m) => m.text)).toEqual(["a", "b", "c"])
    expect(vi.getTimerCount()).toBe(0)
  })
})
