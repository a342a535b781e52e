/**
 * OpenAI Responses ⇄ OpenAI chat, the gateway's internal dialect. Pure: no I/O, and no Effect on
 * the per-chunk path (the stream translator is a small state machine over plain objects).
 */
import { randomUUID } from "node:crypto"
import type { ChatCompletion, ChatCompletionChunk, FinishReason, Usage } from "../../domain/openai-output.js"
import type { ChatCompletionRequest, ChatMessage, ContentPart, FunctionTool, ToolChoice } from "../../domain/openai.js"
import type {
  EchoedFunctionTool,
  EchoedToolChoice,
  FailedResponseObject,
  FunctionCallOutputItem,
  InProgressResponseObject,
  ItemStatus,
  MessageContentPart,
  MessageItem,
  OutputFunctionCall,
  OutputItem,
  OutputMessage,
  OutputReasoning,
  ReasoningItem,
  ResponseFields,
  ResponseObject,
  ResponsesEvent,
  ResponsesFunctionTool,
  ResponsesRequest,
  ResponseUsage
} from "../../domain/responses.js"

// ---- Request: Responses → chat ----

/** A request field a stateless gateway cannot honour: the caller refuses it with a 400 naming `param`. */
export interface Unservable {
  readonly param: string
  readonly message: string
}

const stateless = "this gateway is stateless and stores no responses, conversations or files"

export const unservable = (req: ResponsesRequest): Unservable | undefined => {
  if (req.previous_response_id) {
    return { param: "previous_response_id", message: `previous_response_id is not supported: ${stateless}` }
  }
  if (req.conversation) return { param: "conversation", message: `conversation is not supported: ${stateless}` }
  if (req.background) return { param: "background", message: "background responses are not supported" }
  if (req.top_logprobs) return { param: "top_logprobs", message: "top_logprobs is not supported on /v1/responses" }
  const logprobs = req.include?.findIndex((what) => what.includes("logprobs")) ?? -1
  if (logprobs >= 0) {
    return { param: `include[${logprobs}]`, message: "log-probabilities are not supported on /v1/responses" }
  }
  if (typeof req.input === "string") return undefined
  for (const [i, item] of req.input.entries()) {
    if (item.type === "item_reference") {
      return { param: `input[${i}]`, message: `item_reference is not supported: ${stateless}` }
    }
    const parts = item.type === "function_call_output"
      ? (item as FunctionCallOutputItem).output
      : item.type === "message"
      ? (item as MessageItem).content
      : ""
    if (typeof parts === "string") continue
    const field = item.type === "function_call_output" ? "output" : "content"
    for (const [j, part] of parts.entries()) {
      if ((part.type === "input_image" && !part.image_url) || (part.type === "input_file" && part.file_id)) {
        return {
          param: `input[${i}].${field}[${j}].file_id`,
          message: `file_id is not supported: ${stateless}; send the data inline (image_url or file_data)`
        }
      }
    }
  }
  return undefined
}

const partOf = (part: MessageContentPart): ContentPart => {
  switch (part.type) {
    case "input_text":
    case "output_text":
      return { type: "text", text: part.text }
    case "refusal":
      return { type: "text", text: part.refusal }
    case "input_image":
      return {
        type: "image_url",
        image_url: { url: part.image_url ?? "", ...(part.detail ? { detail: part.detail } : {}) }
      }
    case "input_file":
      return {
        type: "file",
        file: {
          ...(part.file_data !== undefined ? { file_data: part.file_data } : {}),
          ...(part.file_url !== undefined ? { file_url: part.file_url } : {}),
          ...(part.filename !== undefined ? { filename: part.filename } : {})
        }
      }
  }
}

/** Text only → one string (what every chat template takes); with images or files → parts in order. */
const contentOf = (content: string | ReadonlyArray<MessageContentPart>): string | Array<ContentPart> => {
  if (typeof content === "string") return content
  const parts = content.map(partOf)
  return parts.every((p) => p.type === "text")
    ? parts.map((p) => (p as { text: string }).text).join("")
    : parts
}

