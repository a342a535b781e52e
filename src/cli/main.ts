/** The `cortex` command line. */
import { Command, Options } from "@effect/cli"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Console, Effect, Layer, Option } from "effect"
import { existsSync } from "node:fs"
import * as path from "node:path"
import type { ConfigError } from "../domain/contract.js"
import type { ModelShape } from "../gguf/ModelGenerator.js"
import { versionLine } from "../telemetry/BuildInfo.js"

// The daemons' modules (node-llama-cpp, OpenTelemetry, the HTTP servers) load only when a command
// that runs one starts: `cortex status` and the other operator commands answer without them.
const gatewayModules = () =>
  Effect.promise(async () => ({
    ...(await import("../gateway/GatewayConfig.js")),
    ...(await import("../layers/GatewayLive.js"))
  }))
const neuronModules = () =>
  Effect.promise(async () => ({
    ...(await import("../neuron/NeuronConfig.js")),
    ...(await import("../neuron/ModelStore.js")),
    ...(await import("../layers/NeuronLive.js"))
  }))
const generator = () => Effect.promise(() => import("../gguf/ModelGenerator.js"))

const configOption = Options.file("config").pipe(
  Options.withAlias("c"),
  Options.withDescription("Path to neuron.toml"),
  Options.optional
)
const portOption = Options.integer("port").pipe(
  Options.withAlias("p"),
  Options.withDescription("Port to listen on (overrides the config file)"),
  Options.optional
)

/** Bad configuration stops the process before any port is bound, with file, key and reason. */
const refuse = (error: ConfigError) =>
  Console.error(`cortex: invalid configuration: ${error.message}`).pipe(
    Effect.zipRight(Effect.sync(() => process.exit(2)))
  )

const runNeuron = (file: string | undefined, port: number | undefined, extra: Record<string, string> = {}) =>
  Effect.gen(function*() {
    const { NeuronLive, loadNeuronConfig } = yield* neuronModules()
    const { VERSION } = yield* Effect.promise(() => import("../domain/contract.js"))
    const settings = yield* loadNeuronConfig({ file, port, env: { ...process.env, ...extra } })
    yield* Effect.logInfo(
      `neuron ${VERSION}: models from ${settings.modelsDir}, ${settings.threads} thread(s), ` +
        (settings.memoryBudgetMb !== undefined ? `memory budget ${settings.memoryBudgetMb} MB` : "memory detected")
    )
    return yield* Layer.launch(NeuronLive(settings))
  }).pipe(Effect.catchTag("ConfigError", refuse))

const neuron = Command.make(
  "neuron",
  { config: configOption, port: portOption },
  ({ config, port }) => runNeuron(Option.getOrUndefined(config), Option.getOrUndefined(port))
).pipe(Command.withDescription("Run the neuron daemon: serve the GGUF models of this host"))

const makeModel = Command.make(
  "make-model",
  {
    out: Options.text("out").pipe(Options.withDescription("Where to write the .gguf file")),
    shape: Options.choice("shape", ["tiny", "bench", "vision"]).pipe(Options.withDefault("tiny" as const)),
    seed: Options.integer("seed").pipe(Options.withDefault(1))
  },
  ({ out, seed, shape }) =>
    Effect.gen(function*() {
      const started = Date.now()
      if (shape === "vision") {
        const { makeVisionModel } = yield* Effect.promise(() => import("./vision.js"))
        return yield* makeVisionModel(out, seed)
      }
      const { writeModel } = yield* generator()
      const result = yield* Effect.promise(() => writeModel(out, { shape: shape as ModelShape, seed }))
      yield* Console.log(
        `wrote ${out}: ${shape}, seed ${seed}, ${(result.bytes / 1e6).toFixed(1)} MB, sha256 ${result.sha256} ` +
          `(${Date.now() - started} ms)`
      )
    })
).pipe(Command.withDescription("Write a generated GGUF model with deterministic weights (for tests and demos)"))

