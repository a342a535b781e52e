/** The live neuron: config → model manager (device workers) → inference → HTTP server. */
import { HttpServer } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import { createServer } from "node:http"
import { makeApp } from "../neuron/Http.js"
import { Inference } from "../neuron/Inference.js"
import { ModelManager } from "../neuron/ModelManager.js"
import { NeuronConfig, type NeuronSettings } from "../neuron/NeuronConfig.js"

const Serve = Layer.scopedDiscard(Effect.gen(function*() {
  const models = yield* ModelManager
  yield* HttpServer.serveEffect(yield* makeApp)
  // Finalizers run last-added first: drain before the server stops taking requests.
  yield* Effect.addFinalizer(() => models.drain.pipe(Effect.zipRight(Effect.logInfo("neuron stopping"))))
  yield* HttpServer.addressFormattedWith((address) => Effect.logInfo(`neuron listening on ${address}`))
  // Default models load in the background once the port is bound.
  yield* Effect.forkScoped(models.loadDefaults)
}))

export const NeuronLive = (settings: NeuronSettings) =>
  Serve.pipe(
    Layer.provide(NodeHttpServer.layer(() => createServer({ keepAliveTimeout: 5_000 }), {
      port: settings.port,
      host: settings.host
    })),
    Layer.provide(Inference.Default),
    Layer.provideMerge(ModelManager.Default),
    Layer.provide(Layer.succeed(NeuronConfig, settings))
  )
