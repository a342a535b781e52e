/**
 * Multi-GPU hosts end to end, on simulated GPUs (`[simulate]` in neuron.toml: declared devices
 * whose memory the neuron accounts from its estimates; the workers run on this machine's CPU):
 * real neurons, real workers, a real gateway and the official OpenAI client. A model bigger
 * than one device but within a two-device group loads on the group (both devices' memory rises),
 * serves, unloads; on a host whose devices are each too small it is 404 naming the devices, and
 * the neuron is never asked to load it. Telemetry follows through /health, /discovery, the
 * gateway's /metrics (promtool-clean) and `cortex status`.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import { execFile } from "node:child_process"
import { readFileSync } from "node:fs"
import { promisify } from "node:util"
import OpenAI from "openai"
import { NeuronDiscovery, NeuronHealth, NeuronModels } from "../src/domain/contract.js"
import { type GatewayProcess, startGateway } from "./fixtures/gateway.js"
import { CLI, getJson, type NeuronProcess, postJson, startNeuron, waitFor } from "./fixtures/neuron.js"
import { requirePromtool, runPromtool } from "./fixtures/promtool.js"
import { type Stack, startStack } from "./fixtures/stack.js"

// tiny's estimate with one sequence at the default context is ~45 MB (neuron-preflight.test.ts):
// more than one 30 MB device, less than the pair's 60 MB; more than each 20 MB device of `small`.
const DEVICE_MB = 30
const SMALL_MB = 20
const PAIR = `max_in_flight = 1

[[device_groups]]
devices = [0, 1]
split_mode = "layer"

[simulate]
devices = [
  { total_mb = ${DEVICE_MB}, utilization = 0.25, temperature_c = 55, power_w = 120.5 },
  { total_mb = ${DEVICE_MB}, utilization = 0.5, temperature_c = 61, power_w = 130 }
]
`
const SMALL = `max_in_flight = 1

[simulate]
devices = [{ total_mb = ${SMALL_MB} }, { total_mb = ${SMALL_MB} }]
`

// A pair of 35 MB devices and a 50 MB one: tiny-b can only go to the big single card, tiny-c and
// tiny only to the pair (min_devices = 2), where two of them do not fit together.
const MIXED = `max_in_flight = 1

[[device_groups]]
devices = [0, 1]

[simulate]
devices = [{ total_mb = 35 }, { total_mb = 35 }, { total_mb = 50 }]
`
const MIXED_MODELS = `[[models]]
id = "tiny"
min_devices = 2

[[models]]
id = "tiny-b"
min_device_vram_mb = 40

[[models]]
id = "tiny-c"
min_devices = 2
`

let pair: Stack
let small: NeuronProcess
let smallGateway: GatewayProcess

const estimate = (url: string) =>
  waitFor("tiny's estimate", async () => {
    const tiny = (await getJson(`${url}/models`)).body.data.find((m: any) => m.id === "tiny")
    return tiny?.memory_estimate_mb ?? undefined
  }) as Promise<number>

/**
 * Wait until the neuron has estimated every model and the gateway has polled it since: before
 * that, the gateway only has the file size to go by.
 */
const estimatesPolled = async (neuronUrl: string, gatewayUrl: string) => {
  await waitFor("every model's estimate", async () => {
    const { body } = await getJson(`${neuronUrl}/models`)
    return body.data.every((m: any) => m.memory_estimate_mb !== null) ? true : undefined
  })
  const since = Date.now()
  await waitFor("a gateway poll after the estimates", async () => {
    const { body } = await getJson(`${gatewayUrl}/admin/status`)
    const seen = body.nodes[0]?.last_seen
    return body.nodes[0]?.healthy === true && seen !== null && Date.parse(seen) > since ? true : undefined
  })
}

