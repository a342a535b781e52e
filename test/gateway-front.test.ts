/**
 * The gateway's inference front (plain node:http) against a scripted neuron, for what a real
 * neuron cannot show: the headers it receives (trace context, principal, autoload), a stream
 * that stalls until the client hangs up, and bodies over the size limit.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as http from "node:http"
import { usageIn } from "../src/gateway/Upstream.js"
import { type GatewayProcess, startGateway } from "./fixtures/gateway.js"
import { type ScriptedNeuron, startScriptedNeuron } from "./fixtures/scripted-neuron.js"

const MODEL = "scripted"
const FLOOD_BYTES = 96 * 1024 * 1024
/** Bytes the scripted neuron managed to hand to its socket for the current flood. */
let flooded = 0

/** Stream FLOOD_BYTES of 64 KiB frames as fast as the connection takes them. */
const flood = (res: http.ServerResponse) => {
  res.writeHead(200, { "content-type": "text/event-stream" })
  const frame = Buffer.from(
    `data: ${
      JSON.stringify({ choices: [{ index: 0, delta: { content: "x".repeat(65536) }, finish_reason: null }] })
    }\n\n`
  )
  flooded = 0
  const pump = () => {
    while (flooded < FLOOD_BYTES && !res.destroyed) {
      flooded += frame.length
      if (!res.write(frame)) return res.once("drain", pump)
    }
    res.end("data: [DONE]\n\n")
  }
  pump()
}
let neuron: ScriptedNeuron
let gateway: GatewayProcess

beforeAll(async () => {
  neuron = await startScriptedNeuron(MODEL, (_req, res, body) => {
    if (body.stream !== true) {
      res.writeHead(200, { "content-type": "application/json" })
      res.end(JSON.stringify({
        id: "x",
        object: "chat.completion",
        created: 0,
        model: MODEL,
        choices: [{ index: 0, message: { role: "assistant", content: "hi" }, finish_reason: "stop" }],
        usage: { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 }
      }))
      return
    }
    if (body.messages[0].content === "flood") return flood(res)
    // One token, then nothing: the stream stays open until someone closes it.
    res.writeHead(200, { "content-type": "text/event-stream" })
    res.write(`data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: "a" }, finish_reason: null }] })}\n\n`)
  })
  gateway = await startGateway({ neurons: [{ name: "scripted", url: neuron.url }] })
}, 120_000)

afterAll(async () => {
  await gateway?.stop()
  await neuron?.stop()
})

const chat = (headers: Record<string, string> = {}, body: unknown = {
  model: MODEL,
  messages: [{ role: "user", content: "hello" }]
}) =>
  fetch(`${gateway.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body)
  })

describe("what the neuron receives", () => {
  it("continues the client's trace, and the gateway stamps the principal and turns auto-load off", async () => {
    const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    const clientSpan = "00f067aa0ba902b7"
    const res = await chat({ traceparent: `00-${trace}-${clientSpan}-01`, "x-cortex-principal": "mallory" })
    expect(res.status).toBe(200)
    expect(res.headers.get("x-cortex-node")).toBe("scripted")
    expect(Number(res.headers.get("x-cortex-overhead-ms"))).toBeGreaterThanOrEqual(0)
    expect(((await res.json()) as any).choices[0].message.content).toBe("hi")
    const seen = neuron.received.at(-1)!.headers
    const [version, traceId, spanId, flags] = String(seen.traceparent).split("-")
    expect([version, traceId, flags]).toEqual(["00", trace, "01"])
    // The gateway's own span is the neuron's parent, not the client's.
    expect(spanId).toMatch(/^[0-9a-f]{16}$/)
    expect(spanId).not.toBe(clientSpan)
    expect(seen["x-cortex-principal"]).toMatch(/^anonymous@/)
    expect(seen["x-cortex-autoload"]).toBe("off")
  })

  it("starts a trace when the client sent none, and relays the client's body unchanged", async () => {
    const body = { model: MODEL, messages: [{ role: "user", content: "x" }], vendor_extension: { keep: true } }
    const res = await chat({}, body)
    expect(res.status).toBe(200)
    const received = neuron.received.at(-1)!
    expect(String(received.headers.traceparent)).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/)
    expect(received.body).toEqual(body)
    // Byte for byte what the client sent (chat() sends JSON.stringify(body)).
    expect(received.raw).toBe(JSON.stringify(body))
  })
})

describe("client hang-up", () => {
  it("closes the upstream stream when the client goes away mid-stream", async () => {
    const before = neuron.received.length
    const controller = new AbortController()
    const res = await fetch(`${gateway.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, stream: true, messages: [{ role: "user", content: "x" }] }),
      signal: controller.signal
    })
    expect(res.status).toBe(200)
    const reader = res.body!.getReader()
    const first = new TextDecoder().decode((await reader.read()).value)
    expect(first).toContain(`"content":"a"`)
    expect(neuron.received.length).toBe(before + 1)
    controller.abort()
    const outcome = await Promise.race([
      neuron.received[before]!.closed,
      new Promise((r) => setTimeout(() => r("still open after 5 s"), 5_000))
    ])
    expect(outcome).toBe("closed early")
  })
})

