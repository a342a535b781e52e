/** Small helpers the benchmark scripts share. */
import { type ChildProcess, spawn } from "node:child_process"
import type { Server } from "node:http"
import { createServer } from "node:net"
import { parseArgs, type ParseArgsConfig } from "node:util"

/** A free loopback port (listen on 0, read it, close). */
export const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })

/** A numeric command-line option, or exit 2 with a message naming it. */
export const numberArg = (name: string, raw: string | undefined, min: number, integer: boolean): number => {
  const n = Number(raw)
  if (!Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) {
    console.error(`--${name} must be ${integer ? "an integer" : "a number"} ≥ ${min}, got ${raw}`)
    process.exit(2)
  }
  return n
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))
export const log = (line: string) => process.stderr.write(`[bench] ${line}\n`)

/**
 * Preloaded into a child with `--import`: exit when stdin (a pipe from the bench) closes, so even
 * a SIGKILL of the bench leaves no server behind (a neuron's worker exits with its neuron).
 */
export const ORPHAN_GUARD = `data:text/javascript,${
  encodeURIComponent("process.stdin.on(\"end\",()=>process.exit(0));process.stdin.resume()")
}`

/**
 * In a bench child (the scripted upstream, the floor): listen on a free loopback port, print
 * `{"port":N}` for BenchChild.port, and exit on SIGTERM, SIGINT or when stdin (the bench) closes.
 */
export const serveAsChild = (server: Server) => {
  const stop = () => process.exit(0)
  process.once("SIGTERM", stop)
  process.once("SIGINT", stop)
  process.stdin.on("end", stop)
  process.stdin.resume()
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    process.stdout.write(`${JSON.stringify({ port })}\n`)
  })
}

const parsePort = (line: string): number | undefined => {
  try {
    const value = JSON.parse(line) as { port?: unknown }
    return typeof value.port === "number" && value.port > 0 ? value.port : undefined
  } catch {
    return undefined
  }
}

/** Every child a bench started, for cleanup. */
export const children = new Set<BenchChild>()

/** A node process the bench started: its output lines (timestamped), exit, and a graceful stop. */
export class BenchChild {
  readonly lines: Array<{ readonly at: number; readonly text: string }> = []
  private readonly lineWaiters: Array<(line: string) => void> = []
  private readonly stdoutLines: Array<string> = []
  private stdoutRead = 0
  private readonly exited: Promise<void>
  private exitInfo: string | undefined

  private constructor(
    readonly name: string,
    readonly proc: ChildProcess,
    verbose: boolean,
    private readonly detached: boolean
  ) {
    const keep = (stream: "out" | "err") => {
      let partial = ""
      return (data: Buffer) => {
        const parts = (partial + data.toString("utf8")).split("\n")
        partial = parts.pop() ?? ""
        for (const text of parts) {
          if (text.length === 0) continue
          if (verbose) process.stderr.write(`[${name}] ${text}\n`)
          this.lines.push({ at: Date.now(), text })
          if (stream === "out") {
            this.stdoutLines.push(text)
            for (const waiter of this.lineWaiters.splice(0)) waiter(text)
          }
        }
      }
    }
    proc.stdout?.on("data", keep("out"))
    proc.stderr?.on("data", keep("err"))
    this.exited = new Promise((resolve) => {
      proc.once("exit", (code, signal) => {
        this.exitInfo = `code ${code}, signal ${signal}`
        resolve()
      })
    })
  }

  /**
   * Start `node ...argv` (or `command ...argv`) in `cwd`; stdin stays a pipe (see ORPHAN_GUARD).
   * `detached`: in a process group and setsid session of its own, signalled as a group.
   */
  static spawn(
    name: string,
    argv: ReadonlyArray<string>,
    options: {
      readonly cwd: string
      readonly env?: NodeJS.ProcessEnv
      readonly verbose?: boolean
      readonly command?: string
      readonly detached?: boolean
    }
  ): BenchChild {
    const proc = spawn(options.command ?? process.execPath, [...argv], {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ["pipe", "pipe", "pipe"],
      detached: options.detached ?? false
    })
    const child = new BenchChild(name, proc, options.verbose ?? false, options.detached ?? false)
    children.add(child)
    return child
  }

