/**
 * Anthropic Messages ⇄ OpenAI chat, the gateway's internal dialect. Pure: no I/O, and no Effect
 * on the per-chunk path (the stream translator is a small state machine over plain objects).
 */
import type {
  AnthropicErrorBody,
  AnthropicErrorDetail,
  AnthropicMessage,
  AnthropicStreamEvent,
  AnthropicUsage,
  AssistantMessage,
  ContentBlockOut,
  ImageBlock,
  MessageParam,
  MessagesRequest,
  StopReason,
  SystemPrompt,
  TextBlock,
  Tool,
  ToolChoice,
  ToolResultBlock,
  UserMessage
} from "../../domain/anthropic.js"
import type {
  ChatCompletion,
  ChatCompletionChunk,
  FinishReason,
  ToolCallDelta,
  Usage
} from "../../domain/openai-output.js"
import type {
  ChatCompletionRequest,
  ChatMessage,
  ContentPart,
  FunctionTool,
  ToolCall,
  ToolChoice as ChatToolChoice
} from "../../domain/openai.js"

// ---- Request: Anthropic → chat ----

/** Separator for consecutive text blocks folded into one string (system blocks, a turn's texts). */
const joinTexts = (texts: ReadonlyArray<string>) => texts.join("\n\n")

const imagePart = (block: ImageBlock): ContentPart => ({
  type: "image_url",
  image_url: {
    url: block.source.type === "base64"
      ? `data:${block.source.media_type};base64,${block.source.data}`
      : block.source.url
  }
})

/** Text only → one string; with images → parts in their original order, so images survive. */
const contentOf = (blocks: ReadonlyArray<TextBlock | ImageBlock>): string | Array<ContentPart> =>
  blocks.some((block) => block.type === "image")
    ? blocks.map((block) => block.type === "text" ? { type: "text" as const, text: block.text } : imagePart(block))
    : joinTexts(blocks.map((block) => block.type === "text" ? block.text : ""))

/** OpenAI has no `is_error`: the model learns of the failure from the text. */
const ERROR_PREFIX = "Error: "

const toolMessage = (block: ToolResultBlock): ChatMessage => {
  const content = block.content === undefined
    ? ""
    : typeof block.content === "string"
    ? block.content
    : contentOf(block.content)
  const marked = !block.is_error
    ? content
    : typeof content === "string"
    ? ERROR_PREFIX + content
    : [{ type: "text" as const, text: ERROR_PREFIX }, ...content]
  return { role: "tool", tool_call_id: block.tool_use_id, content: marked }
}

/** Tool results become `tool` messages, first, so they follow the assistant turn that called them. */
const userMessages = (message: UserMessage): Array<ChatMessage> => {
  if (typeof message.content === "string") return [{ role: "user", content: message.content }]
  const results: Array<ChatMessage> = []
  const rest: Array<TextBlock | ImageBlock> = []
  for (const block of message.content) {
    if (block.type === "tool_result") results.push(toolMessage(block))
    else rest.push(block)
  }
  return rest.length > 0 || results.length === 0 ? [...results, { role: "user", content: contentOf(rest) }] : results
}

const assistantMessage = (message: AssistantMessage): ChatMessage => {
  if (typeof message.content === "string") return { role: "assistant", content: message.content }
  const texts: Array<string> = []
  const thinking: Array<string> = []
  const calls: Array<ToolCall> = []
  for (const block of message.content) {
    if (block.type === "text") texts.push(block.text)
    else if (block.type === "thinking") thinking.push(block.thinking)
    else if (block.type === "tool_use") {
      calls.push({
        id: block.id,
        type: "function",
        function: { name: block.name, arguments: JSON.stringify(block.input) }
      })
    }
    // redacted_thinking is opaque (encrypted by Anthropic): nothing a local model can read.
  }
  return {
    role: "assistant",
    content: texts.length > 0 ? joinTexts(texts) : calls.length > 0 ? null : "",
    ...(calls.length > 0 ? { tool_calls: calls } : {}),
    ...(thinking.length > 0 ? { reasoning_content: joinTexts(thinking) } : {})
  }
}

export const systemText = (system: SystemPrompt): string =>
  typeof system === "string" ? system : joinTexts(system.map((block) => block.text))

