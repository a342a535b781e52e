/**
 * Vision benchmark: image prefill tok/s and time to first token with one image, the binding
 * (@fugood/llama.node) called directly in this process versus a real neuron process serving the
 * same generated model over HTTP (streaming SSE), in the same run.
 *
 *   npx tsx bench/neuron/vision.ts [--quick] [--runs N]
 *
 * The model: the generated `bench` language model (8 layers, 512 wide) with a generated
 * clip/mlp projector for 224×224 images in 14×14 patches (256 image tokens, 6 encoder blocks).
 * Every run sends a different picture, so no run reuses another's image tokens.
 */
import { mkdtemp, rm } from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { SHAPES, writeModel } from "../../src/gguf/ModelGenerator.js"
import { imageTokens, type ProjectorSpec, writeProjector } from "../../src/gguf/ProjectorGenerator.js"
import { binding } from "../../src/neuron/worker/llama-node.js"
import { dataUrl, png } from "../../test/fixtures/images.js"
import { BenchChild, freePort, log, parseCli, sleep, stopChildrenOnExit } from "../lib.js"
import { sseEvents } from "./common.js"

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..")

const USAGE = `usage: npx tsx bench/neuron/vision.ts [options]

  --quick     1 run (a smoke run, not a figure to quote)
  --runs N    runs per side (default 3)
  --verbose   show the neuron's log
  --help      this text`

const args = parseCli({
  quick: { type: "boolean", default: false },
  runs: { type: "string" },
  verbose: { type: "boolean", default: false }
}, USAGE)
const runs = Math.max(1, Number(args.runs ?? (args.quick ? "1" : "3")))

const PROJECTOR: ProjectorSpec = {
  lmDim: SHAPES.bench.dim,
  imageSize: 224,
  patchSize: 14,
  dim: 256,
  heads: 4,
  ffn: 1024,
  layers: 6,
  hidden: 512
}
const QUESTION = "Describe the picture."
const picture = (run: number) =>
  dataUrl(png(224, 224, (x, y) => [(x * (run + 3)) & 255, (y * (run + 5)) & 255, run * 40]))

interface Sample {
  readonly ttftMs: number
  readonly promptTokens: number
}

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

const summary = (samples: ReadonlyArray<Sample>) => {
  const ttft = median(samples.map((s) => s.ttftMs))
  const tokens = samples[0]!.promptTokens
  return {
    ttftMs: Math.round(ttft * 10) / 10,
    promptTokens: tokens,
    prefillTokPerSec: Math.round(tokens / (ttft / 1000))
  }
}

const direct = async (model: string, projector: string): Promise<Array<Sample>> => {
  const context = await binding().loadModel({
    model,
    n_ctx: 4096,
    n_batch: 512,
    n_ubatch: 512,
    n_threads: 1,
    n_gpu_layers: 0,
    n_parallel: 1,
    flash_attn_type: "off"
  })
  try {
    context.initMultimodal({ path: projector, use_gpu: false })
    const samples: Array<Sample> = []
    for (let run = 0; run < runs; run++) {
      const formatted = context.getFormattedChat([{
        role: "user",
        content: [{ type: "image_url", image_url: { url: picture(run) } }, { type: "text", text: QUESTION }]
      }])
      const prompt = typeof formatted === "string" ? { prompt: formatted, media_paths: [] } : formatted
      const media = prompt.media_paths ?? []
      const promptTokens = (await context.tokenize(prompt.prompt, { media_paths: media })).tokens.length
      const started = performance.now()
      let first: number | undefined
      await context.completion({
        prompt: prompt.prompt,
        media_paths: media,
        n_predict: 1,
        temperature: 0,
        top_k: 1,
        top_p: 1,
        min_p: 0,
        penalty_repeat: 1,
        penalty_freq: 0,
        penalty_present: 0,
        penalty_last_n: 0,
        stop: []
      }, () => {
        first ??= performance.now()
      })
      samples.push({ ttftMs: (first ?? performance.now()) - started, promptTokens })
    }
    return samples
  } finally {
    await context.release()
  }
}

