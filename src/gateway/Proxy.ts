/**
 * The proxy: answer one inference request in the client's dialect, on plain node:http objects.
 * The inference routes are the gateway's hot path: measured in bench/gateway, the Effect HTTP
 * server and a fiber per step cost four times what proxying itself does, so the common case (the
 * model is loaded somewhere) runs without a fiber. Routing and the upstream call, with failover
 * before the first byte, are Failover's; this module writes the answer and records the outcome.
 * - Same dialect (OpenAI → neuron): the upstream bytes are relayed as they come (no buffering);
 *   a light SSE scan on the side reads the first token and the usage for the metrics.
 * - Translated dialects (Anthropic, Responses): each upstream chunk goes through a translator.
 * The stream's bookkeeping is a StreamRelay fed chunk by chunk. Timeouts measure idleness, never
 * total length (lesson 1). A client that hangs up aborts the upstream request (and a cold load it
 * was waiting for).
 */
import { Effect, Runtime } from "effect"
import type { ServerResponse } from "node:http"
import { type ApiError, InternalError, isApiError } from "../domain/errors.js"
import type { Usage } from "../domain/openai-output.js"
import { Catalogue, resolveAlias } from "./Catalogue.js"
import { ConsoleFeed } from "./console/ConsoleFeed.js"
import { sendError, sendJson } from "./Dialects.js"
import { Aborted, type Attempt, Failover, type ProxyRequest } from "./Failover.js"
import { GatewayConfig } from "./GatewayConfig.js"
import * as M from "./Metrics.js"
import { Pulls } from "./Pulls.js"
import { type Frames, StreamRelay } from "./StreamRelay.js"
import { Cancel, parseJson, readAll, usageIn } from "./Upstream.js"

/** How long a streamed request may wait (routing, cold load) before its headers go out. */
const HEAD_START_MS = 750
const SSE_HEADERS = { "content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no" }

/** Resolves when the response can take more, or is gone. */
const drained = (res: ServerResponse) =>
  new Promise<void>((resolve) => {
    const done = () => {
      res.off("drain", done)
      res.off("close", done)
      resolve()
    }
    res.once("drain", done)
    res.once("close", done)
  })

const asApiError = (e: unknown): ApiError => isApiError(e) ? e : new InternalError({ detail: String(e) })

type Connected = { readonly ok: true; readonly a: Attempt } | { readonly ok: false; readonly e: unknown }

/** `connecting`'s answer if it settles within `ms`, else undefined (it goes on settling). */
const within = async (connecting: Promise<Connected>, ms: number): Promise<Connected | undefined> => {
  let timer: NodeJS.Timeout | undefined
  const early = await Promise.race([
    connecting,
    new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), ms)
    })
  ])
  clearTimeout(timer)
  return early
}

