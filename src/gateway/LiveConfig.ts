/**
 * The gateway's live configuration: the settings in force now, replaced whole by a reload
 * (ConfigReload.ts). The `GatewayConfig` every service reads is a view of it: each property
 * read returns the current value, so the catalogue, aliases, keys, profiles, eviction settings
 * and the neuron list follow a reload without any service being rebuilt, and the hot path pays
 * one getter call. Settings fixed at start (bound sockets, the telemetry SDK, timers and parsed
 * retry policies) keep their startup value in the view; a reload that changes them is told so.
 */
import { Context, Effect, Layer, SubscriptionRef } from "effect"
import { liveView } from "../domain/live-settings.js"
import { GatewayConfig, type GatewaySettings } from "./GatewayConfig.js"

/** Settings read once at start: changing them needs a restart. Value: the file key to name. */
export const RESTART_ONLY: ReadonlyArray<readonly [keyof GatewaySettings, string]> = [
  ["listen", "[gateway] listen"],
  ["metricsListen", "[gateway] metrics_listen"],
  ["telemetry", "[telemetry]"],
  ["idleTimeoutSecs", "[gateway] idle_timeout_secs"],
  ["retry", "[gateway] retry_on / max_attempts"],
  ["pollIntervalSecs", "[gateway] poll_interval_secs"],
  ["watchConfig", "[gateway] watch_config"],
  ["store", "[store]"],
  ["imageFetch", "[gateway] image_fetch*"]
]

export interface LiveConfigService {
  /** The settings in force now (synchronous: the inference fast path reads it outside any fiber). */
  readonly current: () => GatewaySettings
  /** The settings the gateway started with. */
  readonly startup: GatewaySettings
  /** Every replacement, for subscribers (the console). */
  readonly ref: SubscriptionRef.SubscriptionRef<GatewaySettings>
  /** Put new settings in force; restart-only keys keep their startup value. */
  readonly replace: (next: GatewaySettings) => Effect.Effect<void>
}

export class LiveConfig extends Context.Tag("cortex/LiveConfig")<LiveConfig, LiveConfigService>() {}

const restartOnly = new Set<string>(RESTART_ONLY.map(([key]) => key))

/** LiveConfig and the GatewayConfig view of it, from the settings loaded at start. */
export const LiveConfigLive = (startup: GatewaySettings) => {
  const live = Layer.effect(
    LiveConfig,
    Effect.gen(function*() {
      let now = startup
      const ref = yield* SubscriptionRef.make(startup)
      return {
        current: () => now,
        startup,
        ref,
        replace: (next) =>
          Effect.suspend(() => {
            now = next
            return SubscriptionRef.set(ref, next)
          })
      } satisfies LiveConfigService
    })
  )
  const view = Layer.effect(
    GatewayConfig,
    Effect.map(LiveConfig, (live) => liveView(live.startup, live.current, restartOnly, ["watchConfig", "source"]))
  )
  return Layer.provideMerge(view, live)
}
