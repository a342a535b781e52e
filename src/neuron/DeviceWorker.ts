/**
 * One device worker: a child process that owns node-llama-cpp for one device (or the CPU).
 * The neuron talks to it with typed IPC messages. When the child dies unexpectedly (a native
 * abort, an OOM kill), every pending call fails with WorkerCrashed, crash listeners run, and the
 * worker restarts itself with backoff; restart listeners then reload what was resident.
 */
import { type ChildProcess, fork } from "node:child_process"
import { fileURLToPath } from "node:url"
import type { Device } from "./Discovery.js"
import type { EngineInfo, FromWorker, TokenLogprob, ToWorker, WorkerFailure } from "./worker/protocol.js"

export class WorkerCrash extends Error {
  constructor(readonly device: string, readonly detail: string) {
    super(`worker for ${device} crashed: ${detail}`)
  }
}

export class WorkerFailed extends Error {
  constructor(readonly failure: WorkerFailure) {
    super(failure.tag === "Failed" || failure.tag === "InvalidRequest" ? failure.message : failure.tag)
  }
}

export interface StreamHandlers {
  readonly onChunk?: (
    kind: "content" | "reasoning",
    text: string,
    choice: number,
    logprobs: ReadonlyArray<TokenLogprob> | undefined
  ) => void
  readonly onPrefilled?: (promptTokens: number, cachedTokens: number) => void
}

interface Pending extends StreamHandlers {
  readonly resolve: (value: unknown) => void
  readonly reject: (error: Error) => void
}

type Distribute<T> = T extends unknown ? Omit<T, "id"> : never
export type WorkerCall = Distribute<ToWorker>

const workerEntry = fileURLToPath(new URL("./worker/main.ts", import.meta.url))
const tsxLoader = import.meta.resolve("tsx")

export interface WorkerOptions {
  readonly threads: number
  readonly log: (message: string) => void
  readonly readyTimeoutMs?: number
}

export class DeviceWorker {
  private child: ChildProcess | undefined
  private readonly pending = new Map<number, Pending>()
  private nextId = 1
  private stopping = false
  private crashes: Array<number> = []
  private readonly crashListeners: Array<(error: WorkerCrash) => void> = []
  private readonly restartListeners: Array<() => void> = []
  private ready: Promise<EngineInfo> | undefined
  info: EngineInfo | undefined
  restarts = 0

  constructor(readonly device: Device, private readonly options: WorkerOptions) {}

  get alive() {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null
  }

  get pid() {
    return this.child?.pid
  }

  onCrash(listener: (error: WorkerCrash) => void) {
    this.crashListeners.push(listener)
  }

  onRestart(listener: () => void) {
    this.restartListeners.push(listener)
  }