export class Proxy extends Effect.Service<Proxy>()("cortex/Proxy", {
  effect: Effect.gen(function*() {
    const config = yield* GatewayConfig
    const catalogue = yield* Catalogue
    const pulls = yield* Pulls
    const { attempt, upstreamError, upstreamTimeout } = yield* Failover
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    const logWarning = (message: string) => runFork(Effect.logWarning(message))

    /** Request metrics, labelled by catalogue id (or "unknown"), never by the name a client sent. */
    const feed = yield* ConsoleFeed
    const recorder = new M.RequestRecorder((name) => {
      const id = resolveAlias(config.aliases, name)
      return catalogue.now().has(id) ? id : M.UNKNOWN_MODEL
    }, feed.request)
    const record = (request: ProxyRequest, node: string, outcome: M.Outcome) => {
      recorder.record(request.model, node, request.dialect.route, request.received, outcome)
      const s = request.summary
      s.node = node
      s.status = outcome.status
      s.error = outcome.error
      s.clientGone = outcome.status === 499 || outcome.error === "client_disconnected"
      s.ttftMs = outcome.ttftMs
      const usage = outcome.usage
      if (usage) {
        s.promptTokens = usage.prompt_tokens
        s.completionTokens = usage.completion_tokens
        s.cachedTokens = usage.prompt_tokens_details?.cached_tokens
      }
      s.markRecorded()
    }

    const nodeHeaders = (request: ProxyRequest, a: Attempt, extraMs = 0) => ({
      "x-cortex-node": a.nodeName,
      "x-cortex-overhead-ms": String(Math.max(0, a.upstreamStarted - request.received) + extraMs)
    })

    /** An error before any answer went out: in the dialect's envelope, and counted. */
    const refuse = (request: ProxyRequest, res: ServerResponse, node: string, error: ApiError, reason?: string) => {
      record(request, node, { status: error.status, error: reason ?? error._tag })
      sendError(res, request.dialect, error)
    }

    /** A non-streaming request: one JSON answer. */
    const unary = async (request: ProxyRequest, res: ServerResponse) => {
      const cancel = new Cancel()
      res.once("close", () => {
        if (!res.writableFinished) cancel.abort()
      })
      let a: Attempt
      try {
        a = await attempt(request, cancel)
      } catch (e) {
        if (e instanceof Aborted || cancel.aborted) {
          return record(request, "none", { status: 499, error: "client_disconnected" })
        }
        return refuse(request, res, "none", asApiError(e))
      }
      try {
        if (a.response.status !== 200) {
          const error = await upstreamError(a.response)
          return refuse(request, res, a.nodeName, error, error.body.error.code ?? "upstream")
        }
        const bytes = await readAll(a.response.body, Infinity, a.response.touch)
        const translateStarted = Date.now()
        const translate = request.dialect.json
        // Same dialect: the neuron's bytes go out as they came (no re-serialisation), and only
        // their usage is read, for the metrics.
        const body = translate ? parseJson(bytes) : undefined
        const out = translate ? JSON.stringify(translate(body)) : bytes
        const usage = body !== undefined ? (body as { usage?: Usage }).usage : usageIn(bytes)
        record(request, a.nodeName, { status: 200, usage, ttftMs: usage?.timing?.ttft_ms })
        sendJson(res, 200, out, nodeHeaders(request, a, Date.now() - translateStarted))
      } catch (e) {
        if (cancel.aborted) return record(request, a.nodeName, { status: 499, error: "client_disconnected" })
        if (a.response.timedOut) {
          M.countUpstreamError(a.nodeName, "upstream_timeout")
          a.span.attribute("error.type", "upstream_timeout")
          const error = upstreamTimeout(`the upstream sent nothing for ${config.idleTimeoutSecs} s`)
          return refuse(request, res, a.nodeName, error, "upstream_timeout")
        }
        refuse(request, res, a.nodeName, new InternalError({ detail: `bad upstream answer: ${(e as Error).message}` }))
      } finally {
        a.release()
      }
    }

    /** Relay or translate the upstream's chunks to the client, pausing the upstream while the client is slow. */
    const pump = async (a: Attempt, relay: StreamRelay, res: ServerResponse, cancel: Cancel) => {
      // The upstream's idle timer (Upstream.post) has run since the call began; each chunk stamps it.
      const upstream = a.response
      try {
        for await (const value of upstream.body as AsyncIterable<Buffer>) {
          upstream.touch()
          relay.chunk(value)
          // A slow client: stop reading the upstream (TCP pushes back to the neuron) until its
          // socket drains, instead of buffering here. Waiting on the client is not upstream idleness.
          if (res.writableNeedDrain) {
            upstream.pause()
            await drained(res)
            upstream.resume()
          }
        }
      } catch (e) {
        relay.broke(
          upstream.timedOut
            ? "upstream_timeout"
            : cancel.aborted
            ? "client_disconnected"
            : `upstream: ${(e as Error).message}`
        )
      }
    }

    /** A streaming request: SSE to the client, relayed or translated. */
    const streamed = async (request: ProxyRequest, res: ServerResponse) => {
      const cancel = new Cancel()
      let finished = false
      let lastWrite = Date.now()
      const write = (frames: Frames) => {
        if (res.destroyed || res.writableEnded) return
        lastWrite = Date.now()
        if (typeof frames === "string" || frames instanceof Uint8Array) res.write(frames)
        else for (const f of frames) res.write(f)
      }
      // The client hung up (or we are done): stop the upstream.
      res.once("close", () => {
        if (!finished) cancel.abort()
      })

      // 1. Route and connect, with a head start: quick failures keep their HTTP status.
      const connecting = attempt(request, cancel).then(
        (a): Connected => ({ ok: true, a }),
        (e: unknown): Connected => ({ ok: false, e })
      )
      const early = await within(connecting, HEAD_START_MS)
      if (early?.ok === false) {
        finished = true
        if (early.e instanceof Aborted || cancel.aborted) {
          return record(request, "none", { status: 499, error: "client_disconnected" })
        }
        return refuse(request, res, "none", asApiError(early.e))
      }
      if (early?.ok === true && early.a.response.status !== 200) {
        finished = true
        const a = early.a
        try {
          const error = await upstreamError(a.response)
          return refuse(request, res, a.nodeName, error, error.body.error.code ?? "upstream")
        } finally {
          a.release()
        }
      }

      // 2. Open the stream; never a second of silence while routing, cold-loading or prefilling
      // (the neuron's own comments are not relayed through a translator).
      res.writeHead(200, early?.ok === true ? { ...SSE_HEADERS, ...nodeHeaders(request, early.a) } : SSE_HEADERS)
      const relay = new StreamRelay(request.received, request.dialect.translator?.(), write, request.dialect.keepAlive)
      if (early === undefined) write(relay.keepAlive())
      const keepAlive = setInterval(() => {
        if (res.destroyed) clearInterval(keepAlive)
        else if (Date.now() - lastWrite >= 900) {
          // While the model is being pulled for this request, the keep-alive says how far it got.
          const progress = pulls.progressFor(request.model)
          write(relay.keepAlive(progress !== undefined ? request.dialect.keepAliveWith(progress) : undefined))
        }
      }, 250)

      // 3. A late routing failure goes in-band.
      const outcome = await connecting
      if (!outcome.ok) {
        finished = true
        if (!(outcome.e instanceof Aborted) && !cancel.aborted) {
          const error = asApiError(outcome.e)
          relay.fail(error.body.error)
          record(request, "none", { status: error.status, error: error._tag })
        } else {
          record(request, "none", { status: 499, error: "client_disconnected" })
        }
        clearInterval(keepAlive)
        res.end()
        return
      }

      // 4. Relay until the upstream ends; one that ends without [DONE] ends with an error event.
      const a = outcome.a
      try {
        if (a.response.status !== 200) {
          const error = await upstreamError(a.response)
          return relay.failWith(error.body.error.code ?? "upstream", error.body.error)
        }
        await pump(a, relay, res, cancel)
        relay.end(config.idleTimeoutSecs)
      } finally {
        const failed = relay.failure
        if (failed !== undefined && failed !== "client_disconnected" && a.response.status === 200) {
          // A stream that broke after its head: the node's failure, counted once, on its span too.
          const reason = M.reasonLabel(failed)
          M.countUpstreamError(a.nodeName, reason)
          a.span.attribute("error.type", reason)
        }
        a.release()
        finished = true
        clearInterval(keepAlive)
        record(request, a.nodeName, relay.outcome())
        res.end()
      }
    }

    /** Serve one validated request on `res`; never rejects. */
    const serve = (request: ProxyRequest, res: ServerResponse): Promise<void> =>
      (request.stream ? streamed(request, res) : unary(request, res)).catch((e: unknown) => {
        logWarning(`proxy failed: ${String(e)}`)
        if (!res.headersSent) return refuse(request, res, "none", asApiError(e))
        // The request's span and log line end with it, whatever was recorded before.
        request.summary.error ??= "proxy_failed"
        request.summary.markRecorded()
        res.destroy()
      })

    return { serve } as const
  })
}) {}
