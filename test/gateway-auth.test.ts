/**
 * require_auth: keys in both dialects, a public /health, and the principal the gateway stamps
 * for the neuron's fair share (a client cannot pick its own).
 */
import Anthropic from "@anthropic-ai/sdk"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import OpenAI from "openai"
import { type GatewayProcess, startGateway } from "./fixtures/gateway.js"
import { type NeuronProcess, postJson, readSse, startNeuron } from "./fixtures/neuron.js"

let neuron: NeuronProcess
let gateway: GatewayProcess
const ALICE = "sk-alice-0123456789"
const BOB = "sk-bob-0123456789"

beforeAll(async () => {
  neuron = await startNeuron({ models: ["tiny"], defaultModels: ["tiny"], env: { NEURON_MAX_PER_PRINCIPAL: "1" } })
  gateway = await startGateway({
    neurons: [{ name: "n1", url: neuron.url }],
    modelsToml: `[[models]]\nid = "tiny"\nsampling = { temperature = 0 }\n`,
    extraToml:
      `[auth]\nrequire_auth = true\n[[auth.keys]]\nkey = "${ALICE}"\nname = "alice"\n[[auth.keys]]\nkey = "${BOB}"\nname = "bob"\n`
  })
}, 120_000)

afterAll(async () => {
  await gateway?.stop()
  await neuron?.stop()
})

describe("require_auth", () => {
  it("refuses missing and unknown keys with 401 in each dialect; /health stays public", async () => {
    expect((await fetch(`${gateway.url}/health`)).status).toBe(200)
    const openaiError = await new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: "sk-wrong", maxRetries: 0 })
      .chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "x" }] }).catch((e) => e)
    expect(openaiError).toBeInstanceOf(OpenAI.AuthenticationError)
    const anthropicError = await new Anthropic({ baseURL: gateway.url, apiKey: "sk-wrong", maxRetries: 0 })
      .messages.create({ model: "tiny", max_tokens: 2, messages: [{ role: "user", content: "x" }] })
      .catch((e) => e)
    expect(anthropicError).toBeInstanceOf(Anthropic.AuthenticationError)
    expect(anthropicError.error.error.type).toBe("authentication_error")
    const admin = await fetch(`${gateway.url}/admin/status`)
    expect(admin.status).toBe(401)
  })

  it("serves known keys by Bearer and x-api-key", async () => {
    const viaBearer = await new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: ALICE, maxRetries: 0 })
      .chat.completions.create({
        model: "tiny",
        messages: [{ role: "user", content: "x" }],
        temperature: 0,
        max_tokens: 2
      })
    expect(viaBearer.usage?.completion_tokens).toBe(2)
    const viaHeader = await new Anthropic({ baseURL: gateway.url, apiKey: BOB, maxRetries: 0 })
      .messages.create({ model: "tiny", max_tokens: 2, messages: [{ role: "user", content: "x" }] })
    expect(viaHeader.usage.output_tokens).toBe(2)
  })

  it("stamps the key's principal for fair share and ignores a client's own principal header", async () => {
    const controller = new AbortController()
    const long = await postJson(
      `${gateway.url}/v1/chat/completions`,
      {
        model: "tiny",
        stream: true,
        temperature: 0,
        max_tokens: 4000,
        messages: [{ role: "user", content: "long" }]
      },
      { authorization: `Bearer ${ALICE}`, "x-cortex-principal": "someone-else" },
      controller.signal
    )
    let started: () => void
    const first = new Promise<void>((resolve) => (started = resolve))
    const reading = readSse(long, () => started()).catch(() => [])
    await first
    // Alice again, pretending to be another principal: still Alice, over her share of one.
    const again = await postJson(`${gateway.url}/v1/chat/completions`, {
      model: "tiny",
      temperature: 0,
      max_tokens: 2,
      messages: [{ role: "user", content: "x" }]
    }, { authorization: `Bearer ${ALICE}`, "x-cortex-principal": "bob" })
    expect(again.status).toBe(429)
    expect((await again.json() as any).error.code).toBe("principal_limit")
    // Bob has his own share.
    const bob = await postJson(`${gateway.url}/v1/chat/completions`, {
      model: "tiny",
      temperature: 0,
      max_tokens: 2,
      messages: [{ role: "user", content: "x" }]
    }, { authorization: `Bearer ${BOB}` })
    expect(bob.status).toBe(200)
    controller.abort()
    await reading
  })
})
