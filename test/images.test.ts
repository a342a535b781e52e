/**
 * Image headers and limits (src/domain/images.ts): format and size are read without decoding,
 * and every refusal is a 400 ImageRejected naming the part.
 */
import { describe, expect, it } from "@effect/vitest"
import { ImageRejected } from "../src/domain/errors.js"
import { checkImage, decodeDataUrl, type ImageLimits, imageRefs, readImageHeader } from "../src/domain/images.js"
import { dataUrl, png } from "./fixtures/images.js"

const limits: ImageLimits = { maxBytes: 1_000_000, maxPixels: 1_000_000, maxImages: 4, formats: ["png", "jpeg", "gif"] }

const gif = (w: number, h: number) => {
  const b = Buffer.alloc(13)
  b.write("GIF89a", 0, "ascii")
  b.writeUInt16LE(w, 6)
  b.writeUInt16LE(h, 8)
  return b
}

const jpeg = (w: number, h: number) =>
  Buffer.from([
    0xff,
    0xd8, // SOI
    0xff,
    0xe0,
    0x00,
    0x04,
    0x00,
    0x00, // APP0, 2 bytes of payload
    0xff,
    0xc0,
    0x00,
    0x0b,
    0x08,
    h >> 8,
    h & 255,
    w >> 8,
    w & 255,
    0x01,
    0x01,
    0x11,
    0x00 // SOF0
  ])

const webp = (w: number, h: number) => {
  const b = Buffer.alloc(30)
  b.write("RIFF", 0, "ascii")
  b.write("WEBP", 8, "ascii")
  b.write("VP8X", 12, "ascii")
  b.writeUIntLE(w - 1, 24, 3)
  b.writeUIntLE(h - 1, 27, 3)
  return b
}

const rejected = (f: () => unknown): ImageRejected => {
  try {
    f()
  } catch (e) {
    expect(e).toBeInstanceOf(ImageRejected)
    return e as ImageRejected
  }
  throw new Error("expected a refusal")
}

describe("image headers", () => {
  it("reads PNG, GIF, JPEG and WebP sizes without decoding", () => {
    expect(readImageHeader(png(37, 21, () => [1, 2, 3]))).toEqual({ format: "png", width: 37, height: 21 })
    expect(readImageHeader(gif(640, 480))).toEqual({ format: "gif", width: 640, height: 480 })
    expect(readImageHeader(jpeg(1920, 1080))).toEqual({ format: "jpeg", width: 1920, height: 1080 })
    expect(readImageHeader(webp(300, 200))).toEqual({ format: "webp", width: 300, height: 200 })
    expect(readImageHeader(Buffer.from("hello world, not an image"))).toBeUndefined()
    expect(readImageHeader(Buffer.alloc(0))).toBeUndefined()
  })

  it("accepts a good image and names the part in every refusal", () => {
    expect(checkImage(dataUrl(png(8, 8, () => [0, 0, 0])), "messages.0.content.0", limits)).toMatchObject({
      format: "png"
    })
    const cases: ReadonlyArray<readonly [string, string]> = [
      ["https://example.com/a.png", "invalid_image"],
      ["data:image/png,rawtext", "invalid_image"],
      ["data:image/png;base64,!!!!", "invalid_image"],
      [dataUrl(Buffer.from("not an image")), "invalid_image"],
      [dataUrl(webp(10, 10), "image/webp"), "invalid_image"],
      [dataUrl(gif(2000, 2000), "image/gif"), "image_too_large"],
      [dataUrl(Buffer.alloc(1_000_001)), "image_too_large"]
    ]
    for (const [url, code] of cases) {
      const error = rejected(() => checkImage(url, "messages.2.content.1", limits))
      expect(error.code, url.slice(0, 40)).toBe(code)
      expect(error.param).toBe("messages.2.content.1")
      expect(error.message).toContain("messages.2.content.1")
      expect(error.status).toBe(400)
    }
    expect(rejected(() => checkImage(dataUrl(webp(10, 10), "image/webp"), "p", limits)).message).toMatch(/WEBP/)
  })

  it("decodes base64 data: URLs and finds image parts with their paths", () => {
    expect(decodeDataUrl("data:image/png;base64,AAEC", "p").bytes).toEqual(Buffer.from([0, 1, 2]))
    const refs = imageRefs([
      { role: "system", content: "s" },
      { role: "user", content: [{ type: "text", text: "t" }, { type: "image_url", image_url: { url: "u1" } }] },
      { role: "user", content: [{ type: "image_url", image_url: "u2" }] }
    ])
    expect(refs.map((r) => [r.param, r.url])).toEqual([["messages.1.content.1", "u1"], ["messages.2.content.0", "u2"]])
  })
})
