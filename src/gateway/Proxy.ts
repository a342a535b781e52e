/**
 * The proxy: route a request, call the neuron, and answer in the client's dialect, on plain
 * node:http objects. The inference routes are the gateway's hot path: measured in bench/gateway,
 * the Effect HTTP server and a fiber per step cost four times what proxying itself does, so the
 * common case (the model is loaded somewhere) runs without a fiber; routing that needs one
 * (a cold load, a refresh) runs through the Effect runtime, inside the request's span.
 * - Same dialect (OpenAI → neuron): the upstream bytes are relayed as they come (no buffering);
 *   a light SSE scan on the side reads the first token and the usage for the metrics.
 * - Translated dialects (Anthropic, Responses): each upstream chunk goes through a translator.
 * Timeouts measure idleness, never total length (lesson 1). A client that hangs up aborts the
 * upstream request (and a cold load it was waiting for). Another replica is tried only before
 * the first upstream byte.
 */
import { Cause, Context, Effect, Exit, FiberId, MetricLabel, Option, Runtime, type Tracer } from "effect"
import type { ServerResponse } from "node:http"
import { type ApiError, InternalError, isApiError, ModelUnavailable, UpstreamError } from "../domain/errors.js"
import { encodeModelName, MODEL_NAME_HEADER, PROGRESS_HEADER } from "../domain/headers.js"
import type { ChatCompletionChunk, Usage } from "../domain/openai-output.js"
import type { RequestSummary } from "../telemetry/RequestLog.js"
import { Catalogue, resolveAlias } from "./Catalogue.js"
import { type Dialect, sendError, sendJson } from "./Dialects.js"
import { GatewayConfig } from "./GatewayConfig.js"
import { InFlight } from "./InFlight.js"
import * as M from "./Metrics.js"
import { authHeaders } from "./NeuronClient.js"
import { Poller } from "./Poller.js"
import { type Route, Router } from "./Router.js"
import { SseParser } from "./Sse.js"
import { Cancel, parseJson, post, readAll, UpstreamFailure, type UpstreamResponse, usageIn } from "./Upstream.js"

export const PRINCIPAL_HEADER = "x-cortex-principal"
export const AUTOLOAD_HEADER = "x-cortex-autoload"
/** Upstream 503 codes that mean "not here any more", not "try later". */
const STALE_ROUTE = new Set(["model_not_loaded", "model_unloading", "model_loading"])
/** How long a streamed request may wait (routing, cold load) before its headers go out. */
const HEAD_START_MS = 750
const SSE_HEADERS = { "content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no" }

export interface ProxyRequest {
  readonly model: string
  readonly path: "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings"
  readonly body: Record<string, unknown>
  /** The body as the client sent it, when `body` is that body (same dialect). */
  readonly text?: string | undefined
  readonly stream: boolean
  readonly principal: string
  readonly dialect: Dialect
  readonly received: number
  /** The request's span: the parent of any routing work, and the neuron's traceparent. */
  readonly span: Tracer.Span
  /** How the request ended, for its span and log line (InferenceRoutes writes them). */
  readonly summary: RequestSummary
}

interface Attempt {
  readonly response: UpstreamResponse
  readonly route: Route
  readonly nodeName: string
  /** Gives the seat back and ends the upstream call's span; once. */
  readonly release: () => void
  readonly upstreamStarted: number
  /** The upstream call's span (the neuron's traceparent names it). */
  readonly span: Tracer.Span
}

/** The client went away while we were still routing or connecting. */
class Aborted extends Error {}

/** The profile's sampling defaults, for the fields the client left out (request → profile → neuron). */
const samplingDefaults = (route: Route, request: ProxyRequest): Record<string, unknown> => {
  const sampling = route.model.profile?.sampling
  if (!sampling || request.path === "/v1/embeddings") return {}
  const { max_tokens, ...rest } = sampling
  const hasLimit = request.body.max_tokens != null || request.body.max_completion_tokens != null
  return { ...rest, ...(max_tokens !== undefined && !hasLimit ? { max_tokens } : {}) }
}