const reasoningText = (item: ReasoningItem): string => {
  const parts = item.content && item.content.length > 0 ? item.content : item.summary ?? []
  return parts.map((p) => p.text).join("\n\n")
}

type MutableMessage = { -readonly [K in keyof ChatMessage]: ChatMessage[K] }

const messagesOf = (req: ResponsesRequest): Array<ChatMessage> => {
  const out: Array<ChatMessage> = []
  if (req.instructions) out.push({ role: "system", content: req.instructions })
  if (typeof req.input === "string") {
    out.push({ role: "user", content: req.input })
    return out
  }
  // The assistant turn that function calls join: a Responses turn is a message item followed by
  // function_call items; chat templates expect both in one assistant message.
  let turn: MutableMessage | undefined
  let reasoning: string | undefined
  const withReasoning = (message: MutableMessage) => {
    if (reasoning) message.reasoning_content = reasoning
    reasoning = undefined
    return message
  }
  for (const item of req.input) {
    switch (item.type) {
      case "message": {
        const m = item as MessageItem
        turn = undefined
        if (m.role !== "assistant") {
          reasoning = undefined
          out.push({ role: m.role, content: contentOf(m.content) })
          break
        }
        turn = withReasoning({ role: "assistant", content: contentOf(m.content) })
        out.push(turn)
        break
      }
      case "function_call": {
        const call = item as Extract<typeof item, { type: "function_call" }>
        const toolCall = {
          id: call.call_id,
          type: "function" as const,
          function: { name: call.name, arguments: call.arguments }
        }
        if (turn === undefined) {
          turn = withReasoning({ role: "assistant", content: null, tool_calls: [] })
          out.push(turn)
        } else if (reasoning) {
          turn.reasoning_content = turn.reasoning_content ? `${turn.reasoning_content}\n\n${reasoning}` : reasoning
          reasoning = undefined
        }
        turn.tool_calls = [...(turn.tool_calls ?? []), toolCall]
        break
      }
      case "function_call_output": {
        const result = item as FunctionCallOutputItem
        turn = undefined
        reasoning = undefined
        out.push({ role: "tool", tool_call_id: result.call_id, content: contentOf(result.output) })
        break
      }
      case "reasoning": {
        const text = reasoningText(item as ReasoningItem)
        if (text) reasoning = reasoning ? `${reasoning}\n\n${text}` : text
        break
      }
      default:
        // Hosted-tool and custom items: the model was never offered those tools here.
        break
    }
  }
  return out
}

const chatTool = (tool: ResponsesFunctionTool): FunctionTool => ({
  type: "function",
  function: {
    name: tool.name,
    ...(tool.description != null ? { description: tool.description } : {}),
    ...(tool.parameters != null ? { parameters: tool.parameters } : {}),
    ...(tool.strict !== undefined ? { strict: tool.strict } : {})
  }
})

const functionTools = (req: ResponsesRequest): Array<ResponsesFunctionTool> => {
  const tools = (req.tools ?? []).filter((t): t is ResponsesFunctionTool => t.type === "function")
  const choice = req.tool_choice
  if (typeof choice !== "object" || choice === null || choice.type !== "allowed_tools") return tools
  const allowed = new Set(
    (choice as Extract<typeof choice, { type: "allowed_tools" }>).tools.flatMap((t) =>
      t.type === "function" && t.name !== undefined ? [t.name] : []
    )
  )
  return tools.filter((t) => allowed.has(t.name))
}

const chatToolChoice = (choice: ResponsesRequest["tool_choice"]): ToolChoice | undefined => {
  if (choice === undefined || choice === null) return undefined
  if (typeof choice === "string") return choice
  if (choice.type === "function") return { type: "function", function: { name: (choice as { name: string }).name } }
  if (choice.type === "allowed_tools") return (choice as { mode: "auto" | "required" }).mode
  // Unreachable after decoding (ResponsesRequest refuses tool choices that force hosted tools).
  return undefined
}

