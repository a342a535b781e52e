/**
 * End to end: a real gateway process in front of two real neuron processes, driven by the
 * official `openai` and `@anthropic-ai/sdk` clients in their own dialects.
 */
import Anthropic from "@anthropic-ai/sdk"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { execFile } from "node:child_process"
import { promisify } from "node:util"
import OpenAI from "openai"
import parsePrometheus from "parse-prometheus-text-format"
import { type GatewayProcess, startGateway } from "./fixtures/gateway.js"
import { CLI, getJson, type NeuronProcess, postJson, readSse, startNeuron, waitFor } from "./fixtures/neuron.js"
import { requirePromtool, runPromtool } from "./fixtures/promtool.js"

let alpha: NeuronProcess
let beta: NeuronProcess
let gateway: GatewayProcess
let openai: OpenAI
let anthropic: Anthropic

const MODELS_TOML = `
[[models]]
id = "tiny"
capabilities = ["chat", "completion", "embeddings", "tools"]
limit = { context = 4096, output = 1024 }
# Greedy by default: exact token counts below do not depend on what sampling picks.
sampling = { temperature = 0 }

[[models]]
id = "tiny-b"
sampling = { temperature = 0 }

[aliases]
"gpt-4o-mini" = "tiny"
`

beforeAll(async () => {
  ;[alpha, beta] = await Promise.all([
    startNeuron({ models: ["tiny", "tiny-b"], defaultModels: ["tiny"] }),
    startNeuron({ models: ["tiny"], defaultModels: ["tiny"] })
  ])
  gateway = await startGateway({
    neurons: [{ name: "alpha", url: alpha.url }, { name: "beta", url: beta.url }],
    modelsToml: MODELS_TOML
  })
  openai = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: "sk-placeholder", maxRetries: 0 })
  anthropic = new Anthropic({ baseURL: gateway.url, apiKey: "sk-ant-placeholder", maxRetries: 0 })
}, 180_000)

afterAll(async () => {
  await gateway?.stop()
  await Promise.all([alpha?.stop(), beta?.stop()])
})

const user = (content: string) => [{ role: "user" as const, content }]

describe("catalogue", () => {
  it("merges every neuron's models with profiles and aliases in /v1/models", async () => {
    const list = await openai.models.list()
    const byId = new Map(list.data.map((m) => [m.id, m as any]))
    const tiny = byId.get("tiny")
    expect(tiny.loaded).toBe(true)
    expect(tiny.locations.map((l: any) => l.node).sort()).toEqual(["alpha", "beta"])
    expect(tiny.limit).toEqual({ context: 4096, output: 1024 })
    expect(byId.get("tiny-b").feasible_on).toEqual(["alpha"])
    expect(byId.get("tiny-b").loaded).toBe(false)
    expect(byId.get("gpt-4o-mini").alias_of).toBe("tiny")
  })
})

