/**
 * Images in chat requests, as both the gateway and the neuron see them: where they are in the
 * OpenAI messages (each with the request path that names it), `data:` URLs decoded, and the
 * image header read (format and dimensions) without decoding pixels, so a corrupt or oversized
 * image is refused up front by name rather than handed to native code.
 */
import { ImageRejected } from "./errors.js"

export type ImageFormat = "png" | "jpeg" | "gif" | "webp"

export interface ImageHeader {
  readonly format: ImageFormat
  readonly width: number
  readonly height: number
}

export interface ImageLimits {
  /** Largest decoded (not base64) image, in bytes. */
  readonly maxBytes: number
  /** Largest width × height. */
  readonly maxPixels: number
  /** Most images in one request. */
  readonly maxImages: number
  /** Formats the engine can decode (the vision engine's stb_image has no WebP). */
  readonly formats: ReadonlyArray<ImageFormat>
}

export interface ImageRef {
  /** The message's index and the part's index in its content. */
  readonly message: number
  readonly part: number
  /** `messages.3.content.1`: how errors name it. */
  readonly param: string
  readonly url: string
}

interface PartLike {
  readonly type: string
  readonly image_url?: string | { readonly url: string }
}

const urlOf = (part: PartLike): string =>
  typeof part.image_url === "string" ? part.image_url : part.image_url?.url ?? ""

/** Every `image_url` part of OpenAI chat messages, in order. */
export const imageRefs = (messages: ReadonlyArray<unknown>): Array<ImageRef> => {
  const refs: Array<ImageRef> = []
  messages.forEach((m, i) => {
    const content = (m as { readonly content?: unknown } | null)?.content
    if (!Array.isArray(content)) return
    content.forEach((p: PartLike, j) => {
      if (p?.type === "image_url") {
        refs.push({ message: i, part: j, param: `messages.${i}.content.${j}`, url: urlOf(p) })
      }
    })
  })
  return refs
}

const DATA_URL = /^data:([^;,]*)((?:;[^;,]*)*),/i

/** The bytes of a base64 `data:` URL, or why not. */
export const decodeDataUrl = (url: string, param: string): { readonly mime: string; readonly bytes: Buffer } => {
  const head = DATA_URL.exec(url.slice(0, 256))
  if (!head) {
    throw new ImageRejected({ code: "invalid_image", message: `${param}: not a data: URL`, param })
  }
  if (!/;base64/i.test(head[2] ?? "")) {
    throw new ImageRejected({ code: "invalid_image", message: `${param}: the data: URL is not base64`, param })
  }
  const body = url.slice(head[0].length)
  if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(body.replace(/\s+/g, ""))) {
    throw new ImageRejected({ code: "invalid_image", message: `${param}: the base64 data is malformed`, param })
  }
  return { mime: (head[1] ?? "").toLowerCase(), bytes: Buffer.from(body, "base64") }
}

const u16be = (b: Buffer, at: number) => b.readUInt16BE(at)
const u16le = (b: Buffer, at: number) => b.readUInt16LE(at)
const u24le = (b: Buffer, at: number) => b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16)

/** The format and size from the header alone; undefined when the bytes are no image we know. */
export const readImageHeader = (b: Buffer): ImageHeader | undefined => {
  // PNG: signature, then IHDR first with width and height.
  if (b.length >= 24 && b.readUInt32BE(0) === 0x89504e47 && b.readUInt32BE(4) === 0x0d0a1a0a) {
    if (b.toString("ascii", 12, 16) !== "IHDR") return undefined
    return { format: "png", width: b.readUInt32BE(16), height: b.readUInt32BE(20) }
  }
  // GIF: logical screen size (little-endian) after the signature.
  if (b.length >= 10 && (b.toString("ascii", 0, 6) === "GIF87a" || b.toString("ascii", 0, 6) === "GIF89a")) {
    return { format: "gif", width: u16le(b, 6), height: u16le(b, 8) }
  }
  // JPEG: walk the markers to the first start-of-frame.
  if (b.length >= 4 && b[0] === 0xff && b[1] === 0xd8) {
    let at = 2
    while (at + 9 < b.length) {
      if (b[at] !== 0xff) return undefined
      const marker = b[at + 1]!
      if (marker === 0xff) {
        at++
        continue
      }
      const length = u16be(b, at + 2)
      const sof = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc
      if (sof) return { format: "jpeg", width: u16be(b, at + 7), height: u16be(b, at + 5) }
      if (length < 2) return undefined
      at += 2 + length
    }
    return undefined
  }
  // WebP: RIFF container with a VP8, VP8L or VP8X chunk.
  if (b.length >= 30 && b.toString("ascii", 0, 4) === "RIFF" && b.toString("ascii", 8, 12) === "WEBP") {
    const chunk = b.toString("ascii", 12, 16)
    if (chunk === "VP8 ") return { format: "webp", width: u16le(b, 26) & 0x3fff, height: u16le(b, 28) & 0x3fff }
    if (chunk === "VP8L") {
      const bits = b.readUInt32LE(21)
      return { format: "webp", width: (bits & 0x3fff) + 1, height: ((bits >> 14) & 0x3fff) + 1 }
    }
    if (chunk === "VP8X") return { format: "webp", width: u24le(b, 24) + 1, height: u24le(b, 27) + 1 }
  }
  return undefined
}

/** Decode and check one image against the limits: its header, or a 400 naming the part. */
export const checkImage = (url: string, param: string, limits: ImageLimits): ImageHeader => {
  if (!/^data:/i.test(url)) {
    throw new ImageRejected({
      code: "invalid_image",
      message: `${param}: images must be sent as data: URLs here (the gateway fetches http(s) URLs)`,
      param
    })
  }
  const { bytes } = decodeDataUrl(url, param)
  if (bytes.length > limits.maxBytes) {
    throw new ImageRejected({
      code: "image_too_large",
      message: `${param}: the image is ${bytes.length} bytes; the limit is ${limits.maxBytes}`,
      param
    })
  }
  const header = readImageHeader(bytes)
  if (!header || header.width === 0 || header.height === 0) {
    throw new ImageRejected({
      code: "invalid_image",
      message: `${param}: not a readable PNG, JPEG, GIF or WebP image`,
      param
    })
  }
  if (!limits.formats.includes(header.format)) {
    throw new ImageRejected({
      code: "invalid_image",
      message: `${param}: ${header.format.toUpperCase()} images are not supported by this model's engine (send ${
        limits.formats.map((f) => f.toUpperCase()).join(", ")
      })`,
      param
    })
  }
  if (header.width * header.height > limits.maxPixels) {
    throw new ImageRejected({
      code: "image_too_large",
      message: `${param}: the image is ${header.width}x${header.height} (${
        header.width * header.height
      } pixels); the limit is ${limits.maxPixels} pixels`,
      param
    })
  }
  return header
}
