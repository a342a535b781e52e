/**
 * Translated streams stay alive: while a model loads for a streamed Anthropic request, the client
 * receives `message_start` and then `ping` events (the neuron's SSE comments cannot pass through a
 * translator). The neuron holds every load 2.5 s (load_delay_ms), so pings are always needed.
 * Without a load, a long prompt's `message_start` knows its input size.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { type GatewayProcess, startGateway } from "./fixtures/gateway.js"
import { type NeuronProcess, postJson, startNeuron } from "./fixtures/neuron.js"

let neuron: NeuronProcess
let gateway: GatewayProcess

beforeAll(async () => {
  neuron = await startNeuron({
    models: ["bench", "tiny"],
    defaultModels: ["bench"],
    env: { NEURON_MAX_IN_FLIGHT: "1", NEURON_LOAD_DELAY_MS: "2500" }
  })
  gateway = await startGateway({ neurons: [{ name: "n1", url: neuron.url }] })
}, 180_000)

afterAll(async () => {
  await gateway?.stop()
  await neuron?.stop()
})

const events = async (res: Response) =>
  (await res.text()).split("\n\n").filter((b) => b.startsWith("event: ")).map((b) => ({
    type: b.slice(7, b.indexOf("\n")),
    data: JSON.parse(b.slice(b.indexOf("data: ") + 6))
  }))

describe("keep-alive through translation", () => {
  it("sends message_start, then pings, while the model loads; the stream then completes", async () => {
    const res = await postJson(`${gateway.url}/v1/messages`, {
      model: "tiny",
      max_tokens: 2,
      stream: true,
      messages: [{ role: "user", content: "hello" }]
    })
    expect(res.status).toBe(200)
    const types = (await events(res)).map((e) => e.type)
    expect(types[0]).toBe("message_start")
    // 2.5 s of loading at one keep-alive per second at most.
    expect(types.slice(0, types.indexOf("content_block_start")).filter((t) => t === "ping").length)
      .toBeGreaterThanOrEqual(1)
    expect(types.at(-1)).toBe("message_stop")
  })

  it("opens a loaded model's stream with a message_start that knows the input size", async () => {
    const prompt = Array.from({ length: 150 }, (_, i) => `line ${i} of a rather long document about nothing`).join("\n")
    const res = await postJson(`${gateway.url}/v1/messages`, {
      model: "bench",
      temperature: 0,
      max_tokens: 2,
      stream: true,
      messages: [{ role: "user", content: prompt }]
    })
    expect(res.status).toBe(200)
    const all = await events(res)
    expect(all[0]!.type).toBe("message_start")
    expect(all[0]!.data.message.usage.input_tokens + all[0]!.data.message.usage.cache_read_input_tokens)
      .toBeGreaterThan(2000)
    expect(all.at(-1)!.type).toBe("message_stop")
  })
})
