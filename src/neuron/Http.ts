/**
 * The neuron's HTTP API (port 13131): control plane (health, discovery, models, load, unload)
 * answered from cached state, and the OpenAI-compatible inference routes.
 */
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { NodeHttpServerRequest } from "@effect/platform-node"
import { Effect, Redacted, Schema } from "effect"
import { type NeuronDiscovery, type NeuronHealth, type NeuronModels, VERSION } from "../domain/contract.js"
import {
  type ApiError,
  InternalError,
  InvalidJson,
  InvalidRequest,
  isApiError,
  NotFoundRoute,
  ShuttingDown,
  Unauthorized
} from "../domain/errors.js"
import { answeredModelName, MODEL_NAME_HEADER, PROGRESS_HEADER, progressIntervalMs } from "../domain/headers.js"
import {
  ChatCompletionRequest,
  CompletionRequest,
  decodeBody,
  EmbeddingRequest,
  LoadRequest,
  TokenizeRequest,
  UnloadRequest
} from "../domain/openai.js"
import { buildInfo } from "../telemetry/BuildInfo.js"
import { tokenMatches } from "./ApiToken.js"
import { toWorkerMessages } from "./ChatMessages.js"
import { deviceTelemetry, driverFields } from "./DeviceViews.js"
import { hostInfo } from "./Discovery.js"
import { errorResponse, newRequestId, reportInternal } from "./ErrorAnswers.js"
import { Inference } from "./Inference.js"
import * as NM from "./Metrics.js"
import { type Caller, ModelManager } from "./ModelManager.js"
import { NeuronConfig } from "./NeuronConfig.js"
import { pullRoute, removeRoute, resolveRoute } from "./PullRoutes.js"
import { promptShapeOf } from "./RequestPrep.js"

const RestartWorkerRequest = Schema.Struct({ device: Schema.optionalWith(Schema.String, { exact: true }) })
/** The gateway names the principal for fair share; a direct client is its remote address. */
export const PRINCIPAL_HEADER = "x-cortex-principal"
const startedAt = Date.now()

const json = (body: unknown, status = 200) => HttpServerResponse.unsafeJson(body, { status })

const body = <A, I>(schema: Schema.Schema<A, I>) =>
  Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const text = yield* request.text.pipe(
      Effect.mapError(() => new InvalidJson({ message: "Could not read the request body" }))
    )
    return yield* decodeBody(schema, text)
  })

/** The gateway sends `x-cortex-autoload: off`: it places loads itself, a stale route must not load. */
export const AUTOLOAD_HEADER = "x-cortex-autoload"

const principal = Effect.map(HttpServerRequest.HttpServerRequest, (request): Caller => {
  const header = request.headers[PRINCIPAL_HEADER]
  const who = header ? header : request.remoteAddress._tag === "Some" ? request.remoteAddress.value : "anonymous"
  return request.headers[AUTOLOAD_HEADER] === "off" ? { principal: who, autoLoad: false } : { principal: who }
})

/**
 * Every failure becomes an answer in the OpenAI envelope. Internal errors and defects are logged
 * in full under a short request id; the client gets only that id (never a stack or a path).
 */
const handled = <R>(effect: Effect.Effect<HttpServerResponse.HttpServerResponse, ApiError, R>) =>
  effect.pipe(
    Effect.catchAll((error) => {
      const requestId = newRequestId()
      return reportInternal(error, requestId).pipe(Effect.as(errorResponse(error, requestId)))
    }),
    Effect.catchAllDefect((defect) => {
      const requestId = newRequestId()
      if (isApiError(defect)) return reportInternal(defect, requestId).pipe(Effect.as(errorResponse(defect, requestId)))
      return Effect.logError(`unhandled defect (request id ${requestId})`, defect).pipe(
        Effect.as(errorResponse(new InternalError({ detail: "unhandled defect" }), requestId))
      )
    })
  )

/**
 * Run a non-streamed answer, sending `102 Processing` at the interval the gateway asked for
 * (PROGRESS_HEADER) until it is ready: the gateway's idle timeout covers the wait for the head.
 */