describe("OpenAI dialect", () => {
  it("chats through the gateway, stream and not, with node and overhead headers", async () => {
    const { data, response } = await openai.chat.completions
      .create({ model: "tiny", messages: user("Hello"), max_tokens: 8, temperature: 0 })
      .withResponse()
    expect(["alpha", "beta"]).toContain(response.headers.get("x-cortex-node"))
    expect(Number(response.headers.get("x-cortex-overhead-ms"))).toBeGreaterThanOrEqual(0)
    expect(data.usage?.completion_tokens).toBe(8)
    const stream = await openai.chat.completions.create({
      model: "gpt-4o-mini",
      messages: user("Hello"),
      max_tokens: 8,
      temperature: 0,
      stream: true
    })
    let text = ""
    let usage: OpenAI.CompletionUsage | undefined
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? ""
      if (chunk.usage) usage = chunk.usage
    }
    expect(text).toBe(data.choices[0]!.message.content)
    expect(usage?.completion_tokens).toBe(8)
  })

  it("serves completions and embeddings", async () => {
    const completion = await openai.completions.create({ model: "tiny", prompt: "Once", temperature: 0, max_tokens: 4 })
    expect(completion.usage?.completion_tokens).toBe(4)
    const embedding = await openai.embeddings.create({ model: "tiny", input: ["a", "b"] })
    expect(embedding.data).toHaveLength(2)
    expect(embedding.data[0]!.embedding).toHaveLength(64)
  })

  it("answers unknown models with 404 model_not_found and bad bodies with 400/422", async () => {
    const error = await openai.chat.completions.create({ model: "nope", messages: user("x") }).catch((e) => e)
    expect(error).toBeInstanceOf(OpenAI.NotFoundError)
    expect(error.code).toBe("model_not_found")
    const malformed = await fetch(`${gateway.url}/v1/chat/completions`, { method: "POST", body: "{nope" })
    expect(malformed.status).toBe(400)
    expect((await malformed.json() as any).error.type).toBe("invalid_request_error")
    const wrong = await postJson(`${gateway.url}/v1/chat/completions`, { model: "tiny", messages: "hi" })
    expect(wrong.status).toBe(422)
    expect((await wrong.json() as any).error.param).toBe("messages")
  })

  it("sends a request to the least busy replica", async () => {
    const controller = new AbortController()
    const first = await postJson(
      `${gateway.url}/v1/chat/completions`,
      {
        model: "tiny",
        stream: true,
        temperature: 0,
        max_tokens: 4000,
        messages: user("long")
      },
      {},
      controller.signal
    )
    const busyNode = first.headers.get("x-cortex-node")
    let started: () => void
    const firstToken = new Promise<void>((resolve) => (started = resolve))
    const reading = readSse(first, () => started()).catch(() => [])
    await firstToken
    const { response } = await openai.chat.completions.create({
      model: "tiny",
      messages: user("short"),
      temperature: 0,
      max_tokens: 2
    })
      .withResponse()
    const other = response.headers.get("x-cortex-node")
    controller.abort()
    await reading
    expect(busyNode).not.toBeNull()
    expect(other).not.toBe(busyNode)
  })

  it("cold-loads a catalogued model on the node that has it, once for concurrent first requests", async () => {
    const results = await Promise.all(
      [1, 2, 3].map(() =>
        openai.chat.completions.create({ model: "tiny-b", messages: user("wake up"), temperature: 0, max_tokens: 2 })
          .withResponse()
      )
    )
    for (const r of results) {
      expect(r.response.headers.get("x-cortex-node")).toBe("alpha")
      expect({
        tokens: r.data.usage?.completion_tokens,
        finish: r.data.choices[0]!.finish_reason,
        text: r.data.choices[0]!.message.content
      })
        .toMatchObject({ tokens: 2, finish: "length" })
    }
    const models = (await getJson(`${alpha.url}/models`)).body.data as Array<any>
    expect(models.find((m) => m.id === "tiny-b").status).toBe("loaded")
    expect(alpha.logs().match(/loading tiny-b on/g)?.length).toBe(1)
  })
})

describe("Responses API", () => {
  it("answers non-streaming with output items and streaming with sequenced events", async () => {
    const res = await openai.responses.create({
      model: "tiny",
      instructions: "Be brief.",
      input: "Hello",
      temperature: 0,
      max_output_tokens: 6
    })
    expect(res.object).toBe("response")
    expect(res.output_text.length).toBeGreaterThan(0)
    expect(res.usage?.output_tokens).toBe(6)
    const stream = await openai.responses.create({
      model: "tiny",
      input: "Hello",
      temperature: 0,
      max_output_tokens: 6,
      stream: true
    })
    const types: Array<string> = []
    const sequence: Array<number> = []
    let text = ""
    for await (const event of stream) {
      types.push(event.type)
      sequence.push(event.sequence_number)
      if (event.type === "response.output_text.delta") text += event.delta
    }
    expect(types[0]).toBe("response.created")
    expect(["response.completed", "response.incomplete"]).toContain(types.at(-1))
    expect(sequence).toEqual(sequence.map((_, i) => i))
    expect(text.length).toBeGreaterThan(0)
  })

  it("includes function calls in output and takes function_call_output back", async () => {
    const tools = [{
      type: "function" as const,
      name: "lights",
      parameters: { type: "object", properties: { on: { type: "boolean" } }, required: ["on"] },
      strict: false
    }]
    const res = await openai.responses.create({
      model: "tiny",
      input: "Lights on",
      tools,
      tool_choice: "required",
      temperature: 0,
      max_output_tokens: 64
    })
    const call = res.output.find((item) => item.type === "function_call")
    expect(call).toBeDefined()
    if (call?.type !== "function_call") throw new Error("expected a function call")
    expect(call.name).toBe("lights")
    expect(typeof JSON.parse(call.arguments).on).toBe("boolean")
    const next = await openai.responses.create({
      model: "tiny",
      temperature: 0,
      max_output_tokens: 4,
      input: [
        { role: "user", content: "Lights on" },
        { type: "function_call", call_id: call.call_id, name: call.name, arguments: call.arguments },
        { type: "function_call_output", call_id: call.call_id, output: "{\"ok\":true}" }
      ]
    })
    expect(next.usage?.output_tokens).toBe(4)
  })
})

