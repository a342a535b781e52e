/**
 * Keys, the usage ledger and limits, for the gateway's request path. Plain functions on the hot
 * path (InferenceRoutes): `authenticate` answers from an in-memory copy of the keys (reloaded
 * every `[store] refresh_secs`, so a revocation on any replica holds everywhere within it);
 * `admit` checks a key's models and, only when a limit applies, reserves in the store; `finish`
 * settles the reservation and queues the ledger row, both off the request path.
 * Without `[store]`, only the static `[auth]` keys exist and nothing is recorded.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Cause, Effect, Exit, Layer, Metric, Option, Redacted, Runtime, Schedule } from "effect"
import { createHash, timingSafeEqual } from "node:crypto"
import { ConfigError } from "../domain/contract.js"
import { InternalError, LimitExceeded, ModelNotAllowed } from "../domain/errors.js"
import { findKey, keyFrom, principalFor } from "../gateway/Auth.js"
import { resolveAlias } from "../gateway/Catalogue.js"
import { GatewayConfig, type ModelProfile } from "../gateway/GatewayConfig.js"
import { StoreLive } from "../store/Store.js"
import { parseWindow } from "../store/StoreConfig.js"
import { budgetWindow, idOf, isIssuedKey, type KeyRecord, loadKeys, verify } from "./Keys.js"
import { Ledger, type UsageRow } from "./Ledger.js"
import { type Amounts, type Meter, reserve, type Reserved, settle } from "./Limits.js"

/** Output tokens reserved for a request that names no max_tokens and whose model sets none. */
export const DEFAULT_MAX_OUTPUT = 4096
/** The longest a reservation may take before the request goes on without it (the store is slow or down). */
const RESERVE_TIMEOUT = "2 seconds"

export const limitsUnenforced = Metric.counter("cortex_limits_unenforced_total", {
  description: "Requests served without their limits checked because the store did not answer in time",
  incremental: true
})
export const limitRefusals = Metric.counter("cortex_limit_refusals_total", {
  description: "Requests refused with 429 by a key's or a model's limit, by limit",
  incremental: true
})

export interface Caller {
  readonly principal: string
  /** The issued key, when the request used one. */
  readonly key: KeyRecord | undefined
}

/** What admission reserved for one request, settled by `finish`. */
export interface Ticket {
  readonly model: string
  readonly reserved: ReadonlyArray<Reserved>
  readonly estimate: Amounts
}

const NO_TICKET: Ticket = { model: "", reserved: [], estimate: { tokens: 0, usd: 0 } }

/** How one request ended, for the ledger. */
export interface Finished {
  readonly requestId: string
  readonly model: string
  readonly route: string
  readonly node: string
  readonly status: number
  readonly error: string | undefined
  readonly promptTokens: number | undefined
  readonly cachedTokens: number | undefined
  readonly completionTokens: number | undefined
  readonly ttftMs: number | undefined
  readonly received: number
}

/** USD for this usage at the model's `cost.*` (USD per million tokens; cached tokens at cache_read, else input). */
export const costOf = (
  profile: ModelProfile | undefined,
  prompt: number,
  cached: number,
  completion: number
) => {
  const cost = profile?.cost
  if (!cost) return 0
  const input = cost.input ?? 0
  return ((prompt - cached) * input + cached * (cost.cache_read ?? input) + completion * (cost.output ?? 0)) / 1e6
}

const MAX_MODEL = 128

export class StoreOff {
  readonly _tag = "StoreOff"
  readonly message = "no [store] is configured: keys and usage need one (see the README's Keys and usage)"
}

