/**
 * Fuzzing every route that takes a body, against a real gateway in front of a real neuron (and
 * the neuron's own /models/load): at least 1,000 generated hostile bodies per route. Each must
 * be answered below 500, in the route's own error envelope when refused, with no stack trace or
 * server path in the body; afterwards both processes are still up and healthy and still serve.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { type GatewayProcess, startGateway } from "./fixtures/gateway.js"
import { BASES, hostileBody, LEAK, rng } from "./fixtures/hostile.js"
import { getJson, type NeuronProcess, postJson, startNeuron } from "./fixtures/neuron.js"

const PER_ROUTE = Number(process.env.CORTEX_FUZZ_PER_ROUTE ?? 1000)
const SEED = Number(process.env.CORTEX_FUZZ_SEED ?? 20261128)

let neuron: NeuronProcess
let gateway: GatewayProcess

beforeAll(async () => {
  neuron = await startNeuron({
    models: ["tiny"],
    defaultModels: ["tiny"]
  })
  gateway = await startGateway({
    neurons: [{ name: "local", url: neuron.url }],
    // Valid mutants that lost their max_tokens still end quickly.
    modelsToml: "[[models]]\nid = \"tiny\"\nsampling = { max_tokens = 4, temperature = 0 }\n"
  })
}, 180_000)

afterAll(async () => {
  await gateway?.stop()
  await neuron?.stop()
})

interface Failure {
  readonly route: string
  readonly index: number
  readonly kind: string
  readonly status: number
  readonly body: string
}

const fuzz = async (base: string, route: string) => {
  const r = rng(SEED ^ route.length * 7919 ^ route.charCodeAt(route.length - 1))
  const failures: Array<Failure> = []
  const statuses = new Map<number, number>()
  const send = async (index: number) => {
    const { bytes, kind } = hostileBody(route, r)
    const res = await fetch(`${base}${route}`, {
      method: "POST",
      headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
      body: bytes
    })
    const body = await res.text()
    statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1)
    const refused = res.status >= 400
    const envelope = !refused || (route.startsWith("/v1/messages")
      ? /"type":"error"/.test(body)
      : /^\{"error":\{/.test(body))
    if (res.status >= 500 || LEAK.test(body) || !envelope) {
      failures.push({ route, index, kind, status: res.status, body: body.slice(0, 300) })
    }
  }
  // Two at a time: the neuron's seats and queue never turn a request away for load.
  for (let i = 0; i < PER_ROUTE; i += 2) await Promise.all([send(i), send(i + 1)])
  return { failures, statuses: Object.fromEntries(statuses) }
}

const gatewayRoutes = Object.keys(BASES).filter((route) => route !== "/models/load")

describe("fuzzing hostile bodies", () => {
  for (const route of gatewayRoutes) {
    it(`gateway ${route}: ${PER_ROUTE} bodies, no 5xx, no stack traces`, async () => {
      const { failures, statuses } = await fuzz(gateway.url, route)
      console.log(`${route}: statuses ${JSON.stringify(statuses)}`)
      expect(failures.slice(0, 5)).toEqual([])
      expect((await getJson(`${gateway.url}/health`)).body.status).toBe("ok")
    }, 300_000)
  }

  it(`neuron /models/load: ${PER_ROUTE} bodies, no 5xx, no stack traces`, async () => {
    const { failures, statuses } = await fuzz(neuron.url, "/models/load")
    console.log(`/models/load: statuses ${JSON.stringify(statuses)}`)
    expect(failures.slice(0, 5)).toEqual([])
  }, 300_000)

  it("leaves both processes up, healthy and serving", async () => {
    expect(gateway.process.exitCode).toBeNull()
    expect(neuron.process.exitCode).toBeNull()
    expect((await getJson(`${neuron.url}/health`)).status).toBe(200)
    const res = await postJson(`${gateway.url}/v1/chat/completions`, {
      model: "tiny",
      max_tokens: 3,
      messages: [{ role: "user", content: "still there?" }]
    })
    expect(res.status).toBe(200)
    expect(((await res.json()) as any).usage.completion_tokens).toBe(3)
  })
})
