/** Operator commands that talk to a running gateway: status, models, load, unload (pull and rm: pull.ts). */
import { Args, Command, Options } from "@effect/cli"
import { Console, Effect, Either, Option, ParseResult, Schema } from "effect"
import { AdminLifecycleAnswer, AdminStatus, CatalogueList } from "../domain/admin.js"
import { deviceCell } from "./devices.js"

export const endpointOption = Options.text("endpoint").pipe(
  Options.withDescription("The gateway's URL (default $CORTEX_ENDPOINT or http://127.0.0.1:31313)"),
  Options.optional
)
const jsonOption = Options.boolean("json").pipe(Options.withDescription("Print JSON for scripts"))
export const nodeOption = Options.text("node").pipe(Options.withDescription("The neuron to act on"), Options.optional)

const base = (endpoint: Option.Option<string>) =>
  Option.getOrElse(endpoint, () => process.env.CORTEX_ENDPOINT ?? "http://127.0.0.1:31313").replace(/\/+$/, "")

/**
 * Call the gateway and decode its answer: another version's answer names the field it lacks. The
 * bearer is $CORTEX_API_KEY (the admin key for /admin/keys and /admin/usage: keys.ts passes it).
 */
export const request = <A, I>(
  endpoint: Option.Option<string>,
  path: string,
  schema: Schema.Schema<A, I>,
  options: { readonly method?: "GET" | "POST"; readonly body?: unknown; readonly key?: string | undefined } = {}
) =>
  Effect.tryPromise({
    try: async () => {
      const { body } = options
      const key = "key" in options ? options.key : process.env.CORTEX_API_KEY
      const res = await fetch(`${base(endpoint)}${path}`, {
        method: options.method ?? (body === undefined ? "GET" : "POST"),
        headers: {
          ...(body === undefined ? {} : { "content-type": "application/json" }),
          ...(key ? { authorization: `Bearer ${key}` } : {})
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) })
      })
      const json: unknown = await res.json()
      if (!res.ok) {
        const message = (json as { error?: { message?: unknown } } | null)?.error?.message
        throw new Error(typeof message === "string" ? message : `HTTP ${res.status}`)
      }
      const decoded = Schema.decodeUnknownEither(schema, { errors: "first" })(json)
      if (Either.isRight(decoded)) return decoded.right
      const issue = ParseResult.ArrayFormatter.formatErrorSync(decoded.left)[0]
      throw new Error(`unexpected answer (another cortex version?): ${issue?.path.join(".")}: ${issue?.message}`)
    },
    catch: (e) => new Error(`${base(endpoint)}${path}: ${(e as Error).message}`)
  })

export const call = <A, I>(
  endpoint: Option.Option<string>,
  path: string,
  schema: Schema.Schema<A, I>,
  body?: unknown
) => request(endpoint, path, schema, { body })

/** Left-aligned columns, widths from the content. */
export const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>) => {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)))
  const line = (cells: ReadonlyArray<string>) => cells.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()
  return [line(header), ...rows.map(line)].join("\n")
}

export const fail = (error: Error) =>
  Console.error(`cortex: ${error.message}`).pipe(Effect.zipRight(Effect.sync(() => process.exit(1))))

const status = Command.make(
  "status",
  { endpoint: endpointOption, json: jsonOption },
  ({ endpoint, json }) =>
    Effect.gen(function*() {
      const s = yield* call(endpoint, "/admin/status", AdminStatus)
      if (json) return yield* Console.log(JSON.stringify(s, null, 2))
      const nodes = table(
        ["NODE", "HEALTH", "ENDPOINT", "DEVICES (free/total MB [group] (util temp power))", "MODELS"],
        s.nodes.map((n) => [
          n.name,
          n.healthy ? n.status : `down (${n.error ?? "?"})`,
          n.endpoint,
          n.devices.map(deviceCell).join(", ") || "-",
          n.models.map((m) => `${m.id}:${m.status}`).join(", ") || "-"
        ])
      )
      const models = table(
        ["MODEL", "LOADED", "LOCATIONS"],
        s.models.map((m) => [
          m.alias_of ? `${m.id} -> ${m.alias_of}` : m.id,
          m.loaded ? "yes" : "no",
          m.locations.map((l) => `${l.node}:${l.status}${l.healthy ? "" : "(down)"}`).join(", ") || "-"
        ])
      )
      const loads = s.loads_in_progress.length > 0
        ? `\n\nloading: ${
          s.loads_in_progress.map((l) => `${l.model} on ${l.node ?? "?"} (${l.waiters} waiting)`).join(", ")
        }`
        : ""
      const pulling = (s.downloads ?? []).filter((d) => d.status === "downloading")
      const downloads = pulling.length > 0
        ? `\n\ndownloading: ${
          pulling.map((d) =>
            `${d.model} on ${d.node} ${(d.bytes_done / 2 ** 20).toFixed(1)}/${(d.bytes_total / 2 ** 20).toFixed(1)} MB`
          ).join(", ")
        }`
        : ""
      yield* Console.log(`cortex ${s.version}\n\n${nodes}\n\n${models}${loads}${downloads}`)
    }).pipe(Effect.catchAll(fail))
).pipe(Command.withDescription("Fleet health and models"))

const models = Command.make(
  "models",
  { endpoint: endpointOption, json: jsonOption },
  ({ endpoint, json }) =>
    Effect.gen(function*() {
      const list = yield* call(endpoint, "/v1/models", CatalogueList)
      if (json) return yield* Console.log(JSON.stringify(list, null, 2))
      yield* Console.log(table(
        ["MODEL", "LOADED", "CONTEXT", "CAPABILITIES", "FEASIBLE ON"],
        list.data.map((m) => [
          m.alias_of ? `${m.id} -> ${m.alias_of}` : m.id,
          m.loaded ? "yes" : "no",
          String(m.limit.context ?? "-"),
          m.capabilities.join(","),
          m.feasible_on.join(",") || "-"
        ])
      ))
    }).pipe(Effect.catchAll(fail))
).pipe(Command.withDescription("The catalogue: every model the fleet can serve"))

const lifecycle = (action: "load" | "unload") =>
  Command.make(action, {
    endpoint: endpointOption,
    node: nodeOption,
    model: Args.text({ name: "model" }).pipe(Args.withDescription("The model (catalogue id or alias)"))
  }, ({ endpoint, model, node }) =>
    Effect.gen(function*() {
      const started = Date.now()
      yield* Console.log(
        `${action === "load" ? "loading" : "unloading"} ${model}${Option.isSome(node) ? ` on ${node.value}` : ""}…`
      )
      const res = yield* call(endpoint, `/admin/${action}`, AdminLifecycleAnswer, {
        model,
        ...(Option.isSome(node) ? { node: node.value } : {})
      })
      const where = "node" in res ? [`${res.node}: ${res.status}`] : res.results.map((r) => `${r.node}: ${r.status}`)
      yield* Console.log(`${model}: ${where.join(", ") || "nothing to do"} (${Date.now() - started} ms)`)
    }).pipe(Effect.catchAll(fail))).pipe(
      Command.withDescription(
        action === "load" ? "Load a model (on the best node, or --node)" : "Unload a model (everywhere, or --node)"
      )
    )

export const adminCommands = { status, models, load: lifecycle("load"), unload: lifecycle("unload") }
