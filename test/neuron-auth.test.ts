/** `api_token`: every route but /health needs the shared token, in the OpenAI envelope. */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import OpenAI from "openai"
import { type NeuronProcess, startNeuron } from "./fixtures/neuron.js"

let neuron: NeuronProcess
const TOKEN = "s3cret-token"

beforeAll(async () => {
  neuron = await startNeuron({ models: ["tiny"], toml: `api_token = "${TOKEN}"\n` })
})

afterAll(async () => {
  await neuron?.stop()
})

describe("api_token", () => {
  it("keeps /health public and guards the rest", async () => {
    expect((await fetch(`${neuron.url}/health`)).status).toBe(200)
    const denied = await fetch(`${neuron.url}/models`)
    expect(denied.status).toBe(401)
    expect((await denied.json() as any).error.type).toBe("authentication_error")
    const allowed = await fetch(`${neuron.url}/models`, { headers: { authorization: `Bearer ${TOKEN}` } })
    expect(allowed.status).toBe(200)
    const viaHeader = await fetch(`${neuron.url}/discovery`, { headers: { "x-api-key": TOKEN } })
    expect(viaHeader.status).toBe(200)
  })

  it("lets the SDK in with the token and reports a wrong one as AuthenticationError", async () => {
    const ok = new OpenAI({ baseURL: `${neuron.url}/v1`, apiKey: TOKEN, maxRetries: 0 })
    const res = await ok.chat.completions.create({
      model: "tiny",
      messages: [{ role: "user", content: "hi" }],
      temperature: 0,
      max_tokens: 2
    })
    expect(res.usage?.completion_tokens).toBe(2)
    const wrong = new OpenAI({ baseURL: `${neuron.url}/v1`, apiKey: "nope", maxRetries: 0 })
    const error = await wrong.models.list().catch((e) => e)
    expect(error).toBeInstanceOf(OpenAI.AuthenticationError)
  })
})
