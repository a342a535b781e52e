/**
 * What an operator installs: the compiled CLI (build stamp, `--version`, `GET /version`), the packed
 * tarball installed into a fresh folder, the systemd units and their readiness check.
 */
import { describe, expect, it } from "@effect/vitest"
import { execFile } from "node:child_process"
import { existsSync } from "node:fs"
import { mkdtemp, readFile, writeFile } from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { promisify } from "node:util"
import { startGateway } from "./fixtures/gateway.js"
import { CLI, freePort, startNeuron } from "./fixtures/neuron.js"

const run = promisify(execFile)
const ROOT = path.resolve(import.meta.dirname, "..")

const exec = (file: string, args: ReadonlyArray<string>, options: { cwd?: string; timeout?: number } = {}) =>
  run(file, [...args], { ...options, env: process.env, maxBuffer: 16 * 1024 * 1024 })
    .then(({ stderr, stdout }) => ({ code: 0, stdout, stderr }))
    .catch((e: { code: number; stdout: string; stderr: string }) => ({
      code: e.code,
      stdout: e.stdout,
      stderr: e.stderr
    }))

const which = async (cmd: string) => (await exec("sh", ["-c", `command -v ${cmd}`])).stdout.trim() || undefined

describe("systemd units", () => {
  const units = ["cortex-gateway.service", "cortex-neuron.service"].map((u) => path.join(ROOT, "deploy", "systemd", u))

  it("pass systemd-analyze verify without a warning, and a broken unit does not", async (ctx) => {
    const analyze = await which("systemd-analyze")
    if (!analyze) {
      console.warn("systemd-analyze not installed (Debian's systemd package): unit check skipped")
      return ctx.skip()
    }
    const ok = await exec(analyze, ["verify", ...units])
    expect({ code: ok.code, stderr: ok.stderr.trim() }).toEqual({ code: 0, stderr: "" })

    // The check can fail: the same unit with its program missing is refused, naming it.
    const dir = await mkdtemp(path.join(os.tmpdir(), "cortex-units-"))
    const broken = path.join(dir, "cortex-gateway.service")
    await writeFile(broken, (await readFile(units[0]!, "utf8")).replaceAll("/usr/bin/node", "/nonexistent/node"))
    const bad = await exec(analyze, ["verify", broken])
    expect(bad.code).not.toBe(0)
    expect(bad.stderr).toContain("/nonexistent/node")
  })

  it("reload by SIGHUP, run as a dedicated user, and are hardened", async () => {
    for (const unit of units) {
      const text = await readFile(unit, "utf8")
      expect(text).toMatch(/^ExecReload=\/bin\/kill -HUP \$MAINPID$/m)
      expect(text).toMatch(/^User=cortex$/m)
      expect(text).toMatch(/^NoNewPrivileges=yes$/m)
      expect(text).toMatch(/^ProtectSystem=strict$/m)
      expect(text).toMatch(/^ReadWritePaths=/m)
      expect(text).toMatch(/^Restart=on-failure$/m)
      expect(text).toMatch(/^ExecStartPost=.* wait-ready /m)
    }
  })
})

describe("cortex wait-ready", () => {
  // Its success case runs against the gateway of the /version test below.
  it("fails with the URL when nothing answers", async () => {
    const port = await freePort()
    const none = await exec(process.execPath, [
      CLI,
      "wait-ready",
      "--endpoint",
      `http://127.0.0.1:${port}`,
      "--timeout",
      "1"
    ])
    expect(none.code).toBe(1)
    expect(none.stderr).toContain(`http://127.0.0.1:${port}/health: no answer within 1 s`)
  })
})

describe("version", () => {
  it("cortex --version names the version, commit and engine versions", async () => {
    const out = await exec(process.execPath, [CLI, "--version"])
    expect(out.code).toBe(0)
    expect(out.stdout).toMatch(/^\d+\.\d+\.\d+ \(commit ([0-9a-f]{7,}|unknown), (compiled|source);/)
    expect(out.stdout).toContain("node-llama-cpp 3.21.1")
  })

  it("GET /version on the neuron and the gateway, behind their auth", async () => {
    const neuron = await startNeuron({ models: ["tiny"], env: { NEURON_API_TOKEN: "neuron-secret" } })
    // The gateway needs no neuron to say what it is.
    const gateway = await startGateway({
      neurons: [],
      waitHealthy: false,
      extraToml: `[auth]\nrequire_auth = true\n[[auth.keys]]\nkey = "client-key"\nname = "ops"\n`
    }).catch(async (e: unknown) => {
      await neuron.stop()
      throw e
    })
    try {
      const ready = await exec(process.execPath, [CLI, "wait-ready", "--endpoint", gateway.url, "--timeout", "30"])
      expect(ready.code, ready.stderr).toBe(0)
      expect(ready.stdout).toContain(`${gateway.url}/health answered`)
      for (const [url, key] of [[neuron.url, "neuron-secret"], [gateway.url, "client-key"]] as const) {
        expect((await fetch(`${url}/version`)).status).toBe(401)
        const res = await fetch(`${url}/version`, { headers: { authorization: `Bearer ${key}` } })
        expect(res.status).toBe(200)
        const body = await res.json() as Record<string, string>
        expect(body).toMatchObject({ version: expect.stringMatching(/^\d+\.\d+\.\d+$/), node_llama_cpp: "3.21.1" })
        expect(body.commit).toMatch(/^([0-9a-f]{7,}|unknown)$/)
        expect(body.llama_cpp).toContain("llama.cpp")
      }
    } finally {
      await gateway.stop()
      await neuron.stop()
    }
  }, 120_000)
})

describe("the packed package", () => {
  it("installs from its tarball into a fresh folder and `npx cortex --version` runs the compiled CLI", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "cortex-pack-"))
    const pack = await exec("npm", ["pack", "--pack-destination", dir, "--silent"], { cwd: ROOT, timeout: 240_000 })
    expect(pack.code, pack.stderr).toBe(0)
    const tarball = path.join(dir, pack.stdout.trim().split("\n").pop()!)
    expect(existsSync(tarball)).toBe(true)
    const app = path.join(dir, "app")
    await exec("mkdir", [app])
    await writeFile(path.join(app, "package.json"), JSON.stringify({ name: "pack-check", private: true }))
    // From npm's cache where it can (CI has just run `npm ci`); the registry otherwise.
    const install = await exec(
      "npm",
      ["install", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error", tarball],
      { cwd: app, timeout: 480_000 }
    )
    expect(install.code, install.stderr).toBe(0)
    const version = await exec("npx", ["--no-install", "cortex", "--version"], { cwd: app })
    expect(version.code, version.stderr).toBe(0)
    expect(version.stdout).toContain("compiled; node-llama-cpp 3.21.1")
  }, 600_000)
})
