/**
 * Config reload on real processes: SIGHUP, POST /admin/reload and watch_config re-read
 * cortex.toml and models.toml while requests are in flight; a bad file is refused with the
 * error a start gives and the running config keeps serving; a removed neuron drains.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import { readFile, writeFile } from "node:fs/promises"
import OpenAI from "openai"
import { type GatewayProcess, startGateway } from "./fixtures/gateway.js"
import { CLI, getJson, type NeuronProcess, postJson, readSse, startNeuron, waitFor } from "./fixtures/neuron.js"

const MODELS = `[[models]]\nid = "tiny"\n\n[[models]]\nid = "tiny-b"\n\n[[models]]\nid = "bench"\n`
/** `bench` is slow on one thread: a stream of this many tokens is still running while a reload happens. */
const LONG = 400

let neuron: NeuronProcess
let gateway: GatewayProcess
let cortexToml: string

beforeAll(async () => {
  neuron = await startNeuron({ models: ["tiny", "tiny-b", "bench"], defaultModels: ["tiny", "bench"] })
  gateway = await startGateway({ neurons: [{ name: "local", url: neuron.url }], modelsToml: MODELS })
  cortexToml = await readFile(gateway.configFile, "utf8")
})

afterAll(async () => {
  await gateway?.stop()
  await neuron?.stop()
})

const modelIds = async (headers: Record<string, string> = {}) => {
  const res = await fetch(`${gateway.url}/v1/models`, { headers })
  return ((await res.json()) as any).data.map((m: { id: string }) => m.id) as Array<string>
}

/** A long stream on `bench`, resolved once its first event is in; `done` reads it to the end. */
const longStream = async () => {
  const res = await postJson(`${gateway.url}/v1/chat/completions`, {
    model: "bench",
    stream: true,
    max_tokens: LONG,
    messages: [{ role: "user", content: "long" }]
  })
  expect(res.status).toBe(200)
  let started: () => void
  const first = new Promise<void>((resolve) => (started = resolve))
  const done = readSse(res, () => started())
  await first
  // Wrapped: an async function returning the promise itself would wait for the whole stream.
  return { done }
}

const expectComplete = (events: Awaited<ReturnType<typeof readSse>>) => {
  const data = events.filter((e) => e.type === "data").map((e) => e.value)
  expect(data.at(-1)).toBe("[DONE]")
  expect(JSON.parse(data.at(-2)!).usage.completion_tokens).toBe(LONG)
}

const logsSince = (mark: number) => gateway.logs().slice(mark)

describe("SIGHUP", () => {
  it("serves a new alias without a restart while a stream in flight completes", async () => {
    expect(await modelIds()).not.toContain("quick")
    const before = await postJson(`${gateway.url}/v1/chat/completions`, {
      model: "quick",
      max_tokens: 2,
      messages: [{ role: "user", content: "hi" }]
    })
    expect(before.status).toBe(404)

    const stream = await longStream()
    await writeFile(gateway.modelsFile, `${MODELS}\n[aliases]\nquick = "tiny-b"\n`)
    const mark = gateway.logs().length
    gateway.process.kill("SIGHUP")
    await waitFor("the reload", async () => logsSince(mark).includes("config reloaded (SIGHUP)") || undefined)
    const reloadedAt = Date.now()
    expect(logsSince(mark)).toContain("alias quick → tiny-b")

    expect(await modelIds()).toContain("quick")
    const openai = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: "unused", maxRetries: 0 })
    const answer = await openai.chat.completions.create({
      model: "quick",
      max_tokens: 2,
      messages: [{ role: "user", content: "hi" }]
    })
    expect(answer.usage?.completion_tokens).toBe(2)

    const events = await stream.done
    expectComplete(events)
    // The stream was still open after the reload was in force.
    expect(events.at(-1)!.at).toBeGreaterThan(reloadedAt)
    expect(gateway.process.exitCode).toBeNull()
  })

  it("refuses an invalid file with the error a start gives, and the running config keeps serving", async () => {
    const bad = `${MODELS}\n[aliases]\nquick = "tiny-b"\nbroken = "no-such-model"\n`
    await writeFile(gateway.modelsFile, bad)
    const mark = gateway.logs().length
    gateway.process.kill("SIGHUP")
    const expected = `${gateway.modelsFile}: aliases.broken: points to 'no-such-model', which is not a model`
    await waitFor("the refusal", async () => logsSince(mark).includes("config reload (SIGHUP) refused") || undefined)
    expect(logsSince(mark)).toContain(expected)

    // A start on the same files says the same thing, and exits.
    const start = spawn(process.execPath, [CLI, "serve", "--config", gateway.configFile], { stdio: "pipe" })
    let startOutput = ""
    start.stderr.on("data", (d) => (startOutput += d))
    start.stdout.on("data", (d) => (startOutput += d))
    const code = await new Promise<number | null>((resolve) => start.once("exit", resolve))
    expect(code).toBe(2)
    expect(startOutput).toContain(`invalid configuration: ${expected}`)

    // Still serving the last good config.
    expect(await modelIds()).toContain("quick")
    expect(await modelIds()).not.toContain("broken")
    const still = await postJson(`${gateway.url}/v1/chat/completions`, {
      model: "quick",
      max_tokens: 2,
      messages: [{ role: "user", content: "hi" }]
    })
    expect(still.status).toBe(200)

    // Not even valid TOML: refused the same way.
    await writeFile(gateway.modelsFile, "[[models]\nid = ")
    const mark2 = gateway.logs().length
    gateway.process.kill("SIGHUP")
    await waitFor("the refusal", async () => logsSince(mark2).includes("config reload (SIGHUP) refused") || undefined)
    expect(logsSince(mark2)).toContain("invalid TOML")
    expect(await modelIds()).toContain("quick")
    await writeFile(gateway.modelsFile, `${MODELS}\n[aliases]\nquick = "tiny-b"\n`)
  })
})

