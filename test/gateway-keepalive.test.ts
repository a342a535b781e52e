/**
 * Translated streams stay alive: while the bench model prefills a long prompt, an Anthropic
 * client receives `ping` events (the neuron's SSE comments cannot pass through a translator).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { type GatewayProcess, startGateway } from "./fixtures/gateway.js"
import { type NeuronProcess, postJson, startNeuron } from "./fixtures/neuron.js"

let neuron: NeuronProcess
let gateway: GatewayProcess

beforeAll(async () => {
  neuron = await startNeuron({ models: ["bench"], defaultModels: ["bench"], env: { NEURON_MAX_IN_FLIGHT: "1" } })
  gateway = await startGateway({ neurons: [{ name: "n1", url: neuron.url }] })
}, 180_000)

afterAll(async () => {
  await gateway?.stop()
  await neuron?.stop()
})

describe("keep-alive through translation", () => {
  it("sends Anthropic pings during a long prefill, after a message_start that knows the input size", async () => {
    const prompt = Array.from({ length: 150 }, (_, i) => `line ${i} of a rather long document about nothing`).join("\n")
    const started = Date.now()
    const res = await postJson(`${gateway.url}/v1/messages`, {
      model: "bench",
      temperature: 0,
      max_tokens: 2,
      stream: true,
      messages: [{ role: "user", content: prompt }]
    })
    expect(res.status).toBe(200)
    const text = await res.text()
    const events = text.split("\n\n").filter((b) => b.startsWith("event: ")).map((b) => ({
      type: b.slice(7, b.indexOf("\n")),
      data: JSON.parse(b.slice(b.indexOf("data: ") + 6))
    }))
    const types = events.map((e) => e.type)
    expect(types[0]).toBe("message_start")
    expect(events[0]!.data.message.usage.input_tokens + events[0]!.data.message.usage.cache_read_input_tokens)
      .toBeGreaterThan(2000)
    expect(types.at(-1)).toBe("message_stop")
    const firstDelta = types.indexOf("content_block_delta")
    const elapsed = Date.now() - started
    // The prompt takes seconds to prefill on one thread: pings came before the first token.
    if (elapsed > 2_000) expect(types.slice(0, firstDelta).filter((t) => t === "ping").length).toBeGreaterThan(0)
  })
})
