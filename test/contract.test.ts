/**
 * The gateway ⇄ neuron contract: a real neuron's answers decode with the contract's schemas, and
 * a neuron that answers outside it is reported by the gateway naming the field, never trusted.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { NeuronDiscovery, NeuronHealth, NeuronModels } from "../src/domain/contract.js"
import { startGateway } from "./fixtures/gateway.js"
import { getJson, type NeuronProcess, startNeuron, waitFor } from "./fixtures/neuron.js"

let neuron: NeuronProcess

beforeAll(async () => {
  neuron = await startNeuron({ models: ["tiny"], defaultModels: ["tiny"] })
}, 180_000)

afterAll(async () => {
  await neuron?.stop()
})

describe("the contract", () => {
  it("decodes a real neuron's /health, /models and /discovery", async () => {
    for (
      const [path, schema] of [
        ["/health", NeuronHealth],
        ["/models", NeuronModels],
        ["/discovery", NeuronDiscovery]
      ] as const
    ) {
      const { body } = await getJson(`${neuron.url}${path}`)
      expect(() => Schema.decodeUnknownSync(schema as Schema.Schema<unknown, unknown>)(body), path).not.toThrow()
    }
  })

  it("carries device groups, per-device memory and telemetry, and still decodes an answer without them", () => {
    const device = { id: "cuda:0", kind: "cuda", name: "gpu", totalMb: 24000, freeMb: 1000, usedMb: 23000 }
    const model = {
      id: "big",
      status: "loaded",
      error: null,
      device: "cuda:0+cuda:1",
      size_bytes: 1,
      memory_estimate_mb: 40000,
      context_limit: 4096,
      capabilities: ["chat"],
      in_flight: 0,
      queue_depth: 0,
      loaded_at: null,
      last_used_at: null
    }
    // A neuron from before device groups: no group, no telemetry. Each device is its own group.
    const old = Schema.decodeUnknownSync(NeuronModels)({ data: [model], devices: [device] })
    expect(old.devices[0]!.group).toBeUndefined()
    const now = Schema.decodeUnknownSync(NeuronModels)({
      data: [{ ...model, group: "cuda:0+cuda:1", device_memory_mb: { "cuda:0": 20000, "cuda:1": 20000 } }],
      devices: [{ ...device, group: "cuda:0+cuda:1", utilization: 0.5, temperatureC: 60, powerW: 250, uuid: "GPU-1" }]
    })
    expect(now.data[0]!.device_memory_mb).toEqual({ "cuda:0": 20000, "cuda:1": 20000 })
    expect(now.devices[0]).toMatchObject({ group: "cuda:0+cuda:1", utilization: 0.5, temperatureC: 60, powerW: 250 })
    const health = Schema.decodeUnknownSync(NeuronHealth)({
      status: "ok",
      version: "0.1.0",
      uptime_s: 1,
      devices: [{
        id: "cuda:0",
        name: "gpu",
        total_mb: 1,
        free_mb: 1,
        used_mb: 0,
        worker_alive: true,
        worker_restarts: 0,
        temperature_c: 40
      }],
      in_flight: 0,
      queued: 0,
      models: []
    })
    expect(health.devices[0]!.temperature_c).toBe(40)
    expect(health.devices[0]!.utilization).toBeUndefined()
    expect(() => Schema.decodeUnknownSync(NeuronModels)({ data: [], devices: [{ ...device, utilization: "busy" }] }))
      .toThrow(/utilization/)
  })

  it("a neuron answering outside it stays unhealthy, with the field named in the gateway's status", async () => {
    // /health without `version` and with a device that has no memory figures.
    const server = createServer((req, res) => {
      res.writeHead(200, { "content-type": "application/json" })
      if (req.url === "/health") return res.end(JSON.stringify({ status: "ok", devices: [], models: [] }))
      if (req.url === "/models") return res.end(JSON.stringify({ data: [], devices: [{ id: "cpu" }] }))
      res.end("{}")
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    const gateway = await startGateway({
      neurons: [{ name: "odd", url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` }],
      waitHealthy: false
    })
    try {
      const node = await waitFor("the odd node's error", async () => {
        const { body } = await getJson(`${gateway.url}/health`)
        const odd = body.nodes.find((n: any) => n.name === "odd")
        return odd?.error?.includes("outside the contract") ? odd : undefined
      })
      expect(node.healthy).toBe(false)
      expect(node.error).toMatch(/\/(health|models) answered outside the contract: (version|devices\.0\.kind)/)
    } finally {
      await gateway.stop()
      server.close()
    }
  })
})
