/**
 * Config reload without dropping traffic: SIGHUP, `POST /admin/reload` and (with
 * `[gateway] watch_config = true`) a change to cortex.toml or models.toml re-read both files the
 * way the gateway read them at start. A file that does not load is refused with the error a
 * start would give, and the running config keeps serving. A good one is put in force at once
 * (LiveConfig.ts): new models, aliases, profiles, keys, eviction settings and neurons; a removed
 * neuron gets no new requests and is dropped once the requests it holds have finished. Requests
 * in flight keep the route and connection they have, so no stream is cut.
 */
import { Effect, Redacted, Runtime, Schedule } from "effect"
import { watch } from "node:fs"
import * as path from "node:path"
import type { ConfigError } from "../domain/contract.js"
import { sameSettings } from "../domain/live-settings.js"
import { type GatewaySettings, loadGatewayConfig } from "./GatewayConfig.js"
import { InFlight } from "./InFlight.js"
import { LiveConfig, RESTART_ONLY } from "./LiveConfig.js"
import { Poller } from "./Poller.js"

export interface ReloadAnswer {
  readonly status: "reloaded"
  readonly trigger: string
  /** What changed, one line each ("model added: x", "alias y → z", ...). */
  readonly changes: ReadonlyArray<string>
  /** Keys that changed in the files but keep their old value until a restart. */
  readonly restart_needed: ReadonlyArray<string>
  /** Neurons removed from the config, draining their requests in flight. */
  readonly draining: ReadonlyArray<string>
}

const same = sameSettings
const secret = (token: Redacted.Redacted<string> | undefined) => token && Redacted.value(token)

/** What differs between two settings, as short lines for the log and the answer. */
export const describeChanges = (before: GatewaySettings, after: GatewaySettings): Array<string> => {
  const lines: Array<string> = []
  const byId = (list: GatewaySettings["models"]) => new Map(list.map((m) => [m.id, m]))
  const [oldModels, newModels] = [byId(before.models), byId(after.models)]
  for (const [id, m] of newModels) {
    if (!oldModels.has(id)) lines.push(`model added: ${id}`)
    else if (!same(oldModels.get(id), m)) lines.push(`model profile changed: ${id}`)
  }
  for (const id of oldModels.keys()) if (!newModels.has(id)) lines.push(`model removed: ${id}`)
  for (const [alias, target] of Object.entries(after.aliases)) {
    if (before.aliases[alias] !== target) lines.push(`alias ${alias} → ${target}`)
  }
  for (const alias of Object.keys(before.aliases)) if (!(alias in after.aliases)) lines.push(`alias removed: ${alias}`)
  const [oldNeurons, newNeurons] = [before.neurons, after.neurons].map((l) => new Map(l.map((n) => [n.name, n])))
  for (const [name, n] of newNeurons!) {
    const old = oldNeurons!.get(name)
    if (!old) lines.push(`neuron added: ${name} (${n.endpoint})`)
    else if (old.endpoint !== n.endpoint || secret(old.token) !== secret(n.token)) lines.push(`neuron changed: ${name}`)
  }
  for (const name of oldNeurons!.keys()) if (!newNeurons!.has(name)) lines.push(`neuron removed: ${name} (draining)`)
  const names = (keys: GatewaySettings["keys"]) => keys.map((k) => k.name).sort().join(",")
  if (before.keys.length !== after.keys.length || names(before.keys) !== names(after.keys)) {
    lines.push(`api keys: ${before.keys.length} → ${after.keys.length}`)
  }
  if (before.requireAuth !== after.requireAuth) lines.push(`require_auth: ${before.requireAuth} → ${after.requireAuth}`)
  if (!same(before.eviction, after.eviction)) lines.push("eviction settings changed")
  if (before.loadTimeoutSecs !== after.loadTimeoutSecs) {
    lines.push(`load_timeout_secs: ${before.loadTimeoutSecs} → ${after.loadTimeoutSecs}`)
  }
  return lines
}

/** How long file events are gathered before one reload (an editor's save is several events). */
const WATCH_DEBOUNCE_MS = 300

