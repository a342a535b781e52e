/**
 * End to end against a real neuron process with the official `openai` SDK: chat (stream and
 * not), completions, embeddings, stops, lengths, usage, determinism, tools, JSON output, and
 * bad inputs in the OpenAI envelope.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import OpenAI from "openai"
import { type NeuronProcess, postJson, readSse, startNeuron } from "./fixtures/neuron.js"

let neuron: NeuronProcess
let client: OpenAI

beforeAll(async () => {
  neuron = await startNeuron({
    models: ["tiny", "tiny-b"],
    defaultModels: ["tiny"],
    env: { NEURON_MAX_IN_FLIGHT: "2" }
  })
  client = new OpenAI({ baseURL: `${neuron.url}/v1`, apiKey: "unused", maxRetries: 0 })
})

afterAll(async () => {
  await neuron?.stop()
})

const user = (content: string) => [{ role: "user" as const, content }]

describe("chat completions", () => {
  it("answers non-streaming with usage and finish_reason length at max_tokens", async () => {
    const res = await client.chat.completions.create({
      model: "tiny",
      messages: user("Hello there"),
      max_tokens: 12,
      temperature: 0
    })
    expect(res.object).toBe("chat.completion")
    const choice = res.choices[0]!
    expect(choice.finish_reason).toBe("length")
    expect(choice.message.role).toBe("assistant")
    expect(choice.message.content?.length ?? 0).toBeGreaterThan(0)
    expect(res.usage?.completion_tokens).toBe(12)
    expect(res.usage?.prompt_tokens).toBeGreaterThan(3)
    expect(res.usage?.total_tokens).toBe((res.usage?.prompt_tokens ?? 0) + 12)
    const timing = (res.usage as any).timing
    expect(timing.prefill_ms).toBeGreaterThanOrEqual(0)
    expect(timing.decode_ms).toBeGreaterThanOrEqual(0)
    expect(timing.ttft_ms).toBeGreaterThanOrEqual(timing.prefill_ms)
  })

  it("streams deltas whose text and token count match the usage chunk and the non-streamed answer", async () => {
    const request = { model: "tiny", messages: user("Tell me a story"), max_tokens: 24, temperature: 0, seed: 7 }
    const whole = await client.chat.completions.create(request)
    const stream = await client.chat.completions.create({
      ...request,
      stream: true,
      stream_options: { include_usage: true }
    })
    let text = ""
    let deltas = 0
    let finish: string | null = null
    let usage: OpenAI.CompletionUsage | undefined
    for await (const chunk of stream) {
      const choice = chunk.choices[0]
      if (choice?.delta.content) {
        text += choice.delta.content
        deltas++
      }
      if (choice?.finish_reason) finish = choice.finish_reason
      if (chunk.usage) usage = chunk.usage
    }
    expect(text).toBe(whole.choices[0]!.message.content)
    expect(finish).toBe("length")
    expect(usage?.completion_tokens).toBe(24)
    expect(deltas).toBeGreaterThan(0)
    expect(deltas).toBeLessThanOrEqual(24)
    expect(usage?.prompt_tokens).toBe(whole.usage?.prompt_tokens)
  })

  it("ends streams with [DONE] after the usage chunk", async () => {
    const res = await postJson(`${neuron.url}/v1/chat/completions`, {
      model: "tiny",
      stream: true,
      messages: user("hi"),
      temperature: 0,
      max_tokens: 4
    })
    expect(res.headers.get("content-type")).toContain("text/event-stream")
    const data = (await readSse(res)).filter((e) => e.type === "data").map((e) => e.value)
    expect(data.at(-1)).toBe("[DONE]")
    const usage = JSON.parse(data.at(-2)!)
    expect(usage.choices).toEqual([])
    expect(usage.usage.completion_tokens).toBe(4)
    // The first chunk tells the prompt's size before any token (for Anthropic's message_start).
    expect(JSON.parse(data[0]!).cortex.prompt_tokens).toBe(usage.usage.prompt_tokens)
  })

  it("is deterministic with temperature 0 and a seed, and reports cached prefix tokens on reuse", async () => {
    const request = {
      model: "tiny",
      messages: user("Repeat after me please"),
      max_tokens: 16,
      temperature: 0,
      seed: 42
    }
    const a = await client.chat.completions.create(request)
    const b = await client.chat.completions.create(request)
    expect(b.choices[0]!.message.content).toBe(a.choices[0]!.message.content)
    expect(b.usage?.prompt_tokens_details?.cached_tokens).toBeGreaterThan(0)
    // Same seed with sampling is reproducible too.
    const c = await client.chat.completions.create({ ...request, temperature: 0.9 })
    const d = await client.chat.completions.create({ ...request, temperature: 0.9 })
    expect(d.choices[0]!.message.content).toBe(c.choices[0]!.message.content)
  })

  it("lets max_completion_tokens win over max_tokens", async () => {
    const res = await client.chat.completions.create({
      model: "tiny",
      messages: user("Count"),
      max_tokens: 30,
      max_completion_tokens: 5,
      temperature: 0
    })
    expect(res.usage?.completion_tokens).toBe(5)
    expect(res.choices[0]!.finish_reason).toBe("length")
  })

  it("stops at a stop sequence and leaves it out", async () => {
    const base = { model: "tiny", messages: user("Say something long"), temperature: 0, max_tokens: 40 }
    const full = (await client.chat.completions.create(base)).choices[0]!.message.content!
    expect(full.length).toBeGreaterThan(20)
    const stop = full.slice(12, 16)
    const cut = full.indexOf(stop)
    const res = await client.chat.completions.create({ ...base, stop: [stop] })
    expect(res.choices[0]!.finish_reason).toBe("stop")
    expect(res.choices[0]!.message.content).toBe(full.slice(0, cut))
  })

  it("accepts a tool-call history (content null, string arguments) and forces a tool call with tool_choice", async () => {
    const tools = [{
      type: "function" as const,
      function: {
        name: "get_weather",
        description: "Weather for a city",
        parameters: {
          type: "object",
          properties: { city: { type: "string", enum: ["Paris", "Oslo"] }, unit: { enum: ["C", "F"] } },
          required: ["city", "unit"]
        }
      }
    }]
    const res = await client.chat.completions.create({
      model: "tiny",
      temperature: 0,
      max_tokens: 64,
      tools,
      tool_choice: { type: "function", function: { name: "get_weather" } },
      messages: [
        { role: "user", content: "Weather in Paris?" },
        {
          role: "assistant",
          content: null,
          tool_calls: [{
            id: "call_1",
            type: "function",
            function: { name: "get_weather", arguments: "{\"city\":\"Oslo\",\"unit\":\"C\"}" }
          }]
        },
        { role: "tool", tool_call_id: "call_1", content: "{\"temp\": 3}" },
        { role: "user", content: "And Paris?" }
      ]
    })
    const choice = res.choices[0]!
    expect(choice.finish_reason).toBe("tool_calls")
    const call = choice.message.tool_calls?.[0]
    expect(call?.type).toBe("function")
    if (call?.type !== "function") throw new Error("expected a function call")
    expect(call.function.name).toBe("get_weather")
    const args = JSON.parse(call.function.arguments)
    expect(["Paris", "Oslo"]).toContain(args.city)
    expect(["C", "F"]).toContain(args.unit)
    expect(call.id).toMatch(/^call_/)
  })

  it("streams a forced tool call as a tool_calls delta with finish_reason tool_calls", async () => {
    const stream = await client.chat.completions.create({
      model: "tiny",
      temperature: 0,
      max_tokens: 64,
      stream: true,
      messages: user("Turn the lights on"),
      tools: [{
        type: "function",
        function: {
          name: "lights",
          parameters: { type: "object", properties: { on: { type: "boolean" } }, required: ["on"] }
        }
      }],
      tool_choice: "required"
    })
    let content = ""
    let finish: string | null = null
    const calls: Array<{ name?: string; arguments?: string }> = []
    for await (const chunk of stream) {
      const choice = chunk.choices[0]
      content += choice?.delta.content ?? ""
      for (const call of choice?.delta.tool_calls ?? []) calls.push(call.function ?? {})
      if (choice?.finish_reason) finish = choice.finish_reason
    }
    expect(finish).toBe("tool_calls")
    expect(content).toBe("")
    expect(calls).toHaveLength(1)
    expect(calls[0]!.name).toBe("lights")
    expect(typeof JSON.parse(calls[0]!.arguments!).on).toBe("boolean")
  })

  it("passes tools to the model with tool_choice auto and answers normally when it calls none", async () => {
    const res = await client.chat.completions.create({
      model: "tiny",
      temperature: 0,
      max_tokens: 8,
      messages: user("Just chat"),
      tools: [{ type: "function", function: { name: "noop", parameters: { type: "object", properties: {} } } }]
    })
    const plain = await client.chat.completions.create({
      model: "tiny",
      temperature: 0,
      max_tokens: 8,
      messages: user("Just chat")
    })
    // The tool documentation is part of the prompt the model sees.
    expect(res.usage!.prompt_tokens).toBeGreaterThan(plain.usage!.prompt_tokens)
    expect(["length", "tool_calls", "stop"]).toContain(res.choices[0]!.finish_reason)
  })

  it("applies presence and frequency penalties", async () => {
    const base = { model: "tiny", messages: user("Go on"), temperature: 0, max_tokens: 40 }
    const plain = (await client.chat.completions.create(base)).choices[0]!.message.content
    const penalised = (await client.chat.completions.create({ ...base, presence_penalty: 1.5, frequency_penalty: 1.5 }))
      .choices[0]!.message.content
    expect(penalised).not.toBe(plain)
  })

  it("constrains output to a JSON schema with response_format", async () => {
    const res = await client.chat.completions.create({
      model: "tiny",
      messages: user("Pick a colour"),
      temperature: 0,
      max_tokens: 64,
      response_format: {
        type: "json_schema",
        json_schema: {
          name: "pick",
          schema: {
            type: "object",
            properties: { colour: { enum: ["red", "green", "blue"] }, sure: { type: "boolean" } },
            required: ["colour", "sure"]
          }
        }
      }
    })
    const value = JSON.parse(res.choices[0]!.message.content!)
    expect(["red", "green", "blue"]).toContain(value.colour)
    expect(typeof value.sure).toBe("boolean")
  })
})

describe("completions and embeddings", () => {
  it("completes raw text", async () => {
    const res = await client.completions.create({
      model: "tiny",
      prompt: "Once upon a time",
      max_tokens: 10,
      temperature: 0
    })
    expect(res.object).toBe("text_completion")
    expect(res.choices[0]!.text.length).toBeGreaterThan(0)
    expect(res.choices[0]!.finish_reason).toBe("length")
    expect(res.usage?.completion_tokens).toBe(10)
  })

  it("streams raw completions", async () => {
    const stream = await client.completions.create({
      model: "tiny",
      prompt: "Once",
      max_tokens: 6,
      stream: true,
      temperature: 0
    })
    let text = ""
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? ""
    const whole = await client.completions.create({ model: "tiny", prompt: "Once", max_tokens: 6, temperature: 0 })
    expect(text).toBe(whole.choices[0]!.text)
  })

  it("embeds one or many inputs with the model's width", async () => {
    const res = await client.embeddings.create({ model: "tiny", input: ["hello world", "goodbye"] })
    expect(res.data).toHaveLength(2)
    expect(res.data[0]!.embedding).toHaveLength(64)
    expect(res.data[0]!.embedding).not.toEqual(res.data[1]!.embedding)
    expect(res.usage.prompt_tokens).toBeGreaterThan(0)
    const single = await client.embeddings.create({ model: "tiny", input: "hello world", encoding_format: "float" })
    expect(single.data[0]!.embedding).toEqual(res.data[0]!.embedding)
  })
})

describe("bad input", () => {
  const post = (path: string, body: string) =>
    fetch(`${neuron.url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body })

  it("answers malformed JSON with 400 in the OpenAI envelope", async () => {
    const res = await post("/v1/chat/completions", "{\"model\": \"tiny\", ")
    expect(res.status).toBe(400)
    const body = await res.json() as any
    expect(body.error.type).toBe("invalid_request_error")
    expect(typeof body.error.message).toBe("string")
  })

  it("answers a wrong shape with 422 naming the field", async () => {
    const res = await post(
      "/v1/chat/completions",
      JSON.stringify({ model: "tiny", messages: user("x"), temperature: "hot" })
    )
    expect(res.status).toBe(422)
    const body = await res.json() as any
    expect(body.error.param).toBe("temperature")
    const noMessages = await post("/v1/chat/completions", JSON.stringify({ model: "tiny" }))
    expect(noMessages.status).toBe(422)
    expect((await noMessages.json() as any).error.param).toBe("messages")
  })

  it("answers an unknown model with 404, which the SDK reads as NotFoundError", async () => {
    const error = await client.chat.completions.create({ model: "nope", messages: user("x") }).catch((e) => e)
    expect(error).toBeInstanceOf(OpenAI.NotFoundError)
    expect(error.status).toBe(404)
    expect(error.code).toBe("model_not_found")
  })

  it("refuses a prompt longer than the context with 400 context_length_exceeded", async () => {
    const long = "hello world again and again ".repeat(1200)
    const error = await client.chat.completions.create({
      model: "tiny",
      messages: user(long),
      temperature: 0,
      max_tokens: 4
    })
      .catch((e) => e)
    expect(error).toBeInstanceOf(OpenAI.BadRequestError)
    expect(error.code).toBe("context_length_exceeded")
    expect(error.error.limit).toBe(4096)
    // Streaming gets the same HTTP error, not a broken stream.
    const streamed = await client.chat.completions.create({ model: "tiny", messages: user(long), stream: true })
      .catch((e) => e)
    expect(streamed).toBeInstanceOf(OpenAI.BadRequestError)
  })

  it("answers unknown routes with 404 and keeps serving", async () => {
    const res = await fetch(`${neuron.url}/v2/nothing`)
    expect(res.status).toBe(404)
    const ok = await client.chat.completions.create({
      model: "tiny",
      messages: user("still there?"),
      temperature: 0,
      max_tokens: 3
    })
    expect(ok.choices[0]!.message.content?.length ?? 0).toBeGreaterThan(0)
  })
})

describe("model lifecycle API", () => {
  it("lists models on disk and in memory with status, size, estimate and context", async () => {
    const res = await fetch(`${neuron.url}/models`)
    const body = await res.json() as any
    const tiny = body.data.find((m: any) => m.id === "tiny")
    const other = body.data.find((m: any) => m.id === "tiny-b")
    expect(tiny.status).toBe("loaded")
    expect(tiny.size_bytes).toBeGreaterThan(100_000)
    expect(tiny.memory_estimate_mb).toBeGreaterThan(0)
    expect(tiny.context_limit).toBe(4096)
    expect(tiny.capabilities).toContain("embeddings")
    expect(other.status).toBe("available")
  })

  it("loads single-flight (concurrent loads resolve together) and unloads", async () => {
    const load = () => postJson(`${neuron.url}/models/load`, { model: "tiny-b" })
    const [a, b] = await Promise.all([load(), load()])
    expect(a.status).toBe(200)
    expect(b.status).toBe(200)
    expect((await a.json() as any).status).toBe("loaded")
    expect((await b.json() as any).load_ms).toBeGreaterThan(0)
    // "Already loaded" is success.
    expect((await load()).status).toBe(200)
    const unload = await postJson(`${neuron.url}/models/unload`, { model: "tiny-b" })
    expect(unload.status).toBe(200)
    expect((await unload.json() as any).status).toBe("available")
  })

  it("counts a chat prompt's tokens exactly as generation sees them", async () => {
    const messages = [{ role: "system" as const, content: "Be brief." }, ...user("How many tokens is this?")]
    const res = await postJson(`${neuron.url}/tokenize`, { model: "tiny", messages })
    const counted = (await res.json() as any).tokens
    const chat = await client.chat.completions.create({ model: "tiny", messages, temperature: 0, max_tokens: 1 })
    expect(counted).toBe(chat.usage?.prompt_tokens)
    const text = await (await postJson(`${neuron.url}/tokenize`, { model: "tiny", text: "hello world" })).json() as any
    expect(text.tokens).toBeGreaterThan(0)
    expect(text.tokens).toBeLessThan(11)
  })

  it("reports discovery: host, devices with memory, engine", async () => {
    const body = await (await fetch(`${neuron.url}/discovery`)).json() as any
    expect(body.host.hostname.length).toBeGreaterThan(0)
    expect(body.devices[0].id).toBe("cpu")
    expect(body.devices[0].total_mb).toBeGreaterThan(0)
    expect(body.engine.name).toBe("node-llama-cpp")
    expect(body.engine.version).toBe("3.21.1")
    // Which llama.cpp binary the worker loaded: the prebuilt one, or a source build on this host.
    expect(["prebuilt", "local"]).toContain(body.engine.binary)
  })
})
