/**
 * `/admin/keys` and `/admin/usage`: issue, list, revoke and rotate keys, and read the usage
 * ledger. Behind the admin key (`[auth] admin_key_env`), never behind an ordinary key; errors in
 * the OpenAI envelope.
 */
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect } from "effect"
import { Accounting, isAdmin } from "../accounting/Accounting.js"
import { createKey, KeyNotFound, type KeyRecord, loadKeys, revokeKey, rotateKey } from "../accounting/Keys.js"
import { parseSince, queryUsage, type UsageGroup } from "../accounting/Usage.js"
import { CreateKeyRequest, type IssuedKey, type KeyView, type UsageAnswer } from "../domain/accounting.js"
import { type ApiError, InternalError, InvalidRequest, isApiError, Unauthorized } from "../domain/errors.js"
import { decodeBody } from "../domain/openai.js"
import { parseWindow } from "../store/StoreConfig.js"
import * as Dialects from "./Dialects.js"
import { GatewayConfig } from "./GatewayConfig.js"

const respond = (error: ApiError) => {
  const answer = Dialects.openaiError(error)
  return HttpServerResponse.unsafeJson(answer.body, { status: answer.status, headers: answer.headers })
}

export const keyView = (k: KeyRecord): KeyView => ({
  id: k.id,
  name: k.name,
  models: k.models ? [...k.models] : null,
  rpm: k.rpm ?? null,
  tpm: k.tpm ?? null,
  concurrent: k.concurrent ?? null,
  budget_usd: k.budgetUsd ?? null,
  window: k.window ?? null,
  expires_at: k.expiresAt?.toISOString() ?? null,
  created_at: k.createdAt.toISOString(),
  revoked_at: k.revokedAt?.toISOString() ?? null
})

export const accountingRoutes = Effect.gen(function*() {
  const config = yield* GatewayConfig
  const accounting = yield* Accounting

  /** The admin key, then the handler; store and key errors become 4xx answers. */
  const admin = <E, R>(handler: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>) =>
    Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      if (!isAdmin(config.adminKey, request.headers)) {
        if (config.adminKey === undefined) {
          yield* Effect.logWarning(`${request.url}: refused, no admin key is set ([auth] admin_key_env)`)
        }
        return respond(new Unauthorized())
      }
      return yield* handler
    }).pipe(
      Effect.catchAll((e: unknown) =>
        Effect.succeed(
          isApiError(e)
            ? respond(e)
            : e instanceof KeyNotFound
            ? HttpServerResponse.unsafeJson(
              { error: { message: e.message, type: "invalid_request_error", code: "key_not_found", param: null } },
              { status: 404 }
            )
            : (e as { _tag?: string })._tag === "StoreOff"
            ? respond(new InvalidRequest({ message: (e as { message: string }).message, param: null }))
            : respond(new InternalError({ detail: String(e) }))
        )
      )
    )

  const list = admin(Effect.gen(function*() {
    yield* accounting.refreshKeys
    const all = yield* accounting.run(loadKeys)
    return HttpServerResponse.unsafeJson({ data: all.map(keyView) })
  }))

  const create = admin(Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const text = yield* Effect.mapError(request.text, () => new InternalError({ detail: "could not read the body" }))
    const body = yield* decodeBody(CreateKeyRequest, text)
    if (body.window !== undefined && parseWindow(body.window) === undefined) {
      return yield* new InvalidRequest({
        message:
          `unknown window '${body.window}': expected rolling:<seconds>, a duration such as 30d, month or balance`,
        param: "window"
      })
    }
    if (body.window !== undefined && body.budget_usd === undefined) {
      return yield* new InvalidRequest({ message: "window needs budget_usd", param: "window" })
    }
    const expiresAt = body.expires_at !== undefined ? new Date(body.expires_at) : undefined
    if (expiresAt !== undefined && Number.isNaN(expiresAt.getTime())) {
      return yield* new InvalidRequest({ message: `expires_at: not a date: '${body.expires_at}'`, param: "expires_at" })
    }
    const issued = yield* accounting.run(createKey(body.name, {
      models: body.models,
      rpm: body.rpm,
      tpm: body.tpm,
      concurrent: body.concurrent,
      budgetUsd: body.budget_usd,
      window: body.window,
      expiresAt
    }))
    yield* accounting.refreshKeys
    yield* Effect.logInfo(`keys: issued ${issued.record.id} (${issued.record.name})`)
    return HttpServerResponse.unsafeJson({ key: keyView(issued.record), secret: issued.secret } satisfies IssuedKey, {
      status: 201
    })
  }))

  const change = (action: "revoke" | "rotate") =>
    admin(Effect.gen(function*() {
      const { id } = yield* HttpRouter.params
      if (action === "revoke") {
        const record = yield* accounting.run(revokeKey(id ?? ""))
        yield* accounting.refreshKeys
        yield* Effect.logInfo(`keys: revoked ${record.id} (${record.name})`)
        return HttpServerResponse.unsafeJson(keyView(record))
      }
      const issued = yield* accounting.run(rotateKey(id ?? ""))
      yield* accounting.refreshKeys
      yield* Effect.logInfo(`keys: rotated ${issued.record.id} (${issued.record.name})`)
      return HttpServerResponse.unsafeJson({ key: keyView(issued.record), secret: issued.secret } satisfies IssuedKey)
    }))

  const usage = admin(Effect.gen(function*() {
    const query = (yield* HttpServerRequest.ParsedSearchParams) as Record<string, string | undefined>
    const sinceText = query.since ?? "30d"
    const since = parseSince(sinceText)
    if (since === undefined) {
      return yield* new InvalidRequest({
        message: `since: expected a duration such as 7d, 12h: '${sinceText}'`,
        param: "since"
      })
    }
    const by = query.by
    if (by !== undefined && by !== "day" && by !== "model" && by !== "key") {
      return yield* new InvalidRequest({ message: `by: expected day, model or key: '${by}'`, param: "by" })
    }
    const data = yield* accounting.run(
      queryUsage({ key: query.key, model: query.model, since, by: by as UsageGroup | undefined })
    )
    return HttpServerResponse.unsafeJson(
      { since: since.toISOString(), by: (by as UsageGroup | undefined) ?? null, data: [...data] } satisfies UsageAnswer
    )
  }))

  return HttpRouter.empty.pipe(
    HttpRouter.get("/admin/keys", list),
    HttpRouter.post("/admin/keys", create),
    HttpRouter.post("/admin/keys/:id/revoke", change("revoke")),
    HttpRouter.post("/admin/keys/:id/rotate", change("rotate")),
    HttpRouter.get("/admin/usage", usage)
  )
})
