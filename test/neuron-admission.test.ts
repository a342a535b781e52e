/**
 * Admission, keep-alive, disconnects and graceful shutdown against a real neuron serving the
 * `bench` model (slow enough on one thread that generations stay in flight while we probe).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { chatAs, getJson, type NeuronProcess, readSse, startNeuron, waitFor } from "./fixtures/neuron.js"

let neuron: NeuronProcess

beforeAll(async () => {
  neuron = await startNeuron({
    models: ["bench"],
    defaultModels: ["bench"],
    env: {
      NEURON_MAX_IN_FLIGHT: "1",
      NEURON_MAX_QUEUE_DEPTH: "1",
      NEURON_MAX_WAIT_SECS: "2",
      NEURON_MAX_PER_PRINCIPAL: "1",
      NEURON_CONTEXT_SIZE: "4096",
      NEURON_DRAIN_SECS: "20"
    }
  })
}, 180_000)

afterAll(async () => {
  await neuron?.stop("SIGKILL")
})

const chat = (principal: string, body: Record<string, unknown>, signal?: AbortSignal) =>
  chatAs(neuron.url, principal, { ...body }, signal)

const health = async () => (await getJson(`${neuron.url}/health`)).body

/** Start a long streamed generation and resolve once its first content arrives. */
const longStream = async (principal: string, controller: AbortController) => {
  const res = await chat(principal, { stream: true, temperature: 0, max_tokens: 3000 }, controller.signal)
  expect(res.status).toBe(200)
  let firstContent: () => void
  const started = new Promise<void>((resolve) => (firstContent = resolve))
  const events = readSse(res, (data) => {
    if (data.includes("\"content\":\"") && !data.includes("\"content\":\"\"")) firstContent()
  }).catch(() => [])
  await started
  // Wrapped: returning the promise itself would make the caller wait for the whole stream.
  return { events }
}

describe("admission", () => {
  it("queues, refuses a full queue (429), a greedy principal (429) and a long wait (503), all with Retry-After", async () => {
    const a = new AbortController()
    await longStream("alice", a)
    expect((await health()).in_flight).toBe(1)

    // Alice already holds her one seat.
    const greedy = await chat("alice", { temperature: 0, max_tokens: 2 })
    expect(greedy.status).toBe(429)
    expect(greedy.headers.get("retry-after")).not.toBeNull()
    expect((await greedy.json() as any).error.code).toBe("principal_limit")

    // Bob queues (non-streaming) ...
    const bob = chat("bob", { temperature: 0, max_tokens: 2 })
    await waitFor("bob queued", async () => (await health()).queued === 1 ? true : undefined)
    // ... so Carol finds the queue full.
    const carol = await chat("carol", { temperature: 0, max_tokens: 2 })
    expect(carol.status).toBe(429)
    expect(carol.headers.get("retry-after")).not.toBeNull()
    expect((await carol.json() as any).error.code).toBe("queue_full")

    // Bob waited past max_wait_secs while Alice still decodes.
    const bobRes = await bob
    expect(bobRes.status).toBe(503)
    expect(bobRes.headers.get("retry-after")).not.toBeNull()
    expect((await bobRes.json() as any).error.code).toBe("queue_timeout")
    expect((await health()).queued).toBe(0)

    a.abort()
    await waitFor("seat freed", async () => (await health()).in_flight === 0 ? true : undefined, 5_000)
  })

  it("keeps a queued stream alive with comments, and a client that hangs up while queued frees its place", async () => {
    const a = new AbortController()
    await longStream("alice", a)
    const d = new AbortController()
    const res = await chat("dave", { stream: true, temperature: 0, max_tokens: 5 }, d.signal)
    expect(res.status).toBe(200)
    let dataSeen = 0
    let comment: () => void
    const commented = new Promise<void>((resolve) => (comment = resolve))
    const events = readSse(res, () => dataSeen++, () => comment()).catch(() => [])
    await commented
    // Still waiting for Alice's seat: a keep-alive came, no tokens did.
    expect(dataSeen).toBe(0)
    expect((await health()).queued).toBe(1)
    d.abort()
    await events
    await waitFor("queue emptied", async () => (await health()).queued === 0 ? true : undefined, 3_000)
    a.abort()
    await waitFor("seat freed", async () => (await health()).in_flight === 0 ? true : undefined, 5_000)
  })

  it("stops generating when a decoding client disconnects, and the seat goes to the next request", async () => {
    const a = new AbortController()
    await longStream("alice", a)
    const next = chat("erin", { temperature: 0, max_tokens: 3 })
    await waitFor("erin queued", async () => (await health()).queued === 1 ? true : undefined)
    const hungUpAt = Date.now()
    a.abort()
    const res = await next
    expect(res.status).toBe(200)
    expect((await res.json() as any).usage.completion_tokens).toBe(3)
    // Erin got the seat long before Alice's 3000 tokens could have finished (~15 s at 200 tok/s).
    expect(Date.now() - hungUpAt).toBeLessThan(5_000)
    await waitFor("idle", async () => (await health()).in_flight === 0 ? true : undefined, 5_000)
  })

  it("frees the seat of a client that hangs up during a long prefill, and stops that prefill", async () => {
    const prompt = Array.from({ length: 150 }, (_, i) => `line ${i} of another long document about something`).join(
      "\n"
    )
    const p = new AbortController()
    const res = await chat(
      "paul",
      { stream: true, temperature: 0, max_tokens: 50, messages: [{ role: "user", content: prompt }] },
      p.signal
    )
    expect(res.status).toBe(200)
    const reading = readSse(res).catch(() => [])
    await waitFor("paul in flight", async () => (await health()).in_flight === 1 ? true : undefined)
    await new Promise((r) => setTimeout(r, 300))
    const hungUpAt = Date.now()
    p.abort()
    await reading
    await waitFor("seat freed", async () => (await health()).in_flight === 0 ? true : undefined, 10_000)
    const freedAfter = Date.now() - hungUpAt
    const next = await chat("quinn", { temperature: 0, max_tokens: 2 })
    expect(next.status).toBe(200)
    expect((await next.json() as any).usage.completion_tokens).toBe(2)
    // Prefill stops within one 512-token window; the whole prompt takes seconds on one thread.
    expect(freedAfter).toBeLessThan(2_500)
  })
})

