/**
 * Fleet lifecycle against real processes: neurons with memory budgets that hold two tiny models
 * (~45 MB each with one sequence), so a third forces an eviction.
 */
import Anthropic from "@anthropic-ai/sdk"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import OpenAI from "openai"
import { type GatewayProcess, startGateway } from "./fixtures/gateway.js"
import { getJson, type NeuronProcess, postJson, readSse, startNeuron } from "./fixtures/neuron.js"

let solo: NeuronProcess
let slow: NeuronProcess
let gateway: GatewayProcess
let openai: OpenAI

const MODELS = `
[[models]]
id = "a"
file = "tiny"
sampling = { temperature = 0 }
[[models]]
id = "b"
file = "tiny-b"
sampling = { temperature = 0 }
[[models]]
id = "c"
file = "tiny-c"
sampling = { temperature = 0 }
[[models]]
id = "high"
file = "tiny-d"
residency_priority = 500
sampling = { temperature = 0 }
[[models]]
id = "pinned"
file = "tiny-e"
pinned_on = "solo"
sampling = { temperature = 0 }
[[models]]
id = "slow"
file = "tiny-f"
idle_unload_secs = 3
sampling = { temperature = 0 }
[[models]]
id = "bad"
file = "broken"
`

beforeAll(async () => {
  const common = { NEURON_MAX_IN_FLIGHT: "1", NEURON_MEMORY_BUDGET_MB: "100" }
  ;[solo, slow] = await Promise.all([
    startNeuron({ models: ["tiny", "tiny-b", "tiny-c", "tiny-d", "tiny-e", "broken"], env: common }),
    startNeuron({ models: ["tiny-f"], env: { ...common, NEURON_LOAD_DELAY_MS: "2500" } })
  ])
  gateway = await startGateway({
    neurons: [{ name: "solo", url: solo.url }, { name: "slow", url: slow.url }],
    modelsToml: MODELS,
    extraToml: "[eviction]\nstrategy = \"lru\"\nmin_resident_secs = 0\nmax_swap_wait_secs = 0\n"
  })
  openai = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: "x", maxRetries: 0 })
}, 180_000)

afterAll(async () => {
  await gateway?.stop()
  await Promise.all([solo?.stop(), slow?.stop()])
})

const ask = (model: string) =>
  openai.chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 2 })
const resident = async () =>
  ((await getJson(`${solo.url}/models`)).body.data as Array<{ id: string; status: string }>)
    .filter((m) => m.status === "loaded").map((m) => m.id).sort()
const lastLoad = async () => (await getJson(`${gateway.url}/admin/status`)).body.recent_loads.at(-1)
const unload = (model: string) => postJson(`${gateway.url}/admin/unload`, { model })

describe("cold loads and eviction", () => {
  it("loads on first request, without evicting while memory suffices", async () => {
    expect((await ask("a")).usage?.completion_tokens).toBe(2)
    expect(await lastLoad()).toMatchObject({ model: "a", node: "solo", reason: "first_load", evicted: [] })
    await ask("b")
    expect(await lastLoad()).toMatchObject({ model: "b", evicted: [] })
    expect(await resident()).toEqual(["tiny", "tiny-b"])
  })

  it("evicts the least recently used model to make room", async () => {
    await ask("a") // b is now the least recently used
    await ask("c")
    expect(await lastLoad()).toMatchObject({ model: "c", evicted: ["tiny-b"] })
    expect(await resident()).toEqual(["tiny", "tiny-c"])
  })

  it("lets equal classes displace each other both ways", async () => {
    await ask("a") // c is now the LRU one
    await ask("b")
    expect(await lastLoad()).toMatchObject({ model: "b", reason: "after_eviction", evicted: ["tiny-c"] })
    await ask("a") // b is now the LRU one
    await ask("c")
    expect(await lastLoad()).toMatchObject({ model: "c", reason: "after_eviction", evicted: ["tiny-b"] })
  })

  it("never evicts a higher class or a pinned model for a lower one", async () => {
    await Promise.all([unload("a"), unload("b"), unload("c")])
    await ask("high")
    await ask("pinned")
    expect(await resident()).toEqual(["tiny-d", "tiny-e"])
    const refused = await ask("a").catch((e) => e)
    expect(refused).toBeInstanceOf(OpenAI.APIError)
    expect(refused.status).toBe(503)
    expect(refused.headers.get("retry-after")).not.toBeNull()
    expect(await resident()).toEqual(["tiny-d", "tiny-e"])
    // With the pinned one gone, a class-100 model evicts its equal, still never the higher one.
    await unload("pinned")
    await ask("a")
    await ask("b")
    expect(await lastLoad()).toMatchObject({ model: "b", evicted: ["tiny"] })
    expect(await resident()).toEqual(["tiny-b", "tiny-d"])
  })

  it("lets a request in flight on the chosen victim finish before the victim is unloaded", async () => {
    // Residents: high (class 500) and b. Only b may make room for c, and b is busy.
    const stream = await postJson(`${gateway.url}/v1/chat/completions`, {
      model: "b",
      stream: true,
      max_tokens: 3000,
      messages: [{ role: "user", content: "long" }]
    })
    let started: () => void
    const first = new Promise<void>((resolve) => (started = resolve))
    const events = readSse(stream, () => started())
    await first
    const c = await ask("c")
    expect(c.usage?.completion_tokens).toBe(2)
    const data = (await events).filter((e) => e.type === "data").map((e) => e.value)
    expect(data.at(-1)).toBe("[DONE]")
    expect(JSON.parse(data.at(-2)!).usage.completion_tokens).toBe(3000)
    expect(await lastLoad()).toMatchObject({ model: "c", evicted: ["tiny-b"] })
  })
})