describe("Anthropic dialect", () => {
  it("answers messages, stream and not, with usage and stop reasons", async () => {
    const message = await anthropic.messages.create({
      model: "tiny",
      max_tokens: 6,
      system: "Be brief.",
      messages: [{ role: "user", content: "Hello" }]
    })
    expect(message.type).toBe("message")
    expect(message.stop_reason).toBe("max_tokens")
    expect(message.content[0]?.type).toBe("text")
    expect(message.usage.output_tokens).toBe(6)
    const stream = anthropic.messages.stream({
      model: "tiny",
      temperature: 0,
      max_tokens: 6,
      messages: [{ role: "user", content: "Hi again" }]
    })
    const events: Array<string> = []
    let inputTokens = -1
    stream.on("streamEvent", (event) => {
      events.push(event.type)
      if (event.type === "message_start") inputTokens = event.message.usage.input_tokens
    })
    const final = await stream.finalMessage()
    expect(events[0]).toBe("message_start")
    expect(events.at(-1)).toBe("message_stop")
    expect(inputTokens).toBeGreaterThan(0)
    expect(final.stop_reason).toBe("max_tokens")
    expect(final.usage.output_tokens).toBe(6)
  })

  it("round-trips tools: a forced tool_use block, then a tool_result the neuron receives", async () => {
    const tools = [{
      name: "lights",
      description: "Switch the lights",
      input_schema: { type: "object" as const, properties: { on: { type: "boolean" } }, required: ["on"] }
    }]
    const message = await anthropic.messages.create({
      model: "tiny",
      max_tokens: 64,
      tools,
      tool_choice: { type: "tool", name: "lights" },
      messages: [{ role: "user", content: "Lights on" }]
    })
    expect(message.stop_reason).toBe("tool_use")
    const use = message.content.find((b) => b.type === "tool_use")
    if (use?.type !== "tool_use") throw new Error("expected tool_use")
    expect(use.name).toBe("lights")
    expect(typeof (use.input as { on: unknown }).on).toBe("boolean")
    const followUp = await anthropic.messages.create({
      model: "tiny",
      max_tokens: 3,
      tools,
      messages: [
        { role: "user", content: "Lights on" },
        { role: "assistant", content: message.content },
        { role: "user", content: [{ type: "tool_result", tool_use_id: use.id, content: "done" }] }
      ]
    })
    expect(followUp.usage.output_tokens).toBe(3)
    // The tool result reached the model: the prompt grew by it.
    const counted = await anthropic.messages.countTokens({
      model: "tiny",
      messages: [
        { role: "user", content: "Lights on" },
        { role: "assistant", content: message.content },
        { role: "user", content: [{ type: "tool_result", tool_use_id: use.id, content: "done" }] }
      ]
    })
    const bare = await anthropic.messages.countTokens({
      model: "tiny",
      messages: [{ role: "user", content: "Lights on" }]
    })
    expect(counted.input_tokens).toBeGreaterThan(bare.input_tokens)
  })

  it("counts tokens with the model's tokenizer", async () => {
    const short = await anthropic.messages.countTokens({ model: "tiny", messages: [{ role: "user", content: "hi" }] })
    const long = await anthropic.messages.countTokens({
      model: "tiny",
      messages: [{ role: "user", content: "hello world ".repeat(20) }]
    })
    expect(short.input_tokens).toBeGreaterThan(0)
    expect(long.input_tokens).toBeGreaterThan(short.input_tokens + 20)
  })

  it("carries images through translation (the text-only neuron refuses them, in Anthropic's envelope)", async () => {
    const error = await anthropic.messages.create({
      model: "tiny",
      max_tokens: 4,
      messages: [{
        role: "user",
        content: [
          { type: "image", source: { type: "base64", media_type: "image/png", data: "iVBORw0KGgo=" } },
          { type: "text", text: "What is this?" }
        ]
      }]
    }).catch((e) => e)
    expect(error).toBeInstanceOf(Anthropic.BadRequestError)
    expect(error.error.type).toBe("error")
    expect(error.error.error.type).toBe("invalid_request_error")
    expect(error.error.error.message).toMatch(/image_url/)
  })

  it("answers errors in Anthropic's envelope: unknown model, malformed JSON", async () => {
    const error = await anthropic.messages.create({
      model: "nope",
      max_tokens: 4,
      messages: [{ role: "user", content: "x" }]
    })
      .catch((e) => e)
    expect(error).toBeInstanceOf(Anthropic.NotFoundError)
    expect(error.error.error.type).toBe("not_found_error")
    const malformed = await fetch(`${gateway.url}/v1/messages`, { method: "POST", body: "{nope" })
    expect(malformed.status).toBe(400)
    const body = await malformed.json() as any
    expect(body.type).toBe("error")
    expect(body.error.type).toBe("invalid_request_error")
  })
})

