/**
 * The gateway's HTTP API (port 31313) apart from the inference routes (InferenceRoutes.ts, on
 * plain node:http): OpenAI models, Anthropic count_tokens, public health, and the admin API
 * (status, load, unload, pull, rm).
 * Each route answers errors in its own dialect's envelope.
 */
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect, Schema } from "effect"
import { Accounting } from "../accounting/Accounting.js"
import type { AdminDownload, AdminLifecycleAnswer, AdminRemoveAnswer, AdminStatus, NodeView } from "../domain/admin.js"
import { CountTokensRequest, MessagesRequest } from "../domain/anthropic.js"
import { NeuronModel, TokenizeAnswer, VERSION } from "../domain/contract.js"
import {
  type ApiError,
  InternalError,
  InvalidRequest,
  isApiError,
  ModelNotFound,
  NotFoundRoute,
  Unauthorized,
  UpstreamError
} from "../domain/errors.js"
import { decodeBody } from "../domain/openai.js"
import { buildInfo } from "../telemetry/BuildInfo.js"
import { accountingRoutes } from "./AccountingRoutes.js"
import { Catalogue, catalogueList } from "./Catalogue.js"
import { ColdLoader } from "./ColdLoader.js"
import { ConfigReload } from "./ConfigReload.js"
import { makeConsoleRouter } from "./console/ConsoleRoutes.js"
import { deviceView } from "./DeviceTelemetry.js"
import * as Dialects from "./Dialects.js"
import type { DialectError } from "./Dialects.js"
import { GatewayConfig } from "./GatewayConfig.js"
import { callNeuron } from "./NeuronClient.js"
import { type NodeState, Poller } from "./Poller.js"
import { Pulls } from "./Pulls.js"
import { Router } from "./Router.js"
import * as Anthropic from "./translate/Anthropic.js"

const startedAt = Math.floor(Date.now() / 1000)

const respond = (answer: DialectError) =>
  HttpServerResponse.unsafeJson(answer.body, { status: answer.status, headers: answer.headers })
const openaiError = (error: ApiError) => respond(Dialects.openaiError(error))
const anthropicError = (error: ApiError) => respond(Dialects.anthropicError(error))

const AdminLifecycle = Schema.Struct({
  model: Schema.String.pipe(Schema.minLength(1)),
  node: Schema.optionalWith(Schema.String, { exact: true })
})

const bodyText = Effect.flatMap(
  HttpServerRequest.HttpServerRequest,
  (request) => Effect.mapError(request.text, () => new InternalError({ detail: "could not read the request body" }))
)

const decoded = <A, I>(schema: Schema.Schema<A, I>) => Effect.flatMap(bodyText, (text) => decodeBody(schema, text))

