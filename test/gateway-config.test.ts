import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { mkdtemp, writeFile } from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { loadGatewayConfig } from "../src/gateway/GatewayConfig.js"

const root = fileURLToPath(new URL("../", import.meta.url))

const dirWith = async (files: Record<string, string>) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), "cortex-config-"))
  for (const [name, text] of Object.entries(files)) await writeFile(path.join(dir, name), text)
  return dir
}

const failure = (options: Parameters<typeof loadGatewayConfig>[0]) => Effect.flip(loadGatewayConfig(options))

describe("cortex.toml and models.toml", () => {
  it.effect("the shipped examples load as shipped", () =>
    Effect.gen(function*() {
      const settings = yield* loadGatewayConfig({ file: path.join(root, "cortex.example.toml"), env: {} })
      expect(settings.listen).toEqual({ host: "0.0.0.0", port: 31313 })
      expect(settings.metricsListen).toEqual({ host: "0.0.0.0", port: 31314 })
      expect(settings.modelsFile).toBe(path.join(root, "models.example.toml"))
      expect(settings.neurons.map((n) => n.name)).toEqual(["local"])
      expect(settings.models.map((m) => m.id)).toEqual(["tiny"])
      expect(settings.aliases["gpt-4o-mini"]).toBe("tiny")
      expect(settings.eviction.strategy).toBe("lru")
      expect(settings.retry).toEqual({ on: ["connect", "reset", "timeout", "502", "503", "504"], maxAttempts: 3 })
    }))

  it.effect("resolves models_config against cortex.toml's folder, not the cwd", () =>
    Effect.gen(function*() {
      const dir = yield* Effect.promise(() =>
        dirWith({ "cortex.toml": `models_config = "m.toml"\n`, "m.toml": `[[models]]\nid = "a"\n` })
      )
      const settings = yield* loadGatewayConfig({ file: path.join(dir, "cortex.toml"), env: {} })
      expect(settings.modelsFile).toBe(path.join(dir, "m.toml"))
      expect(settings.models[0]!.id).toBe("a")
    }))

  it.effect("refuses a configured models file that is missing, naming it", () =>
    Effect.gen(function*() {
      const dir = yield* Effect.promise(() => dirWith({ "cortex.toml": `models_config = "nope.toml"\n` }))
      const error = yield* failure({ file: path.join(dir, "cortex.toml"), env: {} })
      expect(error._tag).toBe("ConfigError")
      expect(error.file).toBe(path.join(dir, "nope.toml"))
      expect(error.reason).toContain("ENOENT")
    }))

  it.effect("names file, key and reason for bad values, unknown keys and dangling aliases", () =>
    Effect.gen(function*() {
      const bad = yield* Effect.promise(() => dirWith({ "cortex.toml": `[gateway]\nlisten = "nowhere"\n` }))
      const listen = yield* failure({ file: path.join(bad, "cortex.toml"), env: {} })
      expect(listen.key).toBe("gateway.listen")
      const unknown = yield* Effect.promise(() => dirWith({ "cortex.toml": `[gatewy]\nlisten = "0.0.0.0:1"\n` }))
      expect((yield* failure({ file: path.join(unknown, "cortex.toml"), env: {} })).key).toBe("gatewy")
      const dangling = yield* Effect.promise(() =>
        dirWith({
          "cortex.toml": "",
          "models.toml": `[[models]]\nid = "a"\n[aliases]\nb = "zzz"\n`
        })
      )
      const alias = yield* failure({ file: path.join(dangling, "cortex.toml"), env: {} })
      expect(alias.file).toBe(path.join(dangling, "models.toml"))
      expect(alias.key).toBe("aliases.b")
      const neurons = yield* Effect.promise(() =>
        dirWith({ "cortex.toml": `[[neurons]]\nname = "a"\nendpoint = "ftp://x"\n` })
      )
      expect((yield* failure({ file: path.join(neurons, "cortex.toml"), env: {} })).key).toBe("neurons.0.endpoint")
    }))

  it.effect("takes retry_on and max_attempts, and refuses an unknown retry condition naming the key", () =>
    Effect.gen(function*() {
      const good = yield* Effect.promise(() =>
        dirWith({ "cortex.toml": `[gateway]\nretry_on = ["connect", "500", "429"]\nmax_attempts = 5\n` })
      )
      const settings = yield* loadGatewayConfig({ file: path.join(good, "cortex.toml"), env: {} })
      expect(settings.retry).toEqual({ on: ["connect", "500", "429"], maxAttempts: 5 })
      const unknown = yield* Effect.promise(() =>
        dirWith({ "cortex.toml": `[gateway]\nretry_on = ["connect", "5xx"]\n` })
      )
      const error = yield* failure({ file: path.join(unknown, "cortex.toml"), env: {} })
      expect(error._tag).toBe("ConfigError")
      expect(error.file).toBe(path.join(unknown, "cortex.toml"))
      expect(error.key).toBe("gateway.retry_on.1")
      expect(error.reason).toContain(`unknown retry condition "5xx"`)
      const status = yield* Effect.promise(() => dirWith({ "cortex.toml": `[gateway]\nretry_on = ["404"]\n` }))
      expect((yield* failure({ file: path.join(status, "cortex.toml"), env: {} })).key).toBe("gateway.retry_on.0")
      const zero = yield* Effect.promise(() => dirWith({ "cortex.toml": `[gateway]\nmax_attempts = 0\n` }))
      expect((yield* failure({ file: path.join(zero, "cortex.toml"), env: {} })).key).toBe("gateway.max_attempts")
    }))

  it.effect("lets CORTEX_* variables override the file", () =>
    Effect.gen(function*() {
      const settings = yield* loadGatewayConfig({
        file: path.join(root, "cortex.example.toml"),
        env: { CORTEX_LISTEN: "127.0.0.1:4000", CORTEX_METRICS_LISTEN: "off", CORTEX_REQUIRE_AUTH: "true" }
      })
      expect(settings.listen).toEqual({ host: "127.0.0.1", port: 4000 })
      expect(settings.metricsListen).toBeUndefined()
      expect(settings.requireAuth).toBe(true)
    }))
})
