/**
 * Crash isolation: a GGUF that makes llama.cpp abort kills the device worker, never the daemon.
 * The load fails with a typed error, in-flight streams end with an in-band error event, loaded
 * models go `recovering`, the worker restarts and they come back.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import OpenAI from "openai"
import { getJson, modelStatus, type NeuronProcess, postJson, readSse, startNeuron, waitFor } from "./fixtures/neuron.js"

let neuron: NeuronProcess

beforeAll(async () => {
  neuron = await startNeuron({ models: ["tiny", "broken"], defaultModels: ["tiny"] })
})

afterAll(async () => {
  await neuron?.stop()
})

describe("worker crash", () => {
  it("fails the load, errors the in-flight stream in-band, keeps the API up and recovers the loaded model", async () => {
    const before = await getJson(`${neuron.url}/health`)
    const pidBefore = (await getJson(`${neuron.url}/models`)).body.devices[0].worker.pid
    expect(before.body.models).toEqual([{ id: "tiny", status: "loaded", in_flight: 0, queue_depth: 0 }])

    // A long generation in flight on the healthy model.
    const streaming = await postJson(`${neuron.url}/v1/chat/completions`, {
      model: "tiny",
      stream: true,
      messages: [{ role: "user", content: "go" }],
      temperature: 0,
      max_tokens: 4000
    })
    expect(streaming.status).toBe(200)
    let firstData: () => void
    const gotFirst = new Promise<void>((resolve) => (firstData = resolve))
    const events = readSse(streaming, () => firstData())
    await gotFirst

    const load = await postJson(`${neuron.url}/models/load`, { model: "broken" })
    expect(load.status).toBe(500)
    const loadBody = await load.json() as any
    expect(loadBody.error.code).toBe("model_load_failed")
    expect(loadBody.error.message).toMatch(/crashed/)

    // The stream that was in flight ends with an error event, never [DONE].
    const data = (await events).filter((e) => e.type === "data").map((e) => e.value)
    expect(data).not.toContain("[DONE]")
    const last = JSON.parse(data.at(-1)!)
    expect(last.error.code).toBe("worker_crashed")

    // The daemon answers throughout; the broken model is failed with its reason.
    const health = await getJson(`${neuron.url}/health`)
    expect(health.status).toBe(200)
    const models = (await getJson(`${neuron.url}/models`)).body.data as Array<any>
    const broken = models.find((m) => m.id === "broken")
    expect(broken.status).toBe("failed")
    expect(broken.error).toMatch(/SIGABRT|crashed/)
    expect(["recovering", "loaded"]).toContain(models.find((m) => m.id === "tiny").status)

    // The worker restarts (a new pid) and the model that was loaded comes back.
    await waitFor("tiny recovered", async () => (await modelStatus(neuron.url, "tiny")) === "loaded" ? true : undefined)
    const after = (await getJson(`${neuron.url}/models`)).body.devices[0].worker
    expect(after.pid).not.toBe(pidBefore)
    expect(after.restarts).toBe(1)
    const client = new OpenAI({ baseURL: `${neuron.url}/v1`, apiKey: "x", maxRetries: 0 })
    const res = await client.chat.completions.create({
      model: "tiny",
      messages: [{ role: "user", content: "hi" }],
      temperature: 0,
      max_tokens: 4
    })
    expect(res.usage?.completion_tokens).toBe(4)
    expect(neuron.process.exitCode).toBeNull()
  })

  it("restarts an idle worker on request (defragmentation) and reloads its models", async () => {
    const before = (await getJson(`${neuron.url}/models`)).body.devices[0].worker
    const res = await postJson(`${neuron.url}/admin/restart-worker`, {})
    expect(res.status).toBe(200)
    const body = await res.json() as any
    expect(body.restarted).toBe(true)
    expect(body.models).toEqual(["tiny:loaded"])
    const after = (await getJson(`${neuron.url}/models`)).body.devices[0].worker
    expect(after.pid).not.toBe(before.pid)
    expect(await modelStatus(neuron.url, "tiny")).toBe("loaded")
  })

  it("answers a request for a recovering model with 503 and Retry-After", async () => {
    const pid = (await getJson(`${neuron.url}/models`)).body.devices[0].worker.pid as number
    process.kill(pid, "SIGKILL")
    const res = await waitFor("a 503 while recovering", async () => {
      const r = await postJson(`${neuron.url}/v1/chat/completions`, {
        model: "tiny",
        messages: [{ role: "user", content: "hi" }],
        temperature: 0,
        max_tokens: 2
      })
      return r.status === 503 ? r : undefined
    }, 5_000)
    expect(res.headers.get("retry-after")).not.toBeNull()
    const body = await res.json() as any
    expect(body.error.code).toBe("model_recovering")
    await waitFor(
      "tiny recovered again",
      async () => (await modelStatus(neuron.url, "tiny")) === "loaded" ? true : undefined
    )
  })
})
