/**
 * Limits that hold across replicas: requests and tokens per minute, spend per window, concurrent
 * requests, for a key and for a model. Each limit is one row of `cortex_meters`, and each check
 * is one conditional upsert (`... DO UPDATE ... WHERE used + amount <= cap RETURNING`): the
 * database adds the amount only if it fits, so no replica reads then writes. A request's checks
 * run in one transaction (rolled back if any refuses), in a fixed order (no deadlocks).
 *
 * Windows: per-minute limits and rolling spend are sliding windows of two buckets (the previous
 * bucket counts for the part of it still inside the window, as Cloudflare's rate limiter
 * estimates); a calendar month is one bucket; a balance and concurrency never reset.
 * A request reserves its estimate (prompt estimate + max output) and settles to its real usage.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Effect } from "effect"
import { LimitExceeded } from "../domain/errors.js"
import type { BudgetWindow } from "../store/StoreConfig.js"

export type LimitKind = "rpm" | "tpm" | "spend" | "concurrent"

export interface Meter {
  readonly scope: "key" | "model"
  /** The key's id or the model's id. */
  readonly id: string
  /** For messages: the key's name or the model's id. */
  readonly name: string
  readonly kind: LimitKind
  readonly cap: number
  /** Spend only; per-minute limits slide over 60 s. */
  readonly window?: BudgetWindow | undefined
}

/** The bucket a meter counts in at `now`: its start, its length, and the previous bucket's weight. */
export interface Bucket {
  readonly start: number
  readonly length: number
  readonly weight: number
}

export const bucketOf = (meter: Meter, now: number): Bucket => {
  if (meter.kind === "concurrent") return { start: 0, length: 0, weight: 0 }
  const window: BudgetWindow = meter.kind === "spend"
    ? meter.window ?? { kind: "balance" }
    : { kind: "rolling", seconds: 60 }
  switch (window.kind) {
    case "balance":
      return { start: 0, length: 0, weight: 0 }
    case "month": {
      const d = new Date(now)
      const start = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1)
      const next = Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1)
      return { start, length: next - start, weight: 0 }
    }
    case "rolling": {
      const length = window.seconds * 1000
      const start = Math.floor(now / length) * length
      return { start, length, weight: 1 - (now - start) / length }
    }
  }
}

/** Seconds until a refused meter may fit again: the end of its bucket (a balance: an hour, until topped up). */
export const retryAfterSecs = (meter: Meter, now: number) => {
  const bucket = bucketOf(meter, now)
  if (bucket.length === 0) return meter.kind === "concurrent" ? 1 : 3600
  return Math.max(1, Math.ceil((bucket.start + bucket.length - now) / 1000))
}

const scopeKey = (meter: Pick<Meter, "scope" | "id">) => `${meter.scope}:${meter.id}`

/** What one request reserved: each meter, the amount, and the bucket it went into. */
export interface Reserved {
  readonly meter: Meter
  readonly amount: number
  readonly bucket: Bucket
}

/** The amounts a request reserves, by kind. */
export interface Amounts {
  readonly tokens: number
  readonly usd: number
}

const amountOf = (kind: LimitKind, amounts: Amounts) =>
  kind === "tpm" ? amounts.tokens : kind === "spend" ? amounts.usd : 1

/**
 * Add the request's amounts to each meter if all fit, atomically; the first that does not fit
 * fails with LimitExceeded (and nothing was added).
 */
export const reserve = (meters: ReadonlyArray<Meter>, amounts: Amounts, now: number) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const ordered = [...meters].sort((a, b) =>
      scopeKey(a) < scopeKey(b) ? -1 : scopeKey(a) > scopeKey(b) ? 1 : a.kind < b.kind ? -1 : a.kind > b.kind ? 1 : 0
    )
    const reserved: Array<Reserved> = []
    for (const meter of ordered) {
      const amount = amountOf(meter.kind, amounts)
      const b = bucketOf(meter, now)
      const previous = b.start - b.length
      // The meter's values rolled to this bucket: the current bucket's count and the previous one's.
      const current =
        sql`(CASE WHEN cortex_meters.window_start = ${b.start}::float8 THEN cortex_meters.used ELSE 0 END)`
      const prior = sql`(CASE WHEN cortex_meters.window_start = ${b.start}::float8 THEN cortex_meters.prev
        WHEN cortex_meters.window_start = ${previous}::float8 THEN cortex_meters.used ELSE 0 END)`
      const rows = yield* sql<{ used: number }>`
        INSERT INTO cortex_meters (scope, kind, window_start, used, prev)
        SELECT ${scopeKey(meter)}, ${meter.kind}, ${b.start}::float8, ${amount}::float8, 0
        WHERE ${amount}::float8 <= ${meter.cap}::float8
        ON CONFLICT (scope, kind) DO UPDATE SET
          prev = ${prior},
          used = ${current} + ${amount}::float8,
          window_start = ${b.start}::float8
        WHERE ${prior} * ${b.weight}::float8 + ${current} + ${amount}::float8 <= ${meter.cap}::float8
        RETURNING used`
      if (rows.length === 0) {
        return yield* new LimitExceeded({
          scope: meter.scope,
          name: meter.name,
          limit: meter.kind,
          cap: meter.cap,
          retry_after_secs: retryAfterSecs(meter, now)
        })
      }
      reserved.push({ meter, amount, bucket: b })
    }
    return reserved
  }).pipe((effect) => Effect.flatMap(SqlClient.SqlClient, (sql) => sql.withTransaction(effect)))

/**
 * Replace each reservation by the real amount (concurrency: give the seat back). One UPDATE per
 * meter, relative (used + delta), so settling never overwrites another replica's counts; a
 * bucket that has since rolled is settled in `prev`, one older than that is left alone.
 */
export const settle = (reserved: ReadonlyArray<Reserved>, actual: Amounts) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    for (const r of reserved) {
      const delta = r.meter.kind === "concurrent" ? -1 : amountOf(r.meter.kind, actual) - r.amount
      if (delta === 0) continue
      const start = r.bucket.start
      const next = start + r.bucket.length
      yield* sql`UPDATE cortex_meters SET
          used = CASE WHEN window_start = ${start}::float8 THEN GREATEST(0, used + ${delta}::float8) ELSE used END,
          prev = CASE WHEN window_start <> ${start}::float8 AND window_start = ${next}::float8
            THEN GREATEST(0, prev + ${delta}::float8) ELSE prev END
        WHERE scope = ${scopeKey(r.meter)} AND kind = ${r.meter.kind}`
    }
  })
