/**
 * The poller: every neuron's health, devices and models, polled concurrently with short
 * timeouts into one FleetState. A node starts unhealthy, turns healthy on its first answer and
 * unhealthy again after 3 consecutive misses (one slow poll does not take it out).
 */
import { Effect, Redacted, Schedule } from "effect"
import {
  type NeuronDevice,
  NeuronDiscovery,
  NeuronHealth,
  type NeuronModel,
  NeuronModels,
  type PullRecord
} from "../domain/contract.js"
import { GatewayConfig, type NeuronEndpoint } from "./GatewayConfig.js"
import { callNeuron, describeNeuronError } from "./NeuronClient.js"

export const MISSES_BEFORE_UNHEALTHY = 3

export type { NeuronDevice, NeuronModel } from "../domain/contract.js"

export interface NodeState {
  readonly name: string
  readonly endpoint: NeuronEndpoint
  readonly healthy: boolean
  readonly misses: number
  readonly status: string
  readonly lastSeen: number | undefined
  readonly lastError: string | undefined
  readonly discovery: NeuronDiscovery | undefined
  readonly models: ReadonlyArray<NeuronModel>
  readonly devices: ReadonlyArray<NeuronDevice>
  /** Removed from the config by a reload: no new requests, dropped once its requests finish. */
  readonly retired?: boolean
  /** Pulls under way and recent ones (src/gateway/Pulls.ts). */
  readonly pulls?: ReadonlyArray<PullRecord>
}

export type FleetState = ReadonlyMap<string, NodeState>

const initial = (endpoint: NeuronEndpoint): NodeState => ({
  name: endpoint.name,
  endpoint,
  healthy: false,
  misses: 0,
  status: "unknown",
  lastSeen: undefined,
  lastError: "not polled yet",
  discovery: undefined,
  models: [],
  devices: []
})

const secret = (token: Redacted.Redacted<string> | undefined) => token && Redacted.value(token)

export class Poller extends Effect.Service<Poller>()("cortex/Poller", {
  scoped: Effect.gen(function*() {
    const config = yield* GatewayConfig
    // A plain variable, not a Ref: updates are synchronous, and the inference fast path reads it
    // outside any fiber (`now`).
    let state: FleetState = new Map(config.neurons.map((n) => [n.name, initial(n)]))
    const get = Effect.sync(() => state)
    const timeoutMs = Math.max(1000, config.pollIntervalSecs * 1000)

    const update = (name: string, f: (node: NodeState) => NodeState) =>
      Effect.sync(() => {
        const node = state.get(name)
        if (!node) return
        const next = new Map(state)
        next.set(name, f(node))
        state = next
      })

    const pollNode = (endpoint: NeuronEndpoint) =>
      Effect.gen(function*() {
        const polled = yield* Effect.either(Effect.all({
          health: callNeuron(endpoint, "/health", NeuronHealth, { timeoutMs }),
          models: callNeuron(endpoint, "/models", NeuronModels, { timeoutMs })
        }, { concurrency: 2 }))
        const before = (yield* get).get(endpoint.name)
        if (!before || before.retired || before.endpoint !== endpoint) return
        let after: NodeState
        if (polled._tag === "Right") {
          const snap = polled.right
          after = {
            ...before,
            healthy: snap.health.status !== "draining",
            misses: 0,
            status: snap.health.status,
            lastSeen: Date.now(),
            lastError: undefined,
            models: snap.models.data,
            devices: snap.models.devices,
            pulls: snap.models.pulls ?? []
          }
        } else {
          const error = polled.left
          const misses = before.misses + 1
          const healthy = before.healthy && misses < MISSES_BEFORE_UNHEALTHY
          const detail = describeNeuronError(error)
          after = { ...before, misses, healthy, lastError: detail, status: healthy ? before.status : "unreachable" }
        }
        // A reload may have retired or re-pointed the node while this poll was out.
        yield* update(endpoint.name, (now) => now.retired || now.endpoint !== endpoint ? now : after)
        if (!before.healthy && after.healthy) yield* Effect.logInfo(`neuron ${endpoint.name} is up`)
        if (before.healthy && !after.healthy) {
          yield* Effect.logWarning(
            `neuron ${endpoint.name} marked unhealthy after ${after.misses} misses: ${after.lastError}`
          )
        }
        yield* discover(endpoint)
      })

    const discover = (endpoint: NeuronEndpoint) =>
      Effect.gen(function*() {
        const node = (yield* get).get(endpoint.name)
        if (!node || node.discovery !== undefined || !node.healthy) return
        const discovery = yield* callNeuron(endpoint, "/discovery", NeuronDiscovery, { timeoutMs }).pipe(
          Effect.tapError((error) => Effect.logWarning(`neuron ${endpoint.name}: ${describeNeuronError(error)}`)),
          Effect.option
        )
        if (discovery._tag === "Some") yield* update(endpoint.name, (n) => ({ ...n, discovery: discovery.value }))
      })

    /**
     * Follow the configured neuron list after a reload: new neurons start unpolled, a changed
     * endpoint starts over, a removed one is retired (unhealthy, so nothing new routes to it)
     * until `remove` drops it.
     */
    const reconcile = Effect.sync(() => {
      const wanted = new Map(config.neurons.map((n) => [n.name, n]))
      const next = new Map<string, NodeState>()
      for (const [name, node] of state) {
        const endpoint = wanted.get(name)
        if (endpoint === undefined) {
          next.set(name, node.retired ? node : { ...node, retired: true, healthy: false, status: "draining" })
        } else if (
          node.retired || endpoint.endpoint !== node.endpoint.endpoint ||
          secret(endpoint.token) !== secret(node.endpoint.token)
        ) {
          next.set(name, initial(endpoint))
        } else {
          next.set(name, { ...node, endpoint })
        }
      }
      for (const [name, endpoint] of wanted) if (!next.has(name)) next.set(name, initial(endpoint))
      state = next
    })

    const remove = (name: string) =>
      Effect.sync(() => {
        if (!state.get(name)?.retired) return
        const next = new Map(state)
        next.delete(name)
        state = next
      })

    const pollAll = Effect.suspend(() =>
      Effect.forEach(config.neurons, pollNode, { concurrency: "unbounded", discard: true })
    )

    /** Re-read one node now (after a load or unload), so routing sees the change at once. */
    const refresh = (name: string) => {
      const endpoint = config.neurons.find((n) => n.name === name)
      return endpoint ? pollNode(endpoint) : Effect.void
    }

    yield* pollAll
    yield* Effect.forkScoped(
      pollAll.pipe(Effect.repeat(Schedule.spaced(`${config.pollIntervalSecs} seconds`)))
    )

    return {
      get,
      now: (): FleetState => state,
      refresh,
      reconcile,
      remove
    } as const
  })
}) {}