const responseFormat = (req: ResponsesRequest): ChatCompletionRequest["response_format"] => {
  const format = req.text?.format
  if (format === undefined || format.type !== "json_schema") return format
  return {
    type: "json_schema",
    json_schema: {
      name: format.name,
      schema: format.schema,
      ...(format.strict !== undefined ? { strict: format.strict } : {})
    }
  }
}

/** Responses request → chat request. Check `unservable` first: stateful fields are ignored here. */
export const responsesToChat = (req: ResponsesRequest): ChatCompletionRequest => {
  const tools = functionTools(req)
  const choice = chatToolChoice(req.tool_choice)
  const format = responseFormat(req)
  return {
    model: req.model,
    messages: messagesOf(req),
    ...(tools.length > 0 ? { tools: tools.map(chatTool) } : {}),
    ...(tools.length > 0 && choice !== undefined ? { tool_choice: choice } : {}),
    ...(tools.length > 0 && req.parallel_tool_calls != null ? { parallel_tool_calls: req.parallel_tool_calls } : {}),
    ...(req.temperature != null ? { temperature: req.temperature } : {}),
    ...(req.top_p != null ? { top_p: req.top_p } : {}),
    ...(req.max_output_tokens != null ? { max_completion_tokens: req.max_output_tokens } : {}),
    ...(format !== undefined ? { response_format: format } : {}),
    ...(req.user !== undefined ? { user: req.user } : {}),
    ...(req.stream ? { stream: true, stream_options: { include_usage: true } } : {})
  }
}

// ---- Response: chat → Responses ----

export interface ResponseOptions {
  /** The response id, `resp_…`; item ids derive from it. Random when absent. */
  readonly id?: string
  /** Unix seconds. */
  readonly createdAt?: number
}

const newResponseId = () => `resp_${randomUUID().replace(/-/g, "")}`

/** Item ids derive from the response id, so a response's ids are stable and unique within it. */
const itemId = (responseId: string, prefix: "msg" | "fc" | "rs", n: number) =>
  `${prefix}_${responseId.replace(/^resp_/, "")}_${n}`

const usageOf = (usage: Usage): ResponseUsage => ({
  input_tokens: usage.prompt_tokens,
  input_tokens_details: { cached_tokens: usage.prompt_tokens_details?.cached_tokens ?? 0 },
  output_tokens: usage.completion_tokens,
  output_tokens_details: { reasoning_tokens: 0 },
  total_tokens: usage.total_tokens
})

const echoTool = (tool: ResponsesFunctionTool): EchoedFunctionTool => ({
  type: "function",
  name: tool.name,
  description: tool.description ?? null,
  parameters: tool.parameters ? { ...tool.parameters } : null,
  strict: tool.strict ?? null
})

const echoToolChoice = (choice: ResponsesRequest["tool_choice"]): EchoedToolChoice => {
  if (choice === undefined || choice === null) return "auto"
  if (typeof choice === "string") return choice
  if (choice.type === "function") return { type: "function", name: (choice as { name: string }).name }
  if (choice.type === "allowed_tools") {
    const allowed = choice as Extract<typeof choice, { type: "allowed_tools" }>
    return { type: "allowed_tools", mode: allowed.mode, tools: allowed.tools.map((t) => ({ ...t })) }
  }
  return "auto"
}

const isIncomplete = (finish: FinishReason | null) => finish === "length" || finish === "content_filter"

/** The response object's fields that echo the request, with the output so far. */
const responseFields = (
  req: ResponsesRequest,
  id: string,
  createdAt: number,
  output: Array<OutputItem>,
  usage: Usage | undefined
): ResponseFields => ({
  id,
  object: "response",
  created_at: createdAt,
  error: null,
  incomplete_details: null,
  model: req.model,
  output,
  instructions: req.instructions ?? null,
  tools: (req.tools ?? []).filter((t): t is ResponsesFunctionTool => t.type === "function").map(echoTool),
  tool_choice: echoToolChoice(req.tool_choice),
  parallel_tool_calls: req.parallel_tool_calls ?? true,
  temperature: req.temperature ?? null,
  top_p: req.top_p ?? null,
  max_output_tokens: req.max_output_tokens ?? null,
  previous_response_id: null,
  text: req.text ?? { format: { type: "text" } },
  reasoning: req.reasoning ?? null,
  metadata: { ...req.metadata },
  ...(req.user !== undefined ? { user: req.user } : {}),
  ...(usage ? { usage: usageOf(usage) } : {})
})