const throughNeuron = async (modelsDir: string): Promise<Array<Sample>> => {
  const port = await freePort()
  const neuron = BenchChild.spawn("neuron", [path.join(ROOT, "bin/cortex.js"), "neuron", "--port", String(port)], {
    cwd: ROOT,
    env: {
      ...process.env,
      NEURON_HOST: "127.0.0.1",
      NEURON_THREADS: "1",
      NEURON_MODELS_DIR: modelsDir,
      NEURON_DEFAULT_MODELS: "bench-vision",
      NEURON_PREFILL_CHUNK_TOKENS: "512"
    },
    verbose: args.verbose
  })
  const base = `http://127.0.0.1:${port}`
  try {
    const deadline = Date.now() + 120_000
    for (;;) {
      if (!neuron.alive) throw new Error(`neuron exited: ${neuron.describeExit()}`)
      const status = await fetch(`${base}/models`).then((r) => r.json() as Promise<any>).then(
        (b) => (b.data as Array<any>).find((m) => m.id === "bench-vision")?.status,
        () => undefined
      )
      if (status === "loaded") break
      if (Date.now() > deadline) throw new Error(`bench-vision not loaded: ${neuron.describeExit()}`)
      await sleep(200)
    }
    const samples: Array<Sample> = []
    for (let run = 0; run < runs; run++) {
      const started = performance.now()
      const res = await fetch(`${base}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: "bench-vision",
          stream: true,
          max_tokens: 1,
          temperature: 0,
          messages: [{
            role: "user",
            content: [{ type: "image_url", image_url: { url: picture(run + 100) } }, { type: "text", text: QUESTION }]
          }]
        })
      })
      let first: number | undefined
      let promptTokens = 0
      for await (const data of sseEvents(res.body!)) {
        if (!data.startsWith("{")) continue
        const chunk = JSON.parse(data)
        if (first === undefined && chunk.choices?.[0]?.delta?.content) first = performance.now()
        if (chunk.usage) promptTokens = chunk.usage.prompt_tokens
      }
      samples.push({ ttftMs: (first ?? performance.now()) - started, promptTokens })
    }
    return samples
  } finally {
    await neuron.stop()
  }
}

const dir = await mkdtemp(path.join(os.tmpdir(), "cortex-bench-vision-"))
stopChildrenOnExit(() => rm(dir, { recursive: true, force: true }))
try {
  const model = path.join(dir, "bench-vision.gguf")
  const projector = path.join(dir, "bench-vision.mmproj.gguf")
  log("generating the bench language model and a 224x224 projector")
  await writeModel(model, { shape: "bench", seed: 1 })
  await writeProjector(projector, { spec: PROJECTOR, seed: 1 })
  log(`direct: @fugood/llama.node in this process, ${runs} run(s)`)
  const a = summary(await direct(model, projector))
  log(`neuron: a real neuron process over HTTP, ${runs} run(s)`)
  const b = summary(await throughNeuron(dir))
  const row = (name: string, s: ReturnType<typeof summary>) =>
    `${name.padEnd(8)} ${String(s.promptTokens).padStart(13)} ${s.ttftMs.toFixed(1).padStart(14)} ${
      String(s.prefillTokPerSec).padStart(18)
    }`
  console.log(
    `one ${PROJECTOR.imageSize}x${PROJECTOR.imageSize} image (${
      imageTokens(PROJECTOR)
    } image tokens), 1 thread, median of ${runs}`
  )
  console.log(
    `${"side".padEnd(8)} ${"prompt tokens".padStart(13)} ${"TTFT ms".padStart(14)} ${"prefill tok/s".padStart(18)}`
  )
  console.log(row("direct", a))
  console.log(row("neuron", b))
  console.log(`neuron/direct prefill: ${(b.prefillTokPerSec / a.prefillTokPerSec).toFixed(2)}x`)
  console.log(JSON.stringify({ bench: "neuron-vision", runs, direct: a, neuron: b }))
} finally {
  await rm(dir, { recursive: true, force: true })
}
