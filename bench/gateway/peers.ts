/**
 * The peers of the gateway benchmark: other gateways a user could put in front of the same
 * upstream, each started as its own child process from the project's devDependencies, offline.
 *
 *   portkey  @portkey-ai/gateway (OpenAI in): `build/start-server.js --port=N --headless`; every
 *            request names the provider and the upstream in headers (`x-portkey-provider: openai`,
 *            `x-portkey-custom-host: http://127.0.0.1:UP/v1`), as Portkey's own docs do for a
 *            self-hosted OpenAI-compatible server (127.0.0.1 is a trusted custom host by default).
 *   ccr      @musistudio/claude-code-router (Anthropic in, OpenAI chat out): `dist/cli.js start`
 *            with HOME pointing at a temporary folder holding `.claude-code-router/config.json`
 *            (one provider whose `api_base_url` is the upstream's chat completions, `Router.default`
 *            on it, `LOG: false`, `NON_INTERACTIVE_MODE: true`, a fixed loopback port).
 *
 * Neither calls out to the internet on this path (no telemetry; guardrails and file uploads are
 * the only places Portkey reaches api.portkey.ai, and nothing here configures them). Proxy
 * variables are removed from their environment so that the upstream is reached directly.
 * A peer that is not installed, does not start or answers wrong is skipped with the reason.
 */
import { existsSync, readFileSync } from "node:fs"
import { mkdir, writeFile } from "node:fs/promises"
import * as path from "node:path"
import { BenchChild, freePort, ORPHAN_GUARD, sleep } from "../lib.js"

export type PeerKey = "portkey" | "ccr"

export interface Peer {
  readonly key: PeerKey
  /** Name and version, e.g. "Portkey 1.15.2". */
  readonly label: string
  readonly version: string
  readonly dialect: "openai" | "anthropic"
  readonly port: number
  readonly child: BenchChild
  /** Headers every request to it carries. */
  readonly headers: Readonly<Record<string, string>>
  readonly startupMs: number
  /** How it was configured, for the report. */
  readonly setup: string
  /** What a reader of its figures should know. */
  readonly note?: string
}

export interface PeerSkip {
  readonly key: PeerKey
  readonly name: string
  readonly reason: string
}

interface PeerContext {
  readonly root: string
  readonly upstreamUrl: string
  /** A folder the peer may write to (removed with the bench's temporary folder). */
  readonly dir: string
  readonly verbose: boolean
}

const PACKAGES = {
  portkey: { name: "Portkey", pkg: "@portkey-ai/gateway", entry: "build/start-server.js" },
  ccr: { name: "claude-code-router", pkg: "@musistudio/claude-code-router", entry: "dist/cli.js" }
} as const

/** This environment without proxy settings (a peer would send the upstream's traffic through them). */
const peerEnv = (extra: Readonly<Record<string, string>> = {}): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && !/^(https?|all|no)_proxy$/i.test(key) && !key.startsWith("CORTEX_")) env[key] = value
  }
  return { ...env, ...extra }
}

/** The installed package's folder and version, or why it cannot run. */
const installed = (root: string, key: PeerKey): { dir: string; version: string } | string => {
  const { entry, pkg } = PACKAGES[key]
  const dir = path.join(root, "node_modules", pkg)
  if (!existsSync(path.join(dir, entry))) return `${pkg} is not installed (npm install adds it: a devDependency)`
  const version = (JSON.parse(readFileSync(path.join(dir, "package.json"), "utf8")) as { version?: string }).version
  return { dir, version: version ?? "unknown" }
}

/** Poll `url` until it answers at all (any status), the child dies or `timeoutMs` passes. */
const waitHttp = async (child: BenchChild, url: string, timeoutMs: number) => {
  const deadline = Date.now() + timeoutMs
  let last = "no answer yet"
  while (Date.now() < deadline) {
    if (!child.alive) throw new Error(`exited before it answered: ${child.describeExit()}`)
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2000) })
      await res.arrayBuffer()
      return
    } catch (error) {
      last = (error as Error).message
    }
    await sleep(100)
  }
  throw new Error(`no answer on ${url} within ${timeoutMs} ms (${last}): ${child.describeExit()}`)
}

