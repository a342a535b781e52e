/**
 * Hardening (issue #8), the neuron under pressure: a worker crash answers the requests queued
 * behind it at once, and a multi-MB prompt is refused without holding up another client.
 * Serves `bench` (slow enough on one thread that a generation stays in flight while we probe).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { chatAs, getJson, modelStatus, type NeuronProcess, readSse, startNeuron, waitFor } from "./fixtures/neuron.js"

let neuron: NeuronProcess
const MAX_WAIT_SECS = 30

beforeAll(async () => {
  neuron = await startNeuron({
    models: ["bench"],
    defaultModels: ["bench"],
    env: {
      NEURON_MAX_IN_FLIGHT: "1",
      NEURON_MAX_QUEUE_DEPTH: "4",
      NEURON_MAX_WAIT_SECS: String(MAX_WAIT_SECS),
      NEURON_CONTEXT_SIZE: "4096"
    }
  })
}, 180_000)

afterAll(async () => {
  await neuron?.stop("SIGKILL")
})

const chat = (principal: string, body: Record<string, unknown>, signal?: AbortSignal) =>
  chatAs(neuron.url, principal, { temperature: 0, ...body }, signal)

const health = async () => (await getJson(`${neuron.url}/health`)).body

describe("worker crash with requests queued", () => {
  it("answers the queued request at once with 503 model_recovering + Retry-After, then recovers", async () => {
    const running = await chat("alice", { stream: true, max_tokens: 3000 })
    expect(running.status).toBe(200)
    let firstContent: () => void
    const started = new Promise<void>((resolve) => (firstContent = resolve))
    const events = readSse(running, (data) => {
      if (/"content":"[^"]/.test(data)) firstContent()
    }).catch(() => [])
    await started

    const queuedAt = Date.now()
    const queued = chat("bob", { max_tokens: 2 })
    await waitFor("bob queued", async () => (await health()).queued === 1 ? true : undefined)

    const pid = (await getJson(`${neuron.url}/models`)).body.devices[0].worker.pid as number
    const killedAt = Date.now()
    process.kill(pid, "SIGKILL")

    const res = await queued
    const answeredAfter = Date.now() - killedAt
    console.log(`queued request answered ${answeredAfter} ms after the worker was killed`)
    expect(res.status).toBe(503)
    expect(res.headers.get("retry-after")).not.toBeNull()
    const body = await res.json() as any
    expect(body.error.code).toBe("model_recovering")
    expect(body.error.message).toMatch(/crashed/)
    // Well before max_wait_secs: the crash, not the queue timeout, answered it.
    expect(Date.now() - queuedAt).toBeLessThan((MAX_WAIT_SECS * 1000) / 3)

    // The running stream ends with an in-band error, never [DONE].
    const data = (await events).filter((e) => e.type === "data").map((e) => e.value)
    expect(data).not.toContain("[DONE]")
    expect(JSON.parse(data.at(-1)!).error.code).toBe("worker_crashed")

    await waitFor(
      "bench recovered",
      async () => (await modelStatus(neuron.url, "bench")) === "loaded" ? true : undefined
    )
    expect((await health()).queued).toBe(0)
    const after = await chat("bob", { max_tokens: 2 })
    expect(after.status).toBe(200)
    expect((await after.json() as any).usage.completion_tokens).toBe(2)
  })
})

describe("a prompt far over the context", () => {
  const huge = "hello world ".repeat(Math.ceil(5_000_000 / 12))

  it("is refused with 400 context_length_exceeded while another client's small request is served", async () => {
    const t0 = Date.now()
    const big = chat("mallory", { max_tokens: 2, messages: [{ role: "user", content: huge }] })
      .then(async (res) => ({ res, body: await res.json() as any, ms: Date.now() - t0 }))
    const small = chat("alice", { max_tokens: 2, messages: [{ role: "user", content: "hi" }] })
      .then(async (res) => ({ res, body: await res.json() as any, ms: Date.now() - t0 }))
    const [b, s] = await Promise.all([big, small])
    console.log(`5 MB prompt refused after ${b.ms} ms; the small request answered after ${s.ms} ms`)
    expect(b.res.status).toBe(400)
    expect(b.body.error.type).toBe("invalid_request_error")
    expect(b.body.error.code).toBe("context_length_exceeded")
    expect(b.body.error.limit).toBe(4096)
    expect(b.body.error.requested).toBeGreaterThan(4096)
    expect(s.res.status).toBe(200)
    expect(s.body.usage.completion_tokens).toBe(2)
  })

  it("is refused as a plain HTTP 400 on a streaming request too", async () => {
    const res = await chat("mallory", { stream: true, max_tokens: 2, messages: [{ role: "user", content: huge }] })
    expect(res.status).toBe(400)
    expect((await res.json() as any).error.code).toBe("context_length_exceeded")
  })

  it("keeps the exact count for a prompt just over the context (tokenized, not estimated)", async () => {
    // ~5,000 tokens in ~30 kB: under the byte bound, so the worker counts it exactly.
    const res = await chat("mallory", {
      max_tokens: 2,
      messages: [{ role: "user", content: "hello world ".repeat(2500) }]
    })
    expect(res.status).toBe(400)
    const body = await res.json() as any
    expect(body.error.code).toBe("context_length_exceeded")
    expect(body.error.requested).toBeGreaterThan(4096)
    expect(body.error.requested).toBeLessThan(10_000)
    expect((await health()).in_flight).toBe(0)
  })
})
