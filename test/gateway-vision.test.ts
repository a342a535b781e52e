/**
 * Images end to end: the official OpenAI and Anthropic SDKs send images through a real gateway
 * to a real neuron serving a generated vision model (real inference); text-only models refuse
 * them in each dialect; image URLs are fetched by the gateway, never from private addresses
 * unless configured.
 */
import Anthropic from "@anthropic-ai/sdk"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import OpenAI from "openai"
import { fetchImage, isPrivateAddress, resolveImageFetch } from "../src/gateway/ImageFetch.js"
import { imageTokens, TINY_PROJECTOR } from "../src/gguf/ProjectorGenerator.js"
import { type GatewayProcess, startGateway } from "./fixtures/gateway.js"
import { dataUrl, IMAGES } from "./fixtures/images.js"
import { type Stack, startStack } from "./fixtures/stack.js"

let stack: Stack
let images: Server
let imageBase: string
let trusting: GatewayProcess

const checker = IMAGES.checker()
const checkerUrl = dataUrl(checker)
const checkerBase64 = checker.toString("base64")

beforeAll(async () => {
  stack = await startStack({ models: ["tiny", "vision"], defaultModels: ["tiny", "vision"] })
  images = createServer((req, res) => {
    if (req.url === "/checker.png") {
      res.writeHead(200, { "content-type": "image/png" })
      return res.end(checker)
    }
    if (req.url === "/redirect") {
      res.writeHead(302, { location: "/checker.png" })
      return res.end()
    }
    res.writeHead(404).end()
  })
  await new Promise<void>((resolve) => images.listen(0, "127.0.0.1", resolve))
  imageBase = `http://127.0.0.1:${(images.address() as AddressInfo).port}`
  // A second gateway over the same neuron that may fetch from private addresses (this test's server).
  trusting = await startGateway({
    neurons: [{ name: "local", url: stack.neuron.url }],
    gatewayKeys: ["image_fetch_allow_private = true"]
  })
})

afterAll(async () => {
  await trusting?.stop()
  await stack?.stop()
  await new Promise((resolve) => images?.close(resolve))
})

const GREEDY = { temperature: 0, max_tokens: 12 }
const question = "What is in the picture?"

const openaiImage = (url: string): OpenAI.Chat.ChatCompletionMessageParam => ({
  role: "user",
  content: [{ type: "image_url", image_url: { url } }, { type: "text", text: question }]
})

describe("images through the gateway, on real inference", () => {
  it("OpenAI SDK: an image_url with a data URL, non-streaming and streaming, the same greedy answer", async () => {
    const whole = await stack.openai.chat.completions.create({
      model: "vision",
      messages: [openaiImage(checkerUrl)],
      ...GREEDY
    })
    const text = whole.choices[0]!.message.content!
    expect(text.length).toBeGreaterThan(0)
    expect(whole.usage!.prompt_tokens).toBeGreaterThan(imageTokens(TINY_PROJECTOR))

    const stream = await stack.openai.chat.completions.create({
      model: "vision",
      messages: [openaiImage(checkerUrl)],
      stream: true,
      ...GREEDY
    })
    let streamed = ""
    for await (const chunk of stream) streamed += chunk.choices[0]?.delta?.content ?? ""
    expect(streamed).toBe(text)

    const without = await stack.openai.chat.completions.create({
      model: "vision",
      messages: [{ role: "user", content: question }],
      ...GREEDY
    })
    expect(without.choices[0]!.message.content).not.toBe(text)
  })

  it("Anthropic SDK: an image block with a base64 source, non-streaming and streaming", async () => {
    const params = {
      model: "vision",
      max_tokens: 12,
      temperature: 0,
      messages: [{
        role: "user" as const,
        content: [
          {
            type: "image" as const,
            source: { type: "base64" as const, media_type: "image/png" as const, data: checkerBase64 }
          },
          { type: "text" as const, text: question }
        ]
      }]
    }
    const message = await stack.anthropic.messages.create(params)
    const text = message.content.map((b) => b.type === "text" ? b.text : "").join("")
    expect(text.length).toBeGreaterThan(0)
    expect(message.usage.input_tokens).toBeGreaterThan(imageTokens(TINY_PROJECTOR))

    let streamed = ""
    const stream = stack.anthropic.messages.stream(params)
    stream.on("streamEvent", (event) => {
      if (event.type === "content_block_delta" && event.delta.type === "text_delta") streamed += event.delta.text
    })
    const final = await stream.finalMessage()
    expect(streamed).toBe(text)
    expect(final.content.map((b) => b.type === "text" ? b.text : "").join("")).toBe(text)
  })

  it("Responses: an input_image part is carried through", async () => {
    const response = await stack.openai.responses.create({
      model: "vision",
      temperature: 0,
      max_output_tokens: 12,
      input: [{
        role: "user",
        content: [{ type: "input_image", image_url: checkerUrl, detail: "auto" }, {
          type: "input_text",
          text: question
        }]
      }]
    })
    expect(response.output_text.length).toBeGreaterThan(0)
    expect(response.usage!.input_tokens).toBeGreaterThan(imageTokens(TINY_PROJECTOR))
  })
})