/** The conversation as chat messages; also what count_tokens sends to the tokenizer. */
export const toChatMessages = (
  request: { readonly system?: SystemPrompt; readonly messages: ReadonlyArray<MessageParam> }
): Array<ChatMessage> => {
  const system = request.system === undefined ? "" : systemText(request.system)
  return [
    ...(system.length > 0 ? [{ role: "system" as const, content: system }] : []),
    ...request.messages.flatMap((m) =>
      m.role === "user"
        ? userMessages(m)
        : m.role === "assistant"
        ? [assistantMessage(m)]
        : [{ role: "system" as const, content: systemText(m.content) }]
    )
  ]
}

export const toChatTool = (tool: Tool): FunctionTool => ({
  type: "function",
  function: {
    name: tool.name,
    ...(tool.description !== undefined ? { description: tool.description } : {}),
    parameters: tool.input_schema
  }
})

const toChatToolChoice = (choice: ToolChoice): ChatToolChoice => {
  switch (choice.type) {
    case "auto":
      return "auto"
    case "any":
      return "required"
    case "none":
      return "none"
    case "tool":
      return { type: "function", function: { name: choice.name } }
  }
}

/**
 * `thinking` has no chat counterpart: a reasoning model reasons by its template, and its
 * reasoning comes back as `reasoning_content` either way.
 */
export const anthropicToChat = (request: MessagesRequest): ChatCompletionRequest => {
  const choice = request.tool_choice
  return {
    model: request.model,
    messages: toChatMessages(request),
    max_completion_tokens: request.max_tokens,
    ...(request.temperature !== undefined ? { temperature: request.temperature } : {}),
    ...(request.top_p !== undefined ? { top_p: request.top_p } : {}),
    ...(request.top_k !== undefined ? { top_k: request.top_k } : {}),
    ...(request.stop_sequences !== undefined && request.stop_sequences.length > 0
      ? { stop: request.stop_sequences }
      : {}),
    ...(request.tools !== undefined && request.tools.length > 0 ? { tools: request.tools.map(toChatTool) } : {}),
    ...(choice !== undefined ? { tool_choice: toChatToolChoice(choice) } : {}),
    ...(choice !== undefined && choice.type !== "none" && choice.disable_parallel_tool_use === true
      ? { parallel_tool_calls: false }
      : {}),
    ...(request.output_config?.format
      ? {
        response_format: {
          type: "json_schema",
          json_schema: { name: "output", schema: request.output_config.format.schema }
        }
      }
      : {}),
    ...(request.stream === true ? { stream: true, stream_options: { include_usage: true } } : {}),
    ...(typeof request.metadata?.user_id === "string" ? { user: request.metadata.user_id } : {})
  }
}

// ---- Response: chat → Anthropic ----

export const messageIdOf = (upstreamId: string) => `msg_${upstreamId.replace(/^chatcmpl-/, "")}`

/**
 * Tool arguments as Anthropic's `input` object. Empty means no arguments. Arguments that are
 * not a JSON object (a model's broken output) are kept verbatim under `raw_arguments` rather
 * than lost, so the client's tool fails loudly and the model sees what it wrote.
 */
export const toolInputOf = (args: string): Record<string, unknown> => {
  if (args.trim() === "") return {}
  try {
    const parsed: unknown = JSON.parse(args)
    if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) {
      return parsed as Record<string, unknown>
    }
  } catch {
    // fall through
  }
  return { raw_arguments: args }
}

/** A stop sequence is only known when the caller (or a vLLM-style `stop_reason` string) says which matched. */
export const stopReasonOf = (finish: FinishReason | null, stopSequence: string | null): StopReason => {
  switch (finish) {
    case "length":
      return "max_tokens"
    case "tool_calls":
    case "function_call":
      return "tool_use"
    case "content_filter":
      return "refusal"
    default:
      return stopSequence !== null ? "stop_sequence" : "end_turn"
  }
}

/** vLLM reports the stop string that ended a choice as `stop_reason`; OpenAI and the neuron do not. */
const matchedStopOf = (choice: unknown): string | null => {
  const value = (choice as { stop_reason?: unknown }).stop_reason
  return typeof value === "string" ? value : null
}

/** Anthropic counts cached prompt tokens apart: `input_tokens` is what was not read from cache. */
const inputUsageOf = (promptTokens: number, cachedTokens: number) => ({
  input_tokens: Math.max(0, promptTokens - cachedTokens),
  cache_read_input_tokens: cachedTokens
})