export class Accounting extends Effect.Service<Accounting>()("cortex/Accounting", {
  scoped: Effect.gen(function*() {
    const config = yield* GatewayConfig
    const settings = config.store
    const profiles = new Map(config.models.map((m) => [m.id, m]))
    const profileOf = (model: string) => profiles.get(resolveAlias(config.aliases, model))

    // Without a store: the static keys, no ledger, no limits (a model's limits need the store:
    // GatewayConfig refuses them without one).
    if (settings === undefined) {
      return {
        enabled: false,
        authenticate: (headers: Readonly<Record<string, string | undefined>>, remote: string): Caller | undefined => {
          const principal = principalFor(config, headers, remote)
          return principal === undefined ? undefined : { principal, key: undefined }
        },
        admit: (_caller: Caller, _model: string, _body: Record<string, unknown>): Ticket | Promise<Ticket> => NO_TICKET,
        finish: (_ticket: Ticket | undefined, _caller: Caller, _done: Finished) => {},
        run: <A, E>(_effect: Effect.Effect<A, E, SqlClient.SqlClient>): Effect.Effect<A, E | StoreOff> =>
          Effect.fail(new StoreOff()),
        refreshKeys: Effect.void as Effect.Effect<void>,
        ledger: undefined as Ledger | undefined
      }
    }

    const context = yield* Layer.build(StoreLive(settings)).pipe(
      Effect.mapError((e) =>
        new ConfigError({
          file: config.configFile ?? "cortex.toml",
          key: "store",
          reason: `the store could not be opened or migrated: ${e.message}${
            e._tag === "SqlError" && e.cause instanceof Error ? ` (${e.cause.message})` : ""
          }`
        })
      )
    )
    const runtime = yield* Effect.runtime<SqlClient.SqlClient>().pipe(Effect.provide(context))
    const runPromiseExit = Runtime.runPromiseExit(runtime)
    const runFork = Runtime.runFork(runtime)
    const run = <A, E>(effect: Effect.Effect<A, E, SqlClient.SqlClient>): Effect.Effect<A, E | StoreOff> =>
      Effect.provide(effect, context)

    // ---- keys: an in-memory copy, reloaded every refresh_secs
    let keys = new Map<string, KeyRecord>()
    let keysFailing = false
    const refreshKeys = run(loadKeys).pipe(
      Effect.withTracerEnabled(false),
      Effect.tap((all) =>
        Effect.sync(() => {
          keys = new Map(all.map((k) => [k.id, k]))
        })
      ),
      Effect.tap(() =>
        keysFailing
          ? Effect.logInfo("keys: the store answers again").pipe(Effect.tap(() => (keysFailing = false)))
          : Effect.void
      ),
      Effect.catchAllCause((cause) =>
        keysFailing
          ? Effect.void
          : Effect.logWarning(`keys: could not reload from the store (serving the last copy): ${cause}`).pipe(
            Effect.tap(() => (keysFailing = true))
          )
      ),
      Effect.asVoid
    )
    yield* refreshKeys
    yield* Effect.forkScoped(
      refreshKeys.pipe(Effect.delay(`${settings.refreshSecs} seconds`), Effect.forever)
    )

    // ---- the ledger: flushed every flush_ms, and once more at shutdown
    const ledger = new Ledger(settings.ledgerBuffer)
    yield* Effect.forkScoped(
      run(ledger.flush).pipe(
        Effect.withTracerEnabled(false),
        Effect.ignore,
        Effect.repeat(Schedule.spaced(`${settings.flushMs} millis`))
      )
    )
    yield* Effect.addFinalizer(() =>
      run(ledger.flush).pipe(
        Effect.timeout("5 seconds"),
        Effect.ignore,
        Effect.zipRight(
          Effect.suspend(() =>
            ledger.buffered > 0
              ? Effect.logWarning(`ledger: ${ledger.buffered} usage row(s) not written at shutdown`)
              : Effect.void
          )
        )
      )
    )
    yield* Effect.logInfo(
      `accounting: ${keys.size} issued key(s), keys reloaded every ${settings.refreshSecs} s, ledger buffer ${settings.ledgerBuffer} rows`
    )

    const authenticate = (
      headers: Readonly<Record<string, string | undefined>>,
      remote: string
    ): Caller | undefined => {
      const secret = keyFrom(headers)
      if (secret !== undefined && isIssuedKey(secret)) {
        // An issued key's shape: it is that key or nothing, whatever require_auth says
        // (a revoked key must not pass as anonymous).
        const id = idOf(secret)
        const key = id !== undefined ? keys.get(id) : undefined
        if (key === undefined || !verify(key, secret) || key.revokedAt !== undefined) return undefined
        if (key.expiresAt !== undefined && key.expiresAt.getTime() <= Date.now()) return undefined
        return { principal: key.name, key }
      }
      if (secret !== undefined) {
        const known = findKey(config.keys, secret)
        if (known) return { principal: known.name, key: undefined }
      }
      if (config.requireAuth) return undefined
      return { principal: `anonymous@${remote}`, key: undefined }
    }

    const metersFor = (caller: Caller, model: string, profile: ModelProfile | undefined): Array<Meter> => {
      const meters: Array<Meter> = []
      const key = caller.key
      if (key) {
        const base = { scope: "key", id: key.id, name: key.name } as const
        if (key.rpm !== undefined) meters.push({ ...base, kind: "rpm", cap: key.rpm })
        if (key.tpm !== undefined) meters.push({ ...base, kind: "tpm", cap: key.tpm })
        if (key.concurrent !== undefined) meters.push({ ...base, kind: "concurrent", cap: key.concurrent })
        if (key.budgetUsd !== undefined) {
          meters.push({ ...base, kind: "spend", cap: key.budgetUsd, window: budgetWindow(key) })
        }
      }
      const limits = profile?.limits
      if (limits) {
        const base = { scope: "model", id: model, name: model } as const
        if (limits.rpm !== undefined) meters.push({ ...base, kind: "rpm", cap: limits.rpm })
        if (limits.tpm !== undefined) meters.push({ ...base, kind: "tpm", cap: limits.tpm })
        if (limits.concurrent !== undefined) meters.push({ ...base, kind: "concurrent", cap: limits.concurrent })
        if (limits.budget_usd !== undefined) {
          meters.push({
            ...base,
            kind: "spend",
            cap: limits.budget_usd,
            window: parseWindow(limits.window ?? "balance") ?? { kind: "balance" }
          })
        }
      }
      return meters
    }

    let unenforcedLogged = 0
    /** Throws (or rejects with) the ApiError that refuses the request. */
    const admit = (caller: Caller, requested: string, body: Record<string, unknown>): Ticket | Promise<Ticket> => {
      const model = resolveAlias(config.aliases, requested)
      const key = caller.key
      if (key?.models !== undefined && !key.models.includes(model) && !key.models.includes(requested)) {
        throw new ModelNotAllowed({ model: requested })
      }
      const profile = profiles.get(model)
      const meters = metersFor(caller, model, profile)
      if (meters.length === 0) return NO_TICKET
      // The estimate: the prompt's characters / 4, plus the most it may generate.
      const input = body.messages ?? body.prompt ?? body.input ?? ""
      const promptEstimate = Math.ceil((typeof input === "string" ? input.length : JSON.stringify(input).length) / 4)
      const maxOutput = "input" in body && body.messages === undefined && body.prompt === undefined
        ? 0
        : Number(
          body.max_tokens ?? body.max_completion_tokens ?? profile?.sampling?.max_tokens ??
            profile?.limit?.output ?? DEFAULT_MAX_OUTPUT
        )
      const estimate: Amounts = {
        tokens: promptEstimate + maxOutput,
        usd: costOf(profile, promptEstimate, 0, maxOutput)
      }
      const started = Date.now()
      return runPromiseExit(
        reserve(meters, estimate, started).pipe(
          // No span per query on the request path (the request's own span says how it went).
          Effect.withTracerEnabled(false),
          Effect.timeout(RESERVE_TIMEOUT),
          Effect.map((reserved): Ticket => ({ model, reserved, estimate })),
          Effect.catchAll((e) => {
            if (e instanceof LimitExceeded) {
              limitRefusals.unsafeUpdate(1, [])
              return Effect.fail(e)
            }
            // The store did not answer: serve without the limits rather than fail inference.
            limitsUnenforced.unsafeUpdate(1, [])
            const quiet = Date.now() - unenforcedLogged < 10_000
            if (!quiet) unenforcedLogged = Date.now()
            return Effect.as(
              quiet
                ? Effect.void
                : Effect.logWarning(`limits: the store did not answer (${String(e)}); serving without limits`),
              NO_TICKET
            )
          })
        )
      ).then((exit) => {
        if (Exit.isSuccess(exit)) return exit.value
        const failure = Cause.failureOption(exit.cause)
        if (Option.isSome(failure)) throw failure.value
        throw new InternalError({ detail: `limits: ${Cause.pretty(exit.cause)}` })
      })
    }

    const finish = (ticket: Ticket | undefined, caller: Caller, done: Finished) => {
      const profile = profileOf(done.model)
      const prompt = done.promptTokens ?? 0
      const cached = done.cachedTokens ?? 0
      const completion = done.completionTokens ?? 0
      const cost = costOf(profile, prompt, cached, completion)
      if (ticket !== undefined && ticket.reserved.length > 0) {
        runFork(
          settle(ticket.reserved, { tokens: prompt + completion, usd: cost }).pipe(
            Effect.withTracerEnabled(false),
            Effect.timeout("30 seconds"),
            Effect.catchAllCause((cause) => Effect.logWarning(`limits: could not settle a reservation: ${cause}`))
          )
        )
      }
      const row: UsageRow = {
        request_id: done.requestId,
        key_id: caller.key?.id ?? null,
        principal: caller.principal,
        model: resolveAlias(config.aliases, done.model).slice(0, MAX_MODEL),
        node: done.node,
        route: done.route,
        prompt_tokens: done.promptTokens ?? null,
        cached_tokens: done.cachedTokens ?? null,
        completion_tokens: done.completionTokens ?? null,
        cost_usd: cost,
        status: done.status,
        error: done.error ?? null,
        ttft_ms: done.ttftMs ?? null,
        duration_ms: Date.now() - done.received,
        started_at: new Date(done.received)
      }
      ledger.push(row)
    }

    return {
      enabled: true,
      authenticate,
      admit,
      finish,
      run,
      refreshKeys,
      ledger: ledger as Ledger | undefined
    }
  })
}) {}

/** The admin key matches (constant time); false when none is configured. */
export const isAdmin = (
  adminKey: Redacted.Redacted<string> | undefined,
  headers: Readonly<Record<string, string | undefined>>
) => {
  if (adminKey === undefined) return false
  const given = keyFrom(headers)
  if (given === undefined) return false
  const digest = (text: string) => createHash("sha256").update(text).digest()
  return timingSafeEqual(digest(Redacted.value(adminKey)), digest(given))
}
