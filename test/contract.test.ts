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
