/**
 * The gateway's HTTP API (port 31313): OpenAI (chat, completions, embeddings, Responses,
 * models), Anthropic (messages, count_tokens), public health, and the admin API. Each route
 * answers errors in its own dialect's envelope.
 */
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect, Schema } from "effect"
import { CountTokensRequest, MessagesRequest } from "../domain/anthropic.js"
import {
  type ApiError,
  InternalError,
  InvalidRequest,
  isApiError,
  NotFoundRoute,
  Unauthorized,
  UpstreamError
} from "../domain/errors.js"
import type { ChatCompletion } from "../domain/openai-output.js"
import { ChatCompletionRequest, CompletionRequest, decodeBody, EmbeddingRequest } from "../domain/openai.js"
import { ResponsesRequest } from "../domain/responses.js"
import { toWorkerMessages } from "../neuron/ChatMessages.js"
import { principalFor } from "./Auth.js"
import { catalogueList } from "./Catalogue.js"
import { Fleet, type NodeState } from "./Fleet.js"
import { GatewayConfig } from "./GatewayConfig.js"
import { callNeuron } from "./NeuronClient.js"
import { type Dialect, Proxy, type ProxyRequest } from "./Proxy.js"
import { Router } from "./Router.js"
import * as Anthropic from "./translate/Anthropic.js"
import * as Responses from "./translate/Responses.js"

export const VERSION = "0.1.0"
const startedAt = Math.floor(Date.now() / 1000)

const openaiError = (error: ApiError) =>
  HttpServerResponse.unsafeJson(error.body, { status: error.status, headers: error.headers })

const anthropicError = (error: ApiError) => {
  const translated = Anthropic.toAnthropicError(error.status, error.body)
  return HttpServerResponse.unsafeJson(translated.body, { status: translated.status, headers: error.headers })
}

const KEEPALIVE = ": keep-alive\n\n"

const AdminLifecycle = Schema.Struct({
  model: Schema.String.pipe(Schema.minLength(1)),
  node: Schema.optionalWith(Schema.String, { exact: true })
})

const openaiDialect = (route: string): Dialect => ({
  route,
  error: openaiError,
  json: undefined,
  translator: undefined,
  keepAlive: KEEPALIVE
})

const anthropicDialect = (request: MessagesRequest): Dialect => ({
  route: "messages",
  error: anthropicError,
  json: (upstream) => Anthropic.chatToAnthropic(upstream as ChatCompletion, request.model),
  translator: () => {
    const stream = new Anthropic.AnthropicStream(request.model)
    const format = (events: ReadonlyArray<Parameters<typeof Anthropic.formatSse>[0]>) => events.map(Anthropic.formatSse)
    return {
      start: () => format(stream.start()),
      chunk: (c) => format(stream.chunk(c)),
      end: () => format(stream.end()),
      fail: (e) => format(stream.fail(Anthropic.toAnthropicStreamError({ error: e })))
    }
  },
  keepAlive: Anthropic.formatSse({ type: "ping" })
})

const responsesDialect = (request: ResponsesRequest): Dialect => ({
  route: "responses",
  error: openaiError,
  json: (upstream) => Responses.chatToResponses(upstream as ChatCompletion, request),
  translator: () => {
    const stream = new Responses.ResponsesStream(request)
    const format = (events: ReadonlyArray<Parameters<typeof Responses.formatSse>[0]>) => events.map(Responses.formatSse)
    return {
      start: () => format(stream.start()),
      chunk: (c) => format(stream.chunk(c)),
      end: () => format(stream.end()),
      fail: (e) => format(stream.fail(e))
    }
  },
  keepAlive: KEEPALIVE
})

const bodyText = Effect.flatMap(
  HttpServerRequest.HttpServerRequest,
  (request) => Effect.mapError(request.text, () => new InternalError({ detail: "could not read the request body" }))
)

const decoded = <A, I>(schema: Schema.Schema<A, I>) =>
  Effect.gen(function*() {
    const text = yield* bodyText
    const value = yield* decodeBody(schema, text)
    return { value, raw: JSON.parse(text) as Record<string, unknown> }
  })