const outputText = (output: ReadonlyArray<OutputItem>) =>
  output.flatMap((item) => item.type === "message" ? item.content.map((p) => p.text) : []).join("")

const finished = (fields: ResponseFields, finish: FinishReason | null): ResponseObject => {
  const incomplete = isIncomplete(finish)
  return {
    ...fields,
    status: incomplete ? "incomplete" : "completed",
    incomplete_details: incomplete
      ? { reason: finish === "content_filter" ? "content_filter" : "max_output_tokens" }
      : null,
    output_text: outputText(fields.output)
  }
}

const messageItem = (id: string, text: string, status: ItemStatus): OutputMessage => ({
  type: "message",
  id,
  role: "assistant",
  status,
  content: [{ type: "output_text", text, annotations: [] }]
})

const reasoningItem = (id: string, text: string, status: ItemStatus): OutputReasoning => ({
  type: "reasoning",
  id,
  summary: [],
  content: [{ type: "reasoning_text", text }],
  status
})

/** Non-streaming: a chat completion → the Responses object (reasoning, message, function calls). */
export const chatToResponses = (
  res: ChatCompletion,
  req: ResponsesRequest,
  options: ResponseOptions = {}
): ResponseObject => {
  const id = options.id ?? newResponseId()
  const choice = res.choices[0]
  const message = choice?.message
  const finish = choice?.finish_reason ?? null
  const output: Array<OutputItem> = []
  let n = 0
  if (message?.reasoning_content) {
    output.push(reasoningItem(itemId(id, "rs", n++), message.reasoning_content, "completed"))
  }
  const calls = message?.tool_calls ?? []
  if (message?.content || (output.length === 0 && calls.length === 0)) {
    output.push(messageItem(itemId(id, "msg", n++), message?.content ?? "", "completed"))
  }
  for (const call of calls) {
    output.push({
      type: "function_call",
      id: itemId(id, "fc", n++),
      call_id: call.id,
      name: call.function.name,
      arguments: call.function.arguments,
      status: "completed"
    })
  }
  // The item being generated when the limit hit is the one left incomplete.
  const last = output[output.length - 1]
  if (isIncomplete(finish) && last) last.status = "incomplete"
  return finished(responseFields(req, id, options.createdAt ?? res.created, output, res.usage), finish)
}

// ---- Streaming: chat chunks → Responses events ----

export interface StreamError {
  readonly type: string
  readonly message: string
  readonly code?: string | null
}

interface TextState {
  readonly kind: "message" | "reasoning"
  readonly index: number
  readonly id: string
  text: string
  open: boolean
}

interface CallState {
  readonly kind: "function_call"
  index: number
  id: string
  callId: string
  name: string
  arguments: string
  open: boolean
}

type ItemState = TextState | CallState

/** Events without their sequence number: `emit` numbers them. */
type Unnumbered = ResponsesEvent extends infer E ? E extends unknown ? Omit<E, "sequence_number"> : never : never

/**
 * Chat chunks in, Responses events out. Reasoning streams as a `reasoning` item with one
 * `reasoning_text` content part (`response.reasoning_text.delta`/`.done`), as open-weight models do
 * on OpenAI's API; there is no summary. Reasoning and text take turns: a switch between them closes
 * the current item and opens a new one. Function call items stay open until `end`, so argument
 * fragments of several calls may interleave.
 */
export class ResponsesStream {
  private readonly id: string
  private readonly createdAt: number
  private sequence = 0
  private started = false
  private finished = false
  private readonly items: Array<ItemState> = []
  private current: TextState | undefined
  /** Chat tool-call index → its item; a call waits (unlisted) until its name is known. */
  private readonly calls = new Map<number, CallState>()
  private finish: FinishReason | null = null
  private usage: Usage | undefined

