/**
 * Pulls on a real neuron from a local hub-compatible server (test/fixtures/hub.ts), no internet:
 * by quant, ambiguous quant, missing repository, a private repository without and with a token,
 * a dropped connection resumed, a corrupted file refused, a model larger than the disk, a load
 * and pulls of one model sharing one download (with its progress in /models), the cache limit's
 * LRU eviction, and removal (refused while loaded).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import { createHash } from "node:crypto"
import { existsSync, readFileSync, statSync } from "node:fs"
import { mkdtemp, readdir } from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { NeuronModels } from "../src/domain/contract.js"
import { blob, type Hub, startHub } from "./fixtures/hub.js"
import { fixturePath } from "./fixtures/models.js"
import { getJson, type NeuronProcess, postJson, startNeuron, waitFor } from "./fixtures/neuron.js"

const tiny = readFileSync(fixturePath("tiny"))
const tinyB = readFileSync(fixturePath("tiny-b"))
const MB = 1024 * 1024
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex")

let hub: Hub
let neuron: NeuronProcess

const models = async () =>
  (await getJson(`${neuron.url}/models`)).body as {
    data: Array<
      {
        id: string
        status: string
        size_bytes: number
        download?: { bytes_done: number; bytes_total: number; rate_bps: number }
      }
    >
    pulls: Array<{ model: string; status: string; error: { code: string; message: string } | null }>
  }
const listed = async (id: string) => (await models()).data.find((m) => m.id === id)
const pullOutcome = (id: string) =>
  waitFor(
    `the pull of ${id} to end`,
    async () => (await models()).pulls.find((p) => p.model === id && p.status !== "downloading")
  )
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
    },
    "acme/Private-GGUF": { private: true, files: { "p-Q4_K_M.gguf": { data: blob(64 * 1024, 3) } } },
    // 12 MB: more than one of the downloader's 5 MB chunks, so a resume starts past 0.
    "acme/Cut-GGUF": { files: { "cut-Q4_K_M.gguf": { data: blob(12 * MB, 4), cutAfter: 7 * MB } } },
    "acme/Restart-GGUF": { files: { "r-Q4_K_M.gguf": { data: blob(12 * MB, 13), holdAfter: 7 * MB } } },
    "acme/Bad-GGUF": { files: { "bad-Q4_K_M.gguf": { data: blob(2 * MB, 5), corrupt: true } } },
    "acme/Huge-GGUF": { files: { "huge-Q4_K_M.gguf": { data: blob(1024, 6), listedSize: 2 ** 50 } } },
    "acme/Slow-GGUF": { files: { "slow-Q8_0.gguf": { data: tinyB, holdAfter: 256 * 1024 } } },
    "acme/Lru-GGUF": {
      files: {
        "a-Q4_0.gguf": { data: blob(40 * MB, 7) },
        "b-Q4_0.gguf": { data: blob(40 * MB, 8) },
        "c-Q4_0.gguf": { data: blob(40 * MB, 9) }
      }
    },
    "acme/Split-GGUF": {
      files: {
        "big-Q2_K-00001-of-00002.gguf": { data: blob(300 * 1024, 10) },
        "big-Q2_K-00002-of-00002.gguf": { data: blob(200 * 1024, 11) },
        "mmproj-big-f16.gguf": { data: blob(100 * 1024, 12) }
      }
    }
  }, { token: "hub-secret" })
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
    const text = await res.text()
    expect(res.status, text).toBe(200)
    expect(JSON.parse(text).usage.completion_tokens).toBe(3)
  })
})

describe("pull failures: a typed error, nothing listed", () => {
  it("refuses an ambiguous quant, listing the matches", async () => {
    const res = await pull({ source: "hf:acme/Tiny-GGUF", quant: "tiny" })
    expect(res.status).toBe(400)
    expect(res.body.error.code).toBe("source_ambiguous")
    expect(res.body.error.message).toContain("tiny-Q8_0.gguf")
    expect(res.body.error.message).toContain("tiny-F16.gguf")
    expect(await listed("hf:acme/Tiny-GGUF:tiny")).toBeUndefined()
  })

  it("answers 404 with the hub's reason for a missing repository", async () => {
    const res = await pull({ source: "hf:acme/Nothing-GGUF", quant: "Q4_K_M" })
    expect(res.status).toBe(404)
    expect(res.body.error.code).toBe("source_not_found")
    expect(res.body.error.message).toContain("Repository not found")
  })

  it("answers 404 for a quant no file has, naming the files", async () => {
    const res = await pull({ source: "hf:acme/Tiny-GGUF", quant: "Q5_K_M" })
    expect(res.status).toBe(400)
    expect(res.body.error.code).toBe("source_no_match")
    expect(res.body.error.message).toContain("tiny-F16.gguf")
  })

  it("names the token variable when the hub answers 401", async () => {
    const res = await pull({ source: "hf:acme/Private-GGUF", quant: "Q4_K_M" })
    expect(res.status).toBe(403)
    expect(res.body.error.code).toBe("source_unauthorized")
    expect(res.body.error.message).toContain("401")
    expect(res.body.error.message).toContain("CORTEX_TEST_HUB_TOKEN")
    expect(await listed("hf:acme/Private-GGUF:Q4_K_M")).toBeUndefined()
  })

  it("refuses a file whose sha256 is not the hub's, and deletes it", async () => {
    const started = await pull({ file: "hf:acme/Bad-GGUF/bad-Q4_K_M.gguf" })
    expect(started.status).toBe(202)
    const outcome = await pullOutcome("hf:acme/Bad-GGUF/bad-Q4_K_M.gguf")
    expect(outcome.status).toBe("failed")
    expect(outcome.error?.code).toBe("source_checksum_mismatch")
    expect(await listed("hf:acme/Bad-GGUF/bad-Q4_K_M.gguf")).toBeUndefined()
    expect(existsSync(path.join(neuron.modelsDir, ".cache", "hf", "acme", "Bad-GGUF", "bad-Q4_K_M.gguf"))).toBe(false)
    // A load of it fails the same way.
    const load = await postJson(`${neuron.url}/models/load`, { model: "hf:acme/Bad-GGUF/bad-Q4_K_M.gguf" })
    expect(load.status).toBe(502)
    expect((await load.json() as any).error.code).toBe("source_checksum_mismatch")
  })

  it("refuses with 507 a model larger than the free disk, before any byte", async () => {
    const res = await pull({ source: "hf:acme/Huge-GGUF", quant: "Q4_K_M" })
    expect(res.status).toBe(507)
    expect(res.body.error.code).toBe("insufficient_disk")
    expect(res.body.error.required_mb).toBe(2 ** 30)
    expect(hub.requests.some((r) => r.path.includes("/resolve/main/huge"))).toBe(false)
    expect(await listed("hf:acme/Huge-GGUF:Q4_K_M")).toBeUndefined()
  })
})

describe("resume", () => {
  it("resumes a download whose connection dropped mid-file from where it was", async () => {
    const id = "hf:acme/Cut-GGUF:Q4_K_M"
    expect((await pull({ source: "hf:acme/Cut-GGUF", quant: "Q4_K_M" })).status).toBe(202)
    expect((await pullOutcome(id)).status).toBe("done")
    const ranged = hub.requests.filter((r) => r.path.endsWith("cut-Q4_K_M.gguf") && r.range !== undefined)
    // The first ranged request was cut at 7 MB; a later one starts past 0 (not from scratch).
    expect(ranged.length).toBeGreaterThanOrEqual(2)
    expect(ranged.slice(1).some((r) => Number(r.range!.match(/bytes=(\d+)/)![1]) > 0)).toBe(true)
    expect((await listed(id))?.size_bytes).toBe(12 * MB)
  })
})

describe("resume after a restart", () => {
  let first: NeuronProcess | undefined
  let second: NeuronProcess | undefined
  afterAll(async () => {
    await first?.stop("SIGKILL")
    await second?.stop()
  })

  it("a neuron killed mid-pull resumes the partial file on the next pull", async () => {
    const cacheDir = await mkdtemp(path.join(os.tmpdir(), "cortex-cache-"))
    const toml = `cache_dir = "${cacheDir}"\n[sources.hf]\nendpoint = "${hub.url}"\n`
    const id = "hf:acme/Restart-GGUF:Q4_K_M"
    const key = "acme/Restart-GGUF/r-Q4_K_M.gguf"
    first = await startNeuron({ models: [], toml })
    expect((await postJson(`${first.url}/models/pull`, { model: id })).status).toBe(202)
    // Past the downloader's first 5 MB chunk: it saves which chunks are complete after the data
    // in `<file>.ipull` (so the file outgrows the model's 12 MB once that is on disk).
    const partial = path.join(cacheDir, "acme", "Restart-GGUF", "r-Q4_K_M.gguf.ipull")
    await waitFor("7 MB on the wire, in /models, and the progress saved", async () => {
      const body = (await getJson(`${first!.url}/models`)).body
      const m = body.data.find((x: any) => x.id === id)
      const saved = existsSync(partial) && statSync(partial).size > 12 * MB
      return (hub.sent.get(key) ?? 0) >= 7 * MB && m?.download?.bytes_done >= 7 * MB && saved ? true : undefined
    })
    await first.stop("SIGKILL")
    first = undefined
    const before = hub.requests.length
    hub.release(key)
    second = await startNeuron({ models: [], toml })
    // Nothing half-downloaded is listed after the restart.
    expect((await getJson(`${second.url}/models`)).body.data.find((x: any) => x.id === id)).toBeUndefined()
    expect((await postJson(`${second.url}/models/pull`, { model: id })).status).toBe(202)
    await waitFor("the resumed pull", async () => {
      const body = (await getJson(`${second!.url}/models`)).body
      return body.data.find((x: any) => x.id === id && x.status === "available")
    })
    const resumed = hub.requests.slice(before).filter((r) => r.path.endsWith("r-Q4_K_M.gguf") && r.range)
    expect(resumed.length).toBeGreaterThan(0)
    expect(Math.min(...resumed.map((r) => Number(r.range!.match(/bytes=(\d+)/)![1])))).toBeGreaterThanOrEqual(5 * MB)
    expect(sha(readFileSync(path.join(cacheDir, "acme", "Restart-GGUF", "r-Q4_K_M.gguf")))).toBe(sha(blob(12 * MB, 13)))
  }, 120_000)
})

describe("single flight and progress", () => {
  it("shares one download between a load and two pulls, with progress in /models", async () => {
    const id = "hf:acme/Slow-GGUF:Q8_0"
    const first = await pull({ source: "hf:acme/Slow-GGUF", quant: "Q8_0" })
    expect(first.status).toBe(202)
    const load = postJson(`${neuron.url}/models/load`, { model: id })
    const second = await pull({ model: id })
    expect(second.status).toBe(202)
    const m = await waitFor("progress in /models", async () => {
      const found = await listed(id)
      return found?.download && found.download.bytes_done >= 256 * 1024 ? found : undefined
    })
    expect(m.status).toBe("downloading")
    expect(m.download!.bytes_total).toBe(tinyB.length)
    // The contract decodes /models mid-pull; /health and inference on another model are not held up.
    const snapshot = (await getJson(`${neuron.url}/models`)).body
    expect(Schema.decodeUnknownSync(NeuronModels)(snapshot).data.find((x) => x.id === id)?.download?.bytes_total).toBe(
      tinyB.length
    )
    expect((await getJson(`${neuron.url}/health`)).status).toBe(200)
    const chat = await postJson(`${neuron.url}/v1/chat/completions`, {
      model: "hf:acme/Tiny-GGUF:q8_0",
      max_tokens: 2,
      messages: [{ role: "user", content: "still there?" }]
    })
    expect(chat.status).toBe(200)
    expect((await listed(id))?.status).toBe("downloading")
    hub.release("acme/Slow-GGUF/slow-Q8_0.gguf")
    const loaded = await load
    expect(loaded.status).toBe(200)
    expect((await loaded.json() as any).status).toBe("loaded")
    const ranged = hub.requests.filter((r) => r.path.endsWith("slow-Q8_0.gguf") && r.range !== undefined)
    expect(ranged.length).toBe(1)
    await postJson(`${neuron.url}/models/unload`, { model: id })
  })

  it("downloads a split set and the projector beside it", async () => {
    const id = "hf:acme/Split-GGUF:Q2_K"
    expect((await pull({ source: "hf:acme/Split-GGUF", quant: "Q2_K" })).status).toBe(202)
    const o = await pullOutcome(id)
    expect(o.status, JSON.stringify(o)).toBe("done")
    const dir = path.join(neuron.modelsDir, ".cache", "hf", "acme", "Split-GGUF")
    expect((await readdir(dir)).sort()).toEqual([
      "big-Q2_K-00001-of-00002.gguf",
      "big-Q2_K-00002-of-00002.gguf",
      "mmproj-big-f16.gguf"
    ])
    expect((await listed(id))?.size_bytes).toBe(600 * 1024)
  })
})

describe("the cache", () => {
  it("evicts the least recently used cached model past max_cache_gb, and refuses to remove a loaded one", async () => {
    for (const name of ["a", "b", "c"]) {
      expect((await pull({ file: `hf:acme/Lru-GGUF/${name}-Q4_0.gguf` })).status).toBe(202)
      expect((await pullOutcome(`hf:acme/Lru-GGUF/${name}-Q4_0.gguf`)).status).toBe("done")
    }
    // 0.1 GB holds two of the three 40 MB files (and the small ones): a went first.
    expect(await listed("hf:acme/Lru-GGUF/a-Q4_0.gguf")).toBeUndefined()
    expect((await listed("hf:acme/Lru-GGUF/c-Q4_0.gguf"))?.status).toBe("available")

    const id = "hf:acme/Tiny-GGUF:q8_0"
    expect((await postJson(`${neuron.url}/models/load`, { model: id })).status).toBe(200)
    const refused = await postJson(`${neuron.url}/models/remove`, { model: id })
    expect(refused.status).toBe(422)
    expect((await refused.json() as any).error.message).toContain("unload it first")
    await postJson(`${neuron.url}/models/unload`, { model: id })
    const removed = await postJson(`${neuron.url}/models/remove`, { model: id })
    expect(removed.status).toBe(200)
    expect((await removed.json() as any).removed).toBe(true)
    expect(await listed(id)).toBeUndefined()
  })
})

describe("a private repository with the token", () => {
  let withToken: NeuronProcess
  afterAll(async () => {
    await withToken?.stop()
  })

  it("pulls with the token from token_env", async () => {
    withToken = await startNeuron({
      models: [],
      toml: `[sources.hf]\nendpoint = "${hub.url}"\ntoken_env = "CORTEX_TEST_HUB_TOKEN"\n`,
      env: { CORTEX_TEST_HUB_TOKEN: "hub-secret" }
    })
    const res = await postJson(`${withToken.url}/models/pull`, { source: "hf:acme/Private-GGUF", quant: "Q4_K_M" })
    expect([200, 202]).toContain(res.status)
    await waitFor("the private pull", async () => {
      const body = (await getJson(`${withToken.url}/models`)).body
      return body.data.find((m: any) => m.id === "hf:acme/Private-GGUF:Q4_K_M" && m.status === "available")
    })
    expect(hub.requests.some((r) => r.path.includes("p-Q4_K_M.gguf") && r.authorized)).toBe(true)
  }, 120_000)
})
