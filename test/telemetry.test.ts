/**
 * Observability end to end: a real gateway and neuron exporting spans over OTLP (http/json) to a
 * receiver in this test, one trace per request across both processes; both Prometheus scrapes
 * checked with promtool; the shipped alert rules and dashboard checked against those scrapes;
 * and export to a dead endpoint, which must never hold a request up.
 */
import Anthropic from "@anthropic-ai/sdk"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { randomBytes } from "node:crypto"
import { readFileSync } from "node:fs"
import { createServer, type Server, type Socket } from "node:net"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import OpenAI from "openai"
import parsePrometheus from "parse-prometheus-text-format"
import { type GatewayProcess, startGateway } from "./fixtures/gateway.js"
import { freePort, type NeuronProcess, postJson, startNeuron, waitFor } from "./fixtures/neuron.js"
import { type OtlpReceiver, type ReceivedSpan, startOtlpReceiver } from "./fixtures/otlp-receiver.js"
import { requirePromtool, runPromtool } from "./fixtures/promtool.js"

const ROOT = fileURLToPath(new URL("../", import.meta.url))

const MODELS_TOML = `
[[models]]
id = "tiny"
sampling = { temperature = 0 }

[[models]]
id = "tiny-b"
sampling = { temperature = 0 }
# Unloaded soon after use: the test sees an eviction (reason idle) in the gateway's metrics.
idle_unload_secs = 2
`

let receiver: OtlpReceiver
let neuron: NeuronProcess
let neuronMetricsUrl: string
let gateway: GatewayProcess
/** A TCP endpoint that accepts connections and never answers: the worst dead collector. */
let blackhole: Server
const held = new Set<Socket>()
let blackholeUrl: string

beforeAll(async () => {
  // Short batch delays, read by the SDK's batch processor in both processes (they inherit this env).
  process.env.OTEL_BSP_SCHEDULE_DELAY = "100"
  receiver = await startOtlpReceiver()
  blackhole = createServer((socket) => {
    held.add(socket)
    socket.on("error", () => undefined)
    socket.on("close", () => held.delete(socket))
  })
  await new Promise<void>((resolve) => blackhole.listen(0, "127.0.0.1", resolve))
  blackholeUrl = `http://127.0.0.1:${(blackhole.address() as { port: number }).port}`
  const metricsPort = await freePort()
  neuronMetricsUrl = `http://127.0.0.1:${metricsPort}/metrics`
  // The neuron through the standard variables, the gateway through its [telemetry] table.
  neuron = await startNeuron({
    models: ["tiny", "tiny-b"],
    defaultModels: ["tiny"],
    env: {
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
      NEURON_METRICS_PORT: String(metricsPort)
    }
  })
  gateway = await startGateway({
    neurons: [{ name: "alpha", url: neuron.url }],
    modelsToml: MODELS_TOML,
    extraToml: `[telemetry]\nendpoint = "${receiver.url}"\nprotocol = "http/json"\n`
  })
}, 180_000)

afterAll(async () => {
  await gateway?.stop()
  await neuron?.stop()
  await receiver?.close()
  for (const socket of held) socket.destroy()
  await new Promise<void>((resolve) => blackhole ? blackhole.close(() => resolve()) : resolve())
})

const newTraceparent = () => {
  const traceId = randomBytes(16).toString("hex")
  return { traceId, header: `00-${traceId}-${randomBytes(8).toString("hex")}-01` }
}

const one = (spans: ReadonlyArray<ReceivedSpan>, service: string, name: string) => {
  const found = spans.filter((s) => s.service === service && s.name === name)
  expect(found, `${service}/${name} in ${spans.map((s) => `${s.service}/${s.name}`).join(", ")}`).toHaveLength(1)
  return found[0]!
}
const has = (spans: ReadonlyArray<ReceivedSpan>, service: string, name: string) =>
  spans.some((s) => s.service === service && s.name === name)

/** The whole request's trace is in: gateway request and upstream, neuron request with its phases. */
const complete = (spans: ReadonlyArray<ReceivedSpan>) =>
  has(spans, "cortex-gateway", "gateway.request") && has(spans, "cortex-gateway", "gateway.upstream") &&
  has(spans, "cortex-neuron", "neuron.chat") && has(spans, "cortex-neuron", "neuron.prefill") &&
  has(spans, "cortex-neuron", "neuron.decode") && has(spans, "cortex-neuron", "neuron.queue")