const withProgress = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
    const every = progressIntervalMs(request.headers[PROGRESS_HEADER])
    if (every === undefined) return effect
    const res = NodeHttpServerRequest.toServerResponse(request)
    const timer = setInterval(() => {
      if (!res.headersSent && !res.destroyed) res.writeProcessing()
    }, every)
    return Effect.ensuring(effect, Effect.sync(() => clearInterval(timer)))
  })

export const makeRouter = Effect.gen(function*() {
  const models = yield* ModelManager
  const inference = yield* Inference
  const config = yield* NeuronConfig

  const guard = <R>(effect: Effect.Effect<HttpServerResponse.HttpServerResponse, ApiError, R>, admit = false) =>
    handled(Effect.gen(function*() {
      if (config.apiToken !== undefined) {
        const request = yield* HttpServerRequest.HttpServerRequest
        const auth = request.headers["authorization"] ?? ""
        const token = auth.toLowerCase().startsWith("bearer ") ? auth.slice(7).trim() : request.headers["x-api-key"]
        if (!tokenMatches(token, Redacted.value(config.apiToken))) return yield* new Unauthorized()
      }
      if (admit && models.isDraining()) return yield* new ShuttingDown()
      return yield* effect
    }))

  const health = Effect.sync(() => {
    const totals = models.totals()
    const devices = models.deviceViews()
    return json(
      {
        status: models.isDraining() ? "draining" : devices.every((d) => d.worker.alive) ? "ok" : "degraded",
        version: VERSION,
        uptime_s: Math.round((Date.now() - startedAt) / 1000),
        devices: devices.map((d) => ({
          id: d.id,
          name: d.name,
          total_mb: d.totalMb,
          free_mb: d.freeMb,
          used_mb: d.usedMb,
          worker_alive: d.worker.alive,
          worker_restarts: d.worker.restarts,
          ...deviceTelemetry(d)
        })),
        in_flight: totals.inFlight,
        queued: totals.queued,
        models: models.snapshot().filter((m) => m.status !== "available").map((m) => ({
          id: m.id,
          status: m.status,
          in_flight: m.in_flight,
          queue_depth: m.queue_depth
        }))
      } satisfies NeuronHealth
    )
  })

  const discovery = Effect.sync(() => {
    const engine = models.engine()
    return json(
      {
        host: hostInfo(),
        neuron: { version: VERSION, port: config.port, models_dir: config.modelsDir, threads: config.threads },
        engine: engine
          ? {
            name: engine.engine,
            version: engine.version,
            ...(engine.binary ? { binary: engine.binary } : {}),
            gpu: engine.memory.gpu,
            gpu_names: engine.memory.gpuNames
          }
          : null,
        memory_budget_mb: config.memoryBudgetMb ?? null,
        devices: models.deviceViews().map((d) => ({
          id: d.id,
          kind: d.kind,
          index: d.index,
          name: d.name,
          total_mb: d.totalMb,
          free_mb: d.freeMb,
          used_mb: d.usedMb,
          group: d.group,
          worker_pid: d.worker.pid,
          ...(d.simulated === true ? { simulated: true } : {}),
          ...deviceTelemetry(d)
        })),
        ...driverFields(models.driver())
      } satisfies NeuronDiscovery
    )
  })

  const listModels = Effect.sync(() =>
    json(
      {
        object: "list",
        data: models.snapshot(),
        devices: models.deviceViews(),
        pulls: models.pulls()
      } satisfies NeuronModels
    )
  )

  const openaiModels = Effect.sync(() =>
    json({
      object: "list",
      data: models.snapshot().map((m) => ({
        id: m.id,
        object: "model",
        created: Math.floor(startedAt / 1000),
        owned_by: "cortex",
        status: m.status,
        context_length: m.context_limit
      }))
    })
  )

  /** A load (the gateway's cold loads come here, in the request's trace), failures counted. */
  const load = Effect.gen(function*() {
    const request = yield* body(LoadRequest)
    const view = yield* models.load(request.model, request.context_size, request.group).pipe(
      Effect.tapError((error) =>
        Effect.sync(() =>
          NM.recordLoadFailure(
            error._tag === "ModelNotFound" ? "unknown" : request.model,
            NM.reasonLabel(error.body.error.code ?? error._tag)
          )
        )
      ),
      Effect.tap((view) =>
        Effect.annotateCurrentSpan({ "cortex.device": view.device ?? "none", "cortex.load_ms": view.load_ms ?? 0 })
      ),
      Effect.withSpan("neuron.model_load", {
        captureStackTrace: false,
        attributes: { "gen_ai.request.model": request.model }
      })
    )
    return json(view)
  })

  const unload = Effect.gen(function*() {
    const request = yield* body(UnloadRequest)
    const started = Date.now()
    const view = yield* models.unload(request.model).pipe(
      Effect.withSpan("neuron.model_unload", {
        captureStackTrace: false,
        attributes: { "gen_ai.request.model": request.model }
      })
    )
    NM.recordUnload(view.id, (Date.now() - started) / 1000)
    return json(view)
  })

  /** The model as the client named it: the gateway's header, else the body's `model`. */
  const nameFor = (model: string) =>
    Effect.map(HttpServerRequest.HttpServerRequest, (request) => {
      const header = request.headers[MODEL_NAME_HEADER]
      return answeredModelName(typeof header === "string" ? header : undefined, model)
    })

  const chat = Effect.gen(function*() {
    const request = yield* body(ChatCompletionRequest)
    const who = yield* principal
    const name = yield* nameFor(request.model)
    if (request.stream) return yield* inference.stream(request, "chat", who, name)
    return json(yield* withProgress(inference.complete(request, "chat", who, name)))
  })

  const completions = Effect.gen(function*() {
    const request = yield* body(CompletionRequest)
    const who = yield* principal
    const name = yield* nameFor(request.model)
    if (request.stream) return yield* inference.stream(request, "completion", who, name)
    return json(yield* withProgress(inference.complete(request, "completion", who, name)))
  })

  const embeddings = Effect.gen(function*() {
    const request = yield* body(EmbeddingRequest)
    const name = yield* nameFor(request.model)
    return json(yield* withProgress(inference.embed(request, yield* principal, name)))
  })

  /** Messages are counted as chat generation renders them, with the tools (and tool_choice) given. */
  const tokenize = Effect.gen(function*() {
    const request = yield* body(TokenizeRequest)
    if (!request.messages) {
      return json(yield* inference.tokenize(request.model, { kind: "completion", prompt: request.text ?? "" }))
    }
    const messages = request.messages
    const vision = yield* models.visionOf(request.model)
    const [job, shape] = yield* Effect.try({
      try: () =>
        [{ kind: "chat" as const, messages: toWorkerMessages(messages, vision) }, promptShapeOf(request)] as const,
      catch: (e) => isApiError(e) ? e : new InvalidRequest({ message: "Invalid messages", param: "messages" })
    })
    return json(yield* inference.tokenize(request.model, job, shape))
  })

  const restartWorker = Effect.gen(function*() {
    const request = yield* body(RestartWorkerRequest)
    return json(yield* models.restartWorker(request.device))
  })

  return HttpRouter.empty.pipe(
    HttpRouter.post("/admin/restart-worker", guard(restartWorker)),
    HttpRouter.get("/health", handled(health)),
    HttpRouter.get("/version", guard(Effect.sync(() => json(buildInfo())))),
    HttpRouter.get("/discovery", guard(discovery)),
    HttpRouter.get("/models", guard(listModels)),
    HttpRouter.post("/models/load", guard(load, true)),
    HttpRouter.post("/models/unload", guard(unload)),
    HttpRouter.post("/models/pull", guard(pullRoute)),
    HttpRouter.post("/models/resolve", guard(resolveRoute)),
    HttpRouter.post("/models/remove", guard(removeRoute)),
    HttpRouter.get("/v1/models", guard(openaiModels)),
    HttpRouter.post("/v1/chat/completions", guard(chat, true)),
    HttpRouter.post("/v1/completions", guard(completions, true)),
    HttpRouter.post("/v1/embeddings", guard(embeddings, true)),
    HttpRouter.post("/tokenize", guard(tokenize, true))
  )
})

/** The router as an app whose unknown routes answer 404 in the OpenAI envelope. */
export const makeApp = Effect.map(makeRouter, (router) =>
  router.pipe(
    Effect.catchTag("RouteNotFound", (e) =>
      Effect.succeed(errorResponse(new NotFoundRoute({ method: e.request.method, path: e.request.url }))))
  ))
