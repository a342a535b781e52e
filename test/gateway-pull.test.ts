/**
 * Model sources end to end, no internet: models named only by `hf:` references in models.toml,
 * on no neuron's disk, are served on their first request through the gateway — the neuron pulls
 * the file from a local hub-compatible server (test/fixtures/hub.ts), loads it and answers —
 * with keep-alives that carry the pull's progress while the client waits, for the `openai` and
 * `@anthropic-ai/sdk` clients (each client's own stream parser; the raw bytes are recorded through
 * the SDK's `fetch` option). Then the operator commands: `cortex pull` with its progress,
 * `cortex status` and `/models` agreeing, `cortex rm`, a failed pull's clear error, and the pull
 * metrics on both gateway and neuron.
 */
import Anthropic from "@anthropic-ai/sdk"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { execFile } from "node:child_process"
import { readFileSync } from "node:fs"
import { promisify } from "node:util"
import OpenAI from "openai"
import parsePrometheus from "parse-prometheus-text-format"
import { type Hub, startHub } from "./fixtures/hub.js"
import { fixturePath } from "./fixtures/models.js"
import { CLI, freePort, getJson, waitFor } from "./fixtures/neuron.js"
import { requirePromtool, runPromtool } from "./fixtures/promtool.js"
import { type Stack, startStack } from "./fixtures/stack.js"

const tiny = readFileSync(fixturePath("tiny"))
const tinyB = readFileSync(fixturePath("tiny-b"))
const tinyC = readFileSync(fixturePath("tiny-c"))

let hub: Hub
let stack: Stack
let neuronMetrics: string

/** A fetch for the SDKs that keeps a copy of every response body's text. */
const recorder = () => {
  const seen = { text: "" }
  const fetchAndKeep: typeof fetch = async (input, init) => {
    const res = await fetch(input, init)
    if (!res.body) return res
    const [mine, theirs] = res.body.tee()
    void (async () => {
      const decoder = new TextDecoder()
      for await (const chunk of mine as unknown as AsyncIterable<Uint8Array>) {
        seen.text += decoder.decode(chunk, { stream: true })
      }
    })()
    return new Response(theirs, { status: res.status, statusText: res.statusText, headers: res.headers })
  }
  return { seen, fetch: fetchAndKeep }
}

beforeAll(async () => {
  hub = await startHub({
    "acme/Tiny-GGUF": { files: { "tiny-Q8_0.gguf": { data: tiny, holdAfter: 300 * 1024 } } },
    "acme/TinyB-GGUF": { files: { "tinyb-Q8_0.gguf": { data: tinyB, holdAfter: 300 * 1024 } } },
    "acme/TinyC-GGUF": { files: { "tinyc-Q4_K_M.gguf": { data: tinyC }, "tinyc-Q8_0.gguf": { data: tinyB } } }
  })
  const metricsPort = await freePort()
  neuronMetrics = `http://127.0.0.1:${metricsPort}/metrics`
  stack = await startStack({
    models: [],
    toml: `metrics_port = ${metricsPort}\n[sources.hf]\nendpoint = "${hub.url}"\n`
  }, {
    modelsToml: [
      "[[models]]",
      `id = "tiny-hf"`,
      `source = "hf:acme/Tiny-GGUF"`,
      `quant = "Q8_0"`,
      "[[models]]",
      `id = "tiny-b-hf"`,
      `file = "hf:acme/TinyB-GGUF/tinyb-Q8_0.gguf"`,
      "[[models]]",
      `id = "tiny-c-hf"`,
      `source = "hf:acme/TinyC-GGUF"`,
      `quant = "q4_k_m"`,
      "[[models]]",
      `id = "missing-hf"`,
      `source = "hf:acme/Nothing-GGUF"`,
      `quant = "Q4_K_M"`
    ].join("\n")
  })
}, 180_000)

afterAll(async () => {
  await stack?.stop()
  await hub?.close()
})