export const usageOf = (usage: Usage | null | undefined): AnthropicUsage => ({
  ...inputUsageOf(usage?.prompt_tokens ?? 0, usage?.prompt_tokens_details?.cached_tokens ?? 0),
  output_tokens: usage?.completion_tokens ?? 0,
  cache_creation_input_tokens: 0
})

export interface StopHint {
  /** The request's stop sequence that ended generation, when the caller knows it. */
  readonly stopSequence?: string
}

export const chatToAnthropic = (res: ChatCompletion, requestModel: string, hint: StopHint = {}): AnthropicMessage => {
  const choice = res.choices[0]
  const message = choice?.message
  const calls = message?.tool_calls ?? []
  const text = message?.content ?? ""
  const content: Array<ContentBlockOut> = [
    ...(message?.reasoning_content
      ? [{ type: "thinking" as const, thinking: message.reasoning_content, signature: "" }]
      : []),
    ...(text.length > 0 || calls.length === 0 ? [{ type: "text" as const, text }] : []),
    ...calls.map((call) => ({
      type: "tool_use" as const,
      id: call.id,
      name: call.function.name,
      input: toolInputOf(call.function.arguments)
    }))
  ]
  const finish = choice?.finish_reason ?? null
  const stopSequence = finish === "stop" ? hint.stopSequence ?? matchedStopOf(choice ?? {}) : null
  const stopReason = stopReasonOf(finish, stopSequence)
  return {
    id: messageIdOf(res.id),
    type: "message",
    role: "assistant",
    model: requestModel,
    content,
    stop_reason: stopReason,
    stop_sequence: stopReason === "stop_sequence" ? stopSequence : null,
    usage: usageOf(res.usage)
  }
}

// ---- Stream: chat chunks → Anthropic events ----

type Event = AnthropicStreamEvent
type OpenBlock =
  | { readonly kind: "text" | "thinking"; readonly index: number }
  | { readonly kind: "tool_use"; readonly index: number; readonly call: number }

export interface AnthropicStreamOptions extends StopHint {
  /** Prompt tokens known before the upstream reports them (else message_start waits for the first chunk, or says 0). */
  readonly inputTokens?: number
  /** The message id, for a message_start emitted before any upstream chunk (else derived from the upstream id). */
  readonly id?: string
}

/**
 * Translates one chat completion stream into Anthropic's events. Call `start()` early to open the
 * message (for keep-alive pings while the model loads), or let the first `chunk()` open it, then
 * with `cortex.prompt_tokens` known. Blocks open and close as the delta kind changes (thinking →
 * text → tool_use), one tool_use block per tool call index. Upstreams stream a tool call's
 * fragments contiguously; a fragment for a call whose block has already closed cannot be placed
 * and is dropped. `end()` on `[DONE]`, `fail()` on an upstream error; after either, nothing.
 */
export class AnthropicStream {
  private phase: "new" | "open" | "done" = "new"
  private id: string | undefined
  private input: { readonly input_tokens: number; readonly cache_read_input_tokens: number } | undefined
  private open: OpenBlock | undefined
  private nextIndex = 0
  private readonly toolCallsSeen = new Set<number>()
  private finish: FinishReason | null = null
  private matchedStop: string | null = null
  private outputTokens = 0

  constructor(readonly model: string, private readonly options: AnthropicStreamOptions = {}) {
    this.id = options.id
    if (options.inputTokens !== undefined) this.input = inputUsageOf(options.inputTokens, 0)
  }

  start(): Array<Event> {
    if (this.phase !== "new") return []
    this.phase = "open"
    this.id ??= `msg_${Date.now().toString(36)}${Math.random().toString(36).slice(2, 10)}`
    const message: AnthropicMessage = {
      id: this.id,
      type: "message",
      role: "assistant",
      model: this.model,
      content: [],
      stop_reason: null,
      stop_sequence: null,
      usage: { ...(this.input ?? inputUsageOf(0, 0)), output_tokens: 0, cache_creation_input_tokens: 0 }
    }
    return [{ type: "message_start", message }]
  }

