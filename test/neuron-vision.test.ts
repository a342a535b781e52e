/**
 * Vision on the neuron, on real inference: a generated tiny language model with a generated
 * clip/mlp projector (`vision.gguf` + `vision.mmproj.gguf`) served by the vision engine
 * (@fugood/llama.node) in its own worker, beside text models on node-llama-cpp.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { imageTokens, TINY_PROJECTOR } from "../src/gguf/ProjectorGenerator.js"
import { dataUrl, IMAGES, png } from "./fixtures/images.js"
import { getJson, modelStatus, type NeuronProcess, postJson, readSse, startNeuron, waitFor } from "./fixtures/neuron.js"

let neuron: NeuronProcess

beforeAll(async () => {
  neuron = await startNeuron({
    models: ["tiny", "vision", "vision-broken"],
    defaultModels: ["tiny", "vision"],
    toml: "[vision]\nmax_image_pixels = 20000000\n"
  })
})

afterAll(async () => {
  await neuron?.stop()
})

const GREEDY = { temperature: 0, max_tokens: 12 }

const withImages = (urls: ReadonlyArray<string>, text = "What is in the picture?") => [{
  role: "user",
  content: [...urls.map((url) => ({ type: "image_url", image_url: { url } })), { type: "text", text }]
}]

const chat = async (model: string, messages: unknown, extra: Record<string, unknown> = {}) => {
  const res = await postJson(`${neuron.url}/v1/chat/completions`, { model, messages, ...GREEDY, ...extra })
  return { status: res.status, headers: res.headers, body: await res.json() as any }
}

const answer = async (messages: unknown) => {
  const { body, status } = await chat("vision", messages)
  expect(status, JSON.stringify(body)).toBe(200)
  return body
}

describe("vision models on the neuron", () => {
  it("lists the projector's model with the vision capability, and not the projector itself", async () => {
    const { body } = await getJson(`${neuron.url}/models`)
    const ids = (body.data as Array<any>).map((m) => m.id)
    expect(ids).toContain("vision")
    expect(ids.some((id: string) => id.includes("mmproj"))).toBe(false)
    const vision = (body.data as Array<any>).find((m) => m.id === "vision")
    expect(vision.capabilities).toContain("vision")
    const tiny = (body.data as Array<any>).find((m) => m.id === "tiny")
    expect(tiny.capabilities).not.toContain("vision")
  })

  it("answers with an image; the image changes the greedy output and counts its tokens in prompt_tokens", async () => {
    const text = await answer([{ role: "user", content: "What is in the picture?" }])
    const gradient = await answer(withImages([dataUrl(IMAGES.gradient())]))
    expect(gradient.choices[0].message.content.length).toBeGreaterThan(0)
    expect(gradient.choices[0].message.content).not.toBe(text.choices[0].message.content)
    // The image's tokens (64 for this projector) are prompt tokens.
    expect(gradient.usage.prompt_tokens - text.usage.prompt_tokens).toBeGreaterThanOrEqual(imageTokens(TINY_PROJECTOR))
  })

  it("two different images give different answers; the same image twice gives the same answer", async () => {
    const a1 = await answer(withImages([dataUrl(IMAGES.gradient())]))
    const b = await answer(withImages([dataUrl(IMAGES.checker())]))
    const a2 = await answer(withImages([dataUrl(IMAGES.gradient())]))
    expect(b.choices[0].message.content).not.toBe(a1.choices[0].message.content)
    expect(a2.choices[0].message.content).toBe(a1.choices[0].message.content)
  })

  it("streams an answer to an image", async () => {
    const res = await postJson(`${neuron.url}/v1/chat/completions`, {
      model: "vision",
      messages: withImages([dataUrl(IMAGES.red())]),
      stream: true,
      ...GREEDY
    })
    expect(res.status).toBe(200)
    const data = (await readSse(res)).filter((e) => e.type === "data").map((e) => e.value)
    expect(data.at(-1)).toBe("[DONE]")
    const chunks = data.slice(0, -1).map((d) => JSON.parse(d))
    const content = chunks.map((c) => c.choices?.[0]?.delta?.content ?? "").join("")
    expect(content.length, JSON.stringify(data)).toBeGreaterThan(0)
    const usage = chunks.find((c) => c.usage)?.usage
    expect(usage.prompt_tokens).toBeGreaterThan(imageTokens(TINY_PROJECTOR))
    const whole = await answer(withImages([dataUrl(IMAGES.red())]))
    expect(content).toBe(whole.choices[0].message.content)
  })

  it("refuses an image sent to a text-only model with 400 vision_unsupported", async () => {
    const { body, status } = await chat("tiny", withImages([dataUrl(IMAGES.red())]))
    expect(status).toBe(400)
    expect(body.error.code).toBe("vision_unsupported")
    expect(body.error.param).toBe("messages.0.content.0")
  })

  it("refuses a corrupt image with 400 naming the part", async () => {
    const corrupt = `data:image/png;base64,${
      Buffer.from("\x89PNG\r\n\x1a\nnot really a png at all").toString("base64")
    }`
    const { body, status } = await chat("vision", [{
      role: "user",
      content: [{ type: "text", text: "look" }, { type: "image_url", image_url: { url: corrupt } }]
    }])
    expect(status).toBe(400)
    expect(body.error.code).toBe("invalid_image")
    expect(body.error.param).toBe("messages.0.content.1")
    expect(body.error.message).toContain("messages.0.content.1")
  })

  it("resizes a 4096x4096 image to the encoder's input; refuses one over max_image_pixels", async () => {
    const big = png(4096, 4096, (x, y) => [(x >> 4) & 255, (y >> 4) & 255, 90])
    const ok = await answer(withImages([dataUrl(big)]))
    expect(ok.usage.prompt_tokens).toBeLessThan(imageTokens(TINY_PROJECTOR) + 64)
    // Only the header is read before the limit applies: a PNG that claims 8192x8192.
    const claims = png(1, 1, () => [0, 0, 0])
    claims.writeUInt32BE(8192, 16)
    claims.writeUInt32BE(8192, 20)
    const { body, status } = await chat("vision", withImages([dataUrl(claims)]))
    expect(status).toBe(400)
    expect(body.error.code).toBe("image_too_large")
    expect(body.error.message).toContain("8192x8192")
  })

  it("a projector that aborts llama.cpp kills only the vision worker: the load fails, the other models serve", async () => {
    const load = await postJson(`${neuron.url}/models/load`, { model: "vision-broken" })
    expect(load.status).toBe(500)
    const loadBody = await load.json() as any
    expect(loadBody.error.code).toBe("model_load_failed")
    expect(loadBody.error.message).toMatch(/crashed/)
    expect(loadBody.error.message).toMatch(/SIGABRT/)
    expect(await modelStatus(neuron.url, "vision-broken")).toBe("failed")
    // The text model never noticed.
    const text = await chat("tiny", [{ role: "user", content: "hello" }])
    expect(text.status).toBe(200)
    // The vision model was on the worker that died: it comes back once the worker restarted.
    await waitFor(
      "vision recovered",
      async () => (await modelStatus(neuron.url, "vision")) === "loaded" ? true : undefined
    )
    await answer(withImages([dataUrl(IMAGES.red())]))
  })
})

describe("the vision memory guard", () => {
  let guarded: NeuronProcess
  beforeAll(async () => {
    guarded = await startNeuron({
      models: ["vision"],
      defaultModels: ["vision"],
      toml: "[vision]\nencoder_mb = 100000000\n"
    })
  })
  afterAll(async () => {
    await guarded?.stop()
  })

  it("refuses an image that cannot fit with 503 InsufficientVram and Retry-After; text still fits", async () => {
    const res = await postJson(`${guarded.url}/v1/chat/completions`, {
      model: "vision",
      messages: withImages([dataUrl(IMAGES.red())]),
      ...GREEDY
    })
    expect(res.status).toBe(503)
    expect(res.headers.get("retry-after")).toBe("2")
    const body = await res.json() as any
    expect(body.error.code).toBe("insufficient_vram")
    expect(body.error.required_mb).toBeGreaterThan(100000000)
    const text = await postJson(`${guarded.url}/v1/chat/completions`, {
      model: "vision",
      messages: [{ role: "user", content: "hello" }],
      ...GREEDY
    })
    expect(text.status).toBe(200)
  })
})

describe("chunked vision prefill", () => {
  let windowed: NeuronProcess
  beforeAll(async () => {
    // 16-token windows: the image's 64 tokens are decoded in four windows.
    windowed = await startNeuron({
      models: ["vision"],
      defaultModels: ["vision"],
      env: { NEURON_PREFILL_CHUNK_TOKENS: "16" }
    })
  })
  afterAll(async () => {
    await windowed?.stop()
  })

  it("gives the same greedy answer in 16-token windows as in 512-token ones", async () => {
    const messages = withImages([dataUrl(IMAGES.checker())], "Describe it")
    const wide = await answer(messages)
    const res = await postJson(`${windowed.url}/v1/chat/completions`, { model: "vision", messages, ...GREEDY })
    expect(res.status).toBe(200)
    const narrow = await res.json() as any
    expect(narrow.choices[0].message.content).toBe(wide.choices[0].message.content)
    expect(narrow.usage.prompt_tokens).toBe(wide.usage.prompt_tokens)
  })
})