export const makeGatewayApp = Effect.gen(function*() {
  const config = yield* GatewayConfig
  const poller = yield* Poller
  const router = yield* Router
  const catalogue = yield* Catalogue
  const loader = yield* ColdLoader
  const reloader = yield* ConfigReload
  const pulls = yield* Pulls
  const accounting = yield* Accounting

  const principal = Effect.map(HttpServerRequest.HttpServerRequest, (request) =>
    accounting.authenticate(
      request.headers,
      request.remoteAddress._tag === "Some" ? request.remoteAddress.value : "unknown"
    )?.principal)

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
      Effect.catchAllDefect((defect) => {
        const error = isApiError(defect) ? defect : new InternalError({ detail: String(defect) })
        return Effect.logError(
          `unhandled defect${error._tag === "InternalError" ? ` (error id ${error.id})` : ""}`,
          defect
        )
          .pipe(Effect.as(toError(error)))
      })
    )

  /**
   * Counted by the model's own tokenizer, on a node that has it loaded (loading it if needed):
   * the prompt exactly as the same /v1/messages request would render it (system, messages,
   * tools and tool_choice, through the model's chat template), so `input_tokens` here equals
   * `input_tokens + cache_read_input_tokens` of that call.
   */
  const countTokens = guarded(anthropicError, () =>
    Effect.gen(function*() {
      const value = yield* decoded(CountTokensRequest)
      const chatRequest = Anthropic.anthropicToChat({ ...value, max_tokens: 1 } as MessagesRequest)
      const route = yield* router.route(value.model)
      // What the model cannot take (an image on a text-only model) the neuron refuses, as it would the call.
      const counted = yield* callNeuron(route.node.endpoint, "/tokenize", TokenizeAnswer, {
        body: {
          model: route.model.neuronId,
          messages: chatRequest.messages,
          ...(chatRequest.tools ? { tools: chatRequest.tools } : {}),
          ...(chatRequest.tool_choice ? { tool_choice: chatRequest.tool_choice } : {})
        },
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

  /**
   * The models API answers in the caller's dialect: Anthropic's SDK (and Claude Code's model
   * picker) sends `anthropic-version`, or `x-api-key` without `Authorization`.
   */
  const anthropicCaller = Effect.map(
    HttpServerRequest.HttpServerRequest,
    (request) =>
      request.headers["anthropic-version"] !== undefined ||
      (request.headers["x-api-key"] !== undefined && request.headers["authorization"] === undefined)
  )

  /** Authenticate and answer in the caller's dialect. */
  const modelsRoute = <R>(
    handler: (anthropic: boolean) => Effect.Effect<HttpServerResponse.HttpServerResponse, ApiError, R>
  ) =>
    Effect.flatMap(
      anthropicCaller,
      (anthropic) => guarded(anthropic ? anthropicError : openaiError, () => handler(anthropic))
    )

  const models = modelsRoute((anthropic) =>
    Effect.gen(function*() {
      const list = catalogueList(yield* catalogue.get, config.aliases, startedAt)
      if (!anthropic) return HttpServerResponse.unsafeJson(list)
      const query = (yield* HttpServerRequest.ParsedSearchParams) as Record<string, string | undefined>
      const page = Anthropic.anthropicModelPage(list.data.map((m) => m.id), startedAt, query)
      if (typeof page === "string") return yield* new InvalidRequest({ message: page, param: null })
      return HttpServerResponse.unsafeJson(page)
    })
  )

  const model = modelsRoute((anthropic) =>
    Effect.gen(function*() {
      const { id } = yield* HttpRouter.params
      const found = catalogueList(yield* catalogue.get, config.aliases, startedAt).data.find((m) => m.id === id)
      if (found === undefined) return yield* new ModelNotFound({ model: id ?? "" })
      return HttpServerResponse.unsafeJson(anthropic ? Anthropic.anthropicModel(found.id, startedAt) : found)
    })
  )

  const nodeView = (node: NodeState): NodeView => ({
    name: node.name,
    endpoint: node.endpoint.endpoint,
    healthy: node.healthy,
    status: node.status,
    misses: node.misses,
    last_seen: node.lastSeen ? new Date(node.lastSeen).toISOString() : null,
    error: node.lastError ?? null,
    devices: node.devices.map(deviceView),
    models: node.models.filter((m) => m.status !== "available").map((m) => ({
      id: m.id,
      status: m.status,
      in_flight: m.in_flight,
      queue_depth: m.queue_depth
    }))
  })

  const health = Effect.gen(function*() {
    const state = yield* poller.get
    const nodes = [...state.values()]
    const healthy = nodes.filter((n) => n.healthy).length
    const status = nodes.length > 0 && healthy === nodes.length ? "ok" : healthy > 0 ? "degraded" : "impaired"
    return HttpServerResponse.unsafeJson({
      status,
      version: VERSION,
      nodes: nodes.map(nodeView),
      loads_in_progress: loader.loadsInProgress()
    }, { status: status === "impaired" ? 503 : 200 })
  })

  /** What is running (behind the same auth as the API: exact versions are not for anonymous callers). */
  const version = guarded(openaiError, () => Effect.sync(() => HttpServerResponse.unsafeJson(buildInfo())))

  const adminStatus = guarded(openaiError, () =>
    Effect.gen(function*() {
      const state = yield* poller.get
      const models = yield* catalogue.get
      return HttpServerResponse.unsafeJson(
        {
          version: VERSION,
          nodes: [...state.values()].map(nodeView),
          models: catalogueList(models, config.aliases, startedAt).data,
          loads_in_progress: loader.loadsInProgress(),
          recent_loads: loader.history(),
          downloads: pulls.downloads()
        } satisfies AdminStatus
      )
    }))

  /** Admin load/unload on a named node, or (load) the best node, (unload) every node. */
  const adminLifecycle = (action: "load" | "unload") =>
    guarded(openaiError, () =>
      Effect.gen(function*() {
        const value = yield* decoded(AdminLifecycle)
        const model = yield* router.lookup(value.model)
        const state = yield* poller.get
        if (action === "load" && value.node === undefined) {
          const route = yield* router.route(value.model)
          return HttpServerResponse.unsafeJson(
            { model: model.id, node: route.node.name, status: "loaded" } satisfies AdminLifecycleAnswer
          )
        }
        const targets = value.node !== undefined
          ? [state.get(value.node)].filter((n): n is NodeState => n !== undefined)
          : model.locations.filter((l) => l.status === "loaded" || l.status === "recovering").map((l) =>
            state.get(l.node)!
          )
        if (value.node !== undefined && targets.length === 0) {
          return yield* new InvalidRequest({ message: `no neuron named '${value.node}'`, param: "node" })
        }
        yield* Effect.logInfo(`admin: ${action} ${model.id} on ${targets.map((n) => n.name).join(", ") || "no node"}`)
        const results = yield* Effect.forEach(targets, (node) =>
          callNeuron(node.endpoint, `/models/${action}`, NeuronModel, {
            body: { model: model.neuronId },
            timeoutMs: config.loadTimeoutSecs * 1000
          }).pipe(
            Effect.map((r) => ({ node: node.name, status: r.status })),
            Effect.tap(() => poller.refresh(node.name)),
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
        return HttpServerResponse.unsafeJson({ model: model.id, results } satisfies AdminLifecycleAnswer)
      }))

  /** Re-read cortex.toml and models.toml (ConfigReload.ts); a bad file is a 422 naming file, key and reason. */
  const adminReload = guarded(openaiError, () =>
    reloader.reload("POST /admin/reload").pipe(
      Effect.map((answer) => HttpServerResponse.unsafeJson(answer)),
      Effect.mapError((error) =>
        new InvalidRequest({
          message: `config reload refused, the running config keeps serving: invalid configuration: ${error.message}`,
          param: error.key ?? null
        })
      )
    ))

  /** `cortex pull`: start a pull on a node; answers at once with the pull's record. */
  const adminPull = guarded(openaiError, () =>
    Effect.gen(function*() {
      const value = yield* decoded(AdminLifecycle)
      const answer: AdminDownload = yield* pulls.pull(value.model, value.node)
      return HttpServerResponse.unsafeJson(answer, { status: answer.status === "downloading" ? 202 : 200 })
    }))

  /** `cortex rm`: delete a cached download (the neuron refuses while it is loaded). */
  const adminRemove = guarded(openaiError, () =>
    Effect.gen(function*() {
      const value = yield* decoded(AdminLifecycle)
      const answer: AdminRemoveAnswer = yield* pulls.remove(value.model, value.node)
      return HttpServerResponse.unsafeJson(answer)
    }))

  const app = HttpRouter.empty.pipe(
    HttpRouter.get("/health", health),
    HttpRouter.get("/version", version),
    HttpRouter.get("/v1/models", models),
    HttpRouter.get("/v1/models/:id", model),
    HttpRouter.post("/v1/messages/count_tokens", countTokens),
    HttpRouter.get("/admin/status", adminStatus),
    HttpRouter.post("/admin/load", adminLifecycle("load")),
    HttpRouter.post("/admin/unload", adminLifecycle("unload")),
    HttpRouter.post("/admin/reload", adminReload),
    HttpRouter.post("/admin/pull", adminPull),
    HttpRouter.post("/admin/rm", adminRemove),
    HttpRouter.concat(yield* makeConsoleRouter),
    HttpRouter.concat(yield* accountingRoutes)
  )
  return app.pipe(
    Effect.catchTag("RouteNotFound", (e) => {
      const error = new NotFoundRoute({ method: e.request.method, path: e.request.url })
      return Effect.succeed(e.request.url.startsWith("/v1/messages") ? anthropicError(error) : openaiError(error))
    })
  )
})
