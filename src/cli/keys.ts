/**
 * `cortex keys create|list|revoke|rotate` and `cortex usage`: the gateway's /admin/keys and
 * /admin/usage, with the admin key from $CORTEX_ADMIN_KEY. A key's secret is printed once, when
 * it is created or rotated; the gateway stores only its hash.
 */
import { Args, Command, Options } from "@effect/cli"
import { Console, Effect, Option, Schema } from "effect"
import { IssuedKey, KeyList, KeyView, UsageAnswer } from "../domain/accounting.js"
import { parseWindow } from "../store/StoreConfig.js"
import { request, table } from "./admin.js"

const endpointOption = Options.text("endpoint").pipe(
  Options.withDescription("The gateway's URL (default $CORTEX_ENDPOINT or http://127.0.0.1:31313)"),
  Options.optional
)
const jsonOption = Options.boolean("json").pipe(Options.withDescription("Print JSON for scripts"))

/** The admin API with $CORTEX_ADMIN_KEY (refused here, before any request, when it is not set). */
const call = <A, I>(
  endpoint: Option.Option<string>,
  method: "GET" | "POST",
  route: string,
  schema: Schema.Schema<A, I>,
  body?: unknown
) =>
  Effect.suspend(() => {
    const key = process.env.CORTEX_ADMIN_KEY
    return key
      ? request(endpoint, route, schema, { method, body, key })
      : Effect.fail(new Error("set CORTEX_ADMIN_KEY to the gateway's admin key ([auth] admin_key_env)"))
  })

const fail = (error: Error) =>
  Console.error(`cortex: ${error.message}`).pipe(Effect.zipRight(Effect.sync(() => process.exit(1))))

const limitsOf = (k: KeyView) =>
  [
    k.rpm !== null ? `${k.rpm} rpm` : "",
    k.tpm !== null ? `${k.tpm} tpm` : "",
    k.concurrent !== null ? `${k.concurrent} concurrent` : "",
    k.budget_usd !== null ? `${k.budget_usd} USD/${k.window}` : ""
  ].filter((s) => s !== "").join(", ") || "-"

const printIssued = (issued: IssuedKey, verb: string) =>
  Console.log(
    `${verb} key ${issued.key.id} (${issued.key.name}); its secret, shown this once:\n\n  ${issued.secret}\n`
  )

const create = Command.make("create", {
  endpoint: endpointOption,
  name: Options.text("name").pipe(Options.withDescription("Who the key is for (its principal)")),
  models: Options.text("models").pipe(Options.withDescription("Models it may use, comma-separated"), Options.optional),
  rpm: Options.integer("rpm").pipe(Options.withDescription("Requests per minute"), Options.optional),
  tpm: Options.integer("tpm").pipe(Options.withDescription("Tokens per minute"), Options.optional),
  concurrent: Options.integer("concurrent").pipe(Options.withDescription("Concurrent requests"), Options.optional),
  budget: Options.float("budget-usd").pipe(Options.withDescription("Spend allowed per window, USD"), Options.optional),
  window: Options.text("window").pipe(
    Options.withDescription("The budget's window: rolling:<seconds>, a duration (30d), month, or balance (default)"),
    Options.optional
  ),
  expires: Options.text("expires").pipe(
    Options.withDescription("When it stops working, e.g. 2027-01-01"),
    Options.optional
  ),
  json: jsonOption
}, (o) =>
  Effect.gen(function*() {
    const window = Option.getOrUndefined(o.window)
    if (window !== undefined && parseWindow(window) === undefined) {
      return yield* Effect.fail(
        new Error(`--window ${window}: expected rolling:<seconds>, a duration such as 30d, month or balance`)
      )
    }
    if (window !== undefined && Option.isNone(o.budget)) {
      return yield* Effect.fail(new Error("--window needs --budget-usd"))
    }
    const issued = yield* call(o.endpoint, "POST", "/admin/keys", IssuedKey, {
      name: o.name,
      ...(Option.isSome(o.models) ? { models: o.models.value.split(",").map((m) => m.trim()).filter((m) => m) } : {}),
      ...(Option.isSome(o.rpm) ? { rpm: o.rpm.value } : {}),
      ...(Option.isSome(o.tpm) ? { tpm: o.tpm.value } : {}),
      ...(Option.isSome(o.concurrent) ? { concurrent: o.concurrent.value } : {}),
      ...(Option.isSome(o.budget) ? { budget_usd: o.budget.value } : {}),
      ...(window !== undefined ? { window } : {}),
      ...(Option.isSome(o.expires) ? { expires_at: o.expires.value } : {})
    })
    if (o.json) return yield* Console.log(JSON.stringify(issued, null, 2))
    yield* printIssued(issued, "created")
  }).pipe(Effect.catchAll(fail))).pipe(Command.withDescription("Issue a key (its secret is printed once)"))