const firstTokenIn = (chunk: ChatCompletionChunk) => {
  const delta = chunk.choices?.[0]?.delta
  return !!delta && (!!delta.content || !!delta.reasoning_content || (delta.tool_calls?.length ?? 0) > 0)
}

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

export class Proxy extends Effect.Service<Proxy>()("cortex/Proxy", {
  effect: Effect.gen(function*() {
    const config = yield* GatewayConfig
    const router = yield* Router
    const poller = yield* Poller
    const catalogue = yield* Catalogue
    const inFlight = yield* InFlight
    const runtime = yield* Effect.runtime<never>()
    const tracer = yield* Effect.tracer
    const clock = yield* Effect.clock
    const runFork = Runtime.runFork(runtime)
    const idleMs = config.idleTimeoutSecs * 1000
    const progressMs = String(Math.max(250, Math.floor(idleMs / 3)))
    // The retry policy, parsed once: what may fail over to another replica before any byte went out.
    const retryOn = new Set(config.retry.on)
    const retryStatuses = new Set(config.retry.on.filter((c) => /^\d+$/.test(c)).map(Number))

    /** Run an Effect from node-land, interrupted when the client hangs up. */
    const run = <A>(effect: Effect.Effect<A, ApiError>, span: Tracer.Span, cancel: Cancel): Promise<A> =>
      new Promise((resolve, reject) => {
        const fiber = runFork(Effect.withParentSpan(effect, span))
        const off = cancel.on(() => fiber.unsafeInterruptAsFork(FiberId.none))
        fiber.addObserver((exit) => {
          off()
          if (Exit.isSuccess(exit)) return resolve(exit.value)
          const failure = Cause.failureOption(exit.cause)
          if (failure._tag === "Some") return reject(failure.value)
          if (Cause.isInterruptedOnly(exit.cause)) return reject(new Aborted())
          reject(new InternalError({ detail: Cause.pretty(exit.cause) }))
        })
      })

    const logWarning = (message: string) => runFork(Effect.logWarning(message))

    /** Request metrics, labelled by catalogue id (or "unknown"), never by the name a client sent. */
    const recorder = new M.RequestRecorder((name) => {
      const id = resolveAlias(config.aliases, name)
      return catalogue.now().has(id) ? id : M.UNKNOWN_MODEL
    })
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

    /** One call to a node, a child of the request's span; the neuron continues it. */
    const upstreamSpan = (request: ProxyRequest, node: Route["node"], attempt: number) => {
      const span = tracer.span(
        "gateway.upstream",
        Option.some(request.span),
        Context.empty(),
        [],
        clock.unsafeCurrentTimeNanos(),
        "client"
      )
      span.attribute("cortex.node", node.name)
      span.attribute("url.full", node.endpoint.endpoint + request.path)
      span.attribute("cortex.attempt", attempt)
      return span
    }
    const endSpan = (span: Tracer.Span, status: number | undefined, error?: string) => {
      if (status !== undefined) span.attribute("http.response.status_code", status)
      if (error !== undefined) span.attribute("error.type", error)
      span.end(clock.unsafeCurrentTimeNanos(), error !== undefined ? Exit.fail(error) : Exit.void)
    }

    /** Routing that needs the full router (cold load, recovering, unknown): a fiber. */
    const routeSlowly = async (request: ProxyRequest, cancel: Cancel): Promise<Route> => {
      const route = await run(
        router.route(request.model).pipe(
          Effect.tap((route) =>
            Effect.annotateCurrentSpan({
              "cortex.cold_load": route.coldLoad,
              "cortex.node": route.node.name,
              "gen_ai.response.model": route.model.id
            })
          ),
          Effect.withSpan("gateway.route", {
            captureStackTrace: false,
            attributes: { "gen_ai.request.model": request.model }
          })
        ),
        request.span,
        cancel
      )
      if (route.coldLoad) {
        M.coldStarts.unsafeUpdate(1, [
          MetricLabel.make("model", route.model.id),
          MetricLabel.make("node", route.node.name)
        ])
      }
      return route
    }

    /** One more try after a call to `node` failed for `reason` (connect, reset, timeout, a status, reused_socket). */
    const countRetry = (node: string, reason: string) =>
      M.upstreamRetries.unsafeUpdate(1, [MetricLabel.make("node", node), MetricLabel.make("reason", reason)])

    /** 504 `upstream_timeout`: a server_error in OpenAI's envelope, a timeout_error in Anthropic's. */
    const upstreamTimeout = (detail: string) =>
      new UpstreamError({
        upstreamStatus: 504,
        upstreamBody: { error: { message: detail, type: "server_error", code: "upstream_timeout", param: null } },
        retryAfter: null
      })

    /**
     * One call to `node`. The keep-alive race: the neuron may close a pooled socket just as the
     * gateway reuses it, before the request reached a live server; a reset on a reused socket is
     * tried once more, on a fresh connection to the same node, whatever retry_on says.
     */
    const call = async (
      node: Route["node"],
      request: ProxyRequest,
      body: string,
      traceparent: string,
      cancel: Cancel
    ): Promise<UpstreamResponse> => {
      const headers = {
        "content-type": "application/json",
        [PRINCIPAL_HEADER]: request.principal,
        // Loads are the gateway's to place: a stale route must not make the neuron load.
        [AUTOLOAD_HEADER]: "off",
        traceparent,
        // A non-streamed answer's head comes only when it is done: ask for 102s meanwhile.
        ...(request.stream ? {} : { [PROGRESS_HEADER]: progressMs }),
        // The body names the neuron's id; answers name the model as the client did (an alias).
        [MODEL_NAME_HEADER]: encodeModelName(request.model),
        ...authHeaders(node.endpoint)
      }
      try {
        return await post(node.endpoint.endpoint, request.path, headers, body, cancel, idleMs)
      } catch (e) {
        if (!(e instanceof UpstreamFailure) || e.reason !== "reset" || !e.reusedSocket || cancel.aborted) throw e
        countRetry(node.name, "reused_socket")
        return await post(node.endpoint.endpoint, request.path, headers, body, cancel, idleMs, true)
      }
    }

    /**
     * Route and call the upstream, falling over to the next replica before any byte came back, as
     * retry_on allows and within max_attempts tries in all (`tries` counts across attempt's re-route).
     */
    const attemptOnce = async (request: ProxyRequest, cancel: Cancel, tries: { n: number }): Promise<Attempt> => {
      // No fiber when the model is loaded on a healthy replica (the common case).
      const route = router.routeNow(request.model) ?? await routeSlowly(request, cancel)
      const nodes = [route.node, ...route.fallbacks]
      const defaults = samplingDefaults(route, request)
      // The client's own bytes when nothing changes (no alias, no profile defaults): no re-encoding.
      const body = request.text !== undefined && request.body.model === route.model.neuronId &&
          Object.keys(defaults).length === 0
        ? request.text
        : JSON.stringify({ ...defaults, ...request.body, model: route.model.neuronId })
      let last: ApiError | undefined
      for (let i = 0; i < nodes.length; i++) {
        const node = nodes[i]!
        tries.n++
        const more = i < nodes.length - 1 && tries.n < config.retry.maxAttempts
        const seat = inFlight.track(node.name, route.model.neuronId)
        const upstreamStarted = Date.now()
        const span = upstreamSpan(request, node, tries.n)
        const traceparent = `00-${span.traceId}-${span.spanId}-${span.sampled ? "01" : "00"}`
        let response: UpstreamResponse
        try {
          response = await call(node, request, body, traceparent, cancel)
        } catch (e) {
          seat()
          if (cancel.aborted) {
            endSpan(span, undefined, "client_disconnected")
            throw new Aborted()
          }
          const reason = e instanceof UpstreamFailure ? e.reason : "reset"
          endSpan(span, undefined, reason)
          M.countUpstreamError(node.name, reason)
          const message = (e as Error).message
          last = reason === "timeout"
            ? upstreamTimeout(`${node.name}: ${message}`)
            : new ModelUnavailable({ model: request.model, state: "unavailable", detail: `${node.name}: ${message}` })
          logWarning(`upstream ${node.name} failed before the first byte (${reason}): ${message}`)
          if (!more || !retryOn.has(reason)) throw last
          countRetry(node.name, reason)
          continue
        }
        if (M.isUpstreamFailureStatus(response.status)) M.countUpstreamError(node.name, String(response.status))
        let released = false
        const status = response.status
        const release = () => {
          if (released) return
          released = true
          seat()
          endSpan(span, status, status === 200 ? undefined : String(status))
        }
        // Nothing reached the client yet: a status in retry_on moves on to the next replica.
        if (more && retryStatuses.has(response.status)) {
          response.body.resume()
          release()
          countRetry(node.name, String(response.status))
          continue
        }
        return { response, route, nodeName: node.name, release, upstreamStarted, span }
      }
      throw last ?? new InternalError({ detail: "no replica answered" })
    }

    /** An upstream's error answer, passed through; one whose body stops coming is a 504. Never rejects. */
    const upstreamError = async (response: UpstreamResponse): Promise<UpstreamError> => {
      let upstreamBody: unknown
      try {
        upstreamBody = parseJson(await readAll(response.body, Infinity, response.touch))
      } catch {
        if (response.timedOut) return upstreamTimeout(`the upstream sent nothing for ${config.idleTimeoutSecs} s`)
        upstreamBody = undefined
      }
      return new UpstreamError({
        upstreamStatus: response.status,
        upstreamBody,
        retryAfter: (response.headers["retry-after"] as string | undefined) ?? null
      })
    }

    /**
     * Route and call; when the chosen replica turned out not to hold the model any more (evicted
     * or reloading since the last poll), refresh that node and route once more, which loads the
     * model where placement says.
     */
    const attempt = async (request: ProxyRequest, cancel: Cancel): Promise<Attempt> => {
      const tries = { n: 0 }
      const first = await attemptOnce(request, cancel, tries)
      if (first.response.status !== 503) return first
      const error = await upstreamError(first.response)
      first.release()
      if (!STALE_ROUTE.has(String(error.body.error.code))) throw error
      await run(poller.refresh(first.nodeName), request.span, cancel)
      return attemptOnce(request, cancel, tries)
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

    /** A streaming request: SSE to the client, relayed or translated. */
    const streamed = async (request: ProxyRequest, res: ServerResponse) => {
      const cancel = new Cancel()
      let finished = false
      let lastWrite = Date.now()
      const write = (frames: ReadonlyArray<string> | string | Uint8Array) => {
        if (res.destroyed || res.writableEnded) return
        lastWrite = Date.now()
        if (typeof frames === "string" || frames instanceof Uint8Array) res.write(frames)
        else for (const f of frames) res.write(f)
      }
      // The client hung up (or we are done): stop the upstream.
      res.once("close", () => {
        if (!finished) cancel.abort()
      })

      // Route and connect, with a head start: quick failures keep their HTTP status.
      const connecting = attempt(request, cancel).then(
        (a) => ({ ok: true, a }) as const,
        (e: unknown) => ({ ok: false, e }) as const
      )
      let headStart: NodeJS.Timeout | undefined
      const early = await Promise.race([
        connecting,
        new Promise<undefined>((r) => {
          headStart = setTimeout(() => r(undefined), HEAD_START_MS)
        })
      ])
      clearTimeout(headStart)
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
      res.writeHead(200, early?.ok === true ? { ...SSE_HEADERS, ...nodeHeaders(request, early.a) } : SSE_HEADERS)
      const translator = request.dialect.translator?.()
      // A translated stream opens its message on the first upstream chunk, which knows the
      // prompt's size, unless a keep-alive must go out first: then the message opens before it
      // (Anthropic clients expect message_start before any ping; the input tokens then come in
      // message_delta). `start` is empty once the message is open.
      const keepAliveFrames = (): ReadonlyArray<string> | string =>
        translator ? [...translator.start(), request.dialect.keepAlive] : request.dialect.keepAlive
      // Still routing (a cold load?): open the stream now and keep the client alive meanwhile.
      if (early === undefined) write(keepAliveFrames())
      // Never a second of silence: while routing, cold-loading or prefilling (the neuron's own
      // comments are not relayed through a translator), the dialect's keep-alive goes out.
      const keepAlive = setInterval(() => {
        if (res.destroyed) clearInterval(keepAlive)
        else if (Date.now() - lastWrite >= 900) write(keepAliveFrames())
      }, 250)

      /** One error frame in the dialect, at most once: after it the stream only ends. */
      let reported = false
      const fail = (error: { readonly type: string; readonly message: string; readonly code?: string | null }) => {
        if (reported) return
        reported = true
        write(translator ? translator.fail(error) : `data: ${JSON.stringify({ error })}\n\n`)
      }

      const outcome = await connecting
      if (!outcome.ok) {
        finished = true
        if (!(outcome.e instanceof Aborted) && !cancel.aborted) {
          const error = asApiError(outcome.e)
          fail(error.body.error)
          record(request, "none", { status: error.status, error: error._tag })
        } else {
          record(request, "none", { status: 499, error: "client_disconnected" })
        }
        clearInterval(keepAlive)
        res.end()
        return
      }
      const a = outcome.a
      let usage: Usage | null | undefined
      let ttftMs: number | undefined
      let sawDone = false
      let failed: string | undefined
      try {
        if (a.response.status !== 200) {
          const error = await upstreamError(a.response)
          failed = error.body.error.code ?? "upstream"
          fail(error.body.error)
          return
        }
        const parser = new SseParser()
        // The upstream's idle timer (Upstream.post) has run since the call began; each chunk stamps it.
        const upstream = a.response
        try {
          for await (const value of upstream.body as AsyncIterable<Buffer>) {
            upstream.touch()
            if (!translator) write(value)
            for (const data of parser.push(value)) {
              if (data === "[DONE]") {
                sawDone = true
                if (translator) write(translator.end())
                continue
              }
              // Relayed frames are parsed only for what the metrics need: after the first token,
              // only a frame that may carry the usage or an error (most carry one token).
              if (!translator && ttftMs !== undefined && !data.includes("\"usage\"") && !data.includes("\"error\"")) {
                continue
              }
              let chunk: ChatCompletionChunk & { error?: { type: string; message: string; code?: string } }
              try {
                chunk = JSON.parse(data)
              } catch {
                continue
              }
              if (chunk.error) {
                failed = chunk.error.code ?? chunk.error.type
                // A relayed stream already carried the neuron's own error event.
                if (translator) fail(chunk.error)
                else reported = true
                continue
              }
              if (ttftMs === undefined && firstTokenIn(chunk)) ttftMs = Date.now() - request.received
              if (chunk.usage) usage = chunk.usage
              if (translator) write(translator.chunk(chunk))
            }
            // A slow client: stop reading the upstream (TCP pushes back to the neuron) until its
            // socket drains, instead of buffering here. Waiting on the client is not upstream idleness.
            if (res.writableNeedDrain) {
              upstream.pause()
              await drained(res)
              upstream.resume()
            }
          }
        } catch (e) {
          failed ??= upstream.timedOut
            ? "upstream_timeout"
            : cancel.aborted
            ? "client_disconnected"
            : `upstream: ${(e as Error).message}`
        }
        if (!sawDone) {
          failed ??= "truncated"
          // A truncated stream must never look complete (lesson 14).
          if (failed !== "client_disconnected") {
            fail({
              type: "server_error",
              code: failed.startsWith("upstream:") ? "upstream_failed" : failed,
              message: failed === "upstream_timeout"
                ? `the upstream sent nothing for ${config.idleTimeoutSecs} s`
                : failed === "truncated"
                ? "the upstream stream ended before it was complete"
                : `the upstream failed: ${failed}`
            })
          }
        }
      } finally {
        if (failed !== undefined && failed !== "client_disconnected" && a.response.status === 200) {
          // A stream that broke after its head: the node's failure, counted once, on its span too.
          const reason = M.reasonLabel(failed)
          M.countUpstreamError(a.nodeName, reason)
          a.span.attribute("error.type", reason)
        }
        a.release()
        finished = true
        clearInterval(keepAlive)
        record(request, a.nodeName, {
          status: 200,
          usage,
          ttftMs,
          ...(failed !== undefined ? { error: failed } : {})
        })
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