describe("slow loads", () => {
  it("keeps streaming clients alive while their model loads, and shows the load in progress", async () => {
    const started = Date.now()
    const res = await postJson(`${gateway.url}/v1/chat/completions`, {
      model: "slow",
      stream: true,
      max_tokens: 2,
      messages: [{ role: "user", content: "hi" }]
    })
    expect(res.status).toBe(200)
    let sawLoad = false
    const probe = setInterval(async () => {
      const health = (await getJson(`${gateway.url}/health`)).body
      if (health.loads_in_progress.some((l: any) => l.model === "slow" && l.node === "slow")) sawLoad = true
    }, 200)
    const events = await readSse(res)
    clearInterval(probe)
    expect(Date.now() - started).toBeGreaterThan(2_500)
    const comments = events.filter((e) => e.type === "comment")
    expect(comments.length).toBeGreaterThanOrEqual(2)
    expect(events.filter((e) => e.type === "data").at(-1)?.value).toBe("[DONE]")
    expect(sawLoad).toBe(true)
  })

  it("sends Anthropic pings while a model loads", async () => {
    await unload("slow")
    const res = await postJson(`${gateway.url}/v1/messages`, {
      model: "slow",
      stream: true,
      max_tokens: 2,
      messages: [{ role: "user", content: "hi" }]
    })
    const text = await res.text()
    const types = text.split("\n\n").filter((b) => b.startsWith("event: ")).map((b) => b.slice(7, b.indexOf("\n")))
    expect(types.filter((t) => t === "ping").length).toBeGreaterThanOrEqual(2)
    expect(types.at(-1)).toBe("message_stop")
  })
})

describe("idle unload", () => {
  it("unloads a model idle past its profile's idle_unload_secs, and counts it", async () => {
    await ask("slow")
    const status = async () =>
      ((await getJson(`${slow.url}/models`)).body.data as Array<{ id: string; status: string }>)
        .find((m) => m.id === "tiny-f")?.status
    expect(await status()).toBe("loaded")
    const deadline = Date.now() + 15_000
    while ((await status()) !== "available" && Date.now() < deadline) await new Promise((r) => setTimeout(r, 250))
    expect(await status()).toBe("available")
    const metrics = await (await fetch(gateway.metricsUrl)).text()
    expect(metrics).toMatch(/cortex_evictions_total\{[^}]*model="tiny-f"[^}]*reason="idle"[^}]*\} 1/)
    expect(metrics).toMatch(/cortex_model_load_seconds_count\{[^}]*model="slow"/)
    expect(metrics).toMatch(/cortex_model_load_wait_seconds_count\{[^}]*model="slow"/)
  })
})

describe("failed loads", () => {
  it("reaches the client as an error in its own dialect", async () => {
    const error = await ask("bad").catch((e) => e)
    expect(error).toBeInstanceOf(OpenAI.InternalServerError)
    expect(error.code).toBe("model_load_failed")
    const anthropic = new Anthropic({ baseURL: gateway.url, apiKey: "x", maxRetries: 0 })
    const refused = await anthropic.messages.create({
      model: "bad",
      max_tokens: 2,
      messages: [{ role: "user", content: "x" }]
    })
      .catch((e) => e)
    expect(refused).toBeInstanceOf(Anthropic.APIError)
    expect(refused.error.type).toBe("error")
    expect(refused.status).toBeGreaterThanOrEqual(500)
  })
})
