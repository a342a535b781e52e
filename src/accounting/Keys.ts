/**
 * Issued API keys: `ck-<id>-<secret>`. Only a keyed hash is stored (HMAC-SHA256 under a random
 * per-key salt); the id in the key finds its row, and the hashes are compared in constant time.
 * The secret is shown once, when it is created or rotated.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Effect } from "effect"
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto"
import { type BudgetWindow, parseWindow } from "../store/StoreConfig.js"

export const KEY_PREFIX = "ck-"
const KEY_SHAPE = /^ck-([0-9a-f]{16})-[A-Za-z0-9_-]{20,}$/

export interface KeyRecord {
  readonly id: string
  readonly name: string
  readonly salt: string
  readonly hash: string
  /** Catalogue ids (or aliases) this key may use; undefined: any. */
  readonly models: ReadonlyArray<string> | undefined
  readonly rpm: number | undefined
  readonly tpm: number | undefined
  readonly concurrent: number | undefined
  readonly budgetUsd: number | undefined
  readonly window: string | undefined
  readonly expiresAt: Date | undefined
  readonly createdAt: Date
  readonly revokedAt: Date | undefined
}

/** What a key may do, as the admin API and the CLI set it. */
export interface KeyLimits {
  readonly models?: ReadonlyArray<string> | undefined
  readonly rpm?: number | undefined
  readonly tpm?: number | undefined
  readonly concurrent?: number | undefined
  readonly budgetUsd?: number | undefined
  readonly window?: string | undefined
  readonly expiresAt?: Date | undefined
}

export const hashSecret = (salt: string, secret: string) => createHmac("sha256", salt).update(secret).digest("hex")

/** The id a key names, when it has the shape of an issued key. */
export const idOf = (secret: string): string | undefined => KEY_SHAPE.exec(secret)?.[1]

export const isIssuedKey = (secret: string) => secret.startsWith(KEY_PREFIX)

/** `secret` is this key's (constant time in the secret's content). */
export const verify = (record: KeyRecord, secret: string) =>
  timingSafeEqual(Buffer.from(hashSecret(record.salt, secret), "hex"), Buffer.from(record.hash, "hex"))

const newSecret = (id: string) => `${KEY_PREFIX}${id}-${randomBytes(24).toString("base64url")}`

export const budgetWindow = (record: Pick<KeyRecord, "window">): BudgetWindow =>
  (record.window !== undefined ? parseWindow(record.window) : undefined) ?? { kind: "balance" }

interface KeyRow {
  readonly id: string
  readonly name: string
  readonly salt: string
  readonly hash: string
  readonly models: string | null
  readonly rpm: number | null
  readonly tpm: number | null
  readonly concurrent: number | null
  readonly budget_usd: number | null
  readonly budget_window: string | null
  readonly expires_at: Date | string | null
  readonly created_at: Date | string
  readonly revoked_at: Date | string | null
}

const date = (value: Date | string | null) => value === null ? undefined : new Date(value)

const fromRow = (row: KeyRow): KeyRecord => ({
  id: row.id,
  name: row.name,
  salt: row.salt,
  hash: row.hash,
  models: row.models ? row.models.split(",") : undefined,
  rpm: row.rpm ?? undefined,
  tpm: row.tpm ?? undefined,
  concurrent: row.concurrent ?? undefined,
  budgetUsd: row.budget_usd ?? undefined,
  window: row.budget_window ?? undefined,
  expiresAt: date(row.expires_at),
  createdAt: new Date(row.created_at),
  revokedAt: date(row.revoked_at)
})

export const loadKeys = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const rows = yield* sql<KeyRow>`SELECT * FROM cortex_keys ORDER BY created_at`
  return rows.map(fromRow)
})

/** Issue a key; its secret is in the answer and nowhere else. */
export const createKey = (name: string, limits: KeyLimits) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const id = randomBytes(8).toString("hex")
    const secret = newSecret(id)
    const salt = randomBytes(16).toString("hex")
    const rows = yield* sql<KeyRow>`INSERT INTO cortex_keys ${
      sql.insert({
        id,
        name,
        salt,
        hash: hashSecret(salt, secret),
        models: limits.models && limits.models.length > 0 ? limits.models.join(",") : null,
        rpm: limits.rpm ?? null,
        tpm: limits.tpm ?? null,
        concurrent: limits.concurrent ?? null,
        budget_usd: limits.budgetUsd ?? null,
        budget_window: limits.budgetUsd !== undefined ? limits.window ?? "balance" : null,
        expires_at: limits.expiresAt ?? null
      })
    } RETURNING *`
    return { record: fromRow(rows[0]!), secret }
  })

/** The live key with this id or name (a name must be unique among live keys). */
const findLive = (idOrName: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const rows = yield* sql<KeyRow>`SELECT * FROM cortex_keys
      WHERE (id = ${idOrName} OR name = ${idOrName}) AND revoked_at IS NULL`
    return rows.map(fromRow)
  })

export class KeyNotFound {
  readonly _tag = "KeyNotFound"
  constructor(readonly message: string) {}
}

const one = (idOrName: string) =>
  Effect.flatMap(findLive(idOrName), (found) =>
    found.length === 1
      ? Effect.succeed(found[0]!)
      : Effect.fail(
        new KeyNotFound(
          found.length === 0
            ? `no live key with id or name '${idOrName}'`
            : `${found.length} live keys are named '${idOrName}': give the id (${found.map((k) => k.id).join(", ")})`
        )
      ))

export const revokeKey = (idOrName: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const key = yield* one(idOrName)
    const rows = yield* sql<KeyRow>`UPDATE cortex_keys SET revoked_at = now() WHERE id = ${key.id} RETURNING *`
    return fromRow(rows[0]!)
  })

/** A new secret for the same key (its limits, budget and usage carry on); the old secret stops working. */
export const rotateKey = (idOrName: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const key = yield* one(idOrName)
    const secret = newSecret(key.id)
    const salt = randomBytes(16).toString("hex")
    const rows = yield* sql<KeyRow>`UPDATE cortex_keys SET salt = ${salt}, hash = ${hashSecret(salt, secret)}
      WHERE id = ${key.id} RETURNING *`
    return { record: fromRow(rows[0]!), secret }
  })
