/**
 * The store: one `@effect/sql` SqlClient, PostgreSQL (`[store] url`, @effect/sql-pg) or the
 * embedded PGlite (`[store] path`), with the same schema and the same queries on both. The
 * schema's migrations run at start (versioned by the Migrator's table; each runs once, in order,
 * and only adds), under the Migrator's table lock, so replicas starting together migrate once.
 */
import { PgClient } from "@effect/sql-pg"
import * as Migrator from "@effect/sql/Migrator"
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import { Effect, Layer } from "effect"
import { mkdirSync } from "node:fs"
import { layerPglite } from "./Pglite.js"
import type { StoreSettings } from "./StoreConfig.js"

/** Version 1: keys, the usage ledger, the limits' meters. */
const initial = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`CREATE TABLE cortex_keys (
    id text PRIMARY KEY,
    name text NOT NULL,
    salt text NOT NULL,
    hash text NOT NULL,
    models text,
    rpm integer,
    tpm integer,
    concurrent integer,
    budget_usd double precision,
    budget_window text,
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
  )`
  yield* sql`CREATE TABLE cortex_usage (
    request_id text PRIMARY KEY,
    key_id text,
    principal text NOT NULL,
    model text NOT NULL,
    node text NOT NULL,
    route text NOT NULL,
    prompt_tokens integer,
    cached_tokens integer,
    completion_tokens integer,
    cost_usd double precision NOT NULL,
    status integer NOT NULL,
    error text,
    ttft_ms double precision,
    duration_ms double precision NOT NULL,
    started_at timestamptz NOT NULL
  )`
  yield* sql`CREATE INDEX cortex_usage_started ON cortex_usage (started_at)`
  yield* sql`CREATE INDEX cortex_usage_key ON cortex_usage (key_id, started_at)`
  // One row per limited (scope, limit): a sliding window of two buckets (the current and the
  // previous), a calendar month, a balance or a concurrency count, updated by one statement each.
  yield* sql`CREATE TABLE cortex_meters (
    scope text NOT NULL,
    kind text NOT NULL,
    window_start double precision NOT NULL,
    used double precision NOT NULL,
    prev double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, kind)
  )`
})

export const migrations = Migrator.fromRecord({ "0001_initial": initial })

export const migrate = Migrator.make({})({ loader: migrations, table: "cortex_migrations" })

/** The SqlClient for `settings`, migrated. */
export const StoreLive = (
  settings: StoreSettings
): Layer.Layer<SqlClient.SqlClient, SqlError | Migrator.MigrationError> => {
  const client = settings.url !== undefined
    ? PgClient.layer({ url: settings.url, maxConnections: 8, connectTimeout: "5 seconds" })
    : Layer.unwrapEffect(Effect.sync(() => {
      mkdirSync(settings.path, { recursive: true })
      return layerPglite(settings.path)
    }))
  const migrated = Layer.effectDiscard(Effect.gen(function*() {
    const ran = yield* migrate
    const where = settings.url !== undefined ? "PostgreSQL" : `embedded store ${settings.path}`
    yield* Effect.logInfo(
      ran.length > 0
        ? `store: ${where}, migrated to ${ran.map(([id, name]) => `${id}_${name}`).join(", ")}`
        : `store: ${where}, schema up to date`
    )
  }))
  return Layer.provideMerge(migrated, client)
}