beforeAll(async () => {
  pair = await startStack({ models: ["tiny", "bench"], toml: PAIR })
  small = await startNeuron({ models: ["tiny"], toml: SMALL })
  smallGateway = await startGateway({ neurons: [{ name: "small", url: small.url }] }).catch(async (e: unknown) => {
    await small.stop()
    throw e
  })
}, 180_000)

afterAll(async () => {
  await smallGateway?.stop()
  await small?.stop()
  await pair?.stop()
})

describe("a model split over a two-device group", () => {
  it("one worker owns the group, started with CUDA_VISIBLE_DEVICES listing both devices", async () => {
    const { body } = await getJson(`${pair.neuron.url}/models`)
    expect(body.devices.map((d: any) => [d.id, d.group, d.simulated])).toEqual([
      ["cuda:0", "cuda:0+cuda:1", true],
      ["cuda:1", "cuda:0+cuda:1", true]
    ])
    const pid = body.devices[0].worker.pid
    expect(body.devices[1].worker.pid).toBe(pid)
    const environ = readFileSync(`/proc/${pid}/environ`, "utf8").split("\0")
    expect(environ).toContain("CUDA_VISIBLE_DEVICES=0,1")
  })

  it("loads on the group through the gateway (both devices' used memory rises), serves, unloads", async () => {
    const needed = await estimate(pair.neuron.url)
    expect(needed).toBeGreaterThan(DEVICE_MB)
    expect(needed).toBeLessThanOrEqual(2 * DEVICE_MB)
    const before = (await getJson(`${pair.neuron.url}/models`)).body.devices
    expect(before.map((d: any) => d.usedMb)).toEqual([0, 0])
    await estimatesPolled(pair.neuron.url, pair.gateway.url)

    const answer = await pair.openai.chat.completions.create({
      model: "tiny",
      messages: [{ role: "user", content: "Hello there" }],
      temperature: 0,
      max_tokens: 4
    })
    expect(answer.usage?.completion_tokens).toBe(4)
    expect(answer.choices[0]!.message.content!.length).toBeGreaterThan(0)

    const { body } = await getJson(`${pair.neuron.url}/models`)
    const tiny = body.data.find((m: any) => m.id === "tiny")
    expect(tiny.status).toBe("loaded")
    expect(tiny.group).toBe("cuda:0+cuda:1")
    const perDevice = tiny.device_memory_mb as Record<string, number>
    expect(Object.keys(perDevice).sort()).toEqual(["cuda:0", "cuda:1"])
    expect(perDevice["cuda:0"]! + perDevice["cuda:1"]!).toBeCloseTo(needed, 0)
    for (const d of body.devices) {
      expect(d.usedMb).toBeGreaterThan(0)
      expect(d.usedMb).toBeLessThanOrEqual(DEVICE_MB)
      expect(d.usedMb).toBeCloseTo(perDevice[d.id]!, 0)
      expect(d.freeMb).toBeCloseTo(DEVICE_MB - d.usedMb, 5)
    }
    const health = (await getJson(`${pair.neuron.url}/health`)).body
    expect(health.devices.every((d: any) => d.used_mb > 0)).toBe(true)
    // The gateway decodes these answers with the contract's schemas: the new fields survive.
    const decoded = Schema.decodeUnknownSync(NeuronModels)(body)
    expect(decoded.data.find((m) => m.id === "tiny")!.device_memory_mb).toEqual(perDevice)
    expect(decoded.devices.map((d) => d.group)).toEqual(["cuda:0+cuda:1", "cuda:0+cuda:1"])
    expect(() => Schema.decodeUnknownSync(NeuronHealth)(health)).not.toThrow()
    const discovery = (await getJson(`${pair.neuron.url}/discovery`)).body
    expect(Schema.decodeUnknownSync(NeuronDiscovery)(discovery).devices[0]!.used_mb).toBeGreaterThan(0)

    expect((await postJson(`${pair.neuron.url}/models/unload`, { model: "tiny" })).status).toBe(200)
    const after = (await getJson(`${pair.neuron.url}/models`)).body
    expect(after.data.find((m: any) => m.id === "tiny").status).toBe("available")
    expect(after.devices.map((d: any) => [d.usedMb, d.freeMb])).toEqual([[0, DEVICE_MB], [0, DEVICE_MB]])
  }, 120_000)

  it("refuses a load bigger than the group with 507 naming each device and its free memory", async () => {
    const res = await postJson(`${pair.neuron.url}/models/load`, { model: "bench" })
    expect(res.status).toBe(507)
    const body = await res.json() as any
    expect(body.error.code).toBe("insufficient_vram")
    expect(body.error.message).toContain(`cuda:0 (${DEVICE_MB} MB free) + cuda:1 (${DEVICE_MB} MB free)`)
    expect(body.error.free_mb).toBe(2 * DEVICE_MB)
  }, 60_000)

  it("refuses a load on a group the neuron does not have (422 naming the parameter)", async () => {
    const res = await postJson(`${pair.neuron.url}/models/load`, { model: "tiny", group: "cuda:7" })
    expect(res.status).toBe(422)
    const body = await res.json() as any
    expect(body.error.param).toBe("group")
    expect(body.error.message).toContain("cuda:0+cuda:1")
  })
})

