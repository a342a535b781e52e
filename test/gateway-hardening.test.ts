/**
 * Hostile clients against a real gateway in front of a real neuron: a 30 MB model name, a
 * thousand made-up model names, malformed tool definitions and deep JSON in both dialects.
 * Each is a 4xx in the route's envelope, /metrics stays small and renders, and the gateway
 * keeps serving.
 */
import Anthropic from "@anthropic-ai/sdk"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Redacted } from "effect"
import OpenAI from "openai"
import { findKey } from "../src/gateway/Auth.js"
import type { GatewayProcess } from "./fixtures/gateway.js"
import { LEAK } from "./fixtures/hostile.js"
import { getJson, postJson } from "./fixtures/neuron.js"
import { type Stack, startStack } from "./fixtures/stack.js"

let stack: Stack
let gateway: GatewayProcess
let openai: OpenAI
let anthropic: Anthropic

beforeAll(async () => {
  stack = await startStack({ models: ["tiny"], defaultModels: ["tiny"] }, {
    modelsToml: "[[models]]\nid = \"tiny\"\n[aliases]\n\"gpt-4o-mini\" = \"tiny\"\n"
  })
  ;({ anthropic, gateway, openai } = stack)
}, 180_000)

afterAll(() => stack?.stop())

const metricsText = async () => {
  const res = await fetch(gateway.metricsUrl)
  expect(res.status).toBe(200)
  return res.text()
}

const user = [{ role: "user" as const, content: "hi" }]

describe("hostile model names", () => {
  it("refuses a 30 MB model name with a 4xx, and /metrics still renders", async () => {
    const res = await postJson(`${gateway.url}/v1/chat/completions`, {
      model: "m".repeat(30_000_000),
      messages: user
    })
    expect(res.status).toBe(422)
    const body = await res.text()
    expect(body.length).toBeLessThan(2_000)
    expect(JSON.parse(body).error.param).toBe("model")
    expect((await metricsText()).length).toBeLessThan(1_000_000)
    expect(gateway.process.exitCode).toBeNull()
    expect((await getJson(`${gateway.url}/health`)).status).toBe(200)
  })

  it("keeps /metrics bounded under 1,000 distinct unknown model names", async () => {
    const before = (await metricsText()).length
    for (let i = 0; i < 1_000; i += 20) {
      await Promise.all(Array.from({ length: 20 }, async (_, j) => {
        const model = `unknown-${i + j}-${"x".repeat(200)}`
        const res = (i + j) % 2 === 0
          ? await postJson(`${gateway.url}/v1/chat/completions`, { model, messages: user })
          : await postJson(`${gateway.url}/v1/messages`, { model, max_tokens: 4, messages: user })
        expect(res.status).toBe(404)
        await res.arrayBuffer()
      }))
    }
    const after = await metricsText()
    expect(after).not.toContain("unknown-1-x")
    // One `model="unknown"` series per route and status, not one per name.
    expect(after).toMatch(/cortex_requests_total\{[^}]*model="unknown"/)
    console.log(`/metrics: ${before} bytes before, ${after.length} after 1,000 unknown names`)
    expect(after.length).toBeLessThan(before + 20_000)
  })

  it("labels requests by catalogue id, aliases included", async () => {
    const res = await openai.chat.completions.create({ model: "gpt-4o-mini", max_tokens: 2, messages: user })
    expect(res.model).toBeDefined()
    const text = await metricsText()
    expect(text).toMatch(/cortex_requests_total\{[^}]*model="tiny"[^}]*route="chat"/)
    expect(text).not.toMatch(/model="gpt-4o-mini"/)
  })
})

describe("malformed definitions and deep JSON, in each dialect's envelope", () => {
  const badTool = { type: "function" as const, function: { name: "get weather", parameters: { type: "object" } } }

  it("OpenAI: a tool name with a space, a null property schema, a bad response_format: 422 naming the field", async () => {
    for (
      const [extra, param] of [
        [{ tools: [badTool] }, "tools.0.function.name"],
        [{
          tools: [{
            type: "function",
            function: { name: "f", parameters: { type: "object", properties: { x: null } } }
          }]
        }, "tools.0.function.parameters.properties.x"],
        [{
          response_format: {
            type: "json_schema",
            json_schema: { name: "x", schema: { type: "object", properties: { a: null } } }
          }
        }, "response_format.json_schema.schema.properties.a"]
      ] as const
    ) {
      const error = await openai.chat.completions.create({ model: "tiny", messages: user, ...extra } as any)
        .catch((e: unknown) => e)
      expect(error).toBeInstanceOf(OpenAI.UnprocessableEntityError)
      expect((error as InstanceType<typeof OpenAI.APIError>).param).toBe(param)
    }
  })

  it("Anthropic: a bad input_schema and a deep system prompt are invalid_request_error", async () => {
    const bad = await anthropic.messages.create({
      model: "tiny",
      max_tokens: 4,
      messages: user,
      tools: [{ name: "f", input_schema: { type: "object", properties: { x: null } } as any }]
    }).catch((e: unknown) => e)
    expect(bad).toBeInstanceOf(Anthropic.BadRequestError)
    expect(JSON.stringify((bad as InstanceType<typeof Anthropic.APIError>).error)).toContain("invalid_request_error")

    const deep = "[".repeat(10_000) + "\"x\"" + "]".repeat(10_000)
    const res = await fetch(`${gateway.url}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
      body: `{"model":"tiny","max_tokens":4,"system":${deep},"messages":[{"role":"user","content":"hi"}]}`
    })
    expect(res.status).toBe(400)
    const body = await res.text()
    expect(JSON.parse(body).error.type).toBe("invalid_request_error")
    expect(body).not.toMatch(LEAK)
  })

  it("keeps serving afterwards", async () => {
    const res = await openai.chat.completions.create({ model: "tiny", max_tokens: 2, messages: user })
    expect(res.usage?.completion_tokens).toBe(2)
  })
})

describe("API keys", () => {
  const keys = [
    { key: Redacted.make("sk-alpha-0123456789"), name: "alpha" },
    { key: Redacted.make("sk-beta-0123456789"), name: "beta" }
  ]
  it("finds a key by digest, whatever the length of a wrong guess", () => {
    expect(findKey(keys, "sk-beta-0123456789")?.name).toBe("beta")
    expect(findKey(keys, "sk-alpha-0123456789")?.name).toBe("alpha")
    expect(findKey(keys, "sk-beta-0123456788")).toBeUndefined()
    expect(findKey(keys, "sk")).toBeUndefined()
    expect(findKey(keys, "x".repeat(10_000))).toBeUndefined()
    expect(findKey([], "sk-alpha-0123456789")).toBeUndefined()
  })
})
