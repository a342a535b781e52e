/**
 * Fleet lifecycle races against real processes: a neuron the gateway has not polled yet, and a
 * cold load on one node while another node drains a victim's stream.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import OpenAI from "openai"
import { type GatewayProcess, startGateway } from "./fixtures/gateway.js"
import { modelsDirWith } from "./fixtures/models.js"
import {
  CLI,
  freePort,
  getJson,
  type NeuronProcess,
  postJson,
  readSse,
  startNeuron,
  waitFor
} from "./fixtures/neuron.js"

const client = (gateway: GatewayProcess) => new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: "x", maxRetries: 0 })
const ask = (openai: OpenAI, model: string) =>
  openai.chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 2 })
const nodeHealthy = (gateway: GatewayProcess, name: string) => async () => {
  const { body } = await getJson(`${gateway.url}/health`)
  return body.nodes.some((n: any) => n.name === name && n.healthy) ? true : undefined
}

/** A neuron on a port chosen before it starts (startNeuron picks its own). */
const neuronOnPort = async (port: number, models: Parameters<typeof modelsDirWith>[0]) => {
  const child = spawn(process.execPath, [CLI, "neuron", "--port", String(port)], {
    env: {
      ...process.env,
      NEURON_HOST: "127.0.0.1",
      NEURON_THREADS: "1",
      NEURON_MODELS_DIR: await modelsDirWith(models),
      NEURON_DEFAULT_MODELS: "",
      NEURON_MEMORY_BUDGET_MB: "100"
    },
    stdio: ["ignore", "pipe", "pipe"]
  })
  let output = ""
  child.stdout.on("data", (d) => (output += d))
  child.stderr.on("data", (d) => (output += d))
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  return {
    url: `http://127.0.0.1:${port}`,
    logs: () => output,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill("SIGTERM")
      const timer = setTimeout(() => child.kill("SIGKILL"), 30_000)
      await exited
      clearTimeout(timer)
    }
  }
}

describe("a neuron not polled yet", () => {
  let up: NeuronProcess
  let late: Awaited<ReturnType<typeof neuronOnPort>> | undefined
  let latePort: number
  let gateway: GatewayProcess
  let openai: OpenAI

  beforeAll(async () => {
    up = await startNeuron({ models: ["tiny-b"], env: { NEURON_MEMORY_BUDGET_MB: "100" } })
    latePort = await freePort()
    gateway = await startGateway({
      neurons: [{ name: "up", url: up.url }, { name: "late", url: `http://127.0.0.1:${latePort}` }],
      modelsToml: `[[models]]\nid = "a"\nfile = "tiny"\nsampling = { temperature = 0 }\n`,
      waitHealthy: false
    })
    await waitFor("the up node polled", nodeHealthy(gateway, "up"))
    openai = client(gateway)
  }, 180_000)

  afterAll(async () => {
    await gateway?.stop()
    await Promise.all([up?.stop(), late?.stop()])
  })

  it("answers 503 + Retry-After, not 404, until the node is seen; then serves (or 404s) as usual", async () => {
    // "a" is configured and only the silent node can have its file.
    const early = await ask(openai, "a").catch((e) => e)
    expect(early).toBeInstanceOf(OpenAI.APIError)
    expect(early.status).toBe(503)
    expect(early.headers.get("retry-after")).not.toBeNull()
    expect(early.code).toBe("model_unavailable")
    expect(early.error.message).toContain("late")
    // A model no profile names and no polled node has may still be on the silent node.
    const unknown = await ask(openai, "tiny-x").catch((e) => e)
    expect(unknown.status).toBe(503)
    expect(unknown.headers.get("retry-after")).not.toBeNull()

    late = await neuronOnPort(latePort, ["tiny"])
    await waitFor("the late node healthy", nodeHealthy(gateway, "late"))
    expect((await ask(openai, "a")).usage?.completion_tokens).toBe(2)
    const missing = await ask(openai, "tiny-x").catch((e) => e)
    expect(missing.status).toBe(404)
    expect(missing.code).toBe("model_not_found")
  })
})

describe("a cold load while another node drains a victim", () => {
  let one: NeuronProcess
  let two: NeuronProcess
  let gateway: GatewayProcess
  let openai: OpenAI

  beforeAll(async () => {
    // "one" holds a single tiny model (~45 MB) at a time; "two" has room.
    ;[one, two] = await Promise.all([
      startNeuron({ models: ["tiny", "tiny-b"], env: { NEURON_MAX_IN_FLIGHT: "1", NEURON_MEMORY_BUDGET_MB: "60" } }),
      startNeuron({ models: ["tiny-c"], env: { NEURON_MAX_IN_FLIGHT: "1", NEURON_MEMORY_BUDGET_MB: "100" } })
    ])
    gateway = await startGateway({
      neurons: [{ name: "one", url: one.url }, { name: "two", url: two.url }],
      modelsToml: ["a:tiny", "b:tiny-b", "c:tiny-c"].map((s) => {
        const [id, file] = s.split(":")
        return `[[models]]\nid = "${id}"\nfile = "${file}"\nsampling = { temperature = 0 }\n`
      }).join(""),
      extraToml: "[eviction]\nstrategy = \"lru\"\nmin_resident_secs = 0\nmax_swap_wait_secs = 0\n"
    })
    openai = client(gateway)
  }, 180_000)

  afterAll(async () => {
    await gateway?.stop()
    await Promise.all([one?.stop(), two?.stop()])
  })

  it("loads on the free node without waiting for the drain", async () => {
    await ask(openai, "a")
    // A long stream keeps "a" busy on "one".
    const res = await postJson(`${gateway.url}/v1/chat/completions`, {
      model: "a",
      stream: true,
      max_tokens: 3500,
      messages: [{ role: "user", content: "long" }]
    })
    let streaming: () => void
    const first = new Promise<void>((resolve) => (streaming = resolve))
    let streamDoneAt = 0
    const events = readSse(res, () => streaming()).then((e) => {
      streamDoneAt = Date.now()
      return e
    })
    await first
    // "b" must evict the busy "a" on "one": its load waits for the stream.
    let bDoneAt = 0
    const b = ask(openai, "b").then((r) => {
      bDoneAt = Date.now()
      return r
    })
    await waitFor("b's load planned on one", async () => {
      const { body } = await getJson(`${gateway.url}/health`)
      return body.loads_in_progress.some((l: any) => l.model === "b" && l.node === "one") ? true : undefined
    })
    // Meanwhile "c" fits on "two".
    const started = Date.now()
    const c = await ask(openai, "c")
    const cDoneAt = Date.now()
    const stillStreaming = streamDoneAt === 0
    const stillWaiting = bDoneAt === 0
    const data = (await events).filter((e) => e.type === "data").map((e) => e.value)
    await b
    console.log(
      `cold load of c on two while one drains: ${cDoneAt - started} ms; ` +
        `the stream on one ended ${streamDoneAt - cDoneAt} ms later, b answered ${bDoneAt - cDoneAt} ms later`
    )
    expect(c.usage?.completion_tokens).toBe(2)
    expect(stillStreaming).toBe(true)
    expect(stillWaiting).toBe(true)
    expect(data.at(-1)).toBe("[DONE]")
    const recent = (await getJson(`${gateway.url}/admin/status`)).body.recent_loads
    expect(recent.find((l: any) => l.model === "c")).toMatchObject({ node: "two", evicted: [] })
    expect(recent.find((l: any) => l.model === "b")).toMatchObject({ node: "one", evicted: ["tiny"] })
  })
})
