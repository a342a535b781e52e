/**
 * Requests as real agent clients send them, through a real gateway to a real neuron: Claude
 * Code's current request shape (system turns inside `messages` with cache_control, adaptive
 * thinking, output_config, context_management, a dozen tools, streaming), the models API in
 * each SDK's shape, and Anthropic structured outputs.
 */
import Anthropic from "@anthropic-ai/sdk"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import OpenAI from "openai"
import type { GatewayProcess } from "./fixtures/gateway.js"
import { type Stack, startStack } from "./fixtures/stack.js"

let stack: Stack
let gateway: GatewayProcess
let openai: OpenAI
let anthropic: Anthropic

beforeAll(async () => {
  // Loads take 2 s more: a cold load of tiny-b outlasts the stream's head start.
  stack = await startStack({
    models: ["tiny", "tiny-b"],
    defaultModels: ["tiny"],
    env: { NEURON_LOAD_DELAY_MS: "2000" }
  }, {
    modelsToml: [
      "[[models]]\nid = \"tiny\"\nsampling = { temperature = 0 }",
      "[[models]]\nid = \"tiny-b\"",
      "[aliases]\n\"claude-sonnet-5-5\" = \"tiny\""
    ].join("\n")
  })
  ;({ anthropic, gateway, openai } = stack)
}, 180_000)

afterAll(() => stack?.stop())

const tools = Array.from({ length: 12 }, (_, i) => ({
  name: [
    "Bash",
    "Read",
    "Edit",
    "Write",
    "Glob",
    "Grep",
    "WebFetch",
    "TodoWrite",
    "Task",
    "NotebookEdit",
    "mcp__ide__getDiagnostics",
    "ExitPlanMode"
  ][i]!,
  description: `Tool number ${i}: does one thing well.`,
  input_schema: {
    type: "object",
    $schema: "http://json-schema.org/draft-07/schema#",
    additionalProperties: false,
    properties: {
      command: { type: "string", description: "what to run" },
      timeout: { type: "number" },
      options: { type: "array", items: { type: "object", properties: { flag: { type: "boolean" } } } }
    },
    required: ["command"]
  }
}))

/** The shape current Claude Code (2.1.x) sends: captured fields, small texts. */
const claudeCodeRequest = (stream: boolean) => ({
  model: "claude-sonnet-5-5",
  max_tokens: 16,
  stream,
  system: [
    { type: "text", text: "You are Claude Code, Anthropic's official CLI for Claude." },
    { type: "text", text: "Be concise.", cache_control: { type: "ephemeral" } }
  ],
  messages: [
    { role: "user", content: [{ type: "text", text: "list the files" }] },
    {
      role: "system",
      content: [{
        type: "text",
        text: "<system-reminder>todo list is empty</system-reminder>",
        cache_control: { type: "ephemeral" }
      }]
    },
    { role: "assistant", content: [{ type: "tool_use", id: "toolu_1", name: "Bash", input: { command: "ls" } }] },
    {
      role: "user",
      content: [{
        type: "tool_result",
        tool_use_id: "toolu_1",
        content: "a.txt\nb.txt",
        cache_control: { type: "ephemeral" }
      }]
    }
  ],
  tools,
  thinking: { type: "adaptive" },
  output_config: { effort: "medium" },
  context_management: { edits: [{ type: "clear_thinking_20251015", keep: "all" }] },
  metadata: { user_id: "user_abc_account_def_session_123" }
})

describe("Claude Code's current requests", () => {
  it("answers a non-streamed request with system turns inside messages", async () => {
    const res = await fetch(`${gateway.url}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "unused" },
      body: JSON.stringify(claudeCodeRequest(false))
    })
    const body = await res.json() as any
    expect(res.status, JSON.stringify(body)).toBe(200)
    expect(body.type).toBe("message")
    expect(body.model).toBe("claude-sonnet-5-5")
    expect(body.usage.input_tokens + body.usage.cache_read_input_tokens).toBeGreaterThan(100)
  })

  it("streams well-ordered events: message_start first, then blocks, message_delta, message_stop", async () => {
    const stream = anthropic.messages.stream(claudeCodeRequest(true) as any)
    const types: Array<string> = []
    for await (const event of stream) types.push(event.type)
    expect(types[0]).toBe("message_start")
    expect(types.at(-1)).toBe("message_stop")
    expect(types.at(-2)).toBe("message_delta")
    expect(types.filter((t) => t === "content_block_start").length)
      .toBe(types.filter((t) => t === "content_block_stop").length)
    const final = await stream.finalMessage()
    expect(final.usage.output_tokens).toBeGreaterThan(0)
  })
})

describe("Anthropic streams during a cold load", () => {
  it("open the message before the first ping, and report the input tokens at the end", async () => {
    const res = await fetch(`${gateway.url}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
      body: JSON.stringify({
        model: "tiny-b",
        max_tokens: 4,
        stream: true,
        messages: [{ role: "user", content: "hi" }]
      })
    })
    expect(res.status).toBe(200)
    const events = (await res.text()).split("\n\n").filter((b) => b.startsWith("event: ")).map((b) => ({
      type: b.slice(7, b.indexOf("\n")),
      data: JSON.parse(b.slice(b.indexOf("data: ") + 6))
    }))
    const types = events.map((e) => e.type)
    expect(types[0]).toBe("message_start")
    expect(types.indexOf("ping")).toBeGreaterThan(0)
    expect(types.at(-1)).toBe("message_stop")
    const delta = events.find((e) => e.type === "message_delta")!
    expect(delta.data.usage.input_tokens + delta.data.usage.cache_read_input_tokens).toBeGreaterThan(0)
  })
})

