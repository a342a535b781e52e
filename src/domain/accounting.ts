/**
 * The keys and usage admin API (`/admin/keys`, `/admin/usage`), declared once: the gateway
 * answers with these types and `cortex keys` / `cortex usage` decode them.
 */
import { Schema } from "effect"

const opt = <S extends Schema.Schema.Any>(s: S) => Schema.optionalWith(s, { exact: true })

export const KeyView = Schema.Struct({
  id: Schema.String,
  name: Schema.String,
  models: Schema.NullOr(Schema.Array(Schema.String)),
  rpm: Schema.NullOr(Schema.Number),
  tpm: Schema.NullOr(Schema.Number),
  concurrent: Schema.NullOr(Schema.Number),
  budget_usd: Schema.NullOr(Schema.Number),
  window: Schema.NullOr(Schema.String),
  expires_at: Schema.NullOr(Schema.String),
  created_at: Schema.String,
  revoked_at: Schema.NullOr(Schema.String)
})
export type KeyView = typeof KeyView.Type

export const KeyList = Schema.Struct({ data: Schema.Array(KeyView) })

/** A new or rotated key: the secret appears here once and is stored nowhere. */
export const IssuedKey = Schema.Struct({ key: KeyView, secret: Schema.String })
export type IssuedKey = typeof IssuedKey.Type

export const CreateKeyRequest = Schema.Struct({
  name: Schema.String.pipe(Schema.minLength(1), Schema.maxLength(128)),
  models: opt(Schema.Array(Schema.String.pipe(Schema.minLength(1)))),
  rpm: opt(Schema.Int.pipe(Schema.positive())),
  tpm: opt(Schema.Int.pipe(Schema.positive())),
  concurrent: opt(Schema.Int.pipe(Schema.positive())),
  budget_usd: opt(Schema.Number.pipe(Schema.positive())),
  window: opt(Schema.String),
  expires_at: opt(Schema.String)
})
export type CreateKeyRequest = typeof CreateKeyRequest.Type

export const UsageTotalView = Schema.Struct({
  group: Schema.String,
  requests: Schema.Number,
  errors: Schema.Number,
  prompt_tokens: Schema.Number,
  cached_tokens: Schema.Number,
  completion_tokens: Schema.Number,
  cost_usd: Schema.Number
})

export const UsageAnswer = Schema.Struct({
  since: Schema.String,
  by: Schema.NullOr(Schema.Literal("day", "model", "key")),
  data: Schema.Array(UsageTotalView)
})
export type UsageAnswer = typeof UsageAnswer.Type