describe("metrics", () => {
  it("exposes request, token and TTFT series that a Prometheus parser reads", async () => {
    await openai.chat.completions.create({ model: "tiny", messages: user("count me"), temperature: 0, max_tokens: 2 })
    const text = await (await fetch(gateway.metricsUrl)).text()
    const families = new Map(parsePrometheus(text).map((f) => [f.name, f]))
    const requests = families.get("cortex_requests_total")
    expect(requests?.type).toBe("COUNTER")
    expect(requests!.metrics.some((m) => m.labels?.model === "tiny" && m.labels?.route === "chat")).toBe(true)
    expect(families.get("cortex_prompt_tokens_total")?.type).toBe("COUNTER")
    expect(families.get("cortex_completion_tokens_total")?.type).toBe("COUNTER")
    const ttft = families.get("cortex_time_to_first_token_seconds")
    expect(ttft?.type).toBe("HISTOGRAM")
    expect(Object.keys(ttft!.metrics[0]!.buckets ?? {})).toContain("0.5")
    expect(families.get("cortex_cold_starts_total")?.metrics.some((m) => m.labels?.model === "tiny-b")).toBe(true)
    expect(families.get("cortex_device_vram_free_mb")?.type).toBe("GAUGE")
    // promtool (Debian's prometheus package; .ci/run installs it) parses the exposition too.
    // Exit 3 means "parsed, with lint remarks": the only ones allowed are about the `_mb` units
    // of the predecessor's device metric names, kept for dashboard continuity.
    if (await requirePromtool()) {
      const check = await runPromtool(["check", "metrics"], text)
      expect([0, 3]).toContain(check.code)
      const remarks = check.out.split("\n").filter((line) => line.trim().length > 0)
      for (const remark of remarks) expect(remark).toMatch(/^cortex_device_vram_(used|free)_mb .*abbreviated units/)
    }
  })
})

