/**
 * One device worker: a child process that owns node-llama-cpp for a group of devices (one GPU,
 * several with `CUDA_VISIBLE_DEVICES` listing them, or the CPU), as a scoped resource. `make`
 * spawns the child and waits for it to be ready; closing the scope shuts it down gracefully, bounded, then
 * kills it. Inside the scope a supervisor restarts a child that died, with backoff from a
 * `Schedule`, and publishes `Crashed` / `Restarted` on the events `PubSub`. Every pending job of
 * a dead child fails with `WorkerError` (reason "Crashed"); a job the worker refuses fails with
 * `WorkerError` and the worker's reason. Control messages from the child are Schema-decoded;
 * per-token chunks are type-guarded only (the hot path uses no Effect and no Schema).
 */
import {
  Deferred,
  type Duration,
  Effect,
  Exit,
  ParseResult,
  PubSub,
  Runtime,
  Schedule,
  Schema,
  type Scope
} from "effect"
import { type ChildProcess, fork } from "node:child_process"
import { fileURLToPath } from "node:url"
import type { Device } from "./Discovery.js"
import { filterNativeLog, type WorkerEngineKind } from "./worker/harness.js"
import {
  type EngineInfo,
  isChunk,
  type TokenLogprob,
  type ToWorker,
  WorkerControl,
  WorkerError,
  type WorkerFailure
} from "./worker/protocol.js"

export { WorkerError } from "./worker/protocol.js"

export interface StreamHandlers {
  readonly onChunk?: (
    kind: "content" | "reasoning",
    text: string,
    choice: number,
    logprobs: ReadonlyArray<TokenLogprob> | undefined
  ) => void
  readonly onPrefilled?: (promptTokens: number, cachedTokens: number) => void
}

type Distribute<T> = T extends unknown ? Omit<T, "id"> : never
export type WorkerCall = Distribute<ToWorker>

/** What the model side hears about a worker: it died (its jobs failed), or a fresh child is ready. */
export type WorkerEvent =
  | { readonly _tag: "Crashed"; readonly worker: string; readonly error: WorkerError }
  | { readonly _tag: "Restarted"; readonly worker: string }

export interface DeviceWorker {
  /**
   * The group's name: its device ids joined by "+" ("cpu", "cuda:0", "cuda:0+cuda:1"), with
   * "#vision" for the group's vision-engine worker.
   */
  readonly id: string
  /** Which engine the child runs (worker/harness.ts): node-llama-cpp for text, llama.node for vision. */
  readonly engine: WorkerEngineKind
  readonly devices: ReadonlyArray<Device>
  readonly alive: boolean
  readonly pid: number | undefined
  /** Children started after the first (crash restarts and planned ones). */
  readonly restarts: number
  readonly info: EngineInfo | undefined
  /** Why the child is down (set the moment it exits, before any job is failed); cleared once a new one is ready. */
  readonly down: WorkerError | undefined
  /**
   * Send one job; the promise settles with the worker's result or a `WorkerError`. Plain
   * promise and callbacks: this is the per-token path (Inference wraps it once per request).
   */
  readonly call: <A>(
    message: WorkerCall,
    handlers?: StreamHandlers
  ) => { readonly id: number; readonly promise: Promise<A> }
  readonly cancel: (id: number) => void
  /** A control job whose result is decoded with `schema`. */
  readonly request: <A, I>(message: WorkerCall, schema: Schema.Schema<A, I>) => Effect.Effect<A, WorkerError>
  /** A planned restart (defragmentation): graceful stop, a fresh child, `Restarted`. Not a crash. */
  readonly restart: Effect.Effect<void>
  /** Kill the child as a native crash would (tests). */
  readonly kill: (signal?: NodeJS.Signals) => void
}

export interface Options {
  readonly threads: number
  readonly events: PubSub.PubSub<WorkerEvent>
  /** How long a graceful shutdown may take before SIGKILL. */
  readonly stopTimeout: Duration.DurationInput
  readonly readyTimeout?: Duration.DurationInput
  /** Default "text". */
  readonly engine?: WorkerEngineKind
}

/** Backoff between a crash and the next child: 100 ms doubling to 10 s, reset after a quiet minute. */
export const restartSchedule = Schedule.exponential("100 millis").pipe(
  Schedule.union(Schedule.spaced("10 seconds")),
  Schedule.resetAfter("1 minute")
)

// Compiled (dist/) the worker is JavaScript; from source it runs through tsx's loader.
const fromSource = import.meta.url.endsWith(".ts")
const workerEntry = fileURLToPath(new URL(fromSource ? "./worker/main.ts" : "./worker/main.js", import.meta.url))
// Resolved when a child is forked, not at import (vitest's module runner has no import.meta.resolve).
const workerExecArgv = () => (fromSource ? ["--import", import.meta.resolve("tsx")] : [])
const decodeControl = Schema.decodeUnknownEither(WorkerControl)

