/**
 * The web console at `/ui`: static assets (console/assets/, read once at start relative to this
 * module, so a compiled dist/ copy works the same when the folder is copied next to it), a live
 * event stream (`GET /ui/events`, SSE) and `POST /admin/pin`.
 *
 * Login: the page itself is static code with no data in it and loads without a key; every
 * request that reads or changes anything (the event stream, the admin API, the playground)
 * carries the key as `Authorization: Bearer` from the page's JavaScript, and is refused (401)
 * without a valid one when `require_auth` is on. The page asks for the key once and keeps it in
 * the browser's sessionStorage (or localStorage when the operator ticks "remember").
 * EventSource cannot send headers, so the page reads the stream with fetch.
 */
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect, Schedule, Schema, Stream } from "effect"
import { createHash } from "node:crypto"
import { readdirSync, readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { VERSION } from "../../domain/contract.js"
import { InvalidRequest, isApiError, Unauthorized } from "../../domain/errors.js"
import { decodeBody } from "../../domain/openai.js"
import { principalFor } from "../Auth.js"
import { Catalogue } from "../Catalogue.js"
import { ColdLoader } from "../ColdLoader.js"
import * as Dialects from "../Dialects.js"
import { GatewayConfig, type ModelProfile } from "../GatewayConfig.js"
import { LiveConfig } from "../LiveConfig.js"
import { Poller } from "../Poller.js"
import { Router } from "../Router.js"
import { ConsoleFeed } from "./ConsoleFeed.js"

/** Where the console's files are: next to this module, in source and in a compiled build alike. */
export const ASSETS_DIR = fileURLToPath(new URL("./assets/", import.meta.url))

const CONTENT_TYPES: Readonly<Record<string, string>> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
  svg: "image/svg+xml",
  png: "image/png",
  json: "application/json"
}

interface Asset {
  readonly body: Uint8Array
  readonly contentType: string
  readonly etag: string
}

/** The asset folder, read once: only these names are ever served (no path from a request reaches the disk). */
const readAssets = (): ReadonlyMap<string, Asset> => {
  const assets = new Map<string, Asset>()
  for (const name of readdirSync(ASSETS_DIR)) {
    const type = CONTENT_TYPES[name.slice(name.lastIndexOf(".") + 1)]
    if (type === undefined) continue
    const body = readFileSync(new URL(name, new URL("./assets/", import.meta.url)))
    assets.set(name, {
      body,
      contentType: type,
      etag: `"${createHash("sha256").update(body).digest("base64url").slice(0, 22)}"`
    })
  }
  return assets
}

/** The page's own origin only: nothing external can load, and nothing is inlined. */
const SECURITY_HEADERS = {
  "content-security-policy":
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer"
}

const PinRequest = Schema.Struct({
  model: Schema.String.pipe(Schema.minLength(1)),
  /** The node to pin the model on; null lifts the pin. */
  node: Schema.NullOr(Schema.String)
})

const withPin = (profile: ModelProfile, node: string | null): ModelProfile => {
  const { pinned_on: _, ...rest } = profile
  return node === null ? rest : { ...rest, pinned_on: node }
}

