/**
 * `cortex wait-ready`: wait until a gateway or neuron answers on its port. Service managers use it
 * as the readiness check (systemd's ExecStartPost), scripts before their first request.
 */
import { Command, Options } from "@effect/cli"
import { Console, Duration, Effect, Option, Schedule } from "effect"

/** One GET /health: the HTTP status when anything answered, nothing when the port is not open yet. */
const probe = (url: string) =>
  Effect.tryPromise({
    try: async (signal) => {
      const res = await fetch(url, { signal: AbortSignal.any([signal, AbortSignal.timeout(2_000)]) })
      await res.body?.cancel()
      return res.status
    },
    catch: (e) => e as Error
  })

export const waitReady = Command.make(
  "wait-ready",
  {
    endpoint: Options.text("endpoint").pipe(
      Options.withDescription("The gateway's or neuron's URL (default $CORTEX_ENDPOINT or http://127.0.0.1:31313)"),
      Options.optional
    ),
    timeout: Options.integer("timeout").pipe(
      Options.withDescription("Seconds to wait before giving up (exit status 1)"),
      Options.withDefault(60)
    )
  },
  ({ endpoint, timeout }) =>
    Effect.gen(function*() {
      const base = Option.getOrElse(endpoint, () => process.env.CORTEX_ENDPOINT ?? "http://127.0.0.1:31313")
      const url = `${base.replace(/\/+$/, "")}/health`
      const started = Date.now()
      const status = yield* probe(url).pipe(
        Effect.retry(Schedule.spaced("250 millis")),
        Effect.timeoutFail({
          duration: Duration.seconds(timeout),
          onTimeout: () => new Error(`${url}: no answer within ${timeout} s`)
        })
      )
      yield* Console.log(`${url} answered ${status} after ${Date.now() - started} ms`)
    }).pipe(
      Effect.catchAll((error) =>
        Console.error(`cortex: ${error.message}`).pipe(Effect.zipRight(Effect.sync(() => process.exit(1))))
      )
    )
).pipe(Command.withDescription("Wait until a gateway or neuron answers on its port (for service managers)"))
