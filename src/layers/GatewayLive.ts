/** The live gateway: config → fleet poller → router → proxy → HTTP, with telemetry. */
import { HttpServer } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Effect, Layer, Metric, MetricLabel, Schedule } from "effect"
import { createServer } from "node:http"
import { Accounting } from "../accounting/Accounting.js"
import { Catalogue } from "../gateway/Catalogue.js"
import { ColdLoader } from "../gateway/ColdLoader.js"
import { ConfigReload } from "../gateway/ConfigReload.js"
import { ConsoleFeed, ConsoleLogger } from "../gateway/console/ConsoleFeed.js"
import { deviceGauges } from "../gateway/DeviceTelemetry.js"
import { Evictor } from "../gateway/Evictor.js"
import { Failover } from "../gateway/Failover.js"
import { GatewayConfig, type GatewaySettings } from "../gateway/GatewayConfig.js"
import { makeGatewayApp } from "../gateway/Http.js"
import { InferenceRoutes } from "../gateway/InferenceRoutes.js"
import { InFlight } from "../gateway/InFlight.js"
import { LiveConfigLive } from "../gateway/LiveConfig.js"
import * as M from "../gateway/Metrics.js"
import { NeuronClient } from "../gateway/NeuronClient.js"
import { Poller } from "../gateway/Poller.js"
import { Proxy } from "../gateway/Proxy.js"
import { Pulls } from "../gateway/Pulls.js"
import { Router } from "../gateway/Router.js"
import { TelemetryLive } from "./TelemetryLive.js"

/** Fleet gauges (in flight, queue depth, device memory) follow the poller's view. */
const fleetGauges = Effect.gen(function*() {
  const poller = yield* Poller
  const state = yield* poller.get
  for (const node of state.values()) {
    yield* Metric.set(Metric.tagged(M.nodeHealthy, "node", node.name), node.healthy ? 1 : 0)
    for (const m of node.models) {
      if (m.status === "available") continue
      const labels = [MetricLabel.make("model", m.id), MetricLabel.make("node", node.name)]
      yield* Metric.set(Metric.taggedWithLabels(M.modelInFlight, labels), m.in_flight)
      yield* Metric.set(Metric.taggedWithLabels(M.modelQueueDepth, labels), m.queue_depth)
    }
    for (const d of node.devices) {
      const labels = [MetricLabel.make("node", node.name), MetricLabel.make("device", d.id)]
      yield* Metric.set(Metric.taggedWithLabels(M.deviceVramUsed, labels), d.usedMb)
      yield* Metric.set(Metric.taggedWithLabels(M.deviceVramFree, labels), d.freeMb)
    }
    yield* deviceGauges(node)
  }
})

const Serve = Layer.scopedDiscard(Effect.gen(function*() {
  const config = yield* GatewayConfig
  const inference = yield* InferenceRoutes
  // The inference routes run on node:http directly (InferenceRoutes.ts: they are the hot path);
  // the rest of the API goes through the Effect router, with the platform's span per request.
  const rest = yield* NodeHttpServer.makeHandler(yield* makeGatewayApp)
  const server = yield* NodeHttpServer.make(
    () =>
      createServer({ keepAliveTimeout: 5_000 }, (req, res) => {
        if (!inference.handle(req, res)) rest(req, res)
      }),
    config.listen
  )
  yield* Effect.logInfo(
    `gateway listening on ${HttpServer.formatAddress(server.address)} over ${config.neurons.length} neuron(s)` +
      (config.metricsListen ? `; metrics on ${config.metricsListen.host}:${config.metricsListen.port}/metrics` : "")
  )
  yield* Effect.forkScoped(fleetGauges.pipe(Effect.repeat(Schedule.spaced(`${config.pollIntervalSecs} seconds`))))
}))

export const GatewayLive = (settings: GatewaySettings) =>
  Serve.pipe(
    Layer.provide(InferenceRoutes.Default),
    Layer.provide(Proxy.Default),
    Layer.provide(Failover.Default),
    Layer.provideMerge(Router.DefaultWithoutDependencies),
    Layer.provideMerge(ColdLoader.DefaultWithoutDependencies),
    Layer.provideMerge(Evictor.DefaultWithoutDependencies),
    Layer.provideMerge(ConfigReload.Default),
    Layer.provideMerge(Pulls.DefaultWithoutDependencies),
    Layer.provideMerge(Layer.mergeAll(Catalogue.DefaultWithoutDependencies, InFlight.Default, NeuronClient.Default)),
    Layer.provideMerge(Poller.Default),
    Layer.provideMerge(Accounting.Default),
    // Log lines from here up also reach the console's log tail.
    Layer.provide(ConsoleLogger),
    Layer.provideMerge(ConsoleFeed.Default),
    Layer.provideMerge(LiveConfigLive(settings)),
    Layer.provide(TelemetryLive({ metrics: settings.metricsListen, telemetry: settings.telemetry }))
  )