export const makeConsoleRouter = Effect.gen(function*() {
  const config = yield* GatewayConfig
  const live = yield* LiveConfig
  const poller = yield* Poller
  const catalogue = yield* Catalogue
  const loader = yield* ColdLoader
  const router = yield* Router
  const feed = yield* ConsoleFeed
  const assets = readAssets()

  const staticAsset = (name: string, cacheControl: string) =>
    Effect.map(HttpServerRequest.HttpServerRequest, (request) => {
      const asset = assets.get(name)
      if (asset === undefined) {
        return HttpServerResponse.text("not found", { status: 404, headers: SECURITY_HEADERS })
      }
      const headers = { ...SECURITY_HEADERS, "cache-control": cacheControl, etag: asset.etag }
      if (request.headers["if-none-match"] === asset.etag) return HttpServerResponse.empty({ status: 304, headers })
      return HttpServerResponse.uint8Array(asset.body, { contentType: asset.contentType, headers })
    })

  // The page is revalidated on every load (a new gateway version shows at once); assets are
  // revalidated after an hour, and a 304 is cheap.
  const page = staticAsset("index.html", "no-cache")
  const asset = Effect.flatMap(HttpRouter.params, ({ file }) => staticAsset(file ?? "", "public, max-age=3600"))

  const authorized = Effect.map(HttpServerRequest.HttpServerRequest, (request) =>
    principalFor(
      config,
      request.headers,
      request.remoteAddress._tag === "Some" ? request.remoteAddress.value : "unknown"
    ) !== undefined)

  const guarded = <E, R>(handler: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>) =>
    Effect.gen(function*() {
      if (!(yield* authorized)) return yield* new Unauthorized()
      return yield* handler
    }).pipe(
      Effect.catchAll((error) => {
        const answer = Dialects.openaiError(
          isApiError(error) ? error : new InvalidRequest({ message: String(error), param: null })
        )
        return Effect.succeed(
          HttpServerResponse.unsafeJson(answer.body, { status: answer.status, headers: answer.headers })
        )
      })
    )

  /** The fleet as the console draws it: nodes with devices and models, the catalogue, loads. */
  const snapshot = Effect.gen(function*() {
    const state = yield* poller.get
    const models = yield* catalogue.get
    const aliases = Object.entries(config.aliases)
    return {
      version: VERSION,
      require_auth: config.requireAuth,
      nodes: [...state.values()].map((n) => ({
        name: n.name,
        endpoint: n.endpoint.endpoint,
        healthy: n.healthy,
        status: n.status,
        retired: n.retired === true,
        error: n.lastError ?? null,
        devices: n.devices.map((d) => ({
          id: d.id,
          name: d.name,
          total_mb: d.totalMb,
          used_mb: d.usedMb,
          free_mb: d.freeMb
        })),
        models: n.models.map((m) => ({
          id: m.id,
          status: m.status,
          device: m.device,
          memory_estimate_mb: m.memory_estimate_mb,
          in_flight: m.in_flight,
          queue_depth: m.queue_depth,
          loaded_at: m.loaded_at,
          error: m.error
        }))
      })),
      models: [...models.values()].map((m) => ({
        id: m.id,
        neuron_id: m.neuronId,
        aliases: aliases.filter(([, target]) => target === m.id).map(([alias]) => alias),
        pinned_on: m.profile?.pinned_on ?? null,
        capabilities: m.capabilities,
        context: m.limit.context,
        locations: m.locations.map((l) => ({
          node: l.node,
          status: l.status,
          healthy: l.healthy,
          in_flight: l.in_flight,
          queue_depth: l.queue_depth,
          error: l.error
        }))
      })),
      loads_in_progress: loader.loadsInProgress(),
      recent_loads: loader.history().slice(-50)
    }
  })

  const encoder = new TextEncoder()
  const frame = (event: string, data: unknown) => encoder.encode(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`)

  /**
   * One stream per open console: first everything it needs to draw (fleet, recent requests, log
   * tail), then the fleet again whenever it changes (checked twice a second), and each request
   * and log line as it happens.
   */
  const events = guarded(Effect.sync(() => {
    const hello = Stream.fromEffect(
      Effect.map(
        snapshot,
        (fleet) => frame("hello", { fleet, requests: feed.recentRequests(), logs: feed.recentLogs() })
      )
    )
    const fleet = Stream.repeatEffectWithSchedule(
      Effect.map(snapshot, (s) => JSON.stringify(s)),
      Schedule.spaced("500 millis")
    ).pipe(
      Stream.changes,
      Stream.drop(1),
      Stream.map((json) => encoder.encode(`event: fleet\ndata: ${json}\n\n`))
    )
    const happenings = Stream.fromPubSub(feed.events).pipe(Stream.map((e) => frame(e.type, e.entry)))
    const keepAlive = Stream.tick("15 seconds").pipe(Stream.map(() => encoder.encode(": keep-alive\n\n")))
    return HttpServerResponse.stream(
      Stream.concat(hello, Stream.mergeAll([fleet, happenings, keepAlive], { concurrency: "unbounded" })),
      {
        contentType: "text/event-stream",
        headers: { "cache-control": "no-store", "x-accel-buffering": "no" }
      }
    )
  }))

  /**
   * Pin a model on a node (it loads only there and is never evicted) or lift its pin. Held in
   * the live config until the next reload or restart; `pinned_on` in models.toml keeps it.
   */
  const pin = guarded(Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const text = yield* Effect.orElseSucceed(request.text, () => "")
    const value = yield* decodeBody(PinRequest, text)
    const model = yield* router.lookup(value.model)
    if (value.node !== null && !(yield* poller.get).has(value.node)) {
      return yield* new InvalidRequest({ message: `no neuron named '${value.node}'`, param: "node" })
    }
    const current = live.current()
    const known = current.models.some((p) => p.id === model.id)
    const models = known
      ? current.models.map((p) => (p.id === model.id ? withPin(p, value.node) : p))
      : [...current.models, withPin({ id: model.id, file: model.neuronId }, value.node)]
    yield* live.replace({ ...current, models })
    yield* Effect.logInfo(
      value.node === null ? `console: pin lifted from ${model.id}` : `console: ${model.id} pinned on ${value.node}`
    )
    return HttpServerResponse.unsafeJson({
      model: model.id,
      pinned_on: value.node,
      until: "the next config reload or restart (set pinned_on in models.toml to keep it)"
    })
  }))

  return HttpRouter.empty.pipe(
    HttpRouter.get("/ui", page),
    HttpRouter.get("/ui/assets/:file", asset),
    HttpRouter.get("/ui/events", events),
    HttpRouter.post("/admin/pin", pin)
  )
})