  chunk(chunk: ChatCompletionChunk): Array<Event> {
    if (this.phase === "done") return []
    const out: Array<Event> = []
    // The neuron's own count beats an estimate given up front.
    if (chunk.cortex !== undefined) {
      this.input = inputUsageOf(chunk.cortex.prompt_tokens, chunk.cortex.cached_tokens)
    }
    if (this.phase === "new") {
      this.id ??= messageIdOf(chunk.id)
      out.push(...this.start())
    }
    if (chunk.usage) {
      this.input = inputUsageOf(chunk.usage.prompt_tokens, chunk.usage.prompt_tokens_details?.cached_tokens ?? 0)
      this.outputTokens = chunk.usage.completion_tokens
    }
    const choice = chunk.choices[0]
    if (choice === undefined) return out
    const delta = choice.delta
    if (delta.reasoning_content) this.text(out, "thinking", delta.reasoning_content)
    if (delta.content) this.text(out, "text", delta.content)
    for (const call of delta.tool_calls ?? []) this.toolCall(out, call)
    if (choice.finish_reason) {
      this.finish = choice.finish_reason
      this.matchedStop = matchedStopOf(choice)
    }
    return out
  }

  end(): Array<Event> {
    if (this.phase === "done") return []
    const out = this.start()
    this.close(out)
    this.phase = "done"
    const stopSequence = this.finish === "stop" ? this.options.stopSequence ?? this.matchedStop : null
    const stopReason = stopReasonOf(this.finish, stopSequence)
    out.push(
      {
        type: "message_delta",
        delta: { stop_reason: stopReason, stop_sequence: stopReason === "stop_sequence" ? stopSequence : null },
        usage: { output_tokens: this.outputTokens, ...this.input }
      },
      { type: "message_stop" }
    )
    return out
  }

  /** A failure is never a clean stop: an `error` event, and nothing after it. */
  fail(error: AnthropicErrorDetail): Array<Event> {
    if (this.phase === "done") return []
    this.phase = "done"
    return [{ type: "error", error: { type: error.type, message: error.message } }]
  }

  ping(): Event {
    return { type: "ping" }
  }

  private text(out: Array<Event>, kind: "text" | "thinking", text: string) {
    if (this.open?.kind !== kind) {
      this.close(out)
      this.openBlock(
        out,
        { kind, index: this.nextIndex },
        kind === "text" ? { type: "text", text: "" } : {
          type: "thinking",
          thinking: "",
          signature: ""
        }
      )
    }
    const index = this.nextIndex - 1
    out.push({
      type: "content_block_delta",
      index,
      delta: kind === "text" ? { type: "text_delta", text } : { type: "thinking_delta", thinking: text }
    })
  }

  private toolCall(out: Array<Event>, call: ToolCallDelta) {
    if (!this.toolCallsSeen.has(call.index)) {
      this.toolCallsSeen.add(call.index)
      this.close(out)
      this.openBlock(out, { kind: "tool_use", index: this.nextIndex, call: call.index }, {
        type: "tool_use",
        id: call.id ?? `toolu_${this.id ?? ""}_${call.index}`,
        name: call.function?.name ?? "",
        input: {}
      })
    } else if (this.open?.kind !== "tool_use" || this.open.call !== call.index) {
      return
    }
    const fragment = call.function?.arguments
    if (fragment) {
      out.push({
        type: "content_block_delta",
        index: this.nextIndex - 1,
        delta: { type: "input_json_delta", partial_json: fragment }
      })
    }
  }

  private openBlock(out: Array<Event>, block: OpenBlock, content: ContentBlockOut) {
    this.open = block
    this.nextIndex += 1
    out.push({ type: "content_block_start", index: block.index, content_block: content })
  }

  private close(out: Array<Event>) {
    if (this.open === undefined) return
    out.push({ type: "content_block_stop", index: this.open.index })
    this.open = undefined
  }
}

export const formatSse = (event: AnthropicStreamEvent): string =>
  `event: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`

// ---- Errors ----

/**
 * Upstream status → Anthropic's status and error type, chosen within the statuses Anthropic
 * documents so the `@anthropic-ai/sdk` raises the matching class. Capacity failures (503, 507)
 * become 529 `overloaded_error`; like 429, 500 and 504 the SDK retries it and honours a
 * `Retry-After` header, which the caller copies from the upstream response unchanged.
 */
const statusAndType = (status: number): readonly [number, string] => {
  switch (status) {
    case 400:
    case 422:
      return [400, "invalid_request_error"]
    case 401:
      return [401, "authentication_error"]
    case 402:
      return [402, "billing_error"]
    case 403:
      return [403, "permission_error"]
    case 404:
      return [404, "not_found_error"]
    case 408:
    case 504:
      return [504, "timeout_error"]
    case 413:
      return [413, "request_too_large"]
    case 429:
      return [429, "rate_limit_error"]
    case 503:
    case 507:
    case 529:
      return [529, "overloaded_error"]
    default:
      return status >= 500 ? [500, "api_error"] : [status >= 400 ? status : 400, "invalid_request_error"]
  }
}

