/**
 * The usage ledger: one row per request, written off the request path. The request only pushes
 * its row into a bounded buffer; a fiber writes the buffer in batches every `flush_ms`. A slow or
 * down database never blocks or fails a request: rows wait in the buffer (a batch that failed is
 * tried again; rows are keyed by request id, so a retried batch never counts twice), and when
 * the buffer is full, new rows are dropped, counted (cortex_ledger_dropped_total) and logged.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Effect, Metric } from "effect"

export type UsageRow = {
  readonly request_id: string
  readonly key_id: string | null
  readonly principal: string
  readonly model: string
  readonly node: string
  readonly route: string
  readonly prompt_tokens: number | null
  readonly cached_tokens: number | null
  readonly completion_tokens: number | null
  readonly cost_usd: number
  readonly status: number
  readonly error: string | null
  readonly ttft_ms: number | null
  readonly duration_ms: number
  readonly started_at: Date
}

export const ledgerDropped = Metric.counter("cortex_ledger_dropped_total", {
  description: "Usage rows dropped because the ledger's buffer was full (the store was slow or down)",
  incremental: true
})
export const ledgerBuffered = Metric.gauge("cortex_ledger_buffered", {
  description: "Usage rows waiting to be written to the store"
})
export const ledgerWritten = Metric.counter("cortex_ledger_written_total", {
  description: "Usage rows written to the store",
  incremental: true
})

/** Rows per INSERT. */
const BATCH = 500

export class Ledger {
  private rows: Array<UsageRow> = []
  /** Dropped since the last log line about it. */
  private droppedUnlogged = 0
  dropped = 0
  written = 0
  /** When writes started failing; undefined while they succeed. */
  private failingSince: number | undefined = undefined

  constructor(readonly bound: number) {}

  get buffered() {
    return this.rows.length
  }

  /** Hot path: O(1), never waits. */
  push(row: UsageRow) {
    if (this.rows.length >= this.bound) {
      this.dropped++
      this.droppedUnlogged++
      ledgerDropped.unsafeUpdate(1, [])
      return
    }
    this.rows.push(row)
  }

  /** Write what is buffered, in batches; stops at the first failure (the rows stay). */
  readonly flush: Effect.Effect<void, never, SqlClient.SqlClient> = Effect.gen(this, function*() {
    const sql = yield* SqlClient.SqlClient
    if (this.droppedUnlogged > 0) {
      yield* Effect.logWarning(
        `ledger: buffer full (${this.bound} rows): dropped ${this.droppedUnlogged} usage row(s), ${this.dropped} in all`
      )
      this.droppedUnlogged = 0
    }
    while (this.rows.length > 0) {
      const batch = this.rows.slice(0, BATCH)
      // One JSON parameter per batch, unpacked by the database: a fraction of the CPU of one
      // placeholder per column and row (this runs in the gateway's process with PGlite).
      const ok = yield* sql`INSERT INTO cortex_usage
        SELECT * FROM json_populate_recordset(NULL::cortex_usage, ${JSON.stringify(batch)}::json)
        ON CONFLICT (request_id) DO NOTHING`.pipe(
        Effect.timeout("10 seconds"),
        Effect.as(true),
        Effect.catchAllCause((cause) =>
          Effect.gen(this, function*() {
            if (this.failingSince === undefined) {
              this.failingSince = Date.now()
              yield* Effect.logWarning(
                `ledger: the store is not taking usage rows (${this.rows.length} buffered, bound ${this.bound}); ` +
                  `retrying: ${cause.toString().split("\n")[0]}`
              )
            }
            return false
          })
        )
      )
      if (!ok) break
      this.rows.splice(0, batch.length)
      this.written += batch.length
      ledgerWritten.unsafeUpdate(batch.length, [])
      if (this.failingSince !== undefined) {
        yield* Effect.logInfo(
          `ledger: the store is back after ${
            Math.round((Date.now() - this.failingSince) / 1000)
          } s; writing the buffered rows`
        )
        this.failingSince = undefined
      }
    }
    ledgerBuffered.unsafeUpdate(this.rows.length, [])
  })
}