  get alive() {
    return this.exitInfo === undefined
  }

  get pid() {
    return this.proc.pid
  }

  /** Signal the child, or its whole process group when it was spawned detached. */
  kill(signal: NodeJS.Signals) {
    if (!this.alive) return
    try {
      if (this.detached && this.proc.pid !== undefined) {
        process.kill(-this.proc.pid, signal)
      } else {
        this.proc.kill(signal)
      }
    } catch {
      // already gone
    }
  }

  /**
   * The child's stdout lines in order, each once: the first call returns its first line, the next
   * call the line after it (waiting for it); an error when it exits or `timeoutMs` passes first.
   */
  async nextLine(timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs
    while (Date.now() < deadline) {
      if (this.stdoutRead < this.stdoutLines.length) return this.stdoutLines[this.stdoutRead++]!
      if (!this.alive) throw new Error(`${this.name} exited: ${this.describeExit()}`)
      await Promise.race([new Promise<string>((resolve) => this.lineWaiters.push(resolve)), sleep(200)])
    }
    throw new Error(`${this.name} printed nothing within ${timeoutMs} ms: ${this.describeExit()}`)
  }

  describeExit() {
    return `${this.exitInfo ?? "still running"}; last log lines:\n${
      this.lines.slice(-30).map((l) => l.text).join("\n")
    }`
  }

  /** The port a bench server prints as a stdout line, `{"port":N}`. */
  async port(timeoutMs: number): Promise<number> {
    const found = this.lines.map((l) => parsePort(l.text)).find((p) => p !== undefined)
    if (found !== undefined) return found
    const deadline = Date.now() + timeoutMs
    while (Date.now() < deadline) {
      if (!this.alive) throw new Error(`${this.name} exited before listening: ${this.describeExit()}`)
      const line = await Promise.race([
        new Promise<string>((resolve) => this.lineWaiters.push(resolve)),
        sleep(200).then(() => undefined)
      ])
      const port = line === undefined ? undefined : parsePort(line)
      if (port !== undefined) return port
    }
    throw new Error(`${this.name} did not print its port within ${timeoutMs} ms: ${this.describeExit()}`)
  }

  /** SIGTERM, then SIGKILL if it has not exited after `graceMs`. */
  async stop(graceMs = 5000) {
    if (this.alive) {
      this.kill("SIGTERM")
      const timedOut = await Promise.race([this.exited.then(() => false), sleep(graceMs).then(() => true)])
      if (timedOut && this.alive) {
        log(`${this.name} ignored SIGTERM, sending SIGKILL`)
        this.kill("SIGKILL")
        await this.exited
      }
    }
    children.delete(this)
  }
}

/**
 * Stop every child on SIGINT/SIGTERM (SIGKILL first, synchronously, so nothing survives a cut
 * cleanup) and on exit; `cleanup` does the graceful part and the bench's own leftovers.
 */
export const stopChildrenOnExit = (cleanup: () => Promise<void>) => {
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, () => {
      log(`${signal}: stopping`)
      for (const child of children) child.kill("SIGKILL")
      void cleanup().finally(() => process.exit(130))
    })
  }
  process.once("exit", () => {
    for (const child of children) child.kill("SIGKILL")
  })
}

/**
 * A bench's command line: `--help` prints `usage` and exits 0; an unknown flag or a missing value
 * prints what is wrong and the usage and exits 2, instead of parseArgs' stack trace.
 */
export const parseCli = <const O extends NonNullable<ParseArgsConfig["options"]>>(options: O, usage: string) => {
  const all = { ...options, help: { type: "boolean", short: "h", default: false } } as const
  let values: ReturnType<typeof parseArgs<{ options: typeof all }>>["values"]
  try {
    values = parseArgs({ options: all }).values
  } catch (error) {
    console.error(`${(error as Error).message}\n\n${usage}`)
    process.exit(2)
  }
  if ((values as { readonly help?: boolean }).help) {
    console.log(usage)
    process.exit(0)
  }
  return values
}