export class ConfigReload extends Effect.Service<ConfigReload>()("cortex/ConfigReload", {
  scoped: Effect.gen(function*() {
    const live = yield* LiveConfig
    const poller = yield* Poller
    const inFlight = yield* InFlight
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    const scope = yield* Effect.scope
    const lock = yield* Effect.makeSemaphore(1)

    /** Wait for a removed neuron's requests to finish, then forget it. */
    const drain = (name: string) =>
      Effect.gen(function*() {
        const busy = inFlight.onNode(name)
        if (busy > 0) {
          yield* Effect.logInfo(`neuron ${name} removed from the config: draining ${busy} request(s) in flight`)
          yield* Effect.sync(() => inFlight.onNode(name)).pipe(
            Effect.repeat({ schedule: Schedule.spaced("250 millis"), until: (n) => n === 0 })
          )
        }
        yield* poller.remove(name)
        yield* Effect.logInfo(`neuron ${name} removed from the config: drained and dropped`)
      })

    const reload = (trigger: string): Effect.Effect<ReloadAnswer, ConfigError> =>
      lock.withPermits(1)(Effect.gen(function*() {
        const before = live.current()
        const next = yield* loadGatewayConfig(before.source ?? { file: before.configFile }).pipe(
          Effect.tapError((error) =>
            Effect.logError(
              `config reload (${trigger}) refused, the running config keeps serving: invalid configuration: ${error.message}`
            )
          )
        )
        const changes = describeChanges(before, next)
        const restartNeeded = RESTART_ONLY.filter(([key]) => !same(live.startup[key], next[key])).map(([, name]) =>
          name
        )
        yield* live.replace(next)
        yield* poller.reconcile
        const draining = before.neurons.filter((n) => !next.neurons.some((m) => m.name === n.name)).map((n) => n.name)
        for (const name of draining) yield* Effect.forkIn(drain(name), scope)
        // New and re-pointed neurons are polled now, so the answer's changes can be used at once.
        const fresh = next.neurons.filter((n) => poller.now().get(n.name)?.lastSeen === undefined)
        yield* Effect.forEach(fresh, (n) => poller.refresh(n.name), { concurrency: "unbounded", discard: true })
        yield* Effect.logInfo(
          `config reloaded (${trigger}): ${changes.length > 0 ? changes.join("; ") : "no changes"}`
        )
        if (restartNeeded.length > 0) {
          yield* Effect.logWarning(
            `config reload (${trigger}): changed but needs a restart to take effect: ${restartNeeded.join(", ")}`
          )
        }
        return { status: "reloaded", trigger, changes, restart_needed: restartNeeded, draining } satisfies ReloadAnswer
      }))

    // SIGHUP (systemd's ExecReload): reload; a refusal is already logged.
    yield* Effect.acquireRelease(
      Effect.sync(() => {
        const onHup = () => void runFork(Effect.ignore(reload("SIGHUP")))
        process.on("SIGHUP", onHup)
        return onHup
      }),
      (onHup) => Effect.sync(() => void process.off("SIGHUP", onHup))
    )

    if (live.startup.watchConfig) {
      const files = [live.startup.configFile, live.startup.modelsFile].filter((f): f is string => f !== undefined)
      const dirs = new Map<string, Set<string>>()
      for (const file of files) {
        const set = dirs.get(path.dirname(file)) ?? new Set()
        set.add(path.basename(file))
        dirs.set(path.dirname(file), set)
      }
      let timer: ReturnType<typeof setTimeout> | undefined
      const changed = () => {
        clearTimeout(timer)
        timer = setTimeout(() => runFork(Effect.ignore(reload("file change"))), WATCH_DEBOUNCE_MS)
      }
      // The folder, not the file: editors save by writing a new file and renaming it over the old one.
      for (const [dir, names] of dirs) {
        yield* Effect.acquireRelease(
          Effect.sync(() =>
            watch(dir, (_event, name) => {
              if (name !== null && names.has(name.toString())) changed()
            })
          ),
          (watcher) => Effect.sync(() => watcher.close())
        )
      }
      yield* Effect.addFinalizer(() => Effect.sync(() => clearTimeout(timer)))
      yield* Effect.logInfo(`watching ${files.join(" and ")} for changes (debounce ${WATCH_DEBOUNCE_MS} ms)`)
    }

    return { reload } as const
  })
}) {}
