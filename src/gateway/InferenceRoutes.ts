/**
 * The inference routes (OpenAI chat, completions, embeddings and Responses; Anthropic
 * messages) on plain node:http, ahead of the Effect router that serves the rest of the API.
 * They are the gateway's hot path: this keeps the work per request to authenticating, decoding
 * the body once against its Schema, and handing it to the Proxy, with one span per request.
 * Everything else (health, models, count_tokens, admin, unknown paths) goes to Http.ts.
 */
import { HttpTraceContext } from "@effect/platform"
import type { Headers } from "@effect/platform"
import { Context, Effect, Either, Exit, type Schema, type Tracer } from "effect"
import type { IncomingMessage, ServerResponse } from "node:http"
import { Accounting, type Caller, type Ticket } from "../accounting/Accounting.js"
import { MessagesRequest } from "../domain/anthropic.js"
import {
  type ApiError,
  InternalError,
  InvalidRequest,
  isApiError,
  PayloadTooLarge,
  Unauthorized
} from "../domain/errors.js"
import { ChatCompletionRequest, CompletionRequest, EmbeddingRequest, parseBody } from "../domain/openai.js"
import { ResponsesRequest } from "../domain/responses.js"
import { formatRequestLine, nextRequestId, RequestSummary, writeLine } from "../telemetry/RequestLog.js"
import { Catalogue, resolveAlias } from "./Catalogue.js"
import {
  anthropicDialect,
  anthropicError,
  type Dialect,
  openaiDialect,
  openaiError,
  responsesDialect,
  sendError
} from "./Dialects.js"
import type { ProxyRequest } from "./Failover.js"
import { GatewayConfig } from "./GatewayConfig.js"
import { prepareImages } from "./ImageFetch.js"
import { Proxy } from "./Proxy.js"
import * as Anthropic from "./translate/Anthropic.js"
import * as Responses from "./translate/Responses.js"
import { BodyTooLarge, readAll } from "./Upstream.js"

/** The largest request body accepted (base64 images make bodies large). */
export const MAX_BODY_BYTES = 32 * 1024 * 1024

/** One inference route: its dialect's error envelope, and how a decoded body becomes a proxy request. */
interface InferenceRoute {
  readonly name: string
  readonly error: (error: ApiError) => ReturnType<Dialect["error"]>
  /** Throws an ApiError for a body the route cannot serve. */
  readonly prepare: (text: string) => Omit<ProxyRequest, "principal" | "received" | "span" | "summary">
  /** gen_ai.operation.name */
  readonly operation: string
}

/** Decode the body or throw the dialect-neutral ApiError (InvalidJson 400, InvalidRequest 422). */
const decode = <A, I>(schema: Schema.Schema<A, I>, text: string) => {
  const parsed = parseBody(schema, text)
  if (Either.isLeft(parsed)) throw parsed.left
  return parsed.right
}

/** Same-dialect OpenAI routes: validate, then relay to the neuron's route of the same name. */
const openaiRoute = <A extends { readonly model: string; readonly stream?: boolean | null }, I>(
  schema: Schema.Schema<A, I>,
  path: ProxyRequest["path"],
  name: string,
  operation: string
): InferenceRoute => {
  const dialect = openaiDialect(name)
  return {
    name,
    operation,
    error: openaiError,
    prepare: (text) => {
      const { json, value } = decode(schema, text)
      return {
        model: value.model,
        path,
        body: json as Record<string, unknown>,
        text,
        stream: value.stream === true,
        dialect
      }
    }
  }
}

/** Routes in another dialect: validate, translate to chat, relay, translate the answer back. */
const translatedRoute = <A extends { readonly model: string; readonly stream?: boolean | null | undefined }, I>(
  name: string,
  error: InferenceRoute["error"],
  schema: Schema.Schema<A, I>,
  toChat: (request: A) => unknown,
  dialect: (request: A) => Dialect,
  refuse: (request: A) => InvalidRequest | undefined = () => undefined
): InferenceRoute => ({
  name,
  operation: "chat",
  error,
  prepare: (text) => {
    const { value } = decode(schema, text)
    const refused = refuse(value)
    if (refused) throw refused
    let chatRequest: unknown
    try {
      chatRequest = toChat(value)
    } catch (e) {
      throw isApiError(e) ? e : new InvalidRequest({ message: String((e as Error).message ?? e), param: null })
    }
    return {
      model: value.model,
      path: "/v1/chat/completions",
      body: chatRequest as Record<string, unknown>,
      stream: value.stream === true,
      dialect: dialect(value)
    }
  }
})

