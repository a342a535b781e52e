/**
 * The gateway's HTTP client for neuron inference calls: node:http with a keep-alive agent per
 * neuron. Measured in bench/gateway, global fetch (web streams over undici) was about a third of
 * the gateway's CPU per request; a plain node:http request costs a fraction of that.
 */
import * as http from "node:http"
import * as https from "node:https"
import type { Usage } from "../domain/openai-output.js"

export interface UpstreamResponse {
  readonly status: number
  readonly headers: http.IncomingHttpHeaders
  readonly body: http.IncomingMessage
}

/**
 * Cancellation without EventTarget: an AbortController per request, and the listeners node:http
 * puts on its signal, showed in the gateway's profile.
 */
export class Cancel {
  aborted = false
  private readonly listeners = new Set<() => void>()

  abort() {
    if (this.aborted) return
    this.aborted = true
    for (const listener of this.listeners) listener()
    this.listeners.clear()
  }

  /** Run `listener` on abort (at once when already aborted); the result unregisters it. */
  on(listener: () => void): () => void {
    if (this.aborted) {
      listener()
      return () => undefined
    }
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }
}

interface Target {
  readonly request: typeof http.request
  readonly agent: http.Agent
  readonly hostname: string
  readonly port: string
  readonly basePath: string
}

/** Per neuron endpoint, parsed once: its keep-alive agent and address. */
const targets = new Map<string, Target>()

const targetFor = (endpoint: string): Target => {
  let target = targets.get(endpoint)
  if (!target) {
    const url = new URL(endpoint)
    const options = { keepAlive: true, maxSockets: 512, keepAliveMsecs: 10_000 }
    const secure = url.protocol === "https:"
    target = {
      request: secure ? https.request : http.request,
      agent: secure ? new https.Agent(options) : new http.Agent(options),
      hostname: url.hostname,
      port: url.port,
      basePath: url.pathname.replace(/\/+$/, "")
    }
    targets.set(endpoint, target)
  }
  return target
}

/** POST `body` to `endpoint` + `path`; resolves with the response head, its body unread. */
export const post = (
  endpoint: string,
  path: string,
  headers: Record<string, string>,
  body: string,
  cancel: Cancel
): Promise<UpstreamResponse> =>
  new Promise((resolve, reject) => {
    const target = targetFor(endpoint)
    const request = target.request({
      method: "POST",
      agent: target.agent,
      hostname: target.hostname,
      port: target.port,
      path: target.basePath + path,
      headers: { ...headers, "content-length": Buffer.byteLength(body) }
    }, (res) => resolve({ status: res.statusCode ?? 502, headers: res.headers, body: res }))
    request.once("close", cancel.on(() => request.destroy(new Error("the request was cancelled"))))
    request.once("error", reject)
    request.end(body)
  })

/** A body over the limit given to readAll. */
export class BodyTooLarge extends Error {}

/**
 * Read an HTTP message's body: a request the gateway serves or a neuron's answer. Over `limit`
 * bytes it fails with BodyTooLarge and drops the rest, so that the peer can finish sending and
 * read the answer (closing on it mid-upload makes many clients report a reset instead).
 */
export const readAll = (message: http.IncomingMessage, limit = Infinity): Promise<Buffer> =>
  new Promise((resolve, reject) => {
    const tooLarge = () => {
      message.removeAllListeners("data")
      message.resume()
      reject(new BodyTooLarge(`the body is larger than ${limit} bytes`))
    }
    if (Number(message.headers["content-length"]) > limit) return tooLarge()
    const chunks: Array<Buffer> = []
    let size = 0
    message.on("data", (chunk: Buffer) => {
      size += chunk.length
      if (size > limit) return tooLarge()
      chunks.push(chunk)
    })
    message.once("end", () => resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)))
    message.once("error", reject)
    // A peer that hangs up mid-body may end the message with neither `end` nor `error`.
    message.once("close", () => {
      if (!message.complete) reject(new Error("the connection closed before the body was complete"))
    })
  })

export const parseJson = (bytes: Buffer): unknown => {
  try {
    return JSON.parse(bytes.toString("utf8"))
  } catch {
    return bytes.toString("utf8")
  }
}

const USAGE_KEY = Buffer.from("\"usage\":")

/**
 * The `usage` object of a JSON chat or completion answer, without parsing the whole answer (the
 * neuron writes it last; it holds numbers and objects of numbers, no braces inside strings).
 * Falls back to a full parse when the shortcut does not apply.
 */
export const usageIn = (bytes: Buffer): Usage | undefined => {
  const at = bytes.lastIndexOf(USAGE_KEY)
  if (at >= 0) {
    const start = at + USAGE_KEY.length
    let depth = 0
    for (let i = start; i < bytes.length; i++) {
      const c = bytes[i]
      if (c === 0x7b) depth++
      else if (c === 0x7d && --depth === 0) {
        try {
          return JSON.parse(bytes.toString("utf8", start, i + 1)) as Usage
        } catch {
          break
        }
      }
    }
  }
  const whole = parseJson(bytes)
  return typeof whole === "object" && whole !== null ? (whole as { usage?: Usage }).usage : undefined
}