describe("a model named only by its source, on no disk", () => {
  it("is pulled, loaded and streamed on the first request (openai), with the progress in keep-alives", async () => {
    const raw = recorder()
    const openai = new OpenAI({ baseURL: `${stack.gateway.url}/v1`, apiKey: "unused", maxRetries: 0, fetch: raw.fetch })
    const stream = await openai.chat.completions.create({
      model: "tiny-hf",
      stream: true,
      max_tokens: 4,
      messages: [{ role: "user", content: "hello" }]
    })
    const text = (async () => {
      let out = ""
      for await (const chunk of stream) out += chunk.choices[0]?.delta?.content ?? ""
      return out
    })()
    // The download is held after 300 KB: the client hears how far it got, then it goes on.
    await waitFor(
      "a keep-alive with the pull's progress",
      async () =>
        raw.seen.text.match(/: keep-alive pulling hf:acme\/Tiny-GGUF:Q8_0 on local: 0\.[0-9]\/0\.8 MB/) ?? undefined
    )
    // While it waits, the operator sees the same pull in cortex status and in the neuron's /models.
    const status = await promisify(execFile)(process.execPath, [CLI, "status", "--endpoint", stack.gateway.url])
    expect(status.stdout).toMatch(/downloading: hf:acme\/Tiny-GGUF:Q8_0 on local 0\.\d\/0\.8 MB/)
    const onNeuron = (await getJson(`${stack.neuron.url}/models`)).body.data.find((m: any) =>
      m.id === "hf:acme/Tiny-GGUF:Q8_0"
    )
    expect(onNeuron.status).toBe("downloading")
    expect(onNeuron.download.bytes_total).toBe(tiny.length)
    hub.release("acme/Tiny-GGUF/tiny-Q8_0.gguf")
    expect((await text).length).toBeGreaterThan(0)
    const models = (await getJson(`${stack.gateway.url}/v1/models`)).body.data as Array<any>
    expect(models.find((m) => m.id === "tiny-hf")?.loaded).toBe(true)
  }, 120_000)

  it("is pulled, loaded and streamed on the first request (anthropic), with the progress in pings", async () => {
    const raw = recorder()
    const anthropic = new Anthropic({ baseURL: stack.gateway.url, apiKey: "unused", maxRetries: 0, fetch: raw.fetch })
    const stream = anthropic.messages.stream({
      model: "tiny-b-hf",
      max_tokens: 4,
      messages: [{ role: "user", content: "hello" }]
    })
    const done = stream.finalMessage()
    await waitFor(
      "a ping with the pull's progress",
      async () =>
        raw.seen.text.match(/"type":"ping","progress":"pulling hf:acme\/TinyB-GGUF\/tinyb-Q8_0\.gguf on local: /) ??
          undefined
    )
    hub.release("acme/TinyB-GGUF/tinyb-Q8_0.gguf")
    const message = await done
    expect(message.content[0]?.type).toBe("text")
    expect(message.usage.output_tokens).toBe(4)
  }, 120_000)
})

describe("operator commands", () => {
  const cortex = (args: ReadonlyArray<string>) =>
    promisify(execFile)(process.execPath, [CLI, ...args, "--endpoint", stack.gateway.url])
      .then(({ stdout }) => ({ code: 0, stdout }))
      .catch((e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout + e.stderr }))

  it("cortex pull shows progress; status, /models and the CLI agree; rm deletes it", async () => {
    const pulled = await cortex(["pull", "tiny-c-hf"])
    expect(pulled.code).toBe(0)
    expect(pulled.stdout).toContain("pulling hf:acme/TinyC-GGUF:q4_k_m on local")
    expect(pulled.stdout).toMatch(/\[#+\] 100%/)
    expect(pulled.stdout).toContain("pulled hf:acme/TinyC-GGUF:q4_k_m on local")
    const onNeuron = (await getJson(`${stack.neuron.url}/models`)).body
    expect(onNeuron.data.find((m: any) => m.id === "hf:acme/TinyC-GGUF:q4_k_m")?.status).toBe("available")
    await waitFor("the gateway's poll", async () => {
      const status = (await getJson(`${stack.gateway.url}/admin/status`)).body
      return status.downloads.find((d: any) => d.model === "hf:acme/TinyC-GGUF:q4_k_m" && d.status === "done")
    })
    const again = await cortex(["pull", "tiny-c-hf"])
    expect(again.stdout).toContain("hf:acme/TinyC-GGUF:q4_k_m is already on local")

    const removed = await cortex(["rm", "tiny-c-hf"])
    expect(removed.code).toBe(0)
    expect(removed.stdout).toContain("removed")
    const after = (await getJson(`${stack.neuron.url}/models`)).body
    expect(after.data.find((m: any) => m.id === "hf:acme/TinyC-GGUF:q4_k_m")).toBeUndefined()

    // A loaded model is not deleted.
    const refused = await cortex(["rm", "tiny-hf", "--node", "local"])
    expect(refused.code).toBe(1)
    expect(refused.stdout).toContain("unload it first")
  }, 120_000)

  it("cortex pull of a missing repository fails with the hub's reason; a request for it gets 404", async () => {
    const res = await cortex(["pull", "missing-hf"])
    expect(res.code).toBe(1)
    expect(res.stdout).toContain("Repository not found")
    const openai = new OpenAI({ baseURL: `${stack.gateway.url}/v1`, apiKey: "unused", maxRetries: 0 })
    const error = await openai.chat.completions.create({
      model: "missing-hf",
      max_tokens: 2,
      messages: [{ role: "user", content: "hi" }]
    }).catch((e: unknown) => e as InstanceType<typeof OpenAI.APIError>)
    expect(error).toBeInstanceOf(OpenAI.APIError)
    expect((error as InstanceType<typeof OpenAI.APIError>).status).toBe(404)
    expect((error as InstanceType<typeof OpenAI.APIError>).code).toBe("source_not_found")
  }, 60_000)

  it("counts pulled bytes and pull durations on the gateway and the neuron, promtool-clean", async () => {
    const promtool = await requirePromtool()
    for (const url of [stack.gateway.metricsUrl, neuronMetrics]) {
      const text = await (await fetch(url)).text()
      const families = new Map(parsePrometheus(text).map((f) => [f.name, f]))
      const bytes = families.get("cortex_model_pull_bytes_total")
      expect(bytes?.type).toBe("COUNTER")
      expect(bytes!.metrics.some((m) => m.labels?.model === "hf:acme/Tiny-GGUF:Q8_0" && Number(m.value) >= tiny.length))
        .toBe(true)
      expect(families.get("cortex_model_pull_seconds")?.type).toBe("HISTOGRAM")
      // (the parser drops a histogram's labels: read them from the text)
      expect(text).toMatch(/cortex_model_pull_seconds_count\{model="hf:acme\/Tiny-GGUF:Q8_0",[^}]*outcome="done"/)
      expect(text).toMatch(/cortex_model_pull_seconds_bucket\{[^}]*le="5"/)
      if (promtool) {
        const pulls = text.split("\n").filter((line) => line.includes("cortex_model_pull_")).join("\n") + "\n"
        const check = await runPromtool(["check", "metrics"], pulls)
        expect(check).toEqual({ code: 0, out: "" })
      }
    }
  })
})