describe("images refused, in each client's dialect", () => {
  it("an image to a text-only model is a 400 vision_unsupported (OpenAI, Responses) / invalid_request_error (Anthropic)", async () => {
    const openai = await stack.openai.chat.completions.create({
      model: "tiny",
      messages: [openaiImage(checkerUrl)],
      ...GREEDY
    }).catch((e: unknown) => e)
    expect(openai).toBeInstanceOf(OpenAI.BadRequestError)
    expect((openai as InstanceType<typeof OpenAI.APIError>).code).toBe("vision_unsupported")

    const responses = await stack.openai.responses.create({
      model: "tiny",
      input: [{ role: "user", content: [{ type: "input_image", image_url: checkerUrl, detail: "auto" }] }]
    }).catch((e: unknown) => e)
    expect(responses).toBeInstanceOf(OpenAI.BadRequestError)
    expect((responses as InstanceType<typeof OpenAI.APIError>).code).toBe("vision_unsupported")

    const anthropic = await stack.anthropic.messages.create({
      model: "tiny",
      max_tokens: 4,
      messages: [{
        role: "user",
        content: [{ type: "image", source: { type: "base64", media_type: "image/png", data: checkerBase64 } }]
      }]
    }).catch((e: unknown) => e)
    expect(anthropic).toBeInstanceOf(Anthropic.BadRequestError)
    const body = (anthropic as InstanceType<typeof Anthropic.APIError>).error as any
    expect(body.error.type).toBe("invalid_request_error")
    expect(body.error.message).toMatch(/vision/)
  })

  it("a corrupt image is a 400 naming the part, in each dialect", async () => {
    const corrupt = `data:image/jpeg;base64,${Buffer.from("\xff\xd8\xff not a jpeg").toString("base64")}`
    const openai = await stack.openai.chat.completions.create({
      model: "vision",
      messages: [{
        role: "user",
        content: [{ type: "text", text: "see" }, { type: "image_url", image_url: { url: corrupt } }]
      }],
      ...GREEDY
    }).catch((e: unknown) => e)
    expect(openai).toBeInstanceOf(OpenAI.BadRequestError)
    expect((openai as InstanceType<typeof OpenAI.APIError>).code).toBe("invalid_image")
    expect((openai as InstanceType<typeof OpenAI.APIError>).param).toBe("messages.0.content.1")

    const anthropic = await stack.anthropic.messages.create({
      model: "vision",
      max_tokens: 4,
      messages: [{
        role: "user",
        content: [{ type: "image", source: { type: "base64", media_type: "image/jpeg", data: "/9j/AAAA" } }]
      }]
    }).catch((e: unknown) => e)
    expect(anthropic).toBeInstanceOf(Anthropic.BadRequestError)
    expect(((anthropic as InstanceType<typeof Anthropic.APIError>).error as any).error.message).toContain(
      "messages.0.content.0"
    )
  })

  it("refuses image URLs on loopback by default, checked after DNS resolution", async () => {
    for (const url of [`${imageBase}/checker.png`, imageBase.replace("127.0.0.1", "localhost") + "/checker.png"]) {
      const error = await stack.openai.chat.completions.create({
        model: "vision",
        messages: [openaiImage(url)],
        ...GREEDY
      }).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(OpenAI.BadRequestError)
      expect((error as InstanceType<typeof OpenAI.APIError>).code).toBe("image_fetch_failed")
      expect((error as InstanceType<typeof OpenAI.APIError>).message).toMatch(/private address/)
    }
  })
})