  constructor(private readonly req: ResponsesRequest, options: ResponseOptions = {}) {
    this.id = options.id ?? newResponseId()
    this.createdAt = options.createdAt ?? Math.floor(Date.now() / 1000)
  }

  start(): Array<ResponsesEvent> {
    if (this.started) return []
    this.started = true
    const response = (): InProgressResponseObject => ({ ...this.fields([]), status: "in_progress" })
    return [
      this.emit({ type: "response.created", response: response() }),
      this.emit({ type: "response.in_progress", response: response() })
    ]
  }

  chunk(c: ChatCompletionChunk): Array<ResponsesEvent> {
    if (this.finished) return []
    const out = this.start()
    if (c.usage) this.usage = c.usage
    const choice = c.choices.find((ch) => ch.index === 0)
    if (!choice) return out
    const delta = choice.delta
    if (delta.reasoning_content) this.text("reasoning", delta.reasoning_content, out)
    if (delta.content) this.text("message", delta.content, out)
    for (const call of delta.tool_calls ?? []) this.toolCall(call, out)
    if (choice.finish_reason) this.finish = choice.finish_reason
    return out
  }

  end(): Array<ResponsesEvent> {
    if (this.finished) return []
    const out = this.start()
    for (const call of this.calls.values()) if (call.index < 0) this.openCall(call, out)
    if (this.items.length === 0) this.openText("message", out)
    const status = isIncomplete(this.finish) ? "incomplete" : "completed"
    const last = this.items[this.items.length - 1]
    for (const item of this.items) {
      if (item.open) this.close(item, out, status === "incomplete" && item === last ? "incomplete" : "completed")
    }
    this.finished = true
    const output = this.items.map((s) =>
      this.itemOf(s, status === "incomplete" && s === last ? "incomplete" : "completed")
    )
    const response = finished(this.fields(output), this.finish)
    out.push(this.emit({ type: status === "incomplete" ? "response.incomplete" : "response.completed", response }))
    return out
  }

  fail(error: StreamError): Array<ResponsesEvent> {
    if (this.finished) return []
    const out = this.start()
    this.finished = true
    const code = error.code ?? error.type
    out.push(this.emit({ type: "error", code, message: error.message, param: null }))
    const output = this.items.map((s) => this.itemOf(s, s.open ? "incomplete" : "completed"))
    const failed: FailedResponseObject = {
      ...this.fields(output),
      status: "failed",
      error: { code, message: error.message }
    }
    out.push(this.emit({ type: "response.failed", response: failed }))
    return out
  }

  private emit<E extends Unnumbered>(event: E): ResponsesEvent {
    return { ...event, sequence_number: this.sequence++ } as unknown as ResponsesEvent
  }

  private fields(output: Array<OutputItem>): ResponseFields {
    return responseFields(this.req, this.id, this.createdAt, output, this.usage)
  }

  /** A fresh snapshot of an item: the SDK mutates the items it receives. */
  private itemOf(state: ItemState, status: ItemStatus = state.open ? "in_progress" : "completed"): OutputItem {
    if (state.kind !== "function_call") {
      return (state.kind === "message" ? messageItem : reasoningItem)(state.id, state.text, status)
    }
    return {
      type: "function_call",
      id: state.id,
      call_id: state.callId,
      name: state.name,
      arguments: state.arguments,
      status
    } satisfies OutputFunctionCall
  }

  private text(kind: TextState["kind"], delta: string, out: Array<ResponsesEvent>) {
    const state = this.current?.kind === kind ? this.current : this.openText(kind, out)
    state.text += delta
    const at = { item_id: state.id, output_index: state.index, content_index: 0, delta }
    out.push(this.emit(
      kind === "message"
        ? { type: "response.output_text.delta", ...at, logprobs: [] }
        : { type: "response.reasoning_text.delta", ...at }
    ))
  }