const ROUTES = new Map<string, InferenceRoute>([
  ["/v1/chat/completions", openaiRoute(ChatCompletionRequest, "/v1/chat/completions", "chat", "chat")],
  ["/v1/completions", openaiRoute(CompletionRequest, "/v1/completions", "completions", "text_completion")],
  ["/v1/embeddings", openaiRoute(EmbeddingRequest, "/v1/embeddings", "embeddings", "embeddings")],
  [
    "/v1/responses",
    translatedRoute("responses", openaiError, ResponsesRequest, Responses.responsesToChat, responsesDialect, (r) => {
      const refused = Responses.unservable(r)
      return refused ? new InvalidRequest({ message: refused.message, param: refused.param }) : undefined
    })
  ],
  [
    "/v1/messages",
    translatedRoute("messages", anthropicError, MessagesRequest, Anthropic.anthropicToChat, anthropicDialect)
  ]
])

export class InferenceRoutes extends Effect.Service<InferenceRoutes>()("cortex/InferenceRoutes", {
  effect: Effect.gen(function*() {
    const config = yield* GatewayConfig
    const proxy = yield* Proxy
    const accounting = yield* Accounting
    const tracer = yield* Effect.tracer
    const clock = yield* Effect.clock

    const catalogue = yield* Catalogue

    /** Chat images: refused for a model without vision, URLs fetched (ImageFetch.ts). */
    const withImages = async <P extends Omit<ProxyRequest, "principal" | "received" | "span" | "summary">>(
      prepared: P
    ): Promise<P> => {
      if (prepared.path !== "/v1/chat/completions") return prepared
      const known = catalogue.now().get(resolveAlias(config.aliases, prepared.model))
      const capabilities = known && (known.profile?.capabilities || known.locations.length > 0)
        ? known.capabilities
        : undefined
      const body = await prepareImages(prepared.body, capabilities, config.imageFetch)
      // A changed body cannot be forwarded as the client's text.
      return body === prepared.body ? prepared : { ...prepared, body, text: undefined }
    }

    const logFormat = config.telemetry.logFormat
    const captureContent = config.telemetry.captureContent

    /** The end of a request: its span's attributes and end, and its log line. */
    const finish = (
      span: Tracer.Span,
      route: InferenceRoute,
      summary: RequestSummary,
      model: string,
      principal: string,
      received: number
    ) => {
      span.attribute("http.response.status_code", summary.status)
      span.attribute("cortex.node", summary.node)
      if (summary.promptTokens !== undefined) span.attribute("gen_ai.usage.input_tokens", summary.promptTokens)
      if (summary.completionTokens !== undefined) span.attribute("gen_ai.usage.output_tokens", summary.completionTokens)
      if (summary.cachedTokens !== undefined) {
        span.attribute("gen_ai.usage.cache_read.input_tokens", summary.cachedTokens)
      }
      if (summary.ttftMs !== undefined) span.attribute("cortex.ttft_ms", summary.ttftMs)
      if (summary.clientGone) span.attribute("cortex.client_gone", true)
      if (summary.error !== undefined) span.attribute("error.type", summary.error)
      span.end(
        clock.unsafeCurrentTimeNanos(),
        summary.error !== undefined && !summary.clientGone ? Exit.fail(summary.error) : Exit.void
      )
      const line = formatRequestLine(logFormat, {
        requestId: summary.requestId,
        traceId: span.traceId,
        route: route.name,
        model,
        principal,
        durationMs: Date.now() - received,
        summary
      })
      if (line !== undefined) writeLine(line)
    }

    const serve = async (route: InferenceRoute, path: string, req: IncomingMessage, res: ServerResponse) => {
      const received = Date.now()
      // One span per request, continuing the client's trace when it sent one.
      const span: Tracer.Span = tracer.span(
        "gateway.request",
        HttpTraceContext.fromHeaders(req.headers as unknown as Headers.Headers),
        Context.empty(),
        [],
        clock.unsafeCurrentTimeNanos(),
        "server"
      )
      span.attribute("http.request.method", "POST")
      span.attribute("url.path", path)
      span.attribute("cortex.route", route.name)
      span.attribute("gen_ai.operation.name", route.operation)
      const summary = new RequestSummary(nextRequestId())
      res.setHeader("x-request-id", summary.requestId)
      span.attribute("cortex.request_id", summary.requestId)
      let model = ""
      let principal = "none"
      let caller: Caller | undefined
      let ticket: Ticket | undefined
      // The request ends when both the response closed and the proxy said how it went (a client
      // that hangs up closes first, and the proxy records after it stopped the upstream).
      let closed = false
      const end = () => {
        finish(span, route, summary, model, principal, received)
        if (caller !== undefined) {
          accounting.finish(ticket, caller, {
            requestId: summary.requestId,
            model,
            route: route.name,
            node: summary.node,
            status: summary.status,
            error: summary.error,
            promptTokens: summary.promptTokens,
            cachedTokens: summary.cachedTokens,
            completionTokens: summary.completionTokens,
            ttftMs: summary.ttftMs,
            received
          })
        }
      }
      summary.onRecorded = () => {
        if (closed) end()
      }
      res.once("close", () => {
        closed = true
        if (summary.recorded) end()
      })
      /** A refusal before the proxy: the route answers and records it. */
      const refuse = (error: ApiError) => {
        summary.status = error.status
        summary.error = error._tag
        summary.markRecorded()
        return sendError(res, route, error)
      }
      try {
        const who = accounting.authenticate(
          req.headers as Record<string, string | undefined>,
          req.socket.remoteAddress ?? "unknown"
        )
        if (who === undefined) {
          req.resume()
          return refuse(new Unauthorized())
        }
        caller = who
        principal = who.principal
        span.attribute("cortex.principal", principal)
        const body = await readAll(req, MAX_BODY_BYTES).catch((e: unknown) => {
          throw e instanceof BodyTooLarge
            ? new PayloadTooLarge({ limitBytes: MAX_BODY_BYTES })
            : new InvalidRequest({ message: `could not read the request body: ${(e as Error).message}`, param: null })
        })
        const prepared = await withImages(route.prepare(body.toString("utf8")))
        model = prepared.model
        span.attribute("gen_ai.request.model", prepared.model)
        span.attribute("cortex.stream", prepared.stream)
        // A key's models and limits: a reservation in the store only when a limit applies.
        const admitted = accounting.admit(who, prepared.model, prepared.body)
        ticket = admitted instanceof Promise ? await admitted : admitted
        if (captureContent) {
          const input = prepared.body.messages ?? prepared.body.prompt ?? prepared.body.input ?? null
          span.attribute("gen_ai.input.messages", JSON.stringify(input))
        }
        await proxy.serve({ ...prepared, principal, received, span, summary }, res)
      } catch (e) {
        if (isApiError(e)) return refuse(e)
        // sendError logs the detail (with the stack) under the error's id; the client gets neither.
        refuse(new InternalError({ detail: e instanceof Error && e.stack ? e.stack : String(e) }))
      }
    }

    /** Serve the request when it is an inference route; false hands it to the Effect router. */
    const handle = (req: IncomingMessage, res: ServerResponse): boolean => {
      if (req.method !== "POST" || req.url === undefined) return false
      const query = req.url.indexOf("?")
      const path = query < 0 ? req.url : req.url.slice(0, query)
      const route = ROUTES.get(path)
      if (route === undefined) return false
      void serve(route, path, req, res)
      return true
    }

    return { handle } as const
  })
}) {}