/** One trace: gateway request → upstream call → neuron server span → neuron.chat → queue, prefill, decode. */
const checkTrace = (spans: ReadonlyArray<ReceivedSpan>, route: string, model: string) => {
  const request = one(spans, "cortex-gateway", "gateway.request")
  expect(request.attributes["cortex.route"]).toBe(route)
  expect(request.attributes["gen_ai.operation.name"]).toBe("chat")
  expect(request.attributes["gen_ai.request.model"]).toBe(model)
  expect(request.attributes["cortex.node"]).toBe("alpha")
  expect(request.attributes["cortex.principal"]).toMatch(/^anonymous@/)
  expect(request.attributes["http.response.status_code"]).toBe(200)
  expect(request.attributes["gen_ai.usage.output_tokens"]).toBe(4)
  const upstream = one(spans, "cortex-gateway", "gateway.upstream")
  expect(upstream.parentSpanId).toBe(request.spanId)
  expect(upstream.attributes["cortex.node"]).toBe("alpha")
  const server = spans.find((s) => s.service === "cortex-neuron" && s.parentSpanId === upstream.spanId)
  expect(server, "the neuron's server span continues the upstream call").toBeDefined()
  const chat = one(spans, "cortex-neuron", "neuron.chat")
  expect(chat.parentSpanId).toBe(server!.spanId)
  expect(chat.attributes["gen_ai.operation.name"]).toBe("chat")
  expect(chat.attributes["gen_ai.request.model"]).toBe(model)
  expect(chat.attributes["gen_ai.usage.input_tokens"]).toBeGreaterThan(0)
  expect(chat.attributes["gen_ai.usage.output_tokens"]).toBe(4)
  expect(chat.attributes["gen_ai.response.finish_reasons"]).toEqual(["length"])
  // No prompt or completion text unless capture_content is on.
  for (const s of spans) {
    expect(s.attributes["gen_ai.input.messages"]).toBeUndefined()
    expect(s.attributes["gen_ai.output.messages"]).toBeUndefined()
  }
  const queue = one(spans, "cortex-neuron", "neuron.queue")
  const prefill = one(spans, "cortex-neuron", "neuron.prefill")
  const decode = one(spans, "cortex-neuron", "neuron.decode")
  for (const child of [queue, prefill, decode]) expect(child.parentSpanId).toBe(chat.spanId)
  expect(prefill.attributes["gen_ai.usage.input_tokens"]).toBe(chat.attributes["gen_ai.usage.input_tokens"])
  expect(prefill.attributes["cortex.prefill.chunks"]).toBeGreaterThanOrEqual(0)
  expect(prefill.attributes["gen_ai.usage.cache_read.input_tokens"]).toBeGreaterThanOrEqual(0)
  expect(decode.attributes["gen_ai.usage.output_tokens"]).toBe(4)
  expect(decode.attributes["cortex.decode.tokens_per_second"]).toBeGreaterThan(0)
  expect(prefill.startNs).toBeGreaterThanOrEqual(queue.endNs)
  expect(decode.startNs).toBeGreaterThanOrEqual(prefill.endNs)
  return request
}