describe("POST /admin/reload", () => {
  const reload = (headers: Record<string, string> = {}) => postJson(`${gateway.url}/admin/reload`, {}, headers)

  it("answers what changed, refuses a bad file with 422 naming it, and takes new keys at once", async () => {
    await writeFile(gateway.modelsFile, `${MODELS}\n[aliases]\nquick = "tiny-b"\nsmall = "tiny"\n`)
    const ok = await reload()
    expect(ok.status).toBe(200)
    const answer = await ok.json() as any
    expect(answer).toMatchObject({ status: "reloaded", trigger: "POST /admin/reload", draining: [] })
    expect(answer.changes).toEqual(["alias small → tiny"])
    expect(await modelIds()).toContain("small")

    await writeFile(gateway.modelsFile, `${MODELS}\n[[models]]\nid = "tiny"\n`)
    const refused = await reload()
    expect(refused.status).toBe(422)
    const error = (await refused.json() as any).error
    expect(error.message).toBe(
      `config reload refused, the running config keeps serving: invalid configuration: ${gateway.modelsFile}: models.3.id: duplicate model id 'tiny'`
    )
    expect(error.param).toBe("models.3.id")
    expect(await modelIds()).toContain("small")

    // Keys and require_auth take effect for the next request; a restart-only key is named.
    await writeFile(gateway.modelsFile, `${MODELS}\n[aliases]\nquick = "tiny-b"\nsmall = "tiny"\n`)
    await writeFile(
      gateway.configFile,
      cortexToml.replace("idle_timeout_secs = 30", "idle_timeout_secs = 31") +
        `\n[auth]\nrequire_auth = true\nkeys = [{ key = "sk-reload-0123", name = "ops" }]\n`
    )
    const withAuth = await reload()
    expect(withAuth.status).toBe(200)
    const authAnswer = await withAuth.json() as any
    expect(authAnswer.changes).toEqual(["api keys: 0 → 1", "require_auth: false → true"])
    expect(authAnswer.restart_needed).toEqual(["[gateway] idle_timeout_secs"])
    expect(gateway.logs()).toContain("changed but needs a restart to take effect: [gateway] idle_timeout_secs")
    expect((await fetch(`${gateway.url}/v1/models`)).status).toBe(401)
    expect(await modelIds({ authorization: "Bearer sk-reload-0123" })).toContain("small")
    expect((await reload()).status).toBe(401)

    await writeFile(gateway.configFile, cortexToml)
    expect((await reload({ authorization: "Bearer sk-reload-0123" })).status).toBe(200)
    expect((await fetch(`${gateway.url}/v1/models`)).status).toBe(200)
  })

  it("drains a removed neuron: nothing new goes to it, the stream on it completes, then it is dropped", async () => {
    const stream = await longStream()
    const withoutNeurons = cortexToml.replace(/\[\[neurons\]\][^[]*/s, "")
    expect(withoutNeurons).not.toContain("[[neurons]]")
    await writeFile(gateway.configFile, withoutNeurons)
    const res = await reload()
    expect(res.status).toBe(200)
    expect((await res.json() as any).draining).toEqual(["local"])

    const health = (await getJson(`${gateway.url}/health`)).body
    const local = health.nodes.find((n: any) => n.name === "local")
    // Still listed while its stream runs, but out of routing.
    expect(local).toMatchObject({ healthy: false, status: "draining" })
    const refused = await postJson(`${gateway.url}/v1/chat/completions`, {
      model: "tiny",
      max_tokens: 2,
      messages: [{ role: "user", content: "hi" }]
    })
    // Its only node is draining: unavailable, not sent there.
    const body = await refused.json() as any
    expect(refused.status).toBe(503)
    expect(body.error).toMatchObject({
      code: "model_unavailable",
      message: "Model tiny is unavailable: no healthy node serves it"
    })

    expectComplete(await stream.done)
    await waitFor(
      "local dropped",
      async () => (await getJson(`${gateway.url}/health`)).body.nodes.length === 0 ? true : undefined
    )
    expect(gateway.logs()).toContain("neuron local removed from the config: drained and dropped")

    // Back in the config: polled at once and serving again.
    await writeFile(gateway.configFile, cortexToml)
    const back = await reload()
    expect((await back.json() as any).changes).toEqual([`neuron added: local (${neuron.url})`])
    const again = await postJson(`${gateway.url}/v1/chat/completions`, {
      model: "tiny",
      max_tokens: 2,
      messages: [{ role: "user", content: "hi" }]
    })
    expect(again.status).toBe(200)
  })
})

describe("watch_config", () => {
  it("reloads when models.toml changes on disk", async () => {
    const watched = await startGateway({
      neurons: [{ name: "local", url: neuron.url }],
      modelsToml: MODELS,
      gatewayKeys: ["watch_config = true"]
    })
    try {
      const ids = async () => ((await getJson(`${watched.url}/v1/models`)).body.data as Array<any>).map((m) => m.id)
      expect(await ids()).not.toContain("watched")
      await writeFile(watched.modelsFile, `${MODELS}\n[aliases]\nwatched = "tiny"\n`)
      await waitFor("the alias", async () => (await ids()).includes("watched") || undefined)
      expect(watched.logs()).toContain("config reloaded (file change): alias watched → tiny")
    } finally {
      await watched.stop()
    }
  })
})

describe("neuron SIGHUP", () => {
  it("applies api_token, max_n and new default models live, refuses a bad file, names restart-only keys", async () => {
    const n = await startNeuron({
      models: ["tiny", "tiny-b"],
      toml: `max_n = 1\ndefault_models = ["tiny"]\napi_token = "tok-one-0123"\n`,
      // default_models from the file, not the fixture's variable.
      env: { NEURON_DEFAULT_MODELS: undefined as unknown as string }
    })
    try {
      const as = (token: string) => ({ authorization: `Bearer ${token}` })
      const status = async (token: string, id: string) => {
        const res = await fetch(`${n.url}/models`, { headers: as(token) })
        return ((await res.json()) as any).data.find((m: any) => m.id === id)?.status as string | undefined
      }
      const chat = (token: string, choices: number) =>
        postJson(`${n.url}/v1/chat/completions`, {
          model: "tiny",
          n: choices,
          max_tokens: 2,
          messages: [{ role: "user", content: "hi" }]
        }, as(token))
      await waitFor("tiny loaded", async () => (await status("tok-one-0123", "tiny")) === "loaded" || undefined)
      const one = await chat("tok-one-0123", 2)
      expect(one.status).toBe(422)
      expect(((await one.json()) as any).error.message).toContain("max_n")

      await writeFile(
        n.configFile!,
        `max_n = 2\ndefault_models = ["tiny", "tiny-b"]\napi_token = "tok-two-0123"\nmax_queue_depth = 5\n`
      )
      const mark = n.logs().length
      n.process.kill("SIGHUP")
      await waitFor("the reload", async () => n.logs().slice(mark).includes("config reloaded (SIGHUP)") || undefined)
      const logged = () => n.logs().slice(mark)
      expect(logged()).toContain(`api_token changed; max_n: 1 → 2; default_models: ["tiny"] → ["tiny","tiny-b"]`)
      await waitFor(
        "the restart note",
        async () => logged().includes("changed but needs a restart to take effect: max_queue_depth") || undefined
      )
      expect((await chat("tok-one-0123", 2)).status).toBe(401)
      const two = await chat("tok-two-0123", 2)
      expect(two.status).toBe(200)
      expect(((await two.json()) as any).choices).toHaveLength(2)
      await waitFor("tiny-b loaded", async () => (await status("tok-two-0123", "tiny-b")) === "loaded" || undefined)

      await writeFile(n.configFile!, `max_n = 0\napi_token = "tok-three-0123"\n`)
      const mark2 = n.logs().length
      n.process.kill("SIGHUP")
      await waitFor("the refusal", async () => n.logs().slice(mark2).includes("refused") || undefined)
      expect(n.logs().slice(mark2)).toContain(
        `config reload (SIGHUP) refused, the running config keeps serving: invalid configuration: ${n.configFile}: max_n:`
      )
      expect((await chat("tok-two-0123", 2)).status).toBe(200)
      expect(n.process.exitCode).toBeNull()
    } finally {
      await n.stop()
    }
  })
})