describe("operator commands", () => {
  const cortex = (args: ReadonlyArray<string>) =>
    promisify(execFile)(process.execPath, [CLI, ...args, "--endpoint", gateway.url])
      .then(({ stdout }) => ({ code: 0, stdout }))
      .catch((e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout + e.stderr }))

  it("status shows nodes, devices and models as a table, and as JSON", async () => {
    const table = await cortex(["status"])
    expect(table.code).toBe(0)
    expect(table.stdout).toMatch(/NODE\s+HEALTH/)
    expect(table.stdout).toMatch(/alpha\s+ok/)
    expect(table.stdout).toMatch(/tiny\s+yes\s+.*alpha:loaded/)
    const json = JSON.parse((await cortex(["status", "--json"])).stdout)
    expect(json.nodes.map((n: any) => n.name).sort()).toEqual(["alpha", "beta"])
    const models = await cortex(["models"])
    expect(models.stdout).toMatch(/gpt-4o-mini -> tiny/)
  })

  it("load and unload act on the named node", async () => {
    const unload = await cortex(["unload", "tiny-b", "--node", "alpha"])
    expect(unload.code).toBe(0)
    expect(unload.stdout).toMatch(/alpha: available/)
    const load = await cortex(["load", "tiny-b", "--node", "alpha"])
    expect(load.code).toBe(0)
    expect(load.stdout).toMatch(/alpha: loaded/)
    const missing = await cortex(["load", "nope"])
    expect(missing.code).toBe(1)
    expect(missing.stdout).toMatch(/does not exist/)
  })
})

describe("failures", () => {
  it("answers 503 + Retry-After for a model whose only replica is recovering from a worker crash", async () => {
    await openai.chat.completions.create({ model: "tiny-b", messages: user("load me"), temperature: 0, max_tokens: 1 })
    const worker = (await getJson(`${alpha.url}/models`)).body.devices[0].worker.pid as number
    process.kill(worker, "SIGKILL")
    const refused = await waitFor("a 503 while tiny-b recovers", async () => {
      const res = await postJson(`${gateway.url}/v1/chat/completions`, {
        model: "tiny-b",
        messages: user("x"),
        temperature: 0,
        max_tokens: 1
      })
      return res.status === 503 ? res : undefined
    }, 10_000)
    expect(refused.headers.get("retry-after")).not.toBeNull()
    expect((await refused.json() as any).error.code).toBe("model_recovering")
    await waitFor("tiny-b back", async () => {
      const res = await postJson(`${gateway.url}/v1/chat/completions`, {
        model: "tiny-b",
        messages: user("x"),
        temperature: 0,
        max_tokens: 1
      })
      return res.status === 200 ? true : undefined
    }, 30_000)
  })

  it("ends a stream with an in-band error when its neuron dies mid-stream, and debounces health", async () => {
    // Pin the stream to beta: its only model, loaded nowhere else under this id.
    const res = await postJson(`${gateway.url}/v1/chat/completions`, {
      model: "tiny",
      stream: true,
      temperature: 0,
      max_tokens: 4000,
      messages: user("keep talking")
    })
    const node = res.headers.get("x-cortex-node")!
    const victim = node === "alpha" ? alpha : beta
    let started: () => void
    const firstToken = new Promise<void>((resolve) => (started = resolve))
    const events = readSse(res, () => started())
    await firstToken
    victim.process.kill("SIGKILL")
    const data = (await events).filter((e) => e.type === "data").map((e) => e.value)
    expect(data).not.toContain("[DONE]")
    expect(JSON.parse(data.at(-1)!).error).toBeDefined()
    // Three missed polls (0.5 s apart) before the node is called unhealthy.
    const degraded = await waitFor("degraded health", async () => {
      const { body } = await getJson(`${gateway.url}/health`)
      return body.status === "degraded" ? body : undefined
    }, 10_000)
    const down = degraded.nodes.find((n: any) => n.name === node)
    expect(down.healthy).toBe(false)
    expect(down.misses).toBeGreaterThanOrEqual(3)
    // The survivor still serves.
    const ok = await openai.chat.completions.create({
      model: "tiny",
      messages: user("still there?"),
      temperature: 0,
      max_tokens: 2
    })
    expect(ok.usage?.completion_tokens).toBe(2)
  })
})