interface Pending extends StreamHandlers {
  readonly resolve: (value: unknown) => void
  readonly reject: (error: WorkerError) => void
}

interface Life {
  readonly child: ChildProcess
  /** Completed with "signal SIGABRT" / "exit code 1" when the child is gone. */
  readonly exited: Deferred.Deferred<string>
}

export const make = (
  devices: ReadonlyArray<Device>,
  options: Options
): Effect.Effect<DeviceWorker, WorkerError, Scope.Scope> =>
  Effect.gen(function*() {
    const engineKind = options.engine ?? "text"
    const id = devices.map((d) => d.id).join("+") + (engineKind === "text" ? "" : `#${engineKind}`)
    const cuda = devices.filter((d) => d.kind === "cuda")
    const crashed = (detail: string) => new WorkerError({ reason: { tag: "Crashed", device: id, detail } })
    const failed = (failure: WorkerFailure) => new WorkerError({ reason: failure })
    // Node callbacks log through this scope's runtime (its logger and services).
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    const pending = new Map<number, Pending>()
    let nextId = 1
    let life: Life | undefined
    let ready = false
    let info: EngineInfo | undefined
    let down: WorkerError | undefined
    let restarts = 0
    let stopping = false
    let planned: Deferred.Deferred<void> | undefined

    const isAlive = () => ready && life !== undefined && life.child.exitCode === null && life.child.signalCode === null

    const onMessage = (raw: unknown, started: Deferred.Deferred<EngineInfo, WorkerError>) => {
      if (isChunk(raw)) {
        pending.get(raw.id)?.onChunk?.(raw.kind, raw.text, raw.choice ?? 0, raw.logprobs)
        return
      }
      const decoded = decodeControl(raw)
      if (decoded._tag === "Left") {
        const job = (raw as { id?: unknown } | null)?.id
        const p = typeof job === "number" ? pending.get(job) : undefined
        const detail = ParseResult.TreeFormatter.formatErrorSync(decoded.left)
        if (p) {
          pending.delete(job as number)
          p.reject(failed({ tag: "Failed", message: `malformed reply from the worker: ${detail}` }))
        }
        runFork(Effect.logWarning(`worker ${id} sent a malformed message: ${detail}`))
        return
      }
      const message = decoded.right
      switch (message._tag) {
        case "ready":
          Deferred.unsafeDone(started, Exit.succeed(message.info))
          return
        case "prefilled":
          pending.get(message.id)?.onPrefilled?.(message.promptTokens, message.cachedTokens)
          return
        case "result":
        case "failure": {
          const p = pending.get(message.id)
          pending.delete(message.id)
          if (message._tag === "result") p?.resolve(message.value)
          else p?.reject(failed(message.failure))
        }
      }
    }

    /** Fork a child and wait until it is ready; a child that never gets there is killed. */
    const spawn = Effect.gen(function*() {
      const started = yield* Deferred.make<EngineInfo, WorkerError>()
      const exited = yield* Deferred.make<string>()
      const child = fork(workerEntry, [], {
        execArgv: workerExecArgv(),
        env: {
          ...process.env,
          CORTEX_WORKER_THREADS: String(options.threads),
          // A simulated GPU (tests) runs on the CPU; its group still gets CUDA_VISIBLE_DEVICES below.
          CORTEX_WORKER_GPU: cuda.some((d) => d.simulated !== true) ? "1" : "0",
          CORTEX_WORKER_ENGINE: engineKind,
          ...(cuda.length > 0 ? { CUDA_VISIBLE_DEVICES: cuda.map((d) => d.index).join(",") } : {})
        },
        // The vision engine's native code logs every step to stderr: only its errors are passed on.
        stdio: ["ignore", "inherit", engineKind === "text" ? "inherit" : "pipe", "ipc"],
        // Its own process group: a Ctrl-C or a group-wide SIGTERM meant for the neuron must not
        // kill the worker before the neuron has drained. It exits on its own if the IPC channel closes.
        detached: true
      })
      const nativeErrors = engineKind === "text" ? undefined : filterNativeLog(child, id)
      const gone = (exit: string) => {
        const last = nativeErrors?.last()
        const detail = last ? `${exit}; last native error: ${last}` : exit
        if (life?.child === child) {
          ready = false
          const error = crashed(detail)
          down = error
          for (const p of pending.values()) p.reject(error)
          pending.clear()
        }
        Deferred.unsafeDone(started, Exit.fail(crashed("exited before it was ready")))
        Deferred.unsafeDone(exited, Exit.succeed(detail))
      }
      child.on("message", (raw) => onMessage(raw, started))
      child.once("exit", (code, signal) => gone(signal ? `signal ${signal}` : `exit code ${code}`))
      child.once("error", (error) => gone(error.message))
      life = { child, exited }
      const engine = yield* Deferred.await(started).pipe(
        Effect.timeoutFail({
          duration: options.readyTimeout ?? "120 seconds",
          onTimeout: () => crashed("did not become ready in time")
        }),
        Effect.tapError(() => Effect.sync(() => child.kill("SIGKILL")))
      )
      info = engine
      down = undefined
      ready = true
      return life
    })

    /** Ask the child to stop, wait (bounded), then SIGKILL it; returns once it has exited. */
    const shutdown = Effect.suspend(() => {
      const current = life
      if (!current || current.child.exitCode !== null || current.child.signalCode !== null) return Effect.void
      sendRaw(current.child, { _tag: "shutdown", id: nextId++ })
      return Deferred.await(current.exited).pipe(
        Effect.timeoutTo({
          duration: options.stopTimeout,
          onSuccess: () => Effect.void,
          onTimeout: () =>
            Effect.sync(() => current.child.kill("SIGKILL")).pipe(
              Effect.zipRight(Deferred.await(current.exited)),
              Effect.asVoid
            )
        }),
        Effect.flatten,
        Effect.asVoid
      )
    })

    const sendRaw = (child: ChildProcess, message: ToWorker) => {
      try {
        child.send(message, () => {})
      } catch {
        // The channel closed under us: the exit handler fails what is pending.
      }
    }

    /**
     * One child after another for the life of the scope: wait for the running child's exit; a
     * crash is published and waits out the backoff, a planned restart starts the next at once.
     */
    const supervise = (first: Life) =>
      Effect.gen(function*() {
        const backoff = yield* Schedule.driver(restartSchedule)
        let current = first
        while (true) {
          const detail = yield* Deferred.await(current.exited)
          if (stopping) return
          const restart = planned
          planned = undefined
          if (!restart) {
            yield* Effect.logWarning(`worker ${id} died (${detail}); restarting`)
            yield* PubSub.publish(options.events, { _tag: "Crashed", worker: id, error: crashed(detail) })
            yield* backoff.next(undefined).pipe(Effect.ignore)
          }
          while (true) {
            const next = yield* Effect.exit(spawn)
            if (stopping) return
            if (Exit.isSuccess(next)) {
              current = next.value
              break
            }
            yield* Effect.logWarning(`worker ${id} failed to restart: ${Exit.isFailure(next) ? next.cause : ""}`)
            yield* backoff.next(undefined).pipe(Effect.ignore)
          }
          restarts++
          yield* Effect.logInfo(`worker ${id} restarted (pid ${current.child.pid})`)
          if (restart) yield* Deferred.succeed(restart, undefined)
          yield* PubSub.publish(options.events, { _tag: "Restarted", worker: id })
        }
      })

    const first = yield* spawn
    yield* Effect.forkScoped(supervise(first))
    // Added after the supervisor's fork, so it runs first: stop restarting, then stop the child.
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        stopping = true
      }).pipe(Effect.zipRight(shutdown))
    )

    const call = <A>(message: WorkerCall, handlers: StreamHandlers = {}) => {
      const id = nextId++
      const promise = new Promise<A>((resolve, reject) => {
        const child = life?.child
        if (!child || !isAlive()) return reject(crashed("worker is not running"))
        pending.set(id, { resolve: resolve as (v: unknown) => void, reject, ...handlers })
        child.send({ ...message, id } as ToWorker, (error) => {
          if (error && pending.delete(id)) reject(crashed(error.message))
        })
      })
      return { id, promise }
    }

    const worker: DeviceWorker = {
      id,
      engine: engineKind,
      devices,
      get alive() {
        return isAlive()
      },
      get pid() {
        return isAlive() ? life?.child.pid : undefined
      },
      get restarts() {
        return restarts
      },
      get info() {
        return info
      },
      get down() {
        return down
      },
      call,
      cancel: (job) => {
        const child = life?.child
        if (child && pending.has(job) && isAlive()) sendRaw(child, { _tag: "cancel", id: job })
      },
      request: <A, I>(message: WorkerCall, schema: Schema.Schema<A, I>) =>
        Effect.tryPromise({
          try: () => call<unknown>(message).promise,
          catch: (error) => error instanceof WorkerError ? error : failed({ tag: "Failed", message: String(error) })
        }).pipe(
          Effect.flatMap((value) =>
            Schema.decodeUnknown(schema)(value).pipe(
              Effect.mapError((e) =>
                failed({ tag: "Failed", message: `malformed ${message._tag} reply: ${e.message}` })
              )
            )
          )
        ),
      restart: Effect.gen(function*() {
        if (!isAlive()) return
        const done = yield* Deferred.make<void>()
        planned = done
        yield* shutdown
        yield* Deferred.await(done)
      }),
      kill: (signal = "SIGKILL") => {
        life?.child.kill(signal)
      }
    }
    return worker
  })