interface UpstreamError {
  readonly message?: unknown
  readonly type?: unknown
  readonly code?: unknown
  readonly limit?: unknown
  readonly requested?: unknown
}

const upstreamErrorOf = (body: unknown): UpstreamError | undefined => {
  if (typeof body !== "object" || body === null) return undefined
  const error = (body as { error?: unknown }).error
  return typeof error === "object" && error !== null ? error as UpstreamError : body as UpstreamError
}

const messageOf = (body: unknown, fallback: string): string => {
  if (typeof body === "string") return body.length > 0 ? body : fallback
  const error = upstreamErrorOf(body)
  // Claude Code recognises Anthropic's own wording for an over-long prompt and offers to compact.
  if (error?.code === "context_length_exceeded" && typeof error.limit === "number") {
    return `prompt is too long: ${String(error.requested)} tokens > ${error.limit} maximum`
  }
  return typeof error?.message === "string" && error.message.length > 0 ? error.message : fallback
}

export const toAnthropicError = (
  status: number,
  body: unknown
): { readonly status: number; readonly body: AnthropicErrorBody } => {
  const [anthropicStatus, type] = statusAndType(status)
  return {
    status: anthropicStatus,
    body: { type: "error", error: { type, message: messageOf(body, `Upstream answered HTTP ${status}`) } }
  }
}

/** An in-band OpenAI error event (no status) → the detail of an Anthropic `error` event. */
export const toAnthropicStreamError = (body: unknown): AnthropicErrorDetail => {
  const error = upstreamErrorOf(body)
  const type = error?.type
  const anthropicType = type === "invalid_request_error" || type === "authentication_error" ||
      type === "rate_limit_error"
    ? type
    : type === "insufficient_vram" || type === "service_unavailable"
    ? "overloaded_error"
    : (error as { code?: unknown } | undefined)?.code === "upstream_timeout"
    ? "timeout_error"
    : "api_error"
  return { type: anthropicType, message: messageOf(body, "The upstream stream failed") }
}

// ---- Models API: the catalogue as Anthropic lists it ----

export interface AnthropicModelInfo {
  readonly type: "model"
  readonly id: string
  readonly display_name: string
  readonly created_at: string
}

export const anthropicModel = (id: string, createdSecs: number): AnthropicModelInfo => ({
  type: "model",
  id,
  display_name: id,
  created_at: new Date(createdSecs * 1000).toISOString()
})

export interface ModelPage {
  readonly limit?: string | undefined
  readonly after_id?: string | undefined
  readonly before_id?: string | undefined
}

/**
 * One page of `GET /v1/models` in Anthropic's shape: `limit` (1 to 1000, default 20), and
 * `after_id` / `before_id` cursors (ids of the list, in its order). Returns the problem as a
 * string for a bad parameter.
 */
export const anthropicModelPage = (
  ids: ReadonlyArray<string>,
  createdSecs: number,
  page: ModelPage
): {
  readonly data: ReadonlyArray<AnthropicModelInfo>
  readonly has_more: boolean
  readonly first_id: string | null
  readonly last_id: string | null
} | string => {
  const limit = page.limit === undefined ? 20 : Number(page.limit)
  if (!Number.isInteger(limit) || limit < 1 || limit > 1000) return "limit: must be an integer from 1 to 1000"
  if (page.after_id !== undefined && page.before_id !== undefined) return "after_id and before_id cannot both be set"
  let slice: ReadonlyArray<string>
  let more: boolean
  if (page.before_id !== undefined) {
    const end = ids.indexOf(page.before_id)
    if (end < 0) return `before_id: no model '${page.before_id}'`
    const start = Math.max(0, end - limit)
    slice = ids.slice(start, end)
    more = start > 0
  } else {
    const start = page.after_id === undefined ? 0 : ids.indexOf(page.after_id) + 1
    if (start === 0 && page.after_id !== undefined) return `after_id: no model '${page.after_id}'`
    slice = ids.slice(start, start + limit)
    more = start + limit < ids.length
  }
  return {
    data: slice.map((id) => anthropicModel(id, createdSecs)),
    has_more: more,
    first_id: slice[0] ?? null,
    last_id: slice.at(-1) ?? null
  }
}
