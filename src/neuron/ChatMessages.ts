/** OpenAI chat messages → the worker's chat turns. Pure. */
import { InvalidRequest } from "../domain/errors.js"
import type { ChatMessage, ContentPart } from "../domain/openai.js"
import type { WorkerMessage } from "./worker/protocol.js"

const textOf = (content: ChatMessage["content"], index: number): string => {
  if (content === undefined || content === null) return ""
  if (typeof content === "string") return content
  return content.map((part: ContentPart, j) => {
    if (part.type === "text") return (part as { text: string }).text
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

/** Throws InvalidRequest for content the engine cannot take (images on a text-only model). */
export const toWorkerMessages = (messages: ReadonlyArray<ChatMessage>): Array<WorkerMessage> => {
  const out: Array<WorkerMessage> = []
  // Tool results attach to the assistant turn whose call they answer.
  const calls = new Map<string, { name: string; params: unknown; result: unknown }>()
  messages.forEach((m, i) => {
    switch (m.role) {
      case "system":
      case "developer":
        out.push({ role: "system", text: textOf(m.content, i) })
        return
      case "user":
        out.push({ role: "user", text: textOf(m.content, i) })
        return
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