describe("keep-alive", () => {
  it("never leaves a stream silent for more than about a second while a long prompt prefills", async () => {
    // ~2,600 tokens of the bench vocabulary: one to several seconds of prefill on one thread.
    const prompt = Array.from({ length: 150 }, (_, i) => `line ${i} of a rather long document about nothing`).join("\n")
    const started = Date.now()
    const res = await chat("frank", {
      stream: true,
      temperature: 0,
      max_tokens: 2,
      messages: [{ role: "user", content: prompt }]
    })
    expect(res.status).toBe(200)
    const events = await readSse(res)
    const firstContent = events.findIndex((e) => e.type === "data" && /"content":"[^"]/.test(e.value))
    const usage = JSON.parse(events.filter((e) => e.type === "data").at(-2)!.value).usage
    expect(usage.prompt_tokens).toBeGreaterThan(2000)
    // Gaps between anything the client received, up to the first token, stay near one second.
    let previous = started
    for (const e of events.slice(0, firstContent + 1)) {
      expect(e.at - previous).toBeLessThan(1_600)
      previous = e.at
    }
    if (usage.timing.prefill_ms > 1_200) {
      expect(events.slice(0, firstContent).some((e) => e.type === "comment")).toBe(true)
    }
  })
})

describe("graceful shutdown", () => {
  it("on SIGTERM refuses new work with 503, lets the in-flight stream finish, and exits 0", async () => {
    const res = await chat("gina", { stream: true, temperature: 0, max_tokens: 300 })
    let firstContent: () => void
    const started = new Promise<void>((resolve) => (firstContent = resolve))
    const events = readSse(res, (data) => {
      if (/"content":"[^"]/.test(data)) firstContent()
    })
    await started
    neuron.process.kill("SIGTERM")
    const refused = await waitFor("a 503 while draining", async () => {
      const r = await chat("hank", { temperature: 0, max_tokens: 1 })
      return r.status === 503 ? r : undefined
    }, 5_000)
    expect((await refused.json() as any).error.code).toBe("shutting_down")
    const data = (await events).filter((e) => e.type === "data").map((e) => e.value)
    expect(data.at(-1)).toBe("[DONE]")
    expect(JSON.parse(data.at(-2)!).usage.completion_tokens).toBe(300)
    const exit = await neuron.exited
    expect(exit.code).toBe(0)
    expect(neuron.logs()).toMatch(/draining/)
  })
})
