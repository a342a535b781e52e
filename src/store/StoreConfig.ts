/**
 * `[store]` in cortex.toml: where keys, the usage ledger and the limits' meters live. `url` is a
 * PostgreSQL server (several gateway replicas share it); `path` (default ./cortex-data, beside
 * cortex.toml) is the embedded store (PGlite), for one gateway. Without a `[store]` table the
 * gateway keeps no ledger and knows only the static `[auth]` keys.
 * Models' limits (`limits` in models.toml) are declared here too and wired into ModelProfile.
 */
import { Redacted, Schema } from "effect"
import * as path from "node:path"

const opt = <S extends Schema.Schema.Any>(s: S) => Schema.optionalWith(s, { exact: true })
const strict = { parseOptions: { onExcessProperty: "error" as const } }

export const StoreTable = Schema.Struct({
  url: opt(Schema.String.pipe(
    Schema.pattern(/^postgres(ql)?:\/\/\S+$/, { message: () => "expected a postgres:// URL" })
  )),
  path: opt(Schema.String.pipe(Schema.minLength(1))),
  /** How often each replica reloads the keys (revocations take effect within this). */
  refresh_secs: opt(Schema.Number.pipe(Schema.positive())),
  /** Usage rows held while the database is slow or down; beyond this they are dropped and counted. */
  ledger_buffer: opt(Schema.Int.pipe(Schema.positive())),
  /** How often buffered usage rows are written. */
  flush_ms: opt(Schema.Int.pipe(Schema.positive()))
}).annotations(strict)
export type StoreTable = typeof StoreTable.Type

/** Spend windows: rolling seconds (`rolling:3600`, or a duration `30d`, `12h`, `90m`), the calendar month (UTC), or a prepaid balance. */
export type BudgetWindow =
  | { readonly kind: "rolling"; readonly seconds: number }
  | { readonly kind: "month" }
  | { readonly kind: "balance" }

const UNIT_SECS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 }

/** A window as written in config, the CLI and the admin API; undefined when it is not one. */
export const parseWindow = (text: string): BudgetWindow | undefined => {
  if (text === "month") return { kind: "month" }
  if (text === "balance") return { kind: "balance" }
  const rolling = /^rolling:(\d+)$/.exec(text)
  if (rolling) return Number(rolling[1]) > 0 ? { kind: "rolling", seconds: Number(rolling[1]) } : undefined
  const duration = /^(\d+)([smhd])$/.exec(text)
  if (duration && Number(duration[1]) > 0) {
    return { kind: "rolling", seconds: Number(duration[1]) * UNIT_SECS[duration[2]!]! }
  }
  return undefined
}

export const WindowText = Schema.String.pipe(
  Schema.filter((s) => parseWindow(s) !== undefined, {
    message: (issue) =>
      `unknown budget window ${
        JSON.stringify(issue.actual)
      }: expected rolling:<seconds>, a duration such as 30d, month or balance`
  })
)

/** models.toml `limits = { rpm, tpm, concurrent, budget_usd, window }`: for the model, whoever asks. */
export const ModelLimitsTable = Schema.Struct({
  rpm: opt(Schema.Int.pipe(Schema.positive())),
  tpm: opt(Schema.Int.pipe(Schema.positive())),
  concurrent: opt(Schema.Int.pipe(Schema.positive())),
  budget_usd: opt(Schema.Number.pipe(Schema.positive())),
  window: opt(WindowText)
}).annotations(strict)
export type ModelLimitsTable = typeof ModelLimitsTable.Type

export interface StoreSettings {
  /** A PostgreSQL server, or undefined for the embedded store in `path`. */
  readonly url: Redacted.Redacted<string> | undefined
  readonly path: string
  readonly refreshSecs: number
  readonly ledgerBuffer: number
  readonly flushMs: number
}

/** `[store]` resolved: a relative path against cortex.toml's folder. CORTEX_STORE_URL overrides `url`. */
export const resolveStore = (
  table: StoreTable | undefined,
  base: string,
  env: Record<string, string | undefined>
): StoreSettings | undefined => {
  const envUrl = env.CORTEX_STORE_URL
  if (table === undefined && envUrl === undefined) return undefined
  const url = envUrl ?? table?.url
  return {
    url: url !== undefined ? Redacted.make(url) : undefined,
    path: path.resolve(base, table?.path ?? "./cortex-data"),
    refreshSecs: table?.refresh_secs ?? 2,
    ledgerBuffer: table?.ledger_buffer ?? 10_000,
    flushMs: table?.flush_ms ?? 500
  }
}
