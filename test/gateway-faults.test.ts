/**
 * The gateway against upstream faults (hardening issue #8): an upstream that goes silent in any
 * phase of the exchange is cut after idle_timeout_secs with an error in the client's dialect; a
 * pooled keep-alive socket the neuron closed is retried on a fresh connection; a replica's error
 * status fails over to another replica as retry_on says, and retries are counted.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as http from "node:http"
import type { AddressInfo, Socket } from "node:net"
import parsePrometheus from "parse-prometheus-text-format"
import { agentFor, Cancel, POOL_IDLE_MS, post, readAll } from "../src/gateway/Upstream.js"
import { type GatewayProcess, startGateway } from "./fixtures/gateway.js"
import { getJson, postJson, readSse, startNeuron, waitFor } from "./fixtures/neuron.js"
import { completion, type ScriptedNeuron, startScriptedNeuron } from "./fixtures/scripted-neuron.js"

/** How long any test here may take to get its answer: a hang guard, not a timing assertion. */
const HANG_GUARD_MS = 10_000

type Gateway = GatewayProcess

/** A gateway process with its own [gateway] keys. */
const startGatewayWith = (
  gatewayKeys: ReadonlyArray<string>,
  neurons: ReadonlyArray<{ readonly name: string; readonly url: string }>
) => startGateway({ neurons, gatewayKeys })

/** Wait until the gateway's catalogue shows `model` loaded on `count` nodes. */
const replicas = (gateway: Gateway, model: string, count: number) =>
  waitFor(`${model} on ${count} nodes`, async () => {
    const { body } = await getJson(`${gateway.url}/v1/models`)
    const entry = (body.data as Array<{ id: string; locations?: Array<{ status: string }> }>).find((m) =>
      m.id === model
    )
    return (entry?.locations ?? []).filter((l) => l.status === "loaded").length >= count ? true : undefined
  })

const retries = async (gateway: Gateway, node: string, reason: string) => {
  const text = await (await fetch(gateway.metricsUrl)).text()
  const family = parsePrometheus(text).find((f) => f.name === "cortex_upstream_retries_total")
  const series = family?.metrics.find((m) => m.labels?.node === node && m.labels?.reason === reason)
  return Number(series?.value ?? 0)
}

const user = (content: string) => [{ role: "user", content }]

/** Times a call, failing the test if it hangs past HANG_GUARD_MS. */
const timed = async <A>(call: () => Promise<A>): Promise<A> => {
  let guard: NodeJS.Timeout | undefined
  try {
    return await Promise.race([
      call(),
      new Promise<never>((_, reject) => {
        guard = setTimeout(() => reject(new Error(`no answer within ${HANG_GUARD_MS} ms`)), HANG_GUARD_MS)
      })
    ])
  } finally {
    clearTimeout(guard)
  }
}

// A neuron that goes silent on cue: "head" sends the response head and then nothing, "silent"
// reads the request and never answers.
let faulty: ScriptedNeuron
// A neuron that kills a connection's second request while `killReused` is on: what a gateway
// sees when it reuses a pooled socket the neuron is closing.
let reuse: ScriptedNeuron
let killReused = false
const requestsOn = new WeakMap<Socket, number>()
// Two replicas of one model: `a` answers 500, `b` answers.
let a: ScriptedNeuron
let b: ScriptedNeuron
/** idle_timeout_secs = 1, and "500" in retry_on. */
let strict: Gateway
/** The defaults (no "500" in retry_on). */
let defaults: Gateway

beforeAll(async () => {
  faulty = await startScriptedNeuron("faulty", (_req, res, body) => {
    const content = String(body.messages?.[0]?.content)
    if (content === "head") {
      res.writeHead(200, { "content-type": body.stream === true ? "text/event-stream" : "application/json" })
      res.flushHeaders()
    }
    // "silent": nothing at all, until the gateway hangs up.
  })
  reuse = await startScriptedNeuron("reuse", (req, res, body) => {
    const count = (requestsOn.get(req.socket) ?? 0) + 1
    requestsOn.set(req.socket, count)
    if (killReused && count > 1) return req.socket.destroy()
    res.writeHead(200, { "content-type": "application/json" })
    res.end(JSON.stringify(completion(body.model, "fresh")))
  })
  a = await startScriptedNeuron("replicated", (_req, res) => {
    res.writeHead(500, { "content-type": "application/json" })
    res.end(JSON.stringify({ error: { message: "a broke", type: "server_error", code: "a_broke", param: null } }))
  })
  b = await startScriptedNeuron("replicated", (_req, res, body) => {
    res.writeHead(200, { "content-type": "application/json" })
    res.end(JSON.stringify(completion(body.model, "from b")))
  })
  const pair = [{ name: "a", url: a.url }, { name: "b", url: b.url }]
  strict = await startGatewayWith(
    ["idle_timeout_secs = 1", `retry_on = ["connect", "reset", "timeout", "500", "502", "503", "504"]`],
    [{ name: "faulty", url: faulty.url }, { name: "reuse", url: reuse.url }, ...pair]
  )
  defaults = await startGatewayWith([], pair)
  await replicas(strict, "replicated", 2)
  await replicas(defaults, "replicated", 2)
}, 120_000)