const spawnPeer = (name: string, argv: ReadonlyArray<string>, ctx: PeerContext, env: NodeJS.ProcessEnv) =>
  BenchChild.spawn(name, ["--import", ORPHAN_GUARD, ...argv], { cwd: ctx.dir, env, verbose: ctx.verbose })

const startPortkey = async (ctx: PeerContext): Promise<Peer> => {
  const found = installed(ctx.root, "portkey")
  if (typeof found === "string") throw new Error(found)
  const port = await freePort()
  const t0 = performance.now()
  const child = spawnPeer(
    "portkey",
    [path.join(found.dir, PACKAGES.portkey.entry), `--port=${port}`, "--headless"],
    ctx,
    peerEnv()
  )
  try {
    await waitHttp(child, `http://127.0.0.1:${port}/`, 60_000)
  } catch (error) {
    await child.stop(3000)
    throw error
  }
  const customHost = `${ctx.upstreamUrl}/v1`
  return {
    key: "portkey",
    label: `Portkey ${found.version}`,
    version: found.version,
    dialect: "openai",
    port,
    child,
    headers: {
      "x-portkey-provider": "openai",
      "x-portkey-custom-host": customHost,
      authorization: "Bearer bench-unused"
    },
    startupMs: performance.now() - t0,
    setup: `--headless; x-portkey-provider: openai, x-portkey-custom-host: ${customHost}`,
    note: "its stream relay waits 25 ms (a setTimeout in its build) before the first event, which is in its TTFT"
  }
}

const startCcr = async (ctx: PeerContext): Promise<Peer> => {
  const found = installed(ctx.root, "ccr")
  if (typeof found === "string") throw new Error(found)
  const port = await freePort()
  const home = path.join(ctx.dir, "home")
  await mkdir(path.join(home, ".claude-code-router"), { recursive: true })
  const apiBase = `${ctx.upstreamUrl}/v1/chat/completions`
  await writeFile(
    path.join(home, ".claude-code-router", "config.json"),
    JSON.stringify(
      {
        LOG: false,
        NON_INTERACTIVE_MODE: true,
        HOST: "127.0.0.1",
        PORT: port,
        Providers: [{ name: "upstream", api_base_url: apiBase, api_key: "bench-unused", models: ["fast"] }],
        Router: { default: "upstream,fast" }
      },
      null,
      2
    )
  )
  const t0 = performance.now()
  const child = spawnPeer("ccr", [path.join(found.dir, PACKAGES.ccr.entry), "start"], ctx, peerEnv({ HOME: home }))
  try {
    await waitHttp(child, `http://127.0.0.1:${port}/`, 60_000)
  } catch (error) {
    await child.stop(3000)
    throw error
  }
  return {
    key: "ccr",
    label: `claude-code-router ${found.version}`,
    version: found.version,
    dialect: "anthropic",
    port,
    child,
    headers: { "x-api-key": "bench-unused", "anthropic-version": "2023-06-01" },
    startupMs: performance.now() - t0,
    setup: `ccr start; one provider at ${apiBase}, Router.default on it, LOG false, NON_INTERACTIVE_MODE`
  }
}

/** Start every peer; the ones that cannot start come back as skips with the reason. */
export const startPeers = async (
  ctx: Omit<PeerContext, "dir"> & { readonly tempDir: string }
): Promise<{ readonly peers: Array<Peer>; readonly skipped: Array<PeerSkip> }> => {
  const peers: Array<Peer> = []
  const skipped: Array<PeerSkip> = []
  for (const [key, start] of [["portkey", startPortkey], ["ccr", startCcr]] as const) {
    const dir = path.join(ctx.tempDir, key)
    await mkdir(dir, { recursive: true })
    try {
      peers.push(await start({ ...ctx, dir }))
    } catch (error) {
      skipped.push({ key, name: PACKAGES[key].name, reason: (error as Error).message.slice(0, 600) })
    }
  }
  return { peers, skipped }
}