describe("a host whose devices are each too small", () => {
  it("is 404 from the gateway with a reason naming the devices, and the neuron is never asked to load", async () => {
    const needed = await estimate(small.url)
    expect(needed).toBeGreaterThan(SMALL_MB)
    await estimatesPolled(small.url, smallGateway.url)
    const client = new OpenAI({ baseURL: `${smallGateway.url}/v1`, apiKey: "x", maxRetries: 0 })
    const error = await client.chat.completions.create({
      model: "tiny",
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 2
    }).catch((e) => e)
    expect(error).toBeInstanceOf(OpenAI.APIError)
    expect(error.status).toBe(404)
    expect(error.message).toContain(`small: group cuda:0 (cuda:0 ${SMALL_MB} MB) has ${SMALL_MB} MB in total`)
    expect(error.message).toContain(`group cuda:1 (cuda:1 ${SMALL_MB} MB)`)
    expect(small.logs()).not.toContain("loading tiny")
    // The neuron's own pre-flight agrees, naming the device (507 is only ever its answer to a direct load).
    const direct = await postJson(`${small.url}/models/load`, { model: "tiny" })
    expect(direct.status).toBe(507)
    expect(((await direct.json()) as any).error.message).toContain("cuda:")
  }, 60_000)
})

describe("evictions on a host with two groups", () => {
  let mixed: Stack
  beforeAll(async () => {
    mixed = await startStack({ models: ["tiny", "tiny-b", "tiny-c"], toml: MIXED }, {
      modelsToml: MIXED_MODELS,
      extraToml: "[eviction]\nstrategy = \"lru\"\nmin_resident_secs = 0\nmax_swap_wait_secs = 0\n"
    })
  }, 180_000)
  afterAll(async () => {
    await mixed?.stop()
  })

  const ask = (model: string) =>
    mixed.openai.chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 2 })
  const where = async () => {
    const { body } = await getJson(`${mixed.neuron.url}/models`)
    return Object.fromEntries(body.data.map((m: any) => [m.id, m.status === "loaded" ? m.group : m.status]))
  }

  it("evicts only on the group the model goes to, though the least recently used model is elsewhere", async () => {
    await estimatesPolled(mixed.neuron.url, mixed.gateway.url)
    // Oldest first: tiny-b on the 50 MB card, then tiny-c on the pair.
    expect((await ask("tiny-b")).usage?.completion_tokens).toBe(2)
    expect((await ask("tiny-c")).usage?.completion_tokens).toBe(2)
    expect(await where()).toEqual({ "tiny": "available", "tiny-b": "cuda:2", "tiny-c": "cuda:0+cuda:1" })
    // tiny needs the pair; there, only tiny-c can make room. Evicting tiny-b (the LRU one) would free
    // nothing on the pair.
    expect((await ask("tiny")).usage?.completion_tokens).toBe(2)
    expect(await where()).toEqual({ "tiny": "cuda:0+cuda:1", "tiny-b": "cuda:2", "tiny-c": "available" })
    const metrics = await (await fetch(mixed.gateway.metricsUrl)).text()
    const evictions = metrics.split("\n").filter((l) => l.startsWith("cortex_evictions_total{"))
    expect(evictions.some((l) => l.includes(`model="tiny-c"`))).toBe(true)
    expect(evictions.some((l) => l.includes(`model="tiny-b"`))).toBe(false)
  }, 120_000)
})

