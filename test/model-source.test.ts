/**
 * Model references (src/domain/modelSource.ts): parsing `hf:` sources into canonical ids, picking
 * files from a repository listing (quant substring, ambiguity, split sets, projectors), models.toml
 * checks, and the neuron's [sources] settings.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Redacted } from "effect"
import { mkdtemp, writeFile } from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { isRefError, neuronIdOf, parseHfRef, type RepoFile, selectFiles } from "../src/domain/modelSource.js"
import { loadGatewayConfig } from "../src/gateway/GatewayConfig.js"
import { loadNeuronConfig } from "../src/neuron/NeuronConfig.js"

const ref = (source: string, quant?: string) => {
  const r = parseHfRef(source, quant)
  if (isRefError(r)) throw new Error(r.error)
  return r
}
const file = (p: string, size = 10): RepoFile => ({ path: p, size, sha256: undefined })

describe("parseHfRef", () => {
  it("gives canonical ids for a repository + quant, a tag, and an exact file", () => {
    expect(ref("hf:Org/Repo-GGUF", "Q4_K_M")).toMatchObject({
      repo: "Org/Repo-GGUF",
      quant: "Q4_K_M",
      id: "hf:Org/Repo-GGUF:Q4_K_M"
    })
    expect(ref("hf:Org/Repo-GGUF:Q4_K_M").id).toBe("hf:Org/Repo-GGUF:Q4_K_M")
    expect(ref("hf:Org/Repo-GGUF/sub/x-Q8_0.gguf")).toMatchObject({ file: "sub/x-Q8_0.gguf", quant: undefined })
    expect(ref("hf:Org/Repo").id).toBe("hf:Org/Repo")
  })

  it("refuses what it cannot honour, saying why", () => {
    const error = (source: string, quant?: string) => {
      const r = parseHfRef(source, quant)
      return isRefError(r) ? r.error : undefined
    }
    expect(error("Org/Repo")).toContain("expected hf:")
    expect(error("hf:Org")).toContain("expected hf:")
    expect(error("hf:Org/Repo/x.gguf", "Q4")).toContain("a quant cannot be given")
    expect(error("hf:Org/Repo/x.bin")).toContain(".gguf")
    expect(error("hf:Org/Repo/../x.gguf")).toContain("bad file path")
    expect(error("hf:Org/Repo:Q4_K_M", "Q8_0")).toContain("names quant")
    expect(error("hf:Org/Repo/x.gguf#dev")).toContain("revision")
  })

  it("names a profile's model on the neurons by its source, its file, or its id", () => {
    expect(neuronIdOf({ id: "m", source: "hf:O/R", quant: "q4" })).toBe("hf:O/R:q4")
    expect(neuronIdOf({ id: "m", file: "hf:O/R/a.gguf" })).toBe("hf:O/R/a.gguf")
    expect(neuronIdOf({ id: "m", file: "qwen/q4" })).toBe("qwen/q4")
    expect(neuronIdOf({ id: "m" })).toBe("m")
  })
})

describe("selectFiles", () => {
  const listing = [
    file("model-Q4_K_M.gguf"),
    file("model-Q4_K_S.gguf"),
    file("model-Q8_0-00001-of-00002.gguf"),
    file("model-Q8_0-00002-of-00002.gguf"),
    file("mmproj-model-f16.gguf"),
    file("mmproj-model-q8_0.gguf"),
    file("README.md")
  ]

  it("matches a quant case-insensitively, one set only", () => {
    const s = selectFiles(ref("hf:O/R", "q4_k_m"), listing)
    expect("parts" in s && s.parts.map((f) => f.path)).toEqual(["model-Q4_K_M.gguf"])
  })

  it("takes every part of a split set, and the F16 projector beside it", () => {
    const s = selectFiles(ref("hf:O/R", "Q8_0"), listing)
    expect("parts" in s && s.parts.map((f) => f.path)).toEqual([
      "model-Q8_0-00001-of-00002.gguf",
      "model-Q8_0-00002-of-00002.gguf"
    ])
    expect("parts" in s && s.projector?.path).toBe("mmproj-model-f16.gguf")
  })

  it("lists the matches of an ambiguous quant, and the files when none matches", () => {
    const ambiguous = selectFiles(ref("hf:O/R", "Q4_K"), listing)
    expect(ambiguous).toMatchObject({ _tag: "Ambiguous" })
    expect("detail" in ambiguous && ambiguous.detail).toContain("model-Q4_K_S.gguf")
    const none = selectFiles(ref("hf:O/R", "IQ2"), listing)
    expect(none).toMatchObject({ _tag: "NoMatch" })
    expect("detail" in none && none.detail).toContain("model-Q4_K_M.gguf")
    expect(selectFiles(ref("hf:O/R"), listing)).toMatchObject({ _tag: "Ambiguous" })
  })

  it("finds an exact file (a part names its set) and refuses an incomplete set", () => {
    const s = selectFiles(ref("hf:O/R/model-Q8_0-00002-of-00002.gguf"), listing)
    expect("parts" in s && s.parts.length).toBe(2)
    expect(selectFiles(ref("hf:O/R/nope.gguf"), listing)).toMatchObject({ _tag: "NoMatch" })
    expect(selectFiles(ref("hf:O/R", "Q8_0"), listing.filter((f) => !f.path.startsWith("model-Q8_0-00002"))))
      .toMatchObject({
        _tag: "Incomplete"
      })
  })
})

describe("configuration", () => {
  const modelsToml = async (text: string) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "cortex-sources-"))
    await writeFile(path.join(dir, "models.toml"), text)
    await writeFile(path.join(dir, "cortex.toml"), `models_config = "models.toml"\n`)
    return Effect.runPromiseExit(loadGatewayConfig({ file: path.join(dir, "cortex.toml"), env: {} }))
  }

  it("models.toml: a source with a quant loads; a quant without a source, or source and file, is refused by key", async () => {
    expect(Exit.isSuccess(await modelsToml(`[[models]]\nid = "a"\nsource = "hf:O/R"\nquant = "Q4_K_M"\n`))).toBe(true)
    const errorOf = async (text: string) => {
      const exit = await modelsToml(text)
      return Exit.isFailure(exit) ? String(exit.cause) : "loaded"
    }
    expect(await errorOf(`[[models]]\nid = "a"\nquant = "Q4_K_M"\n`)).toContain("models.0.quant")
    expect(await errorOf(`[[models]]\nid = "a"\nsource = "hf:O/R"\nfile = "x"\n`)).toContain("models.0.file")
    expect(await errorOf(`[[models]]\nid = "a"\nsource = "O/R"\n`)).toContain("models.0.source")
    expect(await errorOf(`[[models]]\nid = "a"\nfile = "hf:O/R"\n`)).toContain("names one file")
  })

  it("neuron.toml: the cache under models_dir, the public hub, HF_ENDPOINT, the token from token_env", async () => {
    const defaults = await Effect.runPromise(loadNeuronConfig({ env: { NEURON_MODELS_DIR: "/m" } }))
    expect(defaults.sources.cacheDir).toBe("/m/.cache/hf")
    expect(defaults.sources.hf.endpoint).toBe("https://huggingface.co")
    expect(defaults.sources.hf.token).toBeUndefined()
    const mirror = await Effect.runPromise(
      loadNeuronConfig({ env: { HF_ENDPOINT: "https://mirror.example/", HF_TOKEN: "t0k" } })
    )
    expect(mirror.sources.hf.endpoint).toBe("https://mirror.example")
    expect(Redacted.value(mirror.sources.hf.token!)).toBe("t0k")
    const dir = await mkdtemp(path.join(os.tmpdir(), "cortex-sources-"))
    const toml = path.join(dir, "neuron.toml")
    await writeFile(
      toml,
      `cache_dir = "cache"\n[sources]\nmax_cache_gb = 2\n[sources.hf]\nendpoint = "http://hub.local:8080"\ntoken_env = "MY_TOKEN"\n`
    )
    const file = await Effect.runPromise(
      loadNeuronConfig({ file: toml, env: { HF_ENDPOINT: "https://ignored.example", MY_TOKEN: "x" } })
    )
    expect(file.sources.cacheDir).toBe(path.join(dir, "cache"))
    expect(file.sources.maxCacheBytes).toBe(2 * 1024 ** 3)
    expect(file.sources.hf.endpoint).toBe("http://hub.local:8080")
    expect(Redacted.value(file.sources.hf.token!)).toBe("x")
    await writeFile(toml, `[sources.hf]\nendpoint = "ftp://x"\n`)
    const bad = await Effect.runPromiseExit(loadNeuronConfig({ file: toml, env: {} }))
    expect(Exit.isFailure(bad) && String(bad.cause)).toContain("sources.hf.endpoint")
  })
})