describe("slow clients", () => {
  it("stops reading the upstream while the client does not read, instead of buffering the stream", async () => {
    const before = neuron.received.length
    const controller = new AbortController()
    const res = await fetch(`${gateway.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, stream: true, messages: [{ role: "user", content: "flood" }] }),
      signal: controller.signal
    })
    expect(res.status).toBe(200)
    // The client reads nothing for a while: socket buffers fill, then the neuron must wait.
    await new Promise((r) => setTimeout(r, 1_500))
    expect(flooded).toBeGreaterThan(0)
    expect(flooded).toBeLessThan(FLOOD_BYTES / 2)
    controller.abort()
    expect(await neuron.received[before]!.closed).toBe("closed early")
  })
})

/** POST `size` bytes with node:http, declared up front or chunked; resolves with the answer. */
const postLarge = (path: string, size: number, declared: boolean) =>
  new Promise<{ status: number; body: any }>((resolve, reject) => {
    const req = http.request(`${gateway.url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...(declared ? { "content-length": size } : {}) }
    }, (res) => {
      const chunks: Array<Buffer> = []
      res.on("data", (c: Buffer) => chunks.push(c))
      res.on("end", () => resolve({ status: res.statusCode!, body: JSON.parse(Buffer.concat(chunks).toString()) }))
    })
    req.on("error", reject)
    const block = Buffer.alloc(1024 * 1024, 0x20)
    let sent = 0
    const pump = () => {
      while (sent < size) {
        sent += block.length
        if (!req.write(block)) return req.once("drain", pump)
      }
      req.end()
    }
    pump()
  })

describe("request size", () => {
  const size = 33 * 1024 * 1024

  it("refuses a body over 32 MiB with 413 in the OpenAI envelope, declared or chunked", async () => {
    for (const declared of [true, false]) {
      const { body, status } = await postLarge("/v1/chat/completions", size, declared)
      expect(status).toBe(413)
      expect(body.error.code).toBe("payload_too_large")
      expect(body.error.type).toBe("invalid_request_error")
    }
    // The gateway is still serving.
    expect((await chat()).status).toBe(200)
  })

  it("refuses it in Anthropic's envelope on /v1/messages", async () => {
    const { body, status } = await postLarge("/v1/messages", size, true)
    expect(status).toBe(413)
    expect(body).toMatchObject({ type: "error", error: { type: "request_too_large" } })
  })
})

describe("usage of a relayed answer", () => {
  const usage = {
    prompt_tokens: 3,
    completion_tokens: 4,
    total_tokens: 7,
    prompt_tokens_details: { cached_tokens: 1 },
    timing: { ttft_ms: 2.5, decode_ms: 3 }
  }

  it("is read from the answer's bytes, even when the content mentions braces and usage", () => {
    const answer = { choices: [{ message: { content: `a {"usage": {"prompt_tokens": 99} b` } }], usage }
    expect(usageIn(Buffer.from(JSON.stringify(answer)))).toEqual(usage)
    expect(usageIn(Buffer.from(JSON.stringify({ usage, id: "after" })))).toEqual(usage)
  })

  it("is undefined when there is none", () => {
    expect(usageIn(Buffer.from(JSON.stringify({ data: [{ embedding: [0.1] }] })))).toBeUndefined()
    expect(usageIn(Buffer.from("not json"))).toBeUndefined()
  })
})