  private openText(kind: TextState["kind"], out: Array<ResponsesEvent>): TextState {
    if (this.current) this.close(this.current, out, "completed")
    const index = this.items.length
    const state: TextState = {
      kind,
      index,
      id: itemId(this.id, kind === "message" ? "msg" : "rs", index),
      text: "",
      open: true
    }
    this.items.push(state)
    this.current = state
    const item = kind === "message"
      ? { ...messageItem(state.id, "", "in_progress"), content: [] }
      : { ...reasoningItem(state.id, "", "in_progress"), content: [] }
    out.push(this.emit({ type: "response.output_item.added", output_index: index, item }))
    out.push(this.emit({
      type: "response.content_part.added",
      item_id: state.id,
      output_index: index,
      content_index: 0,
      part: kind === "message"
        ? { type: "output_text", text: "", annotations: [] }
        : { type: "reasoning_text", text: "" }
    }))
    return state
  }

  private toolCall(
    delta: NonNullable<ChatCompletionChunk["choices"][number]["delta"]["tool_calls"]>[number],
    out: Array<ResponsesEvent>
  ) {
    let state = this.calls.get(delta.index)
    if (!state) {
      state = {
        kind: "function_call",
        index: -1,
        id: "",
        callId: delta.id || `call_${this.id.replace(/^resp_/, "")}_${delta.index}`,
        name: "",
        arguments: "",
        open: true
      }
      this.calls.set(delta.index, state)
    }
    // Before the item opens (held for its name), a later id or name is taken; after, ignored:
    // some upstreams repeat them on every fragment.
    if (state.index < 0) {
      if (delta.id) state.callId = delta.id
      if (delta.function?.name) state.name = delta.function.name
    }
    const fragment = delta.function?.arguments ?? ""
    if (state.index < 0) {
      // Some upstreams send the name after the first fragment: hold the item until it is known.
      state.arguments += fragment
      if (state.name) this.openCall(state, out)
      return
    }
    if (!fragment) return
    state.arguments += fragment
    out.push(this.emit({
      type: "response.function_call_arguments.delta",
      item_id: state.id,
      output_index: state.index,
      delta: fragment
    }))
  }

  private openCall(state: CallState, out: Array<ResponsesEvent>) {
    if (this.current) this.close(this.current, out, "completed")
    state.index = this.items.length
    state.id = itemId(this.id, "fc", state.index)
    this.items.push(state)
    const held = state.arguments
    out.push(this.emit({
      type: "response.output_item.added",
      output_index: state.index,
      item: { ...this.itemOf(state, "in_progress"), arguments: "" } as OutputFunctionCall
    }))
    if (held) {
      out.push(this.emit({
        type: "response.function_call_arguments.delta",
        item_id: state.id,
        output_index: state.index,
        delta: held
      }))
    }
  }

  private close(state: ItemState, out: Array<ResponsesEvent>, status: ItemStatus) {
    state.open = false
    if (state === this.current) this.current = undefined
    const at = { item_id: state.id, output_index: state.index }
    if (state.kind === "function_call") {
      out.push(this.emit({
        type: "response.function_call_arguments.done",
        ...at,
        name: state.name,
        arguments: state.arguments
      }))
    } else {
      const part = { ...at, content_index: 0 }
      out.push(this.emit(
        state.kind === "message"
          ? { type: "response.output_text.done", ...part, text: state.text, logprobs: [] }
          : { type: "response.reasoning_text.done", ...part, text: state.text }
      ))
      out.push(this.emit({
        type: "response.content_part.done",
        ...part,
        part: state.kind === "message"
          ? { type: "output_text", text: state.text, annotations: [] }
          : { type: "reasoning_text", text: state.text }
      }))
    }
    out.push(
      this.emit({ type: "response.output_item.done", output_index: state.index, item: this.itemOf(state, status) })
    )
  }
}

/** One server-sent event: `event: <type>` and the JSON payload. */
export const formatSse = (event: ResponsesEvent): string => `event: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`
