/**
 * Pulls on a real neuron from a local hub-compatible server (test/fixtures/hub.ts), no internet:
 * by quant, ambiguous quant, missing repository, a private repository without and with a token,
 * a dropped connection resumed, a corrupted file refused, a model larger than the disk, a load
 * and pulls of one model sharing one download (with its progress in /models), the cache limit's
 * LRU eviction, and removal (refused while loaded).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { createHash } from "node:crypto"
import { existsSync, readFileSync } from "node:fs"
import { readdir } from "node:fs/promises"
import * as path from "node:path"
import { blob, type Hub, startHub } from "./fixtures/hub.js"
import { fixturePath } from "./fixtures/models.js"
import { getJson, type NeuronProcess, postJson, startNeuron, waitFor } from "./fixtures/neuron.js"

const tiny = readFileSync(fixturePath("tiny"))
const tinyB = readFileSync(fixturePath("tiny-b"))
const MB = 1024 * 1024
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex")

let hub: Hub
let neuron: NeuronProcess

const models = async () => (await getJson(`${neuron.url}/models`)).body as {
  data: Array<{ id: string; status: string; size_bytes: number; download?: { bytes_done: number; bytes_total: number; rate_bps: number } }>
  pulls: Array<{ model: string; status: string; error: { code: string; message: string } | null }>
}
const listed = async (id: string) => (await models()).data.find((m) => m.id === id)
const pullOutcome = (id: string) =>
  waitFor(`the pull of ${id} to end`, async () => (await models()).pulls.find((p) => p.model === id && p.status !== "downloading"))
const pull = async (body: Record<string, string>) => {
  const res = await postJson(`${neuron.url}/models/pull`, body)
  return { status: res.status, body: await res.json() as any }
}

beforeAll(async () => {
  hub = await startHub({
    "acme/Tiny-GGUF": {
      files: {
        "tiny-Q8_0.gguf": { data: tiny },
        "tiny-F16.gguf": { data: tinyB },
        "README.md": { data: Buffer.from("# tiny\n") }
      }
    }
  })
  neuron = await startNeuron({
    models: [],
    toml: `[sources]\nmax_cache_gb = 0.1\n[sources.hf]\nendpoint = "${hub.url}"\ntoken_env = "CORTEX_TEST_HUB_TOKEN"\n`
  })
}, 120_000)

afterAll(async () => {
  await neuron?.stop()
  await hub?.close()
})

describe("pull", () => {
  it("pulls by quant (case-insensitive), verifies, lists and serves the model", async () => {
    const started = await pull({ source: "hf:acme/Tiny-GGUF", quant: "q8_0" })
    expect([200, 202]).toContain(started.status)
    expect(started.body.model).toBe("hf:acme/Tiny-GGUF:q8_0")
    const outcome = await pullOutcome("hf:acme/Tiny-GGUF:q8_0")
    expect(outcome.status).toBe("done")
    const m = await listed("hf:acme/Tiny-GGUF:q8_0")
    expect(m?.status).toBe("available")
    expect(m?.size_bytes).toBe(tiny.length)
    const file = path.join(neuron.modelsDir, ".cache", "hf", "acme", "Tiny-GGUF", "tiny-Q8_0.gguf")
    expect(sha(readFileSync(file))).toBe(sha(tiny))
    const res = await postJson(`${neuron.url}/v1/chat/completions`, {
      model: "hf:acme/Tiny-GGUF:q8_0",
      max_tokens: 3,
      messages: [{ role: "user", content: "hi" }]
    })
    expect(res.status).toBe(200)
    expect((await res.json() as any).usage.completion_tokens).toBe(3)
  })
})