export const makeGatewayApp = Effect.gen(function*() {
  const config = yield* GatewayConfig
  const fleet = yield* Fleet
  const router = yield* Router
  const proxy = yield* Proxy

  const principal = Effect.map(HttpServerRequest.HttpServerRequest, (request) =>
    principalFor(
      config,
      request.headers,
      request.remoteAddress._tag === "Some" ? request.remoteAddress.value : "unknown"
    ))

  /** Authenticate, run, and answer any failure in the dialect's envelope. */
  const guarded = <R>(
    toError: (error: ApiError) => HttpServerResponse.HttpServerResponse,
    handler: (principal: string, received: number) => Effect.Effect<HttpServerResponse.HttpServerResponse, ApiError, R>
  ) =>
    Effect.gen(function*() {
      const received = Date.now()
      const who = yield* principal
      if (who === undefined) return toError(new Unauthorized())
      return yield* handler(who, received)
    }).pipe(
      Effect.catchAll((error) => Effect.succeed(toError(error))),
      Effect.catchAllDefect((defect) =>
        Effect.logError("unhandled defect", defect).pipe(
          Effect.as(toError(isApiError(defect) ? defect : new InternalError({ detail: String(defect) })))
        )
      )
    )

  const proxied = (request: Omit<ProxyRequest, "received">, received: number) => proxy.handle({ ...request, received })

  /** Same-dialect OpenAI routes: validate, then relay to the neuron's route of the same name. */
  const openaiRoute = <A extends { readonly model: string; readonly stream?: boolean | null }, I>(
    schema: Schema.Schema<A, I>,
    path: ProxyRequest["path"],
    route: string
  ) =>
    guarded(openaiError, (who, received) =>
      Effect.gen(function*() {
        const { raw, value } = yield* decoded(schema)
        return yield* proxied({
          model: value.model,
          path,
          body: raw,
          stream: value.stream === true,
          principal: who,
          dialect: openaiDialect(route)
        }, received)
      }))

  const chat = openaiRoute(ChatCompletionRequest, "/v1/chat/completions", "chat")
  const completions = openaiRoute(CompletionRequest, "/v1/completions", "completions")
  const embeddings = openaiRoute(EmbeddingRequest, "/v1/embeddings", "embeddings")

  /** Routes in another dialect: validate, translate to chat, relay, translate the answer back. */
  const translatedRoute = <A extends { readonly model: string; readonly stream?: boolean | null | undefined }, I>(
    toError: (error: ApiError) => HttpServerResponse.HttpServerResponse,
    schema: Schema.Schema<A, I>,
    toChat: (request: A) => unknown,
    dialect: (request: A) => Dialect,
    refuse: (request: A) => InvalidRequest | undefined = () => undefined
  ) =>
    guarded(toError, (who, received) =>
      Effect.gen(function*() {
        const { value } = yield* decoded(schema)
        const refused = refuse(value)
        if (refused) return yield* refused
        const chatRequest = yield* Effect.try({
          try: () => toChat(value),
          catch: (e) =>
            isApiError(e) ? e : new InvalidRequest({ message: String((e as Error).message ?? e), param: null })
        })
        return yield* proxied({
          model: value.model,
          path: "/v1/chat/completions",
          body: chatRequest as Record<string, unknown>,
          stream: value.stream === true,
          principal: who,
          dialect: dialect(value)
        }, received)
      }))

  const responses = translatedRoute(
    openaiError,
    ResponsesRequest,
    Responses.responsesToChat,
    responsesDialect,
    (request) => {
      const refused = Responses.unservable(request)
      return refused ? new InvalidRequest({ message: refused.message, param: refused.param }) : undefined
    }
  )

  const messages = translatedRoute(anthropicError, MessagesRequest, Anthropic.anthropicToChat, anthropicDialect)

  /** Counted by the model's own tokenizer, on a node that has it loaded (loading it if needed). */
  const countTokens = guarded(anthropicError, () =>
    Effect.gen(function*() {
      const { value } = yield* decoded(CountTokensRequest)
      const chatRequest = Anthropic.anthropicToChat({ ...value, max_tokens: 1 } as MessagesRequest)
      const route = yield* router.route(value.model)
      const messagesForNeuron = yield* Effect.try({
        try: () => {
          toWorkerMessages(chatRequest.messages)
          return chatRequest.messages
        },
        catch: (e) => e as ApiError
      })
      const counted = yield* callNeuron<{ tokens: number }>(route.node.endpoint, "/tokenize", {
        body: { model: route.model.neuronId, messages: messagesForNeuron },
        timeoutMs: 30_000
      }).pipe(
        Effect.mapError((error) =>
          error._tag === "NeuronRefused"
            ? new UpstreamError({
              upstreamStatus: error.status,
              upstreamBody: error.body,
              retryAfter: error.retryAfter
            })
            : new InternalError({ detail: error.detail })
        )
      )
      return HttpServerResponse.unsafeJson({ input_tokens: counted.tokens })
    }))

  const models = guarded(
    openaiError,
    () =>
      Effect.map(
        router.catalogue,
        (catalogue) => HttpServerResponse.unsafeJson(catalogueList(catalogue, config.aliases, startedAt))
      )
  )

  const nodeView = (node: NodeState) => ({
    name: node.name,
    endpoint: node.endpoint.endpoint,
    healthy: node.healthy,
    status: node.status,
    misses: node.misses,
    last_seen: node.lastSeen ? new Date(node.lastSeen).toISOString() : null,
    error: node.lastError ?? null,
    devices: node.devices.map((d) => ({ id: d.id, name: d.name, total_mb: d.totalMb, free_mb: d.freeMb })),
    models: node.models.filter((m) => m.status !== "available").map((m) => ({
      id: m.id,
      status: m.status,
      in_flight: m.in_flight,
      queue_depth: m.queue_depth
    }))
  })

  const health = Effect.gen(function*() {
    const state = yield* fleet.get
    const nodes = [...state.values()]
    const healthy = nodes.filter((n) => n.healthy).length
    const status = nodes.length > 0 && healthy === nodes.length ? "ok" : healthy > 0 ? "degraded" : "impaired"
    return HttpServerResponse.unsafeJson({
      status,
      version: VERSION,
      nodes: nodes.map(nodeView),
      loads_in_progress: router.loadsInProgress()
    }, { status: status === "impaired" ? 503 : 200 })
  })

  const adminStatus = guarded(openaiError, () =>
    Effect.gen(function*() {
      const state = yield* fleet.get
      const catalogue = yield* router.catalogue
      return HttpServerResponse.unsafeJson({
        version: VERSION,
        nodes: [...state.values()].map(nodeView),
        models: catalogueList(catalogue, config.aliases, startedAt).data,
        loads_in_progress: router.loadsInProgress(),
        recent_loads: router.history()
      })
    }))

  /** Admin load/unload on a named node, or (load) the best node, (unload) every node. */
  const adminLifecycle = (action: "load" | "unload") =>
    guarded(openaiError, () =>
      Effect.gen(function*() {
        const { value } = yield* decoded(AdminLifecycle)
        const model = yield* router.lookup(value.model)
        const state = yield* fleet.get
        if (action === "load" && value.node === undefined) {
          const route = yield* router.route(value.model)
          return HttpServerResponse.unsafeJson({ model: model.id, node: route.node.name, status: "loaded" })
        }
        const targets = value.node !== undefined
          ? [state.get(value.node)].filter((n): n is NodeState => n !== undefined)
          : model.locations.filter((l) => l.status === "loaded" || l.status === "recovering").map((l) =>
            state.get(l.node)!
          )
        if (value.node !== undefined && targets.length === 0) {
          return yield* new InvalidRequest({ message: `no neuron named '${value.node}'`, param: "node" })
        }
        const results = yield* Effect.forEach(targets, (node) =>
          callNeuron<{ status: string }>(node.endpoint, `/models/${action}`, {
            body: { model: model.neuronId },
            timeoutMs: config.loadTimeoutSecs * 1000
          }).pipe(
            Effect.map((r) => ({ node: node.name, status: r.status })),
            Effect.tap(() => fleet.refresh(node.name)),
            Effect.mapError((error) =>
              error._tag === "NeuronRefused"
                ? new UpstreamError({
                  upstreamStatus: error.status,
                  upstreamBody: error.body,
                  retryAfter: error.retryAfter
                })
                : new InternalError({ detail: `${node.name}: ${error.detail}` })
            )
          ), { concurrency: "unbounded" })
        return HttpServerResponse.unsafeJson({ model: model.id, results })
      }))

  const app = HttpRouter.empty.pipe(
    HttpRouter.get("/health", health),
    HttpRouter.get("/v1/models", models),
    HttpRouter.post("/v1/chat/completions", chat),
    HttpRouter.post("/v1/completions", completions),
    HttpRouter.post("/v1/embeddings", embeddings),
    HttpRouter.post("/v1/responses", responses),
    HttpRouter.post("/v1/messages", messages),
    HttpRouter.post("/v1/messages/count_tokens", countTokens),
    HttpRouter.get("/admin/status", adminStatus),
    HttpRouter.post("/admin/load", adminLifecycle("load")),
    HttpRouter.post("/admin/unload", adminLifecycle("unload"))
  )
  return app.pipe(
    Effect.catchTag("RouteNotFound", (e) => {
      const error = new NotFoundRoute({ method: e.request.method, path: e.request.url })
      return Effect.succeed(e.request.url.startsWith("/v1/messages") ? anthropicError(error) : openaiError(error))
    })
  )
})
