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
  /** The consumer read a body chunk: the idle timer's "a byte came" (a listener, bound). */
  readonly touch: () => void
  /** Hold the idle timer while the consumer waits on its own client (backpressure), not the upstream. */
  readonly pause: () => void
  readonly resume: () => void
  /** The idle timer cut this exchange's body. */
  readonly timedOut: boolean
}

/** Why an upstream call failed before its response head. */
export type FailureReason = "connect" | "reset" | "timeout"

/** An upstream call that failed before its response head: nothing reached the client yet. */
export class UpstreamFailure extends Error {
  constructor(
    readonly reason: FailureReason,
    /** It went out on a pooled keep-alive socket (which the server may have just closed). */
    readonly reusedSocket: boolean,
    message: string
  ) {
    super(message)
  }
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

/**
 * How long a pooled socket may sit idle before the gateway closes it. Below the neuron's server
 * keepAliveTimeout (5 s, src/layers/NeuronLive.ts), so the gateway closes an idle connection
 * before the neuron does, instead of reusing one the neuron is closing ("socket hang up"). Node 20's
 * agent applies `timeout` to free sockets only as far as destroying them goes (it ignores the
 * server's `Keep-Alive: timeout` hint until Node 22); on a busy socket it is a no-op event.
 */
export const POOL_IDLE_MS = 4_000

/** Per neuron endpoint, parsed once: its keep-alive agent and address. */
const targets = new Map<string, Target>()

const targetFor = (endpoint: string): Target => {
  let target = targets.get(endpoint)
  if (!target) {
    const url = new URL(endpoint)
    const options = { keepAlive: true, maxSockets: 512, keepAliveMsecs: 10_000, timeout: POOL_IDLE_MS }
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

/** The keep-alive agent used for `endpoint` (for tests and diagnostics). */
export const agentFor = (endpoint: string): http.Agent => targetFor(endpoint).agent

/**
 * One upstream exchange and its idle timer, which covers every phase: waiting for a socket,
 * connecting, the response head, and each body chunk the consumer reads. One timer per
 * exchange, re-armed lazily (once per idle period, not per chunk): a chunk only stamps the time.
 */
class Exchange implements UpstreamResponse {
  status = 0
  headers: http.IncomingHttpHeaders = {}
  body!: http.IncomingMessage
  timedOut = false
  request!: http.ClientRequest
  private last = Date.now()
  private paused = false
  private timer: NodeJS.Timeout

  constructor(private readonly idleMs: number) {
    this.timer = setTimeout(this.check, idleMs)
  }

  readonly touch = () => {
    this.last = Date.now()
  }

  pause() {
    this.paused = true
  }

  resume() {
    this.paused = false
    this.last = Date.now()
  }

  readonly stop = () => clearTimeout(this.timer)

  private readonly check = () => {
    const quiet = Date.now() - this.last
    if (this.paused || quiet < this.idleMs) {
      this.timer = setTimeout(this.check, this.paused ? this.idleMs : this.idleMs - quiet)
      return
    }
    this.timedOut = true
    const secs = this.idleMs / 1000
    if (this.body) {
      this.body.destroy(new Error(`the upstream sent nothing for ${secs} s`))
      return
    }
    const socket = this.request.socket
    const connecting = !socket || socket.connecting
    this.request.destroy(
      new UpstreamFailure(
        "timeout",
        this.request.reusedSocket,
        connecting
          ? `no connection to the upstream within ${secs} s`
          : `the upstream sent no response head within ${secs} s`
      )
    )
  }
}

/** Errors a socket reports when it could not connect at all (refused, unreachable, unresolved). */
const connectFailure = (e: NodeJS.ErrnoException) => {
  const syscall = (e as { syscall?: string }).syscall
  return syscall === "connect" || syscall === "getaddrinfo"
}

/**
 * POST `body` to `endpoint` + `path`; resolves with the response head, its body unread. Fails
 * with UpstreamFailure when nothing came back (no connection, a reset, no head within `idleMs`),
 * or with a plain Error when `cancel` fired. `fresh`: on a new connection, not a pooled one.
 */
export const post = (
  endpoint: string,
  path: string,
  headers: Record<string, string>,
  body: string,
  cancel: Cancel,
  idleMs: number,
  fresh = false
): Promise<UpstreamResponse> =>
  new Promise((resolve, reject) => {
    const target = targetFor(endpoint)
    const exchange = new Exchange(idleMs)
    const request = target.request({
      method: "POST",
      agent: fresh ? false : target.agent,
      hostname: target.hostname,
      port: target.port,
      path: target.basePath + path,
      headers: { ...headers, "content-length": Buffer.byteLength(body) }
    }, (res) => {
      exchange.status = res.statusCode ?? 502
      exchange.headers = res.headers
      exchange.body = res
      exchange.touch()
      res.once("close", exchange.stop)
      resolve(exchange)
    })
    exchange.request = request
    // A neuron may send 102 Processing while it works on a long unary answer: that is not idleness.
    request.on("information", exchange.touch)
    request.once("close", cancel.on(() => request.destroy(new Error("the request was cancelled"))))
    request.once("error", (e: NodeJS.ErrnoException) => {
      exchange.stop()
      if (e instanceof UpstreamFailure || cancel.aborted) return reject(e)
      reject(new UpstreamFailure(connectFailure(e) ? "connect" : "reset", request.reusedSocket, e.message))
    })
    request.end(body)
  })

/** A body over the limit given to readAll. */
export class BodyTooLarge extends Error {}

/**
 * Read an HTTP message's body: a request the gateway serves or a neuron's answer. Over `limit`
 * bytes it fails with BodyTooLarge and drops the rest, so that the peer can finish sending and
 * read the answer (closing on it mid-upload makes many clients report a reset instead).
 */
export const readAll = (
  message: http.IncomingMessage,
  limit = Infinity,
  onChunk?: () => void
): Promise<Buffer> =>
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
      onChunk?.()
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