const up = Command.make(
  "up",
  {
    models: Options.directory("models").pipe(Options.withDefault("models")),
    port: Options.integer("port").pipe(
      Options.withDescription("Gateway port (the local neuron listens on 13131)"),
      Options.withDefault(31313)
    )
  },
  ({ models, port }) =>
    Effect.gen(function*() {
      const { NeuronLive, loadNeuronConfig, scanModels } = yield* neuronModules()
      const { GatewayLive, loadGatewayConfig } = yield* gatewayModules()
      const { writeModel } = yield* generator()
      const dir = path.resolve(models)
      const found = yield* Effect.promise(() => scanModels(dir))
      if (found.length === 0) {
        const file = path.join(dir, "tiny.gguf")
        yield* Console.log(`no models in ${dir}: generating the demo model ${file}`)
        yield* Effect.promise(() => writeModel(file, { shape: "tiny" }))
      }
      const ids = (yield* Effect.promise(() => scanModels(dir))).map((m) => m.id)
      const neuronPort = Number(process.env.NEURON_PORT ?? 13131)
      const neuron = yield* loadNeuronConfig({
        file: existsSync("neuron.toml") ? "neuron.toml" : undefined,
        port: neuronPort,
        env: {
          ...process.env,
          NEURON_MODELS_DIR: dir,
          NEURON_DEFAULT_MODELS: ids.slice(0, 1).join(","),
          NEURON_HOST: process.env.NEURON_HOST ?? "127.0.0.1"
        }
      })
      const gateway = yield* loadGatewayConfig({
        file: existsSync("cortex.toml") ? "cortex.toml" : undefined,
        listen: `127.0.0.1:${port}`,
        env: { CORTEX_METRICS_LISTEN: process.env.CORTEX_METRICS_LISTEN ?? "127.0.0.1:31314", ...process.env },
        neurons: [{ name: "local", endpoint: `http://127.0.0.1:${neuron.port}`, token: neuron.apiToken }]
      })
      yield* Console.log(
        [
          `cortex up: gateway on http://127.0.0.1:${port} (OpenAI and Anthropic), local neuron on :${neuron.port}, serving ${
            ids.join(", ")
          }`,
          `try:  curl -N http://127.0.0.1:${port}/v1/chat/completions -H 'content-type: application/json' \\`,
          `        -d '{"model":"${ids[0]}","stream":true,"messages":[{"role":"user","content":"Hello"}]}'`
        ].join("\n")
      )
      return yield* Layer.launch(Layer.mergeAll(NeuronLive(neuron), GatewayLive(gateway)))
    }).pipe(Effect.catchTag("ConfigError", refuse))
).pipe(
  Command.withDescription(
    "Start the embedded default: a gateway and a local neuron serving ./models (demo model generated if empty)"
  )
)

const serve = Command.make(
  "serve",
  {
    config: Options.file("config").pipe(
      Options.withAlias("c"),
      Options.withDescription("Path to cortex.toml"),
      Options.optional
    )
  },
  ({ config }) =>
    Effect.gen(function*() {
      const { GatewayLive, loadGatewayConfig } = yield* gatewayModules()
      const settings = yield* loadGatewayConfig({ file: Option.getOrUndefined(config) })
      if (settings.neurons.length === 0) {
        yield* Effect.logWarning("no [[neurons]] configured: every model request will 404")
      }
      return yield* Layer.launch(GatewayLive(settings))
    }).pipe(Effect.catchTag("ConfigError", refuse))
).pipe(Command.withDescription("Run the gateway: one OpenAI + Anthropic endpoint over the neurons in cortex.toml"))

import { adminCommands } from "./admin.js"
import { waitReady } from "./wait.js"
const { load, models, status, unload } = adminCommands
import { accountingCommands } from "./keys.js"
import { pullCommands } from "./pull.js"
const { pull, rm } = pullCommands
const { keys, usage } = accountingCommands

const cortex = Command.make("cortex").pipe(
  Command.withDescription("Gateway and fleet manager for local LLM inference"),
  Command.withSubcommands([
    up,
    serve,
    neuron,
    status,
    models,
    load,
    unload,
    pull,
    rm,
    keys,
    usage,
    makeModel,
    waitReady
  ])
)

const cli = Command.run(cortex, { name: "cortex", version: versionLine() })

cli(process.argv).pipe(Effect.provide(NodeContext.layer), NodeRuntime.runMain)
