/**
 * Memory pre-flight: with `memory_budget_mb`, a load that cannot fit fails fast with 507 and a
 * request whose prompt cannot fit fails fast with 503 + Retry-After, both typed InsufficientVram.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import OpenAI from "openai"
import { getJson, type NeuronProcess, postJson, startNeuron } from "./fixtures/neuron.js"

let neuron: NeuronProcess
// tiny's estimate is ~45 MB with one sequence: one tiny fits, two do not, bench never does.
const BUDGET_MB = 80

beforeAll(async () => {
  neuron = await startNeuron({
    models: ["tiny", "tiny-b", "bench"],
    defaultModels: ["tiny"],
    toml: `memory_budget_mb = ${BUDGET_MB}\nmax_in_flight = 1\n`,
    // Each 1k prompt tokens needs 200 MB here: a long prompt cannot fit what tiny leaves free.
    env: { NEURON_PREFILL_BASE_MB: "1", NEURON_PREFILL_MB_PER_1K_TOKENS: "200" }
  })
})

afterAll(async () => {
  await neuron?.stop()
})

describe("memory pre-flight", () => {
  it("accounts the loaded model against the budget", async () => {
    const { body } = await getJson(`${neuron.url}/discovery`)
    expect(body.memory_budget_mb).toBe(BUDGET_MB)
    const models = (await getJson(`${neuron.url}/models`)).body
    const tiny = models.data.find((m: any) => m.id === "tiny")
    expect(models.devices[0].usedMb).toBe(tiny.memory_estimate_mb)
    expect(models.devices[0].freeMb).toBe(BUDGET_MB - tiny.memory_estimate_mb)
  })

  it("refuses a load that cannot fit with 507 and required/free figures, without trying it", async () => {
    const started = Date.now()
    const res = await postJson(`${neuron.url}/models/load`, { model: "bench" })
    expect(res.status).toBe(507)
    const body = await res.json() as any
    expect(body.error.code).toBe("insufficient_vram")
    expect(body.error.required_mb).toBeGreaterThan(body.error.free_mb)
    expect(Date.now() - started).toBeLessThan(5_000)
    const bench = (await getJson(`${neuron.url}/models`)).body.data.find((m: any) => m.id === "bench")
    expect(bench.status).toBe("available")
  })

  it("refuses a request whose prompt cannot fit with 503 + Retry-After, and still serves short ones", async () => {
    const client = new OpenAI({ baseURL: `${neuron.url}/v1`, apiKey: "x", maxRetries: 0 })
    const long = "hello world ".repeat(300)
    const error = await client.chat.completions.create({
      model: "tiny",
      messages: [{ role: "user", content: long }],
      temperature: 0,
      max_tokens: 2
    })
      .catch((e) => e)
    expect(error).toBeInstanceOf(OpenAI.APIError)
    expect(error.status).toBe(503)
    expect(error.code).toBe("insufficient_vram")
    expect(error.headers.get("retry-after")).not.toBeNull()
    expect(error.error.required_mb).toBeGreaterThan(error.error.free_mb)
    const ok = await client.chat.completions.create({
      model: "tiny",
      messages: [{ role: "user", content: "hi" }],
      temperature: 0,
      max_tokens: 2
    })
    expect(ok.usage?.completion_tokens).toBe(2)
  })

  it("does not let two concurrent loads both count the same free memory", async () => {
    expect((await postJson(`${neuron.url}/models/unload`, { model: "tiny" })).status).toBe(200)
    const estimate =
      (await getJson(`${neuron.url}/models`)).body.data.find((m: any) => m.id === "tiny").memory_estimate_mb
    expect(estimate * 2).toBeGreaterThan(BUDGET_MB)
    expect(estimate).toBeLessThanOrEqual(BUDGET_MB)
    const results = await Promise.all(
      ["tiny", "tiny-b"].map((model) => postJson(`${neuron.url}/models/load`, { model }))
    )
    expect(results.map((r) => r.status).sort()).toEqual([200, 507])
    const devices = (await getJson(`${neuron.url}/models`)).body.devices
    expect(devices[0].usedMb).toBeLessThanOrEqual(BUDGET_MB)
  })
})
