import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { DEFAULT_STREAM_COALESCE_MS, loadNeuronConfig } from "../src/neuron/NeuronConfig.js"

const root = fileURLToPath(new URL("../", import.meta.url))

describe("shipped example configuration", () => {
  it.effect("neuron.example.toml loads as shipped, with its documented defaults", () =>
    Effect.gen(function*() {
      const settings = yield* loadNeuronConfig({ file: path.join(root, "neuron.example.toml"), env: {} })
      expect(settings.port).toBe(13131)
      expect(settings.modelsDir).toBe(path.join(root, "models"))
      expect(settings.prefillChunkTokens).toBe(512)
      expect(settings.streamCoalesceMs).toBe(DEFAULT_STREAM_COALESCE_MS)
      expect(settings.maxInFlight).toBe(2)
      expect(settings.defaultModels).toEqual([])
      expect(settings.apiToken).toBeUndefined()
    }))
})
