import { describe, expect, it } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll } from "vitest"
import { loadNeuronConfig, physicalCores } from "../src/neuron/NeuronConfig.js"

let dir = ""
let counter = 0

beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), "neuron-config-"))
})
afterAll(() => {
  rmSync(dir, { recursive: true, force: true })
})

/** Writes a config file in its own sub-folder of the temp dir and returns its absolute path. */
const writeConfig = (text: string) => {
  const folder = path.join(dir, `case-${counter++}`)
  mkdirSync(folder)
  const file = path.join(folder, "neuron.toml")
  writeFileSync(file, text)
  return file
}

const failure = (options: Parameters<typeof loadNeuronConfig>[0]) => Effect.flip(loadNeuronConfig(options))

describe("loadNeuronConfig", () => {
  it.effect("uses the defaults when there is no file and no environment", () =>
    Effect.gen(function*() {
      const settings = yield* loadNeuronConfig({ env: {} })
      expect(settings.configFile).toBeUndefined()
      expect(settings.host).toBe("0.0.0.0")
      expect(settings.port).toBe(13131)
      expect(settings.modelsDir).toBe(path.resolve(process.cwd(), "models"))
      expect(settings.threads).toBe(physicalCores())
      expect(settings.memoryBudgetMb).toBeUndefined()
      expect(settings.prefillChunkTokens).toBe(512)
      expect(settings.contextSize).toBe(4096)
      expect(settings.maxInFlight).toBe(2)
      expect(settings.maxQueueDepth).toBe(32)
      expect(settings.maxWaitSecs).toBe(60)
      expect(settings.maxPerPrincipal).toBeUndefined()
      expect(settings.defaultModels).toEqual([])
      expect(settings.apiToken).toBeUndefined()
      expect(settings.gpu).toBe("auto")
      expect(settings.drainSecs).toBe(30)
      expect(settings.autoLoad).toBe(true)
      expect(settings.prefillBaseMb).toBe(4)
      expect(settings.prefillMbPer1kTokens).toBe(8)
    }))

  it.effect("decodes a file that sets every key", () =>
    Effect.gen(function*() {
      const modelsDir = path.join(dir, "elsewhere", "models")
      const file = writeConfig(
        [
          `host = "127.0.0.1"`,
          `port = 8123`,
          `models_dir = ${JSON.stringify(modelsDir)}`,
          `threads = 3`,
          `memory_budget_mb = 4096.5`,
          `prefill_chunk_tokens = 256`,
          `context_size = 8192`,
          `max_in_flight = 4`,
          `max_queue_depth = 0`,
          `max_wait_secs = 2.5`,
          `max_per_principal = 3`,
          `default_models = ["alpha.gguf", "beta"]`,
          `api_token = "sekret"`,
          `gpu = "off"`,
          `drain_secs = 0`,
          `auto_load = false`
        ].join("\n")
      )
      const settings = yield* loadNeuronConfig({ file, env: {} })
      expect(settings.configFile).toBe(file)
      expect(settings.host).toBe("127.0.0.1")
      expect(settings.port).toBe(8123)
      expect(settings.modelsDir).toBe(modelsDir)
      expect(settings.threads).toBe(3)
      expect(settings.memoryBudgetMb).toBe(4096.5)
      expect(settings.prefillChunkTokens).toBe(256)
      expect(settings.contextSize).toBe(8192)
      expect(settings.maxInFlight).toBe(4)
      expect(settings.maxQueueDepth).toBe(0)
      expect(settings.maxWaitSecs).toBe(2.5)
      expect(settings.maxPerPrincipal).toBe(3)
      expect(settings.defaultModels).toEqual(["alpha.gguf", "beta"])
      expect(settings.apiToken).toBeDefined()
      expect(Redacted.value(settings.apiToken!)).toBe("sekret")
      expect(String(settings.apiToken)).not.toContain("sekret")
      expect(settings.gpu).toBe("off")
      expect(settings.drainSecs).toBe(0)
      expect(settings.autoLoad).toBe(false)
    }))

  it.effect("resolves a relative models_dir against the config file's folder, not the cwd", () =>
    Effect.gen(function*() {
      const file = writeConfig(`models_dir = "weights/gguf"\n`)
      expect(path.dirname(file)).not.toBe(process.cwd())
      const settings = yield* loadNeuronConfig({ file, env: {} })
      expect(settings.modelsDir).toBe(path.join(path.dirname(file), "weights", "gguf"))
      // The same holds when the file itself is named relative to the cwd.
      const relative = yield* loadNeuronConfig({ file: path.relative(process.cwd(), file), env: {} })
      expect(relative.configFile).toBe(file)
      expect(relative.modelsDir).toBe(path.join(path.dirname(file), "weights", "gguf"))
    }))

  it.effect("resolves a NEURON_MODELS_DIR override against the config file's folder too", () =>
    Effect.gen(function*() {
      const file = writeConfig(`models_dir = "a"\n`)
      const settings = yield* loadNeuronConfig({ file, env: { NEURON_MODELS_DIR: "b" } })
      expect(settings.modelsDir).toBe(path.join(path.dirname(file), "b"))
    }))

  it.effect("lets NEURON_* variables override the file", () =>
    Effect.gen(function*() {
      const file = writeConfig(
        [`port = 9000`, `memory_budget_mb = 1000`, `default_models = ["from-file"]`, `host = "10.0.0.1"`].join("\n")
      )
      const settings = yield* loadNeuronConfig({
        file,
        env: {
          NEURON_PORT: "8080",
          NEURON_MEMORY_BUDGET_MB: "2048",
          NEURON_DEFAULT_MODELS: " one.gguf, two ,,three ",
          NEURON_AUTO_LOAD: "0",
          NEURON_GPU: "off",
          NEURON_API_TOKEN: "env-token",
          NEURON_PREFILL_BASE_MB: "16",
          NEURON_PREFILL_MB_PER_1K_TOKENS: "2.5"
        }
      })
      expect(settings.port).toBe(8080)
      expect(settings.memoryBudgetMb).toBe(2048)
      expect(settings.defaultModels).toEqual(["one.gguf", "two", "three"])
      expect(settings.autoLoad).toBe(false)
      expect(settings.gpu).toBe("off")
      expect(Redacted.value(settings.apiToken!)).toBe("env-token")
      expect(settings.prefillBaseMb).toBe(16)
      expect(settings.prefillMbPer1kTokens).toBe(2.5)
      // Keys the environment does not mention keep the file's value.
      expect(settings.host).toBe("10.0.0.1")
    }))

  it.effect("lets the port option win over the environment and the file", () =>
    Effect.gen(function*() {
      const file = writeConfig(`port = 9000\n`)
      const settings = yield* loadNeuronConfig({ file, port: 7000, env: { NEURON_PORT: "8080" } })
      expect(settings.port).toBe(7000)
      const zero = yield* loadNeuronConfig({ file, port: 0, env: {} })
      expect(zero.port).toBe(0)
    }))

  it.effect("names the file, key and reason for an unknown key", () =>
    Effect.gen(function*() {
      const file = writeConfig(`prot = 1\n`)
      const error = yield* failure({ file, env: {} })
      expect(error._tag).toBe("ConfigError")
      expect(error.file).toBe(file)
      expect(error.key).toBe("prot")
      expect(error.reason).toMatch(/unexpected/i)
      expect(error.message).toContain(file)
      expect(error.message).toContain("prot")
    }))

  it.effect("names the key for a value of the wrong type", () =>
    Effect.gen(function*() {
      const file = writeConfig(`port = "x"\n`)
      const error = yield* failure({ file, env: {} })
      expect(error._tag).toBe("ConfigError")
      expect(error.file).toBe(file)
      expect(error.key).toBe("port")
      expect(error.reason).toMatch(/expected number/i)
    }))

  it.effect("names the key and range for an out-of-range value", () =>
    Effect.gen(function*() {
      const file = writeConfig(`host = "::1"\nport = 70000\n`)
      const error = yield* failure({ file, env: {} })
      expect(error._tag).toBe("ConfigError")
      expect(error.file).toBe(file)
      expect(error.key).toBe("port")
      expect(error.reason).toContain("65535")
      expect(error.reason).toContain("70000")
    }))

  it.effect("names the path inside an array value", () =>
    Effect.gen(function*() {
      const file = writeConfig(`default_models = ["ok", 1]\n`)
      const error = yield* failure({ file, env: {} })
      expect(error.key).toBe("default_models.1")
    }))

  it.effect("reports invalid TOML syntax without a key", () =>
    Effect.gen(function*() {
      const file = writeConfig(`port = = 1\n`)
      const error = yield* failure({ file, env: {} })
      expect(error._tag).toBe("ConfigError")
      expect(error.file).toBe(file)
      expect(error.key).toBeUndefined()
      expect(error.reason).toMatch(/^invalid TOML/)
    }))

  it.effect("reports a missing file without a key", () =>
    Effect.gen(function*() {
      const file = path.join(dir, "does-not-exist.toml")
      const error = yield* failure({ file, env: {} })
      expect(error._tag).toBe("ConfigError")
      expect(error.file).toBe(file)
      expect(error.key).toBeUndefined()
      expect(error.reason).toContain("ENOENT")
    }))

  it.effect("reports a bad environment value as a ConfigError naming the variable", () =>
    Effect.gen(function*() {
      const port = yield* failure({ env: { NEURON_PORT: "abc" } })
      expect(port._tag).toBe("ConfigError")
      expect(port.file).toBe("environment")
      expect(port.key).toBe("NEURON_PORT")
      expect(port.reason.length).toBeGreaterThan(0)

      const seats = yield* failure({ env: { NEURON_MAX_IN_FLIGHT: "0" } })
      expect(seats.file).toBe("environment")
      expect(seats.key).toBe("NEURON_MAX_IN_FLIGHT")

      const gpu = yield* failure({ env: { NEURON_GPU: "cuda" } })
      expect(gpu.key).toBe("NEURON_GPU")

      const autoLoad = yield* failure({ env: { NEURON_AUTO_LOAD: "yes" } })
      expect(autoLoad.key).toBe("NEURON_AUTO_LOAD")

      const prefill = yield* failure({ env: { NEURON_PREFILL_BASE_MB: "lots" } })
      expect(prefill._tag).toBe("ConfigError")
      expect(prefill.file).toBe("environment")
      expect(prefill.key).toBe("NEURON_PREFILL_BASE_MB")
    }))

  it.effect("checks an environment override against the file's limits", () =>
    Effect.gen(function*() {
      const file = writeConfig(`port = 9000\n`)
      const error = yield* failure({ file, env: { NEURON_PORT: "70000" } })
      expect(error.file).toBe("environment")
      expect(error.key).toBe("NEURON_PORT")
    }))

  it.effect("reads NEURON_<KEY> only: unprefixed or differently cased variables are not overrides", () =>
    Effect.gen(function*() {
      const settings = yield* loadNeuronConfig({
        env: { PORT: "1", MAX_N: "9", neuron_port: "2", NEURON_MAX_N: "3", NEURON_HOST: undefined }
      })
      expect(settings.port).toBe(13131)
      expect(settings.maxN).toBe(3)
      expect(settings.host).toBe("0.0.0.0")
    }))

  it.effect("refuses an empty NEURON_API_TOKEN, naming the variable and never the token", () =>
    Effect.gen(function*() {
      const error = yield* failure({ env: { NEURON_API_TOKEN: "" } })
      expect(error.file).toBe("environment")
      expect(error.key).toBe("NEURON_API_TOKEN")
      const settings = yield* loadNeuronConfig({ env: { NEURON_API_TOKEN: "s3cret-token" } })
      expect(String(settings.apiToken)).not.toContain("s3cret-token")
      expect(Redacted.value(settings.apiToken!)).toBe("s3cret-token")
    }))

  it.effect("names the variable, not the port option, when the option carries the bad port", () =>
    Effect.gen(function*() {
      const fromVariable = yield* failure({ env: { NEURON_PORT: "-1" } })
      expect(fromVariable.key).toBe("NEURON_PORT")
      const fromOption = yield* failure({ port: 70000, env: { NEURON_PORT: "8080" } })
      expect(fromOption.file).toBe("environment")
      expect(fromOption.key).toBe("port")
    }))
})
