/**
 * The neuron's config reload: on SIGHUP it re-reads neuron.toml (and its NEURON_* variables) the
 * way it did at start. A file that does not load is refused with the error a start gives, and the
 * running settings stay. A good one is put in force at once through the NeuronConfig view:
 * api_token, max_n, max_wait_secs, auto_load, load_delay_ms, and for the next loads context_size
 * and memory_budget_mb; a model newly listed in default_models is loaded (one no longer listed
 * stays loaded until unloaded). Settings read once at start keep their value and are named in
 * the log. Requests in flight are not touched.
 */
import { Context, Effect, Layer, Redacted, Runtime } from "effect"
import { liveView, sameSettings } from "../domain/live-settings.js"
import { ModelManager } from "./ModelManager.js"
import { loadNeuronConfig, NeuronConfig, type NeuronSettings } from "./NeuronConfig.js"

/** Read once at start (sockets, threads, devices, the admission limits, telemetry): a restart applies them. */
export const NEURON_RESTART_ONLY: ReadonlyArray<readonly [keyof NeuronSettings, string]> = [
  ["host", "host"],
  ["port", "port"],
  ["modelsDir", "models_dir"],
  ["threads", "threads"],
  ["gpu", "gpu"],
  ["deviceGroups", "[[device_groups]]"],
  ["simulate", "[simulate]"],
  ["sources", "cache_dir / [sources]"],
  ["vision", "[vision] / [models]"],
  ["maxInFlight", "max_in_flight"],
  ["maxQueueDepth", "max_queue_depth"],
  ["maxPerPrincipal", "max_per_principal"],
  ["prefillChunkTokens", "prefill_chunk_tokens"],
  ["drainSecs", "drain_secs"],
  ["metricsPort", "metrics_port"],
  ["telemetry", "[telemetry]"],
  ["prefillBaseMb", "NEURON_PREFILL_BASE_MB"],
  ["prefillMbPer1kTokens", "NEURON_PREFILL_MB_PER_1K_TOKENS"]
]

const fixed = new Set<string>(NEURON_RESTART_ONLY.map(([key]) => key))

/** What a reload changed among the settings it applies, as `key: old → new` lines. */
const LIVE_KEYS: ReadonlyArray<readonly [keyof NeuronSettings, string]> = [
  ["apiToken", "api_token"],
  ["maxN", "max_n"],
  ["maxWaitSecs", "max_wait_secs"],
  ["autoLoad", "auto_load"],
  ["loadDelayMs", "load_delay_ms"],
  ["streamCoalesceMs", "stream_coalesce_ms"],
  ["contextSize", "context_size"],
  ["memoryBudgetMb", "memory_budget_mb"],
  ["defaultModels", "default_models"]
]

const secret = (settings: NeuronSettings) => settings.apiToken && Redacted.value(settings.apiToken)

class LiveNeuronConfig extends Context.Tag("cortex/LiveNeuronConfig")<LiveNeuronConfig, {
  readonly current: () => NeuronSettings
  readonly replace: (next: NeuronSettings) => void
}>() {}

/** NeuronConfig as a view of the settings in force, and the handle a reload replaces them through. */
export const NeuronConfigLive = (startup: NeuronSettings) => {
  let now = startup
  const live = Layer.succeed(LiveNeuronConfig, {
    current: () => now,
    replace: (next) => void (now = next)
  })
  return Layer.merge(
    live,
    Layer.succeed(NeuronConfig, liveView(startup, () => now, fixed, ["source"]))
  )
}

/** SIGHUP → reload, for as long as the neuron runs. */
export const NeuronReload = Layer.scopedDiscard(Effect.gen(function*() {
  const live = yield* LiveNeuronConfig
  const models = yield* ModelManager
  const startup = live.current()
  const runFork = Runtime.runFork(yield* Effect.runtime<never>())
  const lock = yield* Effect.makeSemaphore(1)

  const reload = lock.withPermits(1)(Effect.gen(function*() {
    const before = live.current()
    const next = yield* loadNeuronConfig(before.source ?? { file: before.configFile })
    const changes = LIVE_KEYS.filter(([key]) =>
      key === "apiToken" ? secret(before) !== secret(next) : !sameSettings(before[key], next[key])
    ).map(([key, name]) =>
      key === "apiToken" ? `${name} changed` : `${name}: ${JSON.stringify(before[key])} → ${JSON.stringify(next[key])}`
    )
    const restart = NEURON_RESTART_ONLY.filter(([key]) => !sameSettings(startup[key], next[key])).map(([, name]) =>
      name
    )
    live.replace(next)
    yield* Effect.logInfo(`neuron config reloaded (SIGHUP): ${changes.length > 0 ? changes.join("; ") : "no changes"}`)
    if (restart.length > 0) {
      yield* Effect.logWarning(
        `neuron config reload (SIGHUP): changed but needs a restart to take effect: ${restart.join(", ")}`
      )
    }
    const added = next.defaultModels.filter((id) => !before.defaultModels.includes(id))
    yield* Effect.forEach(added, (id) =>
      models.load(id).pipe(
        Effect.tap(() => Effect.logInfo(`default model ${id} loaded after the reload`)),
        Effect.tapError((error) => Effect.logWarning(`default model ${id} not loaded: ${error.message}`)),
        Effect.ignore
      ), { discard: true })
  })).pipe(
    Effect.catchTag("ConfigError", (error) =>
      Effect.logError(
        `neuron config reload (SIGHUP) refused, the running config keeps serving: invalid configuration: ${error.message}`
      ))
  )

  yield* Effect.acquireRelease(
    Effect.sync(() => {
      const onHup = () => void runFork(reload)
      process.on("SIGHUP", onHup)
      return onHup
    }),
    (onHup) => Effect.sync(() => void process.off("SIGHUP", onHup))
  )
}))