afterAll(async () => {
  await strict?.stop()
  await defaults?.stop()
  for (const n of [faulty, reuse, a, b]) await n?.stop()
})

describe("an upstream that goes silent", () => {
  it("after the response head of a non-streamed answer: 504 upstream_timeout in OpenAI's envelope", async () => {
    const before = faulty.received.length
    const res = await timed(() =>
      postJson(`${strict.url}/v1/chat/completions`, { model: "faulty", messages: user("head") })
    )
    expect(res.status).toBe(504)
    const body = await res.json() as any
    expect(body.error.code).toBe("upstream_timeout")
    expect(body.error.type).toBe("server_error")
    // The gateway hung up on the upstream (the neuron cancels the generation).
    expect(await faulty.received[before]!.closed).toBe("closed early")
  })

  it("after the response head of a non-streamed answer: 504 timeout_error in Anthropic's envelope", async () => {
    const res = await timed(() =>
      postJson(`${strict.url}/v1/messages`, { model: "faulty", max_tokens: 8, messages: user("head") })
    )
    expect(res.status).toBe(504)
    expect(await res.json()).toMatchObject({ type: "error", error: { type: "timeout_error" } })
  })

  it("before any response head (non-streamed): 504 in either envelope", async () => {
    const openai = await timed(() =>
      postJson(`${strict.url}/v1/chat/completions`, { model: "faulty", messages: user("silent") })
    )
    expect(openai.status).toBe(504)
    expect((await openai.json() as any).error.code).toBe("upstream_timeout")
    const anthropic = await timed(() =>
      postJson(`${strict.url}/v1/messages`, { model: "faulty", max_tokens: 8, messages: user("silent") })
    )
    expect(anthropic.status).toBe(504)
    expect(await anthropic.json()).toMatchObject({ type: "error", error: { type: "timeout_error" } })
  })

  it("before any response head (streamed): an in-band error frame, never a clean [DONE]", async () => {
    const res = await timed(() =>
      postJson(`${strict.url}/v1/chat/completions`, { model: "faulty", stream: true, messages: user("silent") })
    )
    // The stream opened (keep-alives while the upstream was silent) before the timeout.
    expect(res.status).toBe(200)
    const events = await timed(() => readSse(res))
    const data = events.filter((e) => e.type === "data").map((e) => e.value)
    expect(data).not.toContain("[DONE]")
    expect(JSON.parse(data.at(-1)!).error).toMatchObject({ code: "upstream_timeout", type: "server_error" })
  })

  it("before any response head (streamed, Anthropic): an error event and no message_stop", async () => {
    const res = await timed(() =>
      postJson(`${strict.url}/v1/messages`, { model: "faulty", max_tokens: 8, stream: true, messages: user("silent") })
    )
    expect(res.status).toBe(200)
    const text = await timed(() => res.text())
    expect(text).toContain("event: error")
    expect(text).toContain("\"type\":\"timeout_error\"")
    expect(text).not.toContain("event: message_stop")
  })

  it("after the head of a stream: an in-band error frame, never a clean [DONE]", async () => {
    const res = await timed(() =>
      postJson(`${strict.url}/v1/chat/completions`, { model: "faulty", stream: true, messages: user("head") })
    )
    expect(res.status).toBe(200)
    const data = (await timed(() => readSse(res))).filter((e) => e.type === "data").map((e) => e.value)
    expect(data).not.toContain("[DONE]")
    expect(JSON.parse(data.at(-1)!).error.code).toBe("upstream_timeout")
  })
})