describe("device telemetry", () => {
  it("reports utilisation, temperature and power in /health and /discovery, none for unmeasured devices", async () => {
    const health = (await getJson(`${pair.neuron.url}/health`)).body
    expect(health.devices[0]).toMatchObject({ utilization: 0.25, temperature_c: 55, power_w: 120.5 })
    const discovery = (await getJson(`${pair.neuron.url}/discovery`)).body
    expect(discovery.devices[1]).toMatchObject({ group: "cuda:0+cuda:1", utilization: 0.5, temperature_c: 61 })
    const bare = (await getJson(`${small.url}/health`)).body.devices[0]
    expect(bare).not.toHaveProperty("utilization")
    expect(bare).not.toHaveProperty("temperature_c")
    expect(bare).not.toHaveProperty("power_w")
  })

  it("exports per-device gauges labelled by node and device, promtool-clean", async () => {
    const text = await waitFor("device gauges", async () => {
      const body = await (await fetch(pair.gateway.metricsUrl)).text()
      return body.includes("cortex_device_power_watts") ? body : undefined
    })
    expect(text).toMatch(
      /cortex_device_utilization_ratio\{[^}]*node="local"[^}]*\} 0\.25|cortex_device_utilization_ratio\{[^}]*device="cuda:0"[^}]*\} 0\.25/
    )
    const line = (name: string, device: string) =>
      text.split("\n").find((l) =>
        l.startsWith(`${name}{`) && l.includes(`device="${device}"`) && l.includes(`node="local"`)
      )
    expect(line("cortex_device_utilization_ratio", "cuda:1")).toMatch(/ 0\.5$/)
    expect(line("cortex_device_temperature_celsius", "cuda:0")).toMatch(/ 55$/)
    expect(line("cortex_device_power_watts", "cuda:1")).toMatch(/ 130$/)
    const smallText = await (await fetch(smallGateway.metricsUrl)).text()
    expect(smallText).not.toContain("cortex_device_temperature_celsius{")
    if (await requirePromtool()) {
      const check = await runPromtool(["check", "metrics"], text)
      expect([0, 3]).toContain(check.code)
      // The only remarks allowed are the predecessor's `_mb` device names (gateway.test.ts).
      for (const remark of check.out.split("\n").filter((l) => l.trim().length > 0)) {
        expect(remark).toMatch(/^cortex_device_vram_(used|free)_mb .*abbreviated units/)
      }
    }
  })

  it("cortex status shows each device's group and telemetry", async () => {
    await waitFor("status with telemetry", async () => {
      const { body } = await getJson(`${pair.gateway.url}/admin/status`)
      return body.nodes[0]?.devices[0]?.temperature_c === 55 ? true : undefined
    })
    const { stdout } = await promisify(execFile)(process.execPath, [CLI, "status", "--endpoint", pair.gateway.url])
    expect(stdout).toContain("cuda:0 ")
    expect(stdout).toContain("[cuda:0+cuda:1] (25% 55C 121W)")
    expect(stdout).toContain("[cuda:0+cuda:1] (50% 61C 130W)")
  }, 60_000)
})
