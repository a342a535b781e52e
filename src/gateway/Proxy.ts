/**
 * The proxy: route a request, call the neuron, and answer in the client's dialect.
 * - Same dialect (OpenAI → neuron): the upstream bytes are relayed as they come (no buffering);
 *   a light SSE scan on the side reads the first token and the usage for the metrics.
 * - Translated dialects (Anthropic, Responses): each upstream chunk goes through a translator.
 * Timeouts measure idleness, never total length (lesson 1). A client that hangs up aborts the
 * upstream request. Another replica is tried only before the first upstream byte.
 */
import { HttpServerResponse } from "@effect/platform"
import { Effect, Fiber, Metric, MetricLabel, Runtime } from "effect"
import { PassThrough } from "node:stream"
import { type ApiError, InternalError, ModelUnavailable, UpstreamError } from "../domain/errors.js"
import type { ChatCompletionChunk, Usage } from "../domain/openai-output.js"
import { Fleet } from "./Fleet.js"
import { GatewayConfig } from "./GatewayConfig.js"
import * as M from "./Metrics.js"
import { authHeaders } from "./NeuronClient.js"
import { type Route, Router } from "./Router.js"
import { SseParser } from "./Sse.js"
import { parseJson, post, readAll, type UpstreamResponse } from "./Upstream.js"

export const PRINCIPAL_HEADER = "x-cortex-principal"
export const AUTOLOAD_HEADER = "x-cortex-autoload"
/** Upstream 503 codes that mean "not here any more", not "try later". */
const STALE_ROUTE = new Set(["model_not_loaded", "model_unloading", "model_loading"])
/** How long a streamed request may wait (routing, cold load) before its headers go out. */
const HEAD_START_MS = 750

/** Turns upstream chunks into the client's stream frames. */
export interface StreamTranslator {
  readonly start: () => ReadonlyArray<string>
  readonly chunk: (chunk: ChatCompletionChunk) => ReadonlyArray<string>
  readonly end: () => ReadonlyArray<string>
  readonly fail: (error: { readonly type: string; readonly message: string }) => ReadonlyArray<string>
}

/** How one dialect answers. */
export interface Dialect {
  readonly route: string
  readonly error: (error: ApiError) => HttpServerResponse.HttpServerResponse
  /** undefined: the upstream JSON is relayed as bytes (same dialect). */
  readonly json: ((upstream: unknown) => unknown) | undefined
  /** undefined: relay the upstream SSE bytes unchanged. */
  readonly translator: (() => StreamTranslator) | undefined
  readonly keepAlive: string
}

export interface ProxyRequest {
  readonly model: string
  readonly path: "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings"
  readonly body: Record<string, unknown>
  readonly stream: boolean
  readonly principal: string
  readonly dialect: Dialect
  readonly received: number
}

interface Attempt {
  readonly response: UpstreamResponse
  readonly route: Route
  readonly nodeName: string
  readonly release: () => void
  readonly upstreamStarted: number
}

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

