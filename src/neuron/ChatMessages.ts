/** OpenAI chat messages → the worker's chat turns. Pure. */
import { ImageRejected, InvalidRequest } from "../domain/errors.js"
import { checkImage, type ImageLimits } from "../domain/images.js"
import type { ChatMessage, ContentPart } from "../domain/openai.js"
import { MEDIA_MARKER, type WorkerMessage } from "./worker/protocol.js"

/** A user's own text must not contain the engine's image marker: it would misplace the images. */
const plain = (text: string) => text.replaceAll(MEDIA_MARKER, "<_media_>")

/**
 * A user turn's text with a marker where each image was, and the images (checked data: URLs).
 * Without `vision` (a text-only model) any image is a 400 `vision_unsupported`.
 */
const userTurn = (
  content: ChatMessage["content"],
  index: number,
  vision: ImageLimits | undefined,
  images: Array<string>,
  counted: { n: number }
): string => {
  if (content === undefined || content === null || typeof content === "string") return textOf(content, index)
  return content.map((part: ContentPart, j) => {
    if (part.type === "text") return vision ? plain((part as { text: string }).text) : (part as { text: string }).text
    const param = `messages.${index}.content.${j}`
    if (part.type === "image_url") {
      if (!vision) {
        throw new ImageRejected({
          code: "vision_unsupported",
          message:
            `${param}: this model does not take images (image_url parts need a model with the vision capability)`,
          param
        })
      }
      const image = part.image_url as string | { readonly url: string }
      const url = typeof image === "string" ? image : image.url
      checkImage(url, param, vision)
      images.push(url)
      if (images.length > vision.maxImages - counted.n) {
        throw new ImageRejected({
          code: "image_too_large",
          message: `${param}: more than ${vision.maxImages} images in one request`,
          param
        })
      }
      return MEDIA_MARKER
    }
    throw new InvalidRequest({
      message: `Content parts of type '${part.type}' are not supported by this model`,
      param
    })
  }).join("")
}

const textOf = (content: ChatMessage["content"], index: number): string => {
  if (content === undefined || content === null) return ""
  if (typeof content === "string") return content
  return content.map((part: ContentPart, j) => {
    if (part.type === "text") return (part as { text: string }).text
    if (part.type === "image_url") {
      throw new ImageRejected({
        code: "invalid_image",
        message: `messages.${index}.content.${j}: images are taken in user messages only`,
        param: `messages.${index}.content.${j}`
      })
    }
    throw new InvalidRequest({
      message: `Content parts of type '${part.type}' are not supported by this model (text only)`,
      param: `messages.${index}.content.${j}`
    })
  }).join("")
}

const parseArguments = (args: string | Readonly<Record<string, unknown>>): unknown => {
  if (typeof args !== "string") return args
  try {
    return JSON.parse(args)
  } catch {
    return args
  }
}

/**
 * Throws for content the engine cannot take: an image on a text-only model (`vision` absent) or
 * an image that fails its checks (ImageRejected, 400 naming the part); other parts 422.
 */
export const toWorkerMessages = (
  messages: ReadonlyArray<ChatMessage>,
  vision?: ImageLimits
): Array<WorkerMessage> => {
  const out: Array<WorkerMessage> = []
  const counted = { n: 0 }
  // Tool results attach to the assistant turn whose call they answer.
  const calls = new Map<string, { name: string; params: unknown; result: unknown }>()
  messages.forEach((m, i) => {
    switch (m.role) {
      case "system":
      case "developer":
        out.push({ role: "system", text: textOf(m.content, i) })
        return
      case "user": {
        const images: Array<string> = []
        const text = userTurn(m.content, i, vision, images, counted)
        counted.n += images.length
        out.push({
          role: "user",
          text: vision && typeof m.content === "string" ? plain(text) : text,
          ...(images.length > 0 ? { images } : {})
        })
        return
      }
      case "assistant": {
        const toolCalls = (m.tool_calls ?? []).map((call) => {
          const entry = {
            name: call.function.name,
            params: parseArguments(call.function.arguments),
            result: null as unknown
          }
          calls.set(call.id, entry)
          return entry
        })
        out.push({
          role: "assistant",
          text: textOf(m.content, i),
          ...(m.reasoning_content ? { reasoning: m.reasoning_content } : {}),
          toolCalls
        })
        return
      }
      case "tool":
      case "function": {
        const text = textOf(m.content, i)
        const call = m.tool_call_id !== undefined ? calls.get(m.tool_call_id) : undefined
        if (call) call.result = parseArguments(text)
        else out.push({ role: "user", text: `Result of ${m.name ?? "a tool call"}: ${text}` })
        return
      }
    }
  })
  return out
}
