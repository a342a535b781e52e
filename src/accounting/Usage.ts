/** Reading the ledger: totals by day, model or key, for /admin/usage and `cortex usage`. */
import * as SqlClient from "@effect/sql/SqlClient"
import { Effect } from "effect"

export type UsageGroup = "day" | "model" | "key"

export interface UsageQuery {
  /** A key's id or name (or a static key's principal). */
  readonly key?: string | undefined
  readonly model?: string | undefined
  readonly since: Date
  readonly by?: UsageGroup | undefined
}

export interface UsageTotal {
  readonly group: string
  readonly requests: number
  readonly errors: number
  readonly prompt_tokens: number
  readonly cached_tokens: number
  readonly completion_tokens: number
  readonly cost_usd: number
}

/** `7d`, `12h`, `30m`, `90s` before now. */
export const parseSince = (text: string, now = Date.now()): Date | undefined => {
  const m = /^(\d+)([smhd])$/.exec(text)
  if (!m) return undefined
  const unit = { s: 1, m: 60, h: 3600, d: 86400 }[m[2] as "s" | "m" | "h" | "d"]
  return new Date(now - Number(m[1]) * unit * 1000)
}

export const queryUsage = (q: UsageQuery) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const group = q.by === "day"
      ? sql`to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')`
      : q.by === "model"
      ? sql`model`
      : q.by === "key"
      ? sql`COALESCE(key_id || ' ' || principal, principal)`
      : sql`'all'`
    const conditions = [
      sql`started_at >= ${q.since}`,
      ...(q.key !== undefined ? [sql`(key_id = ${q.key} OR principal = ${q.key})`] : []),
      ...(q.model !== undefined ? [sql`model = ${q.model}`] : [])
    ]
    return yield* sql<UsageTotal>`SELECT ${group} AS "group",
        count(*)::int AS requests,
        (count(*) FILTER (WHERE status <> 200 OR error IS NOT NULL))::int AS errors,
        COALESCE(sum(prompt_tokens), 0)::float8 AS prompt_tokens,
        COALESCE(sum(cached_tokens), 0)::float8 AS cached_tokens,
        COALESCE(sum(completion_tokens), 0)::float8 AS completion_tokens,
        COALESCE(sum(cost_usd), 0)::float8 AS cost_usd
      FROM cortex_usage WHERE ${sql.and(conditions)}
      GROUP BY 1 ORDER BY 1`
  })