describe("one trace per request across gateway and neuron", () => {
  it("a streamed OpenAI chat: gateway request, upstream call, neuron request, queue, prefill and decode", async () => {
    const { header, traceId } = newTraceparent()
    const openai = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: "sk-placeholder", maxRetries: 0 })
    const stream = await openai.chat.completions.create(
      { model: "tiny", stream: true, max_tokens: 4, messages: [{ role: "user", content: "Hello" }] },
      { headers: { traceparent: header } }
    )
    for await (const _ of stream) void _
    const spans = await receiver.waitForTrace(traceId, complete)
    const request = checkTrace(spans, "chat", "tiny")
    // The gateway continued the client's own trace.
    expect(request.parentSpanId).toBe(header.split("-")[2])
    // Its log line names the same trace.
    await waitFor("the request's log line", async () => gateway.logs().includes(`trace_id=${traceId}`) || undefined)
    const line = gateway.logs().split("\n").find((l) => l.includes(`trace_id=${traceId}`))!
    expect(line).toMatch(/msg=request request_id=\S+ .*route=chat model=tiny node=alpha .*status=200/)
    expect(line).toMatch(/completion_tokens=4 .*ttft_ms=\d+ duration_ms=\d+ client_gone=false/)
  })

  it("a streamed Anthropic message: the same trace shape through the translated route", async () => {
    const { header, traceId } = newTraceparent()
    const anthropic = new Anthropic({ baseURL: gateway.url, apiKey: "sk-ant-placeholder", maxRetries: 0 })
    const stream = anthropic.messages.stream(
      { model: "tiny", max_tokens: 4, messages: [{ role: "user", content: "Hello" }] },
      { headers: { traceparent: header } }
    )
    await stream.finalMessage()
    const spans = await receiver.waitForTrace(traceId, complete)
    checkTrace(spans, "messages", "tiny")
  })

  it("a cold load shows its load span, gateway and neuron side, in the request's trace", async () => {
    const { header, traceId } = newTraceparent()
    const openai = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: "sk-placeholder", maxRetries: 0 })
    const stream = await openai.chat.completions.create(
      { model: "tiny-b", stream: true, max_tokens: 4, messages: [{ role: "user", content: "Hello" }] },
      { headers: { traceparent: header } }
    )
    for await (const _ of stream) void _
    const spans = await receiver.waitForTrace(
      traceId,
      (s) =>
        complete(s) && has(s, "cortex-gateway", "gateway.model_load") && has(s, "cortex-neuron", "neuron.model_load")
    )
    checkTrace(spans, "chat", "tiny-b")
    const request = one(spans, "cortex-gateway", "gateway.request")
    const route = one(spans, "cortex-gateway", "gateway.route")
    expect(route.parentSpanId).toBe(request.spanId)
    expect(route.attributes["cortex.cold_load"]).toBe(true)
    const load = one(spans, "cortex-gateway", "gateway.model_load")
    expect(load.attributes["gen_ai.request.model"]).toBe("tiny-b")
    expect(load.attributes["cortex.node"]).toBe("alpha")
    const neuronLoad = one(spans, "cortex-neuron", "neuron.model_load")
    const loadServer = spans.find((s) => s.spanId === neuronLoad.parentSpanId)!
    expect(loadServer.parentSpanId).toBe(load.spanId)
  })
})

// ---------------------------------------------------------------------------------------------
// Metrics, rules and the dashboard

const scrapes: Array<string> = []

const families = (text: string) => new Set((parsePrometheus(text) as Array<{ name: string }>).map((f) => f.name))

describe("metrics", () => {
  it("the neuron serves its own metrics; both scrapes pass promtool check metrics", async () => {
    // An error by model (unknown model) and an idle eviction, so those series exist too.
    await postJson(`${gateway.url}/v1/chat/completions`, { model: "nope", messages: [{ role: "user", content: "x" }] })
    const gatewayText = await waitFor("an idle eviction in the gateway's metrics", async () => {
      const text = await (await fetch(gateway.metricsUrl)).text()
      return text.includes("cortex_evictions_total{") ? text : undefined
    }, 30_000)
    const neuronText = await waitFor("neuron metrics with a decode", async () => {
      const text = await (await fetch(neuronMetricsUrl)).text()
      return text.includes("cortex_neuron_decode_tokens_per_second_bucket{") &&
          text.includes("cortex_neuron_model_load_seconds_bucket{")
        ? text
        : undefined
    }, 10_000)
    scrapes.push(gatewayText, neuronText)
    const neuronFamilies = families(neuronText)
    for (
      const name of [
        "cortex_neuron_seats_in_use",
        "cortex_neuron_seats",
        "cortex_neuron_queue_depth",
        "cortex_neuron_prefill_tokens_per_second",
        "cortex_neuron_decode_tokens_per_second",
        "cortex_neuron_model_load_seconds",
        "cortex_neuron_model_unload_seconds",
        "cortex_neuron_worker_restarts_total",
        "cortex_neuron_device_memory_used_bytes",
        "cortex_neuron_device_memory_free_bytes",
        "cortex_trace_spans_exported_total"
      ]
    ) expect(neuronFamilies, name).toContain(name)
    expect(neuronText).toMatch(/cortex_neuron_decode_tokens_per_second_bucket\{[^}]*le="100"/)
    const gatewayFamilies = families(gatewayText)
    for (const name of ["cortex_node_healthy", "cortex_evictions_total", "cortex_trace_spans_exported_total"]) {
      expect(gatewayFamilies, name).toContain(name)
    }
    if (!(await requirePromtool())) return
    for (const text of [gatewayText, neuronText]) {
      const check = await runPromtool(["check", "metrics"], text)
      expect([0, 3]).toContain(check.code)
      const remarks = check.out.split("\n").filter((line) => line.trim().length > 0)
      for (const remark of remarks) expect(remark).toMatch(/^cortex_device_vram_(used|free)_mb .*abbreviated units/)
    }
  })

  it("admission rejections are counted on the neuron by model and reason", async () => {
    // A refusal the neuron makes before any seat: a model it does not have.
    const res = await postJson(`${neuron.url}/v1/chat/completions`, {
      model: "missing",
      messages: [{ role: "user", content: "x" }]
    })
    expect(res.status).toBe(404)
    const text = await waitFor("the rejection counted", async () => {
      const t = await (await fetch(neuronMetricsUrl)).text()
      return t.includes("cortex_neuron_admission_rejections_total{") ? t : undefined
    }, 5_000)
    expect(text).toMatch(/cortex_neuron_admission_rejections_total\{[^}]*model="unknown"[^}]*\} 1/)
    scrapes.push(text)
  })
})