const list = Command.make(
  "list",
  { endpoint: endpointOption, json: jsonOption },
  ({ endpoint, json }) =>
    Effect.gen(function*() {
      const keys = yield* call(endpoint, "GET", "/admin/keys", KeyList)
      if (json) return yield* Console.log(JSON.stringify(keys, null, 2))
      yield* Console.log(table(
        ["ID", "NAME", "STATUS", "MODELS", "LIMITS", "EXPIRES", "CREATED"],
        keys.data.map((k) => [
          k.id,
          k.name,
          k.revoked_at !== null
            ? "revoked"
            : k.expires_at !== null && Date.parse(k.expires_at) <= Date.now()
            ? "expired"
            : "live",
          k.models?.join(",") ?? "any",
          limitsOf(k),
          k.expires_at?.slice(0, 10) ?? "-",
          k.created_at.slice(0, 10)
        ])
      ))
    }).pipe(Effect.catchAll(fail))
).pipe(Command.withDescription("The issued keys (never their secrets)"))

const keyArg = Args.text({ name: "key" }).pipe(Args.withDescription("The key's id or name"))

const revoke = Command.make(
  "revoke",
  { endpoint: endpointOption, key: keyArg },
  ({ endpoint, key }) =>
    Effect.gen(function*() {
      const k = yield* call(endpoint, "POST", `/admin/keys/${encodeURIComponent(key)}/revoke`, KeyView)
      yield* Console.log(`revoked key ${k.id} (${k.name}); every gateway refuses it within its refresh_secs`)
    }).pipe(Effect.catchAll(fail))
).pipe(Command.withDescription("Revoke a key"))

const rotate = Command.make(
  "rotate",
  { endpoint: endpointOption, key: keyArg },
  ({ endpoint, key }) =>
    Effect.gen(function*() {
      const issued = yield* call(endpoint, "POST", `/admin/keys/${encodeURIComponent(key)}/rotate`, IssuedKey)
      yield* printIssued(issued, "rotated")
      yield* Console.log("the old secret no longer works; limits, budget and usage carry on")
    }).pipe(Effect.catchAll(fail))
).pipe(Command.withDescription("Give a key a new secret (the old one stops working)"))

const keys = Command.make("keys").pipe(
  Command.withDescription("Issue, list, revoke and rotate API keys (admin key in $CORTEX_ADMIN_KEY)"),
  Command.withSubcommands([create, list, revoke, rotate])
)

const usage = Command.make("usage", {
  endpoint: endpointOption,
  key: Options.text("key").pipe(Options.withDescription("A key's id or name"), Options.optional),
  model: Options.text("model").pipe(Options.withDescription("A model id"), Options.optional),
  since: Options.text("since").pipe(Options.withDescription("How far back, e.g. 7d, 12h"), Options.withDefault("30d")),
  by: Options.choice("by", ["day", "model", "key"]).pipe(Options.optional),
  json: jsonOption
}, (o) =>
  Effect.gen(function*() {
    const query = new URLSearchParams({ since: o.since })
    if (Option.isSome(o.key)) query.set("key", o.key.value)
    if (Option.isSome(o.model)) query.set("model", o.model.value)
    if (Option.isSome(o.by)) query.set("by", o.by.value)
    const answer = yield* call(o.endpoint, "GET", `/admin/usage?${query}`, UsageAnswer)
    if (o.json) return yield* Console.log(JSON.stringify(answer, null, 2))
    yield* Console.log(`usage since ${answer.since}\n`)
    yield* Console.log(table(
      [answer.by?.toUpperCase() ?? "ALL", "REQUESTS", "ERRORS", "PROMPT", "CACHED", "COMPLETION", "COST USD"],
      answer.data.map((r) => [
        r.group,
        String(r.requests),
        String(r.errors),
        String(r.prompt_tokens),
        String(r.cached_tokens),
        String(r.completion_tokens),
        r.cost_usd.toFixed(4)
      ])
    ))
  }).pipe(Effect.catchAll(fail))).pipe(Command.withDescription("Usage from the ledger, by day, model or key"))

export const accountingCommands = { keys, usage }
