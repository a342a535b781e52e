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
import { principalFor } from "./Auth.js"
import {
  anthropicDialect,
  anthropicError,
  type Dialect,
  openaiDialect,
  openaiError,
  responsesDialect,
  sendError
} from "./Dialects.js"
import { GatewayConfig } from "./GatewayConfig.js"
import { Proxy, type ProxyRequest } from "./Proxy.js"
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
  readonly prepare: (text: string) => Omit<ProxyRequest, "principal" | "received" | "span">
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
  name: string
): InferenceRoute => {
  const dialect = openaiDialect(name)
  return {
    name,
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
  ["/v1/chat/completions", openaiRoute(ChatCompletionRequest, "/v1/chat/completions", "chat")],
  ["/v1/completions", openaiRoute(CompletionRequest, "/v1/completions", "completions")],
  ["/v1/embeddings", openaiRoute(EmbeddingRequest, "/v1/embeddings", "embeddings")],
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
    const tracer = yield* Effect.tracer
    const clock = yield* Effect.clock

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
      res.once("close", () => {
        span.attribute("http.response.status_code", res.statusCode)
        span.end(clock.unsafeCurrentTimeNanos(), Exit.void)
      })
      try {
        const principal = principalFor(
          config,
          req.headers as Record<string, string | undefined>,
          req.socket.remoteAddress ?? "unknown"
        )
        if (principal === undefined) {
          req.resume()
          return sendError(res, route, new Unauthorized())
        }
        const body = await readAll(req, MAX_BODY_BYTES).catch((e: unknown) => {
          throw e instanceof BodyTooLarge
            ? new PayloadTooLarge({ limitBytes: MAX_BODY_BYTES })
            : new InvalidRequest({ message: `could not read the request body: ${(e as Error).message}`, param: null })
        })
        const prepared = route.prepare(body.toString("utf8"))
        span.attribute("cortex.model", prepared.model)
        span.attribute("cortex.stream", prepared.stream)
        await proxy.serve({ ...prepared, principal, received, span }, res)
      } catch (e) {
        if (isApiError(e)) return sendError(res, route, e)
        // sendError logs the detail (with the stack) under the error's id; the client gets neither.
        sendError(res, route, new InternalError({ detail: e instanceof Error && e.stack ? e.stack : String(e) }))
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