// ---------------------------------------------------------------------------------------------
// Export to a dead endpoint

describe("export to a dead endpoint", () => {
  it("never holds a request up; spans over the queue bound are dropped and counted", async () => {
    const dead = await startGateway({
      neurons: [{ name: "alpha", url: neuron.url }],
      modelsToml: MODELS_TOML,
      extraToml: `[telemetry]\nendpoint = "${blackholeUrl}"\nprotocol = "http/json"\nmax_queue_size = 4\n`
    })
    try {
      const openai = new OpenAI({ baseURL: `${dead.url}/v1`, apiKey: "sk-placeholder", maxRetries: 0, timeout: 20_000 })
      // A hang guard, not a timing assertion: every answer comes while the collector never replies.
      for (let i = 0; i < 12; i++) {
        const stream = await openai.chat.completions.create({
          model: "tiny",
          stream: true,
          max_tokens: 2,
          messages: [{ role: "user", content: `hi ${i}` }]
        })
        let chunks = 0
        for await (const _ of stream) chunks++
        expect(chunks).toBeGreaterThan(0)
      }
      let last = ""
      const text = await waitFor("dropped spans counted", async () => {
        last = await (await fetch(dead.metricsUrl)).text()
        return /cortex_trace_spans_dropped_total\{[^}]*reason="queue_full"[^}]*\} [1-9]/.test(last) ? last : undefined
      }, 10_000).catch((e) => {
        throw new Error(`${e}\n${last.split("\n").filter((l) => l.includes("trace")).join("\n")}`)
      })
      scrapes.push(text)
    } finally {
      await dead.stop()
    }
  }, 120_000)
})

describe("shipped alert rules and dashboard", () => {
  it("promtool accepts the alert rules", async () => {
    if (!(await requirePromtool())) return
    const check = await runPromtool(["check", "rules", path.join(ROOT, "deploy/prometheus/cortex-rules.yml")])
    expect(check.out).toMatch(/SUCCESS/)
    expect(check.code).toBe(0)
  })

  it("every series a dashboard panel queries exists in a scrape taken during this test", () => {
    expect(scrapes.length).toBeGreaterThanOrEqual(3)
    const seen = new Set(scrapes.flatMap((text) => [...families(text)]))
    const dashboard = JSON.parse(readFileSync(path.join(ROOT, "deploy/grafana/cortex-dashboard.json"), "utf8"))
    const panels = (dashboard.panels as Array<any>).filter((p) => p.type !== "row")
    expect(panels.length).toBeGreaterThan(10)
    const queried = new Set<string>()
    for (const panel of panels) {
      expect(panel.targets?.length, panel.title).toBeGreaterThan(0)
      for (const target of panel.targets) {
        for (const name of String(target.expr).match(/\bcortex_[a-z0-9_]+/g) ?? []) {
          queried.add(name.replace(/_(bucket|sum|count)$/, ""))
        }
      }
    }
    const templated = JSON.stringify(dashboard.templating).match(/\bcortex_[a-z0-9_]+/g) ?? []
    for (const name of templated) queried.add(name)
    const missing = [...queried].filter((name) => !seen.has(name))
    expect(missing).toEqual([])
    for (
      const name of ["cortex_neuron_decode_tokens_per_second", "cortex_model_queue_depth", "cortex_evictions_total"]
    ) {
      expect(queried).toContain(name)
    }
  })
})
