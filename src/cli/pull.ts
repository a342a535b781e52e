/** `cortex pull MODEL [--node N]` (with a progress bar) and `cortex rm MODEL [--node N]`. */
import { Args, Command } from "@effect/cli"
import { Console, Effect, Option } from "effect"
import { AdminDownload, AdminRemoveAnswer, AdminStatus } from "../domain/admin.js"
import { call, endpointOption, fail, nodeOption } from "./admin.js"

const MB = 1024 * 1024
const mb = (bytes: number) => (bytes / MB).toFixed(1)

/** `[#########-----------]  45%  12.3/27.0 MB  4.5 MB/s` */
export const progressBar = (done: number, total: number, rateBps: number, width = 30) => {
  const ratio = total > 0 ? Math.min(1, done / total) : 0
  const filled = Math.round(ratio * width)
  return `[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${String(Math.floor(ratio * 100)).padStart(3)}%  ${
    mb(done)
  }/${mb(total)} MB${rateBps > 0 ? `  ${mb(rateBps)} MB/s` : ""}`
}

const modelArg = Args.text({ name: "model" }).pipe(
  Args.withDescription("A catalogue id with a source in models.toml, or an hf: reference (hf:Org/Repo:Q4_K_M)")
)

const pull = Command.make(
  "pull",
  { endpoint: endpointOption, node: nodeOption, model: modelArg },
  ({ endpoint, model, node }) =>
    Effect.gen(function*() {
      const started = Date.now()
      const answer = yield* call(endpoint, "/admin/pull", AdminDownload, {
        model,
        ...(Option.isSome(node) ? { node: node.value } : {})
      })
      if (answer.status === "done") {
        return yield* Console.log(`${answer.model} is already on ${answer.node}`)
      }
      yield* Console.log(`pulling ${answer.model} on ${answer.node} (${mb(answer.bytes_total)} MB)`)
      const tty = process.stdout.isTTY === true
      let shown = -1
      for (;;) {
        const status = yield* call(endpoint, "/admin/status", AdminStatus)
        const mine = (status.downloads ?? []).find((d) =>
          d.node === answer.node && d.model === answer.model && d.started_at === answer.started_at
        )
        const record = mine ?? { ...answer, status: "downloading" as const }
        const line = progressBar(record.bytes_done, record.bytes_total || answer.bytes_total, record.rate_bps)
        if (tty) process.stdout.write(`\r${line}`)
        else if (Math.floor(record.bytes_done / Math.max(1, record.bytes_total) * 10) !== shown) {
          shown = Math.floor(record.bytes_done / Math.max(1, record.bytes_total) * 10)
          yield* Console.log(line)
        }
        if (record.status === "failed") {
          if (tty) process.stdout.write("\n")
          return yield* Effect.fail(
            new Error(`pull of ${answer.model} failed: ${record.error?.message ?? "unknown error"}`)
          )
        }
        if (record.status === "done") {
          if (tty) process.stdout.write("\n")
          return yield* Console.log(
            `pulled ${answer.model} on ${answer.node}: ${mb(record.bytes_total)} MB in ${
              ((Date.now() - started) / 1000).toFixed(1)
            } s, verified`
          )
        }
        yield* Effect.sleep("500 millis")
      }
    }).pipe(Effect.catchAll(fail))
).pipe(
  Command.withDescription("Download a model from its source onto a node (the best one, or --node), with progress")
)

const rm = Command.make(
  "rm",
  { endpoint: endpointOption, node: nodeOption, model: modelArg },
  ({ endpoint, model, node }) =>
    Effect.gen(function*() {
      const answer = yield* call(endpoint, "/admin/rm", AdminRemoveAnswer, {
        model,
        ...(Option.isSome(node) ? { node: node.value } : {})
      })
      if (answer.results.length === 0) return yield* Console.log(`${answer.model}: not cached on any node`)
      for (const r of answer.results) {
        yield* Console.log(
          `${answer.model} on ${r.node}: ${r.removed ? `removed (${mb(r.freed_bytes)} MB freed)` : "not cached there"}`
        )
      }
    }).pipe(Effect.catchAll(fail))
).pipe(
  Command.withDescription("Delete a pulled model's cached files (everywhere, or --node); refused while loaded")
)

export const pullCommands = { pull, rm }