export class Proxy extends Effect.Service<Proxy>()("cortex/Proxy", {
  effect: Effect.gen(function*() {
    const config = yield* GatewayConfig
    const router = yield* Router
    const fleet = yield* Fleet
    const runtime = yield* Effect.runtime<never>()
    const idleMs = config.idleTimeoutSecs * 1000

    /** Tagged metrics per (model, node, route), built once: tagging on every request showed in profiles. */
    const taggedCache = new Map<string, ReturnType<typeof taggedFor>>()
    const taggedFor = (model: string, node: string, route: string) => {
      const labels = [
        MetricLabel.make("model", model),
        MetricLabel.make("node", node),
        MetricLabel.make("route", route)
      ]
      return {
        labels,
        ok: Metric.taggedWithLabels(M.requests, [...labels, MetricLabel.make("status", "200")]),
        duration: Metric.taggedWithLabels(M.requestDuration, labels),
        ttft: Metric.taggedWithLabels(M.timeToFirstToken, labels),
        prompt: Metric.taggedWithLabels(M.promptTokens, labels),
        completion: Metric.taggedWithLabels(M.completionTokens, labels),
        cached: Metric.taggedWithLabels(M.cachedPromptTokens, labels),
        rate: Metric.taggedWithLabels(M.decodeRate, labels)
      }
    }

    const record = (
      request: ProxyRequest,
      node: string,
      outcome: { status: number; usage?: Usage | null | undefined; ttftMs?: number | undefined; error?: string }
    ) => {
      const cacheKey = `${request.model}\u0000${node}\u0000${request.dialect.route}`
      let t = taggedCache.get(cacheKey)
      if (!t) {
        t = taggedFor(request.model, node, request.dialect.route)
        taggedCache.set(cacheKey, t)
      }
      const tags = t
      const usage = outcome.usage
      // Direct updates: running an Effect per request for these showed in the gateway's profile.
      const none: ReadonlyArray<MetricLabel.MetricLabel> = []
      if (outcome.status === 200) tags.ok.unsafeUpdate(1, none)
      else M.requests.unsafeUpdate(1, [...tags.labels, MetricLabel.make("status", String(outcome.status))])
      tags.duration.unsafeUpdate((Date.now() - request.received) / 1000, none)
      if (outcome.error !== undefined) {
        M.requestErrors.unsafeUpdate(1, [...tags.labels, MetricLabel.make("reason", outcome.error)])
      }
      if (outcome.ttftMs !== undefined) tags.ttft.unsafeUpdate(outcome.ttftMs / 1000, none)
      if (usage) {
        tags.prompt.unsafeUpdate(usage.prompt_tokens, none)
        tags.completion.unsafeUpdate(usage.completion_tokens, none)
        tags.cached.unsafeUpdate(usage.prompt_tokens_details?.cached_tokens ?? 0, none)
        if (usage.timing && usage.timing.decode_ms > 0 && usage.completion_tokens > 1) {
          tags.rate.unsafeUpdate((usage.completion_tokens - 1) / (usage.timing.decode_ms / 1000), none)
        }
      }
    }

    const traceparent = Effect.map(
      Effect.option(Effect.currentSpan),
      (span) => span._tag === "Some" ? `00-${span.value.traceId}-${span.value.spanId}-01` : undefined
    )

    /** Route and call the upstream, falling over to the next replica before any byte came back. */
    const attemptOnce = (request: ProxyRequest, signal: AbortSignal) =>
      Effect.gen(function*() {
        const route = yield* router.route(request.model)
        if (route.coldLoad) {
          yield* Metric.increment(Metric.taggedWithLabels(M.coldStarts, [
            MetricLabel.make("model", request.model),
            MetricLabel.make("node", route.node.name)
          ]))
        }
        const parent = yield* traceparent
        const nodes = [route.node, ...route.fallbacks]
        let last: ApiError | undefined
        for (const node of nodes) {
          const release = router.track(node.name, route.model.neuronId)
          const upstreamStarted = Date.now()
          const result = yield* Effect.tryPromise({
            try: () =>
              post(
                `${node.endpoint.endpoint}${request.path}`,
                {
                  "content-type": "application/json",
                  [PRINCIPAL_HEADER]: request.principal,
                  // Loads are the gateway's to place: a stale route must not make the neuron load.
                  [AUTOLOAD_HEADER]: "off",
                  ...authHeaders(node.endpoint),
                  ...(parent ? { traceparent: parent } : {})
                },
                JSON.stringify({ ...samplingDefaults(route, request), ...request.body, model: route.model.neuronId }),
                signal
              ),
            catch: (e) => e as Error
          }).pipe(Effect.either)
          if (result._tag === "Left") {
            release()
            if (signal.aborted) return yield* Effect.interrupt
            last = new ModelUnavailable({
              model: request.model,
              state: "unavailable",
              detail: `${node.name}: ${result.left.message}`
            })
            yield* Effect.logWarning(`upstream ${node.name} failed before the first byte: ${result.left.message}`)
            continue
          }
          const response = result.right
          // A replica that is going away or recovering: the next one may serve, nothing was sent yet.
          if ((response.status === 502 || response.status === 503) && node !== nodes.at(-1)) {
            response.body.resume()
            release()
            continue
          }
          return { response, route, nodeName: node.name, release, upstreamStarted } satisfies Attempt
        }
        return yield* (last ?? new InternalError({ detail: "no replica answered" }))
      })

    /**
     * Route and call; when the chosen replica turned out not to hold the model any more (evicted
     * or reloading since the last poll), refresh that node and route once more, which loads the
     * model where placement says.
     */
    const attempt = (request: ProxyRequest, signal: AbortSignal) =>
      Effect.gen(function*() {
        const first = yield* attemptOnce(request, signal)
        if (first.response.status !== 503) return first
        const error = yield* Effect.promise(() => upstreamError(first.response))
        first.release()
        if (!STALE_ROUTE.has(String(error.body.error.code))) return yield* error
        yield* fleet.refresh(first.nodeName)
        return yield* attemptOnce(request, signal)
      })

    const upstreamError = async (response: UpstreamResponse) =>
      new UpstreamError({
        upstreamStatus: response.status,
        upstreamBody: parseJson(await readAll(response.body)),
        retryAfter: (response.headers["retry-after"] as string | undefined) ?? null
      })

    const headersFor = (request: ProxyRequest, a: Attempt) => ({
      "x-cortex-node": a.nodeName,
      "x-cortex-overhead-ms": String(Math.max(0, a.upstreamStarted - request.received))
    })

    /** A non-streaming request: one JSON answer. */
    const unary = (request: ProxyRequest) =>
      Effect.gen(function*() {
        const controller = new AbortController()
        const abort = Effect.sync(() => controller.abort())
        const a = yield* attempt(request, controller.signal).pipe(Effect.onInterrupt(() => abort))
        return yield* Effect.gen(function*() {
          if (a.response.status !== 200) {
            const error = yield* Effect.promise(() => upstreamError(a.response))
            record(request, a.nodeName, { status: error.status, error: error.body.error.code ?? "upstream" })
            return request.dialect.error(error)
          }
          const bytes = yield* Effect.tryPromise({
            try: () => readAll(a.response.body),
            catch: (e) => new InternalError({ detail: `bad upstream answer: ${(e as Error).message}` })
          })
          const translateStarted = Date.now()
          const body = parseJson(bytes) as { usage?: Usage }
          const translate = request.dialect.json
          const out = translate ? translate(body) : undefined
          const headers = {
            "x-cortex-node": a.nodeName,
            "x-cortex-overhead-ms": String(a.upstreamStarted - request.received + (Date.now() - translateStarted))
          }
          record(request, a.nodeName, { status: 200, usage: body.usage, ttftMs: body.usage?.timing?.ttft_ms })
          // Same dialect: the neuron's bytes go out as they came (no re-serialisation).
          return translate
            ? HttpServerResponse.unsafeJson(out, { headers })
            : HttpServerResponse.uint8Array(bytes, { contentType: "application/json", headers })
        }).pipe(Effect.onInterrupt(() => abort), Effect.ensuring(Effect.sync(a.release)))
      })

    /** A streaming request: SSE to the client, relayed or translated. */
    const streamed = (request: ProxyRequest) =>
      Effect.gen(function*() {
        const controller = new AbortController()
        const out = new PassThrough()
        let finished = false
        let lastWrite = Date.now()
        const write = (frames: ReadonlyArray<string> | string | Uint8Array) => {
          if (out.destroyed || out.writableEnded) return
          lastWrite = Date.now()
          if (typeof frames === "string" || frames instanceof Uint8Array) out.write(frames)
          else for (const f of frames) out.write(f)
        }
        // Never a second of silence: while routing, cold-loading or prefilling (the neuron's own
        // comments are not relayed through a translator), the dialect's keep-alive goes out.
        let keepAlive: NodeJS.Timeout | undefined
        const keepAlives = () => {
          keepAlive = setInterval(() => {
            if (Date.now() - lastWrite >= 900) write(request.dialect.keepAlive)
          }, 250)
        }
        out.on("close", () => clearInterval(keepAlive))
        // The client hung up (or we are done): stop the upstream.
        out.on("close", () => {
          if (!finished) controller.abort()
        })
        const translator = request.dialect.translator?.()
        const sseHeaders = { "cache-control": "no-cache", "x-accel-buffering": "no" }

        // Route and connect, with a head start: quick failures keep their HTTP status.
        // Forked (not run afresh) so the upstream call stays inside this request's trace span.
        const connectingFiber = yield* Effect.forkDaemon(attempt(request, controller.signal))
        const connecting = Runtime.runPromise(runtime)(Fiber.await(connectingFiber))
        const early = yield* Effect.promise(() =>
          Promise.race([
            connecting.then((exit) => ({ exit })),
            new Promise<undefined>((r) => setTimeout(() => r(undefined), HEAD_START_MS))
          ])
        )
        if (early?.exit._tag === "Failure") {
          controller.abort()
          const error = early.exit.cause._tag === "Fail"
            ? early.exit.cause.error
            : new InternalError({ detail: String(early.exit.cause) })
          record(request, "none", { status: error.status, error: error._tag })
          return request.dialect.error(error)
        }
        if (early?.exit._tag === "Success" && early.exit.value.response.status !== 200) {
          const a = early.exit.value
          const error = yield* Effect.promise(() => upstreamError(a.response))
          a.release()
          record(request, a.nodeName, { status: error.status, error: error.body.error.code ?? "upstream" })
          return request.dialect.error(error)
        }
        if (early === undefined) {
          // Still routing (a cold load?): open the stream now and keep the client alive meanwhile.
          // Translated streams open their message on the first upstream chunk, which knows the
          // prompt's size; until then only keep-alives (Anthropic `ping`) go out.
          write(request.dialect.keepAlive)
        }
        keepAlives()

        /** One error frame in the dialect, at most once: after it the stream only ends. */
        let reported = false
        const fail = (error: { readonly type: string; readonly message: string; readonly code?: string | null }) => {
          if (reported) return
          reported = true
          write(translator ? translator.fail(error) : `data: ${JSON.stringify({ error })}\n\n`)
        }

        const pump = async () => {
          const exit = await connecting
          if (exit._tag === "Failure") {
            finished = true
            if (controller.signal.aborted) return out.end()
            const error = exit.cause._tag === "Fail"
              ? exit.cause.error
              : new InternalError({ detail: "routing failed" })
            fail(error.body.error)
            record(request, "none", { status: error.status, error: error._tag })
            return out.end()
          }
          const a = exit.value
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
            let idle: NodeJS.Timeout | undefined
            const arm = () => {
              if (idle) clearTimeout(idle)
              idle = setTimeout(() => {
                failed = "upstream_idle"
                controller.abort()
              }, idleMs)
            }
            arm()
            try {
              for await (const value of a.response.body as AsyncIterable<Buffer>) {
                arm()
                if (!translator) write(value)
                for (const data of parser.push(value)) {
                  if (data === "[DONE]") {
                    sawDone = true
                    if (translator) write(translator.end())
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
              }
            } catch (e) {
              failed ??= controller.signal.aborted ? "client_disconnected" : `upstream: ${(e as Error).message}`
            } finally {
              if (idle) clearTimeout(idle)
            }
            if (!sawDone) {
              failed ??= "truncated"
              // A truncated stream must never look complete (lesson 14).
              if (failed !== "client_disconnected") {
                fail({
                  type: "server_error",
                  code: failed.startsWith("upstream:") ? "upstream_failed" : failed,
                  message: failed === "upstream_idle"
                    ? `the upstream sent nothing for ${config.idleTimeoutSecs} s`
                    : failed === "truncated"
                    ? "the upstream stream ended before it was complete"
                    : `the upstream failed: ${failed}`
                })
              }
            }
          } finally {
            a.release()
            finished = true
            record(request, a.nodeName, {
              status: 200,
              usage,
              ttftMs,
              ...(failed !== undefined ? { error: failed } : {})
            })
            out.end()
          }
        }
        pump().catch((e) => {
          finished = true
          out.destroy(e as Error)
        })
        const a = early?.exit._tag === "Success" ? early.exit.value : undefined
        return HttpServerResponse.raw(out, {
          status: 200,
          contentType: "text/event-stream",
          headers: a ? { ...sseHeaders, ...headersFor(request, a) } : sseHeaders
        })
      })

    const handle = (request: ProxyRequest) =>
      (request.stream ? streamed(request) : unary(request)).pipe(
        Effect.withSpan("gateway.request", {
          captureStackTrace: false,
          attributes: {
            "cortex.model": request.model,
            "cortex.route": request.dialect.route,
            "cortex.stream": request.stream
          }
        }),
        Effect.catchAll((error) =>
          Effect.sync(() => {
            record(request, "none", { status: error.status, error: error._tag })
            return request.dialect.error(error)
          })
        )
      )

    return { handle } as const
  })
}) {}