describe("the models API in each SDK's shape", () => {
  it("retrieves one model in OpenAI's shape", async () => {
    const model = await openai.models.retrieve("tiny")
    expect(model).toMatchObject({ id: "tiny", object: "model", owned_by: "cortex" })
    const missing = await openai.models.retrieve("nope").catch((e: unknown) => e)
    expect(missing).toBeInstanceOf(OpenAI.NotFoundError)
  })

  it("retrieves and lists in Anthropic's shape, with paging", async () => {
    const one = await anthropic.models.retrieve("tiny")
    expect(one).toMatchObject({ type: "model", id: "tiny", display_name: "tiny" })
    expect(Number.isNaN(Date.parse(one.created_at))).toBe(false)

    const first = await anthropic.models.list({ limit: 1 })
    expect(first.data.length).toBe(1)
    expect(first.has_more).toBe(true)
    const all: Array<string> = []
    for await (const model of anthropic.models.list({ limit: 1 })) all.push(model.id)
    expect(all.sort()).toEqual(["claude-sonnet-5-5", "tiny", "tiny-b"])

    const raw = await fetch(`${gateway.url}/v1/models?limit=2`, { headers: { "x-api-key": "unused" } })
    const page = await raw.json() as any
    expect(page).toMatchObject({ has_more: true, first_id: page.data[0].id, last_id: page.data[1].id })
    const back = await fetch(`${gateway.url}/v1/models?before_id=${page.last_id}`, {
      headers: { "anthropic-version": "2023-06-01" }
    })
    expect(((await back.json()) as any).data.map((m: any) => m.id)).toEqual([page.first_id])

    const missing = await anthropic.models.retrieve("nope").catch((e: unknown) => e)
    expect(missing).toBeInstanceOf(Anthropic.NotFoundError)
    const bad = await fetch(`${gateway.url}/v1/models?limit=0`, { headers: { "anthropic-version": "2023-06-01" } })
    expect(bad.status).toBe(400)
    expect(((await bad.json()) as any).type).toBe("error")
  })
})

describe("Anthropic structured outputs", () => {
  it("output_config.format constrains the answer to the JSON schema", async () => {
    const message = await anthropic.messages.create({
      model: "tiny",
      max_tokens: 64,
      messages: [{ role: "user", content: "give me a number" }],
      output_config: {
        format: {
          type: "json_schema",
          schema: { type: "object", properties: { n: { type: "integer" } }, required: ["n"] }
        }
      }
    } as any)
    const text = message.content.map((b) => b.type === "text" ? b.text : "").join("")
    const parsed = JSON.parse(text)
    expect(Number.isInteger(parsed.n)).toBe(true)
  })
})

describe("fields cortex cannot honour are refused by name, never ignored", () => {
  const refusedParam = async (call: Promise<unknown>) => {
    const error = await call.then(() => undefined, (e: unknown) => e)
    expect(error).toBeInstanceOf(OpenAI.APIError)
    expect((error as InstanceType<typeof OpenAI.APIError>).status).toBe(422)
    return (error as InstanceType<typeof OpenAI.APIError>).param
  }

  it("logit_bias, suffix, best_of, a shortened embedding, Responses log-probabilities", async () => {
    const messages = [{ role: "user" as const, content: "hi" }]
    expect(await refusedParam(openai.chat.completions.create({ model: "tiny", messages, logit_bias: { "5": 10 } })))
      .toBe("logit_bias")
    expect(await refusedParam(openai.completions.create({ model: "tiny", prompt: "a", suffix: "b" }))).toBe("suffix")
    expect(await refusedParam(openai.completions.create({ model: "tiny", prompt: "a", best_of: 3 }))).toBe("best_of")
    expect(await refusedParam(openai.embeddings.create({ model: "tiny", input: "a", dimensions: 8 })))
      .toBe("dimensions")
    expect(await refusedParam(openai.responses.create({ model: "tiny", input: "hi", top_logprobs: 3 } as any)))
      .toBe("top_logprobs")
    expect(
      await refusedParam(
        openai.responses.create({ model: "tiny", input: "hi", include: ["message.output_text.logprobs"] })
      )
    ).toBe("include[0]")
    // Defaults that ask for nothing are fine.
    const ok = await openai.chat.completions.create({ model: "tiny", messages, logit_bias: {}, max_tokens: 1 })
    expect(ok.choices.length).toBe(1)
  })
})

describe("count_tokens refuses what the model cannot take, as the messages call would", () => {
  it("an image on a text-only model is invalid_request_error", async () => {
    const error = await anthropic.messages.countTokens({
      model: "tiny",
      messages: [{
        role: "user",
        content: [{ type: "image", source: { type: "base64", media_type: "image/png", data: "iVBORw0KGgo=" } }]
      }]
    }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(Anthropic.BadRequestError)
    expect(JSON.stringify((error as InstanceType<typeof Anthropic.APIError>).error)).toContain("invalid_request_error")
  })
})
