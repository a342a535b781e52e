/** The cortex executable: make-model is bit-identical per arguments; bad config refuses to start. */
import { describe, expect, it } from "@effect/vitest"
import { execFile } from "node:child_process"
import { createHash } from "node:crypto"
import { mkdtemp, readFile, writeFile } from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { promisify } from "node:util"
import { CLI } from "./fixtures/neuron.js"

const run = promisify(execFile)
const sha = async (file: string) => createHash("sha256").update(await readFile(file)).digest("hex")

const cortex = (args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  run(process.execPath, [CLI, ...args], { env: { ...process.env, ...env } })
    .then(({ stderr, stdout }) => ({ code: 0, stdout, stderr }))
    .catch((e: { code: number; stdout: string; stderr: string }) => ({
      code: e.code,
      stdout: e.stdout,
      stderr: e.stderr
    }))

describe("cortex make-model", () => {
  it("writes the same bytes for the same arguments and different ones for another seed", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "cortex-cli-"))
    const a = await cortex(["make-model", "--out", path.join(dir, "a.gguf")])
    const b = await cortex(["make-model", "--out", path.join(dir, "b.gguf"), "--shape", "tiny", "--seed", "1"])
    const c = await cortex(["make-model", "--out", path.join(dir, "c.gguf"), "--seed", "9"])
    expect([a.code, b.code, c.code]).toEqual([0, 0, 0])
    expect(a.stdout).toContain("sha256")
    expect(await sha(path.join(dir, "a.gguf"))).toBe(await sha(path.join(dir, "b.gguf")))
    expect(await sha(path.join(dir, "c.gguf"))).not.toBe(await sha(path.join(dir, "a.gguf")))
  }, 60_000)

  it("--shape vision writes a model and its projector beside it, the same bytes for the same seed", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "cortex-cli-"))
    const a = await cortex(["make-model", "--shape", "vision", "--out", path.join(dir, "a.gguf")])
    const b = await cortex(["make-model", "--shape", "vision", "--out", path.join(dir, "b.gguf")])
    expect([a.code, b.code]).toEqual([0, 0])
    expect(a.stdout).toContain("a.mmproj.gguf")
    expect(await sha(path.join(dir, "a.mmproj.gguf"))).toBe(await sha(path.join(dir, "b.mmproj.gguf")))
    const projector = await readFile(path.join(dir, "a.mmproj.gguf"))
    expect(projector.subarray(0, 4).toString("ascii")).toBe("GGUF")
    expect(projector.includes(Buffer.from("clip.projector_type"))).toBe(true)
  }, 60_000)
})

describe("cortex neuron", () => {
  it("refuses to start on a bad config, naming file, key and reason", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "cortex-cli-"))
    const file = path.join(dir, "neuron.toml")
    await writeFile(file, "port = 70000\n")
    const res = await cortex(["neuron", "--config", file])
    expect(res.code).toBe(2)
    expect(res.stderr).toContain(file)
    expect(res.stderr).toContain("port")
    expect(res.stderr).toMatch(/65535/)
    const env = await cortex(["neuron"], { NEURON_MAX_IN_FLIGHT: "lots" })
    expect(env.code).toBe(2)
    expect(env.stderr).toContain("NEURON_MAX_IN_FLIGHT")
  }, 60_000)
})
