/** The [telemetry] tables and the OTEL_* variables: defaults, precedence, and refusals that name file and key. */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { mkdtemp, writeFile } from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { loadGatewayConfig } from "../src/gateway/GatewayConfig.js"
import { loadNeuronConfig } from "../src/neuron/NeuronConfig.js"

const root = fileURLToPath(new URL("../", import.meta.url))

const fileWith = async (name: string, text: string) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), "cortex-telemetry-"))
  const file = path.join(dir, name)
  await writeFile(file, text)
  return file
}

describe("[telemetry] configuration", () => {
  it.effect("the shipped examples load, with export off and the documented defaults", () =>
    Effect.gen(function*() {
      const gateway = yield* loadGatewayConfig({ file: path.join(root, "cortex.example.toml"), env: {} })
      expect(gateway.telemetry).toEqual({
        serviceName: "cortex-gateway",
        export: undefined,
        sampler: "parentbased_always_on",
        samplerArg: 1,
        captureContent: false,
        logFormat: "logfmt"
      })
      const neuron = yield* loadNeuronConfig({ file: path.join(root, "neuron.example.toml"), env: {} })
      expect(neuron.telemetry.serviceName).toBe("cortex-neuron")
      expect(neuron.telemetry.export).toBeUndefined()
      expect(neuron.metricsPort).toBeUndefined()
    }))

  it.effect("file keys configure export; the OTEL_* variables win over them", () =>
    Effect.gen(function*() {
      const file = yield* Effect.promise(() =>
        fileWith(
          "cortex.toml",
          `[telemetry]\nendpoint = "http://collector:4318/"\nprotocol = "http/json"\nheaders = { "x-key" = "a" }\nsampler = "traceidratio"\nsampler_arg = 0.25\nlog_format = "json"\n`
        )
      )
      const fromFile = yield* loadGatewayConfig({ file, env: {} })
      expect(fromFile.telemetry.export).toEqual({
        url: "http://collector:4318/v1/traces",
        protocol: "http/json",
        headers: { "x-key": "a" },
        maxQueueSize: 2048
      })
      expect(fromFile.telemetry.sampler).toBe("traceidratio")
      expect(fromFile.telemetry.samplerArg).toBe(0.25)
      expect(fromFile.telemetry.logFormat).toBe("json")
      const fromEnv = yield* loadGatewayConfig({
        file,
        env: {
          OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://tempo:4318/v1/traces",
          OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf",
          OTEL_EXPORTER_OTLP_HEADERS: "x-key=b,authorization=Bearer%20t",
          OTEL_SERVICE_NAME: "edge",
          OTEL_BSP_MAX_QUEUE_SIZE: "64"
        }
      })
      expect(fromEnv.telemetry.export).toEqual({
        url: "http://tempo:4318/v1/traces",
        protocol: "http/protobuf",
        headers: { "x-key": "b", authorization: "Bearer t" },
        maxQueueSize: 64
      })
      expect(fromEnv.telemetry.serviceName).toBe("edge")
      const disabled = yield* loadGatewayConfig({ file, env: { OTEL_SDK_DISABLED: "true" } })
      expect(disabled.telemetry.export).toBeUndefined()
      const none = yield* loadGatewayConfig({ file, env: { OTEL_TRACES_EXPORTER: "none" } })
      expect(none.telemetry.export).toBeUndefined()
    }))

  it.effect("an unknown key is refused, naming the file and the key", () =>
    Effect.gen(function*() {
      const cortex = yield* Effect.promise(() => fileWith("cortex.toml", `[telemetry]\nendpont = "http://x:4318"\n`))
      const error = yield* Effect.flip(loadGatewayConfig({ file: cortex, env: {} }))
      expect(error.file).toBe(cortex)
      expect(error.key).toBe("telemetry.endpont")
      const neuron = yield* Effect.promise(() => fileWith("neuron.toml", `[telemetry]\nlog_format = "json"\n`))
      const refused = yield* Effect.flip(loadNeuronConfig({ file: neuron, env: {} }))
      expect(refused.file).toBe(neuron)
      expect(refused.key).toBe("telemetry.log_format")
    }))

  it.effect("bad values are refused with the key and the reason; gRPC says what to use instead", () =>
    Effect.gen(function*() {
      const file = yield* Effect.promise(() => fileWith("neuron.toml", `[telemetry]\nsampler_arg = 2\n`))
      const arg = yield* Effect.flip(loadNeuronConfig({ file, env: {} }))
      expect(arg.key).toBe("telemetry.sampler_arg")
      const grpc = yield* Effect.flip(loadNeuronConfig({ env: { OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" } }))
      expect(grpc.file).toBe("environment")
      expect(grpc.key).toBe("OTEL_EXPORTER_OTLP_PROTOCOL")
      expect(grpc.reason).toMatch(/4318/)
      const sampler = yield* Effect.flip(loadGatewayConfig({ env: { OTEL_TRACES_SAMPLER: "sometimes" } }))
      expect(sampler.key).toBe("OTEL_TRACES_SAMPLER")
      const port = yield* Effect.flip(loadNeuronConfig({ env: { NEURON_METRICS_PORT: "x" } }))
      expect(port.key).toBe("NEURON_METRICS_PORT")
    }))
})
