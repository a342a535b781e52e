/**
 * Failover: route a request and call the upstream, trying the next replica before any byte came
 * back, as `retry_on` allows and within `max_attempts`; a reset on a reused keep-alive socket is
 * tried once more on a fresh connection; a replica that no longer holds the model (evicted or
 * reloading since the last poll) is refreshed and the request routed once more. Fiber-free when
 * the model is loaded somewhere (`Router.routeNow`); routing that needs the full router (a cold
 * load, a refresh) runs through the Effect runtime, inside the request's span, interrupted when
 * the client hangs up. Each call is a `gateway.upstream` span the neuron continues.
 */
import { Cause, Context, Effect, Exit, FiberId, MetricLabel, Option, Runtime, type Tracer } from "effect"
import { type ApiError, InternalError, ModelUnavailable, UpstreamError } from "../domain/errors.js"
import { encodeModelName, MODEL_NAME_HEADER, PROGRESS_HEADER } from "../domain/headers.js"
import type { RequestSummary } from "../telemetry/RequestLog.js"
import type { Dialect } from "./Dialects.js"
import { GatewayConfig } from "./GatewayConfig.js"
import { InFlight } from "./InFlight.js"
import * as M from "./Metrics.js"
import { authHeaders } from "./NeuronClient.js"
import { Poller } from "./Poller.js"
import { type Route, Router } from "./Router.js"
import { Cancel, parseJson, post, readAll, UpstreamFailure, type UpstreamResponse } from "./Upstream.js"

export const PRINCIPAL_HEADER = "x-cortex-principal"
export const AUTOLOAD_HEADER = "x-cortex-autoload"
/** Upstream 503 codes that mean "not here any more", not "try later". */
const STALE_ROUTE = new Set(["model_not_loaded", "model_unloading", "model_loading"])

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

export interface Attempt {
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
export class Aborted extends Error {}

/** The profile's sampling defaults, for the fields the client left out (request → profile → neuron). */
const samplingDefaults = (route: Route, request: ProxyRequest): Record<string, unknown> => {
  const sampling = route.model.profile?.sampling
  if (!sampling || request.path === "/v1/embeddings") return {}
  const { max_tokens, ...rest } = sampling
  const hasLimit = request.body.max_tokens != null || request.body.max_completion_tokens != null
  return { ...rest, ...(max_tokens !== undefined && !hasLimit ? { max_tokens } : {}) }
}

export class Failover extends Effect.Service<Failover>()("cortex/Failover", {
  effect: Effect.gen(function*() {
    const config = yield* GatewayConfig
    const router = yield* Router
    const poller = yield* Poller
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

    return { attempt, upstreamError, upstreamTimeout } as const
  })
}) {}