describe("image URLs fetched by a gateway allowed to reach private addresses", () => {
  const openai = () => new OpenAI({ baseURL: `${trusting.url}/v1`, apiKey: "unused", maxRetries: 0 })
  const anthropic = () => new Anthropic({ baseURL: trusting.url, apiKey: "unused", maxRetries: 0 })

  it("answers an http image URL (and one behind a redirect) as it answers the same image inline", async () => {
    const inline = await openai().chat.completions.create({
      model: "vision",
      messages: [openaiImage(checkerUrl)],
      ...GREEDY
    })
    const byUrl = await openai().chat.completions.create({
      model: "vision",
      messages: [openaiImage(`${imageBase}/checker.png`)],
      ...GREEDY
    })
    expect(byUrl.choices[0]!.message.content).toBe(inline.choices[0]!.message.content)
    const redirected = await openai().chat.completions.create({
      model: "vision",
      messages: [openaiImage(`${imageBase}/redirect`)],
      ...GREEDY
    })
    expect(redirected.choices[0]!.message.content).toBe(inline.choices[0]!.message.content)

    const message = await anthropic().messages.create({
      model: "vision",
      max_tokens: 12,
      messages: [{
        role: "user",
        content: [{ type: "image", source: { type: "url", url: `${imageBase}/checker.png` } }, {
          type: "text",
          text: question
        }]
      }]
    })
    expect(message.content.map((b) => b.type === "text" ? b.text : "").join("").length).toBeGreaterThan(0)
  })

  it("a URL that is not an image is a 400 image_fetch_failed", async () => {
    const error = await openai().chat.completions.create({
      model: "vision",
      messages: [openaiImage(`${imageBase}/missing.png`)],
      ...GREEDY
    }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(OpenAI.BadRequestError)
    expect((error as InstanceType<typeof OpenAI.APIError>).code).toBe("image_fetch_failed")
  })
})

describe("the fetch guard", () => {
  it("knows loopback, private, link-local, CGNAT and mapped addresses from public ones", () => {
    for (
      const a of ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0"]
    ) {
      expect(isPrivateAddress(a), a).toBe(true)
    }
    for (const a of ["::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::"]) {
      expect(isPrivateAddress(a), a).toBe(true)
    }
    for (const a of ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]) {
      expect(isPrivateAddress(a), a).toBe(false)
    }
  })

  it("fetches nothing when image_fetch is off, and only http(s)", async () => {
    const off = resolveImageFetch({ image_fetch: "off" })
    await expect(fetchImage("https://example.com/a.png", "messages.0.content.0", off)).rejects.toMatchObject({
      code: "image_fetch_failed"
    })
    const on = resolveImageFetch({ image_fetch_allow_private: true })
    await expect(fetchImage("file:///etc/passwd", "messages.0.content.0", on)).rejects.toMatchObject({
      code: "image_fetch_failed"
    })
  })

  it("caps the size of what it fetches", async () => {
    const small = resolveImageFetch({ image_fetch_allow_private: true, image_fetch_max_bytes: 100 })
    await expect(fetchImage(`${imageBase}/checker.png`, "messages.0.content.0", small)).rejects.toMatchObject({
      code: "image_fetch_failed"
    })
    const enough = resolveImageFetch({ image_fetch_allow_private: true })
    expect(await fetchImage(`${imageBase}/checker.png`, "messages.0.content.0", enough)).toBe(checkerUrl)
  })
})