describe("keep-alive sockets", () => {
  it("retries once on a fresh connection when the neuron closed the reused socket", async () => {
    const chat = () => postJson(`${strict.url}/v1/chat/completions`, { model: "reuse", messages: user("x") })
    // The first call leaves its connection in the gateway's pool.
    expect((await chat()).status).toBe(200)
    killReused = true
    try {
      const before = reuse.received.length
      const res = await timed(chat)
      expect(res.status).toBe(200)
      expect((await res.json() as any).choices[0].message.content).toBe("fresh")
      // The reused socket died with the request on it; a fresh connection carried it again.
      expect(reuse.received.length - before).toBe(2)
      expect(await retries(strict, "reuse", "reused_socket")).toBe(1)
    } finally {
      killReused = false
    }
  })

  it("closes a pooled socket before the neuron's keep-alive timeout would", async () => {
    // The real neuron's server announces its keep-alive timeout; the gateway's pool must be shorter.
    const neuron = await startNeuron({ models: [] })
    try {
      const hint = await new Promise<string>((resolve, reject) =>
        http.get(`${neuron.url}/health`, (res) => {
          res.resume()
          resolve(String(res.headers["keep-alive"]))
        }).once("error", reject)
      )
      const neuronMs = Number(/timeout=(\d+)/.exec(hint)?.[1]) * 1000
      expect(neuronMs).toBeGreaterThan(0)
      expect(POOL_IDLE_MS).toBeLessThan(neuronMs)
    } finally {
      await neuron.stop()
    }
    // And the pool does close it: a server that keeps connections 5 s (as the neuron does) sees
    // the gateway's client time the idle socket out first.
    const server = http.createServer({ keepAliveTimeout: 5_000 }, (_req, res) => res.end("{}"))
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
      expect((agentFor(url) as unknown as { options: { timeout?: number } }).options.timeout).toBe(POOL_IDLE_MS)
      const answer = await post(url, "/", {}, "{}", new Cancel(), 30_000)
      const socket = answer.body.socket
      let timedOut = false
      socket.once("timeout", () => (timedOut = true))
      const closed = new Promise((resolve) => socket.once("close", resolve))
      await readAll(answer.body)
      await closed
      expect(timedOut).toBe(true)
    } finally {
      server.close()
    }
  })
})

describe("retry policy", () => {
  const ask = (gateway: Gateway) =>
    postJson(`${gateway.url}/v1/chat/completions`, { model: "replicated", messages: user("x") })

  it("answers from another replica after a 500 when \"500\" is in retry_on, and counts the retry", async () => {
    const before = await retries(strict, "a", "500")
    const res = await timed(() => ask(strict))
    expect(res.status).toBe(200)
    expect(res.headers.get("x-cortex-node")).toBe("b")
    expect((await res.json() as any).choices[0].message.content).toBe("from b")
    expect(await retries(strict, "a", "500")).toBe(before + 1)
  })

  it("passes a 500 through by default (a 500 may be deterministic)", async () => {
    const res = await timed(() => ask(defaults))
    expect(res.status).toBe(500)
    expect((await res.json() as any).error.code).toBe("a_broke")
    expect(await retries(defaults, "a", "500")).toBe(0)
  })
})

describe("a slow non-streamed answer is not a dead upstream", () => {
  it("a real neuron's 102 Processing keeps a generation longer than idle_timeout_secs alive", async () => {
    const neuron = await startNeuron({ models: ["tiny"], defaultModels: ["tiny"] })
    const gateway = await startGateway({
      neurons: [{ name: "local", url: neuron.url }],
      gatewayKeys: ["idle_timeout_secs = 1"]
    })
    try {
      // Thousands of tokens on the tiny model take seconds: several idle timeouts, all of them
      // before the answer's head.
      const started = Date.now()
      const res = await postJson(`${gateway.url}/v1/chat/completions`, {
        model: "tiny",
        max_tokens: 2000,
        temperature: 0,
        messages: user("write a lot")
      })
      const body = await res.json() as any
      console.log(`non-streamed 2,000 tokens through a 1 s idle timeout: ${Date.now() - started} ms`)
      expect(res.status, JSON.stringify(body)).toBe(200)
      expect(body.usage.completion_tokens).toBe(2000)

      // The neuron sends 102s only to a caller that asks for them.
      const informational: Array<number> = []
      await new Promise<void>((resolve, reject) => {
        const req = http.request(`${neuron.url}/v1/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json", "x-cortex-progress": "250" }
        }, (res) => {
          res.resume()
          res.once("end", resolve)
        })
        req.on("information", (info) => informational.push(info.statusCode))
        req.once("error", reject)
        req.end(JSON.stringify({ model: "tiny", max_tokens: 1000, temperature: 0, messages: user("again") }))
      })
      expect(informational.length).toBeGreaterThan(0)
      expect(new Set(informational)).toEqual(new Set([102]))
    } finally {
      await gateway.stop()
      await neuron.stop()
    }
  }, 120_000)
})
