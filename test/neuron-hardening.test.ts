/**
 * Hardening (issue #8), the neuron's part: the api_token compared in constant time, a refused
 * reload that keeps the resident model, and hostile bodies answered 4xx in the OpenAI envelope
 * without stack traces or server paths.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { mkdir, writeFile } from "node:fs/promises"
import * as path from "node:path"
import { tokenMatches } from "../src/neuron/ApiToken.js"
import { isModelId } from "../src/neuron/ModelStore.js"
import { minPromptTokens } from "../src/neuron/worker/promptSize.js"
import { getJson, modelStatus, type NeuronProcess, postJson, startNeuron } from "./fixtures/neuron.js"

describe("api_token comparison", () => {
  it("accepts the exact token only, whatever the length of the presented one", () => {
    expect(tokenMatches("s3cret-token", "s3cret-token")).toBe(true)
    expect(tokenMatches("s3cret-tokeN", "s3cret-token")).toBe(false)
    expect(tokenMatches("s3cret", "s3cret-token")).toBe(false)
    expect(tokenMatches("s3cret-token-and-more", "s3cret-token")).toBe(false)
    expect(tokenMatches("", "s3cret-token")).toBe(false)
    expect(tokenMatches(undefined, "s3cret-token")).toBe(false)
  })
})

describe("pure guards", () => {
  it("tells model ids from names that cannot be a file under models_dir", () => {
    for (const id of ["tiny", "org/model-7b.Q4_K_M", "a/b/c"]) expect(isModelId(id)).toBe(true)
    for (const id of ["", "../tiny", "a/../b", "/etc/passwd", "a//b", "./a", "a\0b", "a\\b", "x".repeat(2000)]) {
      expect(isModelId(id)).toBe(false)
    }
  })

  it("bounds a prompt's tokens from below by its bytes", () => {
    const job = { kind: "chat" as const, messages: [{ role: "user" as const, text: `  ${"é".repeat(50)}  ` }] }
    // 100 bytes once trimmed; at most 10 bytes a token → at least 10 tokens.
    expect(minPromptTokens(job, 10)).toBe(10)
    expect(minPromptTokens({ kind: "completion", prompt: "abcdefghij" }, 3)).toBe(3)
    expect(minPromptTokens({ kind: "completion", prompt: "abc" }, 0)).toBe(0)
  })
})

let neuron: NeuronProcess
// tiny with 2 sequences: ~6 MB at context 256, far more than 30 MB at 4096.
const BUDGET_MB = 30

beforeAll(async () => {
  neuron = await startNeuron({ models: ["tiny"], toml: `memory_budget_mb = ${BUDGET_MB}\nmax_in_flight = 2\n` })
  await writeFile(path.join(neuron.modelsDir, "garbage.gguf"), Buffer.from("definitely not a GGUF file"))
  await mkdir(path.join(neuron.modelsDir, "folder.gguf"))
})

afterAll(async () => {
  await neuron?.stop()
})

const chat = (body: Record<string, unknown>) =>
  postJson(`${neuron.url}/v1/chat/completions`, {
    model: "tiny",
    messages: [{ role: "user", content: "hi" }],
    temperature: 0,
    max_tokens: 2,
    ...body
  })

describe("reload with a larger context", () => {
  it("refuses (507) a context that cannot fit, and the model stays loaded and serving", async () => {
    const small = await postJson(`${neuron.url}/models/load`, { model: "tiny", context_size: 256 })
    expect(small.status).toBe(200)
    const loaded = await small.json() as any
    expect(loaded.status).toBe("loaded")
    expect(loaded.memory_estimate_mb).toBeLessThan(BUDGET_MB)

    const big = await postJson(`${neuron.url}/models/load`, { model: "tiny", context_size: 4096 })
    expect(big.status).toBe(507)
    const refusal = await big.json() as any
    expect(refusal.error.code).toBe("insufficient_vram")
    expect(refusal.error.required_mb).toBeGreaterThan(refusal.error.free_mb)
    // The model's own footprint counted as free: the refusal is about the budget, not about it.
    expect(refusal.error.free_mb).toBe(BUDGET_MB)

    const after = (await getJson(`${neuron.url}/models`)).body.data.find((m: any) => m.id === "tiny")
    expect(after.status).toBe("loaded")
    expect(after.context_limit).toBe(loaded.context_limit)
    expect(after.loaded_at).toBe(loaded.loaded_at)
    const res = await chat({})
    expect(res.status).toBe(200)
    expect((await res.json() as any).usage.completion_tokens).toBe(2)
  })

  it("still reloads a context that fits", async () => {
    const res = await postJson(`${neuron.url}/models/load`, { model: "tiny", context_size: 512 })
    expect(res.status).toBe(200)
    const body = await res.json() as any
    expect(body.status).toBe("loaded")
    expect(body.context_limit).toBe(512)
  })
})

/** A client-facing error body: the OpenAI envelope, nothing of the server's insides. */
const expectClean = (text: string) => {
  const body = JSON.parse(text)
  expect(typeof body.error.message).toBe("string")
  expect(typeof body.error.type).toBe("string")
  expect(text).not.toMatch(/node_modules|\/src\/|\n\s+at |\bat [\w.<>]+ \(/)
  expect(text).not.toContain(neuron.modelsDir)
  expect(text.length).toBeLessThan(2_000)
  return body
}

describe("hostile input", () => {
  const loads: Array<[string, string | Record<string, unknown>, number]> = [
    ["a parent-directory name", { model: "../tiny" }, 404],
    ["an absolute path", { model: "/etc/passwd" }, 404],
    ["a NUL", { model: "tiny\u0000.gguf" }, 404],
    ["a backslash path", { model: "..\\..\\windows" }, 404],
    ["a huge name", { model: "x".repeat(200_000) }, 0],
    ["a directory, not a file", { model: "folder" }, 404],
    ["a name that is not a string", { model: 5 }, 422],
    ["a huge context", { model: "tiny", context_size: 1e12 }, 422],
    ["an array body", [] as any, 422],
    ["malformed JSON", "{\"model\":", 400]
  ]
  for (const [what, body, status] of loads) {
    it(`/models/load with ${what} is a 4xx`, async () => {
      const res = await fetch(`${neuron.url}/models/load`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: typeof body === "string" ? body : JSON.stringify(body)
      })
      if (status === 0) {
        expect(res.status).toBeGreaterThanOrEqual(400)
        expect(res.status).toBeLessThan(500)
      } else expect(res.status).toBe(status)
      expectClean(await res.text())
    })
  }

  it("a corrupt model file fails to load (the operator's problem, 500) without leaking its path", async () => {
    const res = await postJson(`${neuron.url}/models/load`, { model: "garbage" })
    expect(res.status).toBe(500)
    expect(expectClean(await res.text()).error.code).toBe("model_load_failed")
  })

  const chats: Array<[string, Record<string, unknown>]> = [
    ["a JSON schema the grammar compiler rejects", {
      response_format: { type: "json_schema", json_schema: { name: "x", schema: { const: { a: 1 } } } }
    }],
    ["a forced tool whose schema the grammar compiler rejects", {
      tools: [{
        type: "function",
        function: { name: "f", parameters: { type: "object", properties: { a: { const: { b: 1 } } } } }
      }],
      tool_choice: "required"
    }],
    ["a parent-directory model", { model: "../tiny" }],
    ["an absolute-path model", { model: "/etc/passwd" }],
    ["a negative max_tokens", { max_tokens: -1 }],
    ["an unknown role", { messages: [{ role: "root", content: "x" }] }],
    ["an image part", { messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] }]
  ]
  for (const [what, body] of chats) {
    it(`/v1/chat/completions with ${what} is a 4xx`, async () => {
      const res = await chat(body)
      expect(res.status).toBeGreaterThanOrEqual(400)
      expect(res.status).toBeLessThan(500)
      expectClean(await res.text())
    })
  }

  it("stays healthy and serving after all of it", async () => {
    expect((await getJson(`${neuron.url}/health`)).body.status).toBe("ok")
    expect(await modelStatus(neuron.url, "tiny")).toBe("loaded")
    const res = await chat({ messages: [{ role: "user", content: "a\u0000b" }] })
    expect(res.status).toBe(200)
    expect(neuron.process.exitCode).toBeNull()
  })
})
