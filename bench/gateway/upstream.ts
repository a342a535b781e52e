/**
 * A scripted neuron for the gateway benchmark: the neuron's control plane (/health, /models,
 * /discovery) and POST /v1/chat/completions answered from precomputed bytes, non-streaming or as
 * paced SSE frames. No model, no queue: whatever time it adds is the same on every path.
 *
 *   node --import tsx bench/gateway/upstream.ts [--latency-ms N] [--frames N] [--frame-gap-ms N]
 *
 * Prints `{"port":N}` on stdout once listening; exits on SIGTERM, SIGINT or when stdin closes
 * (the parent went away).
 */
import * as http from "node:http"
import { parseArgs } from "node:util"
import { controlPlane } from "../../test/fixtures/control-plane.js"
import { serveAsChild } from "../lib.js"

const { values: args } = parseArgs({
  options: {
    "latency-ms": { type: "string", default: "0" },
    frames: { type: "string", default: "32" },
    "frame-gap-ms": { type: "string", default: "2" },
    model: { type: "string", default: "fast" }
  }
})

const nonNegative = (name: string, raw: string | undefined): number => {
  const n = Number(raw)
  if (!Number.isFinite(n) || n < 0) {
    process.stderr.write(`--${name} must be a non-negative number, got ${raw}\n`)
    process.exit(2)
  }
  return n
}

const LATENCY_MS = nonNegative("latency-ms", args["latency-ms"])
const FRAMES = Math.max(1, Math.floor(nonNegative("frames", args.frames)))
const FRAME_GAP_MS = nonNegative("frame-gap-ms", args["frame-gap-ms"])
const MODEL = args.model
const PROMPT_TOKENS = 12
const CREATED = Math.floor(Date.now() / 1000)
const ID = "chatcmpl-bench0000000000000000"

const word = (i: number) => `w${i} `
const usage = {
  prompt_tokens: PROMPT_TOKENS,
  completion_tokens: FRAMES,
  total_tokens: PROMPT_TOKENS + FRAMES,
  prompt_tokens_details: { cached_tokens: 0 },
  timing: { queue_ms: 0, prefill_ms: 1, decode_ms: FRAMES * FRAME_GAP_MS, ttft_ms: LATENCY_MS + 1 }
}

const plane = controlPlane(MODEL)
const json = (value: unknown) => Buffer.from(JSON.stringify(value))
const HEALTH = json(plane.health)
const MODELS = json(plane.models)
const DISCOVERY = json(plane.discovery)
const COMPLETION = json({
  id: ID,
  object: "chat.completion",
  created: CREATED,
  model: MODEL,
  choices: [{
    index: 0,
    message: { role: "assistant", content: Array.from({ length: FRAMES }, (_, i) => word(i)).join("") },
    finish_reason: "length"
  }],
  usage
})

const chunk = (extra: Record<string, unknown>) => ({
  id: ID,
  object: "chat.completion.chunk",
  created: CREATED,
  model: MODEL,
  ...extra
})
const frame = (value: unknown) => Buffer.from(`data: ${JSON.stringify(value)}\n\n`)
const FIRST = frame(chunk({
  choices: [{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }],
  cortex: { prompt_tokens: PROMPT_TOKENS, cached_tokens: 0 }
}))
const CONTENT = Array.from(
  { length: FRAMES },
  (_, i) => frame(chunk({ choices: [{ index: 0, delta: { content: word(i) }, finish_reason: null }] }))
)
const TAIL = Buffer.concat([
  frame(chunk({ choices: [{ index: 0, delta: {}, finish_reason: "length" }] })),
  frame(chunk({ choices: [], usage })),
  Buffer.from("data: [DONE]\n\n")
])

const sendJson = (res: http.ServerResponse, status: number, body: Buffer) => {
  res.writeHead(status, { "content-type": "application/json", "content-length": body.length })
  res.end(body)
}

/** Run `f` after `ms`, or on this tick's queue when `ms` is 0 (no timer for the default). */
const after = (ms: number, f: () => void): NodeJS.Timeout | undefined => {
  if (ms > 0) return setTimeout(f, ms)
  setImmediate(f)
  return undefined
}

const stream = (res: http.ServerResponse) => {
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" })
  let timer: NodeJS.Timeout | undefined
  let closed = false
  res.on("close", () => {
    closed = true
    if (timer) clearTimeout(timer)
  })
  const send = (i: number) => {
    if (closed) return
    if (i === 0) res.write(FIRST)
    res.write(CONTENT[i]!)
    if (i + 1 < FRAMES) timer = after(FRAME_GAP_MS, () => send(i + 1))
    else res.end(TAIL)
  }
  timer = after(LATENCY_MS, () => send(0))
}

const server = http.createServer({ keepAliveTimeout: 60_000, noDelay: true }, (req, res) => {
  const url = req.url ?? "/"
  if (req.method === "GET") {
    req.resume()
    if (url === "/health") return sendJson(res, 200, HEALTH)
    if (url === "/models") return sendJson(res, 200, MODELS)
    if (url === "/discovery") return sendJson(res, 200, DISCOVERY)
    return sendJson(res, 404, json({ error: { message: `no route ${url}`, type: "not_found" } }))
  }
  if (req.method !== "POST" || url !== "/v1/chat/completions") {
    req.resume()
    return sendJson(res, 404, json({ error: { message: `no route ${req.method} ${url}`, type: "not_found" } }))
  }
  const parts: Array<Buffer> = []
  req.on("data", (b: Buffer) => parts.push(b))
  req.on("end", () => {
    let body: { stream?: unknown }
    try {
      body = JSON.parse(Buffer.concat(parts).toString("utf8")) as { stream?: unknown }
    } catch {
      return sendJson(res, 400, json({ error: { message: "bad JSON", type: "invalid_request_error" } }))
    }
    if (body.stream === true) return stream(res)
    const timer = after(LATENCY_MS, () => {
      if (!res.destroyed) sendJson(res, 200, COMPLETION)
    })
    res.on("close", () => {
      if (timer) clearTimeout(timer)
    })
  })
})

serveAsChild(server)