  start(): Promise<EngineInfo> {
    const child = fork(workerEntry, [], {
      execArgv: ["--import", tsxLoader],
      env: {
        ...process.env,
        CORTEX_WORKER_THREADS: String(this.options.threads),
        CORTEX_WORKER_GPU: this.device.kind === "cuda" ? "1" : "0",
        ...(this.device.kind === "cuda" ? { CUDA_VISIBLE_DEVICES: String(this.device.index) } : {})
      },
      stdio: ["ignore", "inherit", "inherit", "ipc"],
      // Its own process group: a Ctrl-C or a group-wide SIGTERM meant for the neuron must not
      // kill the worker before the neuron has drained. It exits on its own if the IPC channel closes.
      detached: true
    })
    this.child = child
    this.ready = new Promise<EngineInfo>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new WorkerCrash(this.device.id, "did not become ready in time")),
        this.options.readyTimeoutMs ?? 120_000
      )
      const onReady = (message: FromWorker) => {
        if (message._tag !== "ready") return
        clearTimeout(timer)
        child.off("message", onReady)
        this.info = message.info
        resolve(message.info)
      }
      child.on("message", onReady)
      child.once("exit", () => {
        clearTimeout(timer)
        reject(new WorkerCrash(this.device.id, "exited before it was ready"))
      })
    })
    child.on("message", (message: FromWorker) => this.dispatch(message))
    child.once("exit", (code, signal) => this.exited(child, code, signal))
    return this.ready
  }

  private dispatch(message: FromWorker) {
    switch (message._tag) {
      case "chunk":
        return this.pending.get(message.id)?.onChunk?.(
          message.kind,
          message.text,
          message.choice ?? 0,
          message.logprobs
        )
      case "prefilled":
        return this.pending.get(message.id)?.onPrefilled?.(message.promptTokens, message.cachedTokens)
      case "result": {
        const p = this.pending.get(message.id)
        this.pending.delete(message.id)
        return p?.resolve(message.value)
      }
      case "failure": {
        const p = this.pending.get(message.id)
        this.pending.delete(message.id)
        return p?.reject(new WorkerFailed(message.failure))
      }
    }
  }

  private exited(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null) {
    if (this.child !== child) return
    this.child = undefined
    const detail = signal ? `signal ${signal}` : `exit code ${code}`
    const crash = new WorkerCrash(this.device.id, detail)
    for (const p of this.pending.values()) p.reject(crash)
    this.pending.clear()
    if (this.stopping) return
    this.options.log(`worker ${this.device.id} died (${detail}); restarting`)
    for (const listener of this.crashListeners) listener(crash)
    const now = Date.now()
    this.crashes = [...this.crashes.filter((t) => now - t < 60_000), now]
    const delay = Math.min(10_000, 100 * 2 ** (this.crashes.length - 1))
    setTimeout(() => {
      if (this.stopping) return
      this.restarts++
      this.start().then(
        () => {
          this.options.log(`worker ${this.device.id} restarted (pid ${this.child?.pid})`)
          for (const listener of this.restartListeners) listener()
        },
        (e) => this.options.log(`worker ${this.device.id} failed to restart: ${(e as Error).message}`)
      )
    }, delay)
  }

  /** Send one request; resolves with the worker's result, rejects with WorkerFailed or WorkerCrash. */
  call<A>(message: WorkerCall, handlers: StreamHandlers = {}): { promise: Promise<A>; id: number } {
    const id = this.nextId++
    const promise = new Promise<A>((resolve, reject) => {
      const child = this.child
      if (!child || !this.alive) {
        return reject(new WorkerCrash(this.device.id, "worker is not running"))
      }
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, ...handlers })
      child.send({ ...message, id } as ToWorker, (error) => {
        if (error && this.pending.delete(id)) reject(new WorkerCrash(this.device.id, error.message))
      })
    })
    return { promise, id }
  }

  request<A>(message: WorkerCall): Promise<A> {
    return this.call<A>(message).promise
  }

  cancel(id: number) {
    if (this.pending.has(id) && this.alive) this.child?.send({ _tag: "cancel", id } satisfies ToWorker)
  }

  /** Kill the process as a native crash would (tests, and the last resort of stop()). */
  kill(signal: NodeJS.Signals = "SIGKILL") {
    this.child?.kill(signal)
  }

  async stop(timeoutMs = 10_000) {
    this.stopping = true
    await this.shutdownChild(timeoutMs)
  }

  /**
   * A planned restart (defragmentation): the process ends gracefully and a fresh one starts;
   * restart listeners then reload what was resident. Not counted as a crash.
   */
  async restart(timeoutMs = 10_000) {
    this.stopping = true
    await this.shutdownChild(timeoutMs)
    this.stopping = false
    this.restarts++
    await this.start()
    for (const listener of this.restartListeners) listener()
  }

  private async shutdownChild(timeoutMs: number) {
    const child = this.child
    if (!child || !this.alive) return
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
    this.request({ _tag: "shutdown" }).catch(() => undefined)
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs)
    await exited
    clearTimeout(timer)
  }
}
