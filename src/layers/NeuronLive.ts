/** The live neuron: config → model manager (device workers) → inference → HTTP server, with telemetry. */
import { HttpServer } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Effect, Layer, Schedule } from "effect"
import { createServer } from "node:http"
import { makeApp } from "../neuron/Http.js"
import { Inference } from "../neuron/Inference.js"
import { makeStateGauges } from "../neuron/Metrics.js"
import { ModelManager } from "../neuron/ModelManager.js"
import { NeuronConfig, type NeuronSettings } from "../neuron/NeuronConfig.js"
import { NeuronConfigLive, NeuronReload } from "../neuron/NeuronReload.js"
import { TelemetryLive } from "./TelemetryLive.js"

/**
 * node-llama-cpp (loaded in this process for pulls) registers signal-exit, which re-sends SIGTERM
 * to the process when it believes it is the last listener. Effect's runMain removes its own
 * listener as it starts the graceful shutdown, so without another listener the re-sent signal
 * would kill the neuron mid-drain. This one keeps the drain alive; a second signal still exits.
 */
const SignalGuard = Layer.scopedDiscard(Effect.acquireRelease(
  Effect.sync(() => {
    let received = 0
    const guard = (signal: NodeJS.Signals) => {
      received += 1
      if (received > 1) process.exit(signal === "SIGINT" ? 130 : 143)
    }
    process.on("SIGTERM", guard)
    process.on("SIGINT", guard)
    return guard
  }),
  (guard) =>
    Effect.sync(() => {
      process.off("SIGTERM", guard)
      process.off("SIGINT", guard)
    })
))

const Serve = Layer.scopedDiscard(Effect.gen(function*() {
  const models = yield* ModelManager
  const config = yield* NeuronConfig
  yield* HttpServer.serveEffect(yield* makeApp)
  // Finalizers run last-added first: drain before the server stops taking requests.
  yield* Effect.addFinalizer(() => models.drain.pipe(Effect.zipRight(Effect.logInfo("neuron stopping"))))
  yield* HttpServer.addressFormattedWith((address) => Effect.logInfo(`neuron listening on ${address}`))
  // Default models load in the background once the port is bound.
  yield* Effect.forkScoped(models.loadDefaults)
  if (config.metricsPort !== undefined) {
    yield* Effect.logInfo(`neuron metrics on ${config.host}:${config.metricsPort}/metrics`)
    yield* Effect.forkScoped(
      makeStateGauges(models, config.maxInFlight).pipe(Effect.repeat(Schedule.spaced("1 second")))
    )
  }
}))

export const NeuronLive = (settings: NeuronSettings) =>
  Serve.pipe(
    Layer.provide(NodeHttpServer.layer(() => createServer({ keepAliveTimeout: 5_000 }), {
      port: settings.port,
      host: settings.host
    })),
    Layer.provide(Inference.Default),
    Layer.merge(NeuronReload),
    Layer.merge(SignalGuard),
    Layer.provideMerge(ModelManager.Default),
    // NeuronConfig is a view of the settings in force: SIGHUP replaces them (NeuronReload.ts).
    Layer.provide(NeuronConfigLive(settings)),
    Layer.provide(TelemetryLive({
      metrics: settings.metricsPort !== undefined ? { host: settings.host, port: settings.metricsPort } : undefined,
      telemetry: settings.telemetry
    }))
  )
