import { Schema } from "effect"
import { JsonSchema, ModelName, ToolName } from "./json.js"

/**
 * OpenAI Responses API: the request as real clients send it (the openai SDK, Codex-style agents),
 * and the response object and stream events the gateway answers with, as plain types. Unknown
 * fields are ignored, never rejected.
 */

const opt = <S extends Schema.Schema.Any>(s: S) => Schema.optionalWith(s, { exact: true })
/** Any object with a `type` other than the given ones: accepted so the translator can decide. */
const OtherTyped = (...known: ReadonlyArray<string>) =>
  Schema.Struct(
    { type: Schema.String.pipe(Schema.filter((t) => !known.includes(t), { message: () => "unexpected type" })) },
    { key: Schema.String, value: Schema.Unknown }
  )

export const InputText = Schema.Struct({ type: Schema.Literal("input_text"), text: Schema.String })
export const OutputText = Schema.Struct({ type: Schema.Literal("output_text"), text: Schema.String })
export const Refusal = Schema.Struct({ type: Schema.Literal("refusal"), refusal: Schema.String })
export const InputImage = Schema.Struct({
  type: Schema.Literal("input_image"),
  image_url: opt(Schema.NullOr(Schema.String)),
  file_id: opt(Schema.NullOr(Schema.String)),
  detail: opt(Schema.NullOr(Schema.Literal("low", "high", "auto", "original")))
})
export const InputFile = Schema.Struct({
  type: Schema.Literal("input_file"),
  file_data: opt(Schema.String),
  file_id: opt(Schema.NullOr(Schema.String)),
  file_url: opt(Schema.String),
  filename: opt(Schema.String)
})
export const MessageContentPart = Schema.Union(InputText, OutputText, Refusal, InputImage, InputFile)
export type MessageContentPart = typeof MessageContentPart.Type

/** `type` is optional on the wire (see `InputItem`), always present once decoded. */
export const MessageItem = Schema.Struct({
  type: Schema.Literal("message"),
  role: Schema.Literal("user", "assistant", "system", "developer"),
  content: Schema.Union(Schema.Array(MessageContentPart), Schema.String),
  id: opt(Schema.NullOr(Schema.String))
})
export type MessageItem = typeof MessageItem.Type

export const FunctionCallItem = Schema.Struct({
  type: Schema.Literal("function_call"),
  call_id: Schema.String,
  name: Schema.String,
  arguments: Schema.String,
  id: opt(Schema.NullOr(Schema.String))
})
export type FunctionCallItem = typeof FunctionCallItem.Type

export const FunctionCallOutputItem = Schema.Struct({
  type: Schema.Literal("function_call_output"),
  call_id: Schema.String,
  output: Schema.Union(Schema.Array(Schema.Union(InputText, InputImage, InputFile)), Schema.String),
  id: opt(Schema.NullOr(Schema.String))
})
export type FunctionCallOutputItem = typeof FunctionCallOutputItem.Type

const ReasoningPart = Schema.Struct({ type: Schema.String, text: Schema.String })
export const ReasoningItem = Schema.Struct({
  type: Schema.Literal("reasoning"),
  id: opt(Schema.NullOr(Schema.String)),
  summary: opt(Schema.Array(ReasoningPart)),
  content: opt(Schema.NullOr(Schema.Array(ReasoningPart))),
  encrypted_content: opt(Schema.NullOr(Schema.String))
})
export type ReasoningItem = typeof ReasoningItem.Type

/** A reference to a stored item: cannot be resolved by a stateless gateway. */
export const ItemReference = Schema.Struct({ type: Schema.Literal("item_reference"), id: Schema.String })

const itemTypes = ["message", "function_call", "function_call_output", "reasoning", "item_reference"]
/** Other item types (hosted tool calls, custom tool calls): accepted and dropped. */
export const OtherItem = OtherTyped(...itemTypes)

/** Messages may omit `type`; naming it lets a bad message's error point at its own fields. */
const NamedMessageType = Schema.transform(Schema.Unknown, Schema.Unknown, {
  strict: true,
  decode: (u) =>
    typeof u === "object" && u !== null && !Array.isArray(u) && !("type" in u) ? { ...u, type: "message" } : u,
  encode: (u) => u
})

export const InputItem = NamedMessageType.pipe(Schema.compose(
  Schema.Union(MessageItem, FunctionCallItem, FunctionCallOutputItem, ReasoningItem, ItemReference, OtherItem),
  { strict: false }
))
export type InputItem = typeof InputItem.Type

export const ResponsesFunctionTool = Schema.Struct({
  type: Schema.Literal("function"),
  name: ToolName,
  description: opt(Schema.NullOr(Schema.String)),
  parameters: opt(Schema.NullOr(JsonSchema)),
  strict: opt(Schema.NullOr(Schema.Boolean))
})
export type ResponsesFunctionTool = typeof ResponsesFunctionTool.Type
/** Hosted tools (web_search, file_search, mcp, custom…): accepted, never offered to the model. */
export const OtherTool = OtherTyped("function")
export const ResponsesTool = Schema.Union(ResponsesFunctionTool, OtherTool)

export const FunctionToolChoice = Schema.Struct({ type: Schema.Literal("function"), name: Schema.String })
export const AllowedToolsChoice = Schema.Struct({
  type: Schema.Literal("allowed_tools"),
  mode: Schema.Literal("auto", "required"),
  tools: Schema.Array(Schema.Struct({ type: Schema.String, name: opt(Schema.String) }))
})
export const ResponsesToolChoice = Schema.Union(
  Schema.Literal("none", "auto", "required"),
  FunctionToolChoice,
  AllowedToolsChoice,
  OtherTyped("function", "allowed_tools")
)
export type ResponsesToolChoice = typeof ResponsesToolChoice.Type

export const TextFormat = Schema.Union(
  Schema.Struct({ type: Schema.Literal("text") }),
  Schema.Struct({ type: Schema.Literal("json_object") }),
  Schema.Struct({
    type: Schema.Literal("json_schema"),
    name: Schema.String,
    schema: JsonSchema,
    description: opt(Schema.String),
    strict: opt(Schema.NullOr(Schema.Boolean))
  })
)
export const TextConfig = Schema.Struct({
  format: opt(TextFormat),
  verbosity: opt(Schema.NullOr(Schema.Literal("low", "medium", "high")))
})
export type TextConfig = typeof TextConfig.Type

export const ReasoningConfig = Schema.Struct({
  effort: opt(Schema.NullOr(Schema.Literal("none", "minimal", "low", "medium", "high", "xhigh"))),
  summary: opt(Schema.NullOr(Schema.Literal("auto", "concise", "detailed")))
})

const servedItem = (item: InputItem) =>
  item.type === "message" || item.type === "function_call" || item.type === "function_call_output"

const ResponsesRequestFields = Schema.Struct({
  model: ModelName,
  input: Schema.Union(Schema.Array(InputItem), Schema.String),
  instructions: opt(Schema.NullOr(Schema.String)),
  tools: opt(Schema.NullOr(Schema.Array(ResponsesTool))),
  tool_choice: opt(Schema.NullOr(ResponsesToolChoice)),
  parallel_tool_calls: opt(Schema.NullOr(Schema.Boolean)),
  temperature: opt(Schema.NullOr(Schema.Number.pipe(Schema.between(0, 2)))),
  top_p: opt(Schema.NullOr(Schema.Number.pipe(Schema.between(0, 1)))),
  max_output_tokens: opt(Schema.NullOr(Schema.Int.pipe(Schema.positive()))),
  stream: opt(Schema.NullOr(Schema.Boolean)),
  text: opt(Schema.NullOr(TextConfig)),
  reasoning: opt(Schema.NullOr(ReasoningConfig)),
  store: opt(Schema.NullOr(Schema.Boolean)),
  metadata: opt(Schema.NullOr(Schema.Record({ key: Schema.String, value: Schema.String }))),
  user: opt(Schema.String),
  // Stateful features, accepted so the gateway can refuse them by name (see `unservable`).
  previous_response_id: opt(Schema.NullOr(Schema.String)),
  conversation: opt(Schema.NullOr(Schema.Union(Schema.String, Schema.Struct({ id: Schema.String })))),
  background: opt(Schema.NullOr(Schema.Boolean)),
  // Log-probabilities are not translated to Responses' output_text.logprobs yet: refused by name.
  top_logprobs: opt(Schema.NullOr(Schema.Int)),
  include: opt(Schema.NullOr(Schema.Array(Schema.String)))
})

const forcedToolIssue = (req: typeof ResponsesRequestFields.Type): string | undefined => {
  const choice = req.tool_choice
  const functions = (req.tools ?? []).filter((t) => t.type === "function").length
  if (choice === "required" && functions === 0 && (req.tools ?? []).length > 0) {
    return "tool_choice 'required' forces a hosted tool, but only function tools are supported"
  }
  if (typeof choice !== "object" || choice === null || choice.type === "function") return undefined
  if (choice.type === "allowed_tools") {
    const allowed = (choice as typeof AllowedToolsChoice.Type).tools
    return choice.mode === "required" && !allowed.some((t) => t.type === "function")
      ? "tool_choice 'allowed_tools' with mode 'required' allows no function tool, and only function tools are supported"
      : undefined
  }
  return `tool_choice forces a '${choice.type}' tool, which is not supported: only function tools are`
}

export const ResponsesRequest = ResponsesRequestFields.pipe(
  Schema.filter((req) => {
    const forced = forcedToolIssue(req)
    if (forced !== undefined) return { path: ["tool_choice"], message: forced }
    const empty = typeof req.input !== "string" && !req.input.some(servedItem) && !req.instructions
    return empty
      ? { path: ["input"], message: "input must hold a message, function_call or function_call_output item" }
      : true
  })
)
export type ResponsesRequest = typeof ResponsesRequest.Type

// ---- Output: built and read as plain objects on the hot path (no Schema) ----
// Arrays are mutable so the objects are assignable to the openai SDK's types.

export type ItemStatus = "in_progress" | "completed" | "incomplete"

export interface OutputTextPart {
  type: "output_text"
  text: string
  annotations: Array<never>
}
export interface ReasoningTextPart {
  type: "reasoning_text"
  text: string
}
export interface OutputMessage {
  type: "message"
  id: string
  role: "assistant"
  status: ItemStatus
  content: Array<OutputTextPart>
}
export interface OutputFunctionCall {
  type: "function_call"
  id: string
  call_id: string
  name: string
  arguments: string
  status: ItemStatus
}
export interface OutputReasoning {
  type: "reasoning"
  id: string
  summary: Array<{ type: "summary_text"; text: string }>
  content: Array<ReasoningTextPart>
  status: ItemStatus
}
export type OutputItem = OutputMessage | OutputFunctionCall | OutputReasoning

export interface ResponseUsage {
  input_tokens: number
  input_tokens_details: { cached_tokens: number }
  output_tokens: number
  output_tokens_details: { reasoning_tokens: number }
  total_tokens: number
}

export type EchoedToolChoice =
  | "none"
  | "auto"
  | "required"
  | { type: "function"; name: string }
  | { type: "allowed_tools"; mode: "auto" | "required"; tools: Array<{ [key: string]: unknown }> }

export interface EchoedFunctionTool {
  type: "function"
  name: string
  description: string | null
  parameters: { [key: string]: unknown } | null
  strict: boolean | null
}

/** What every response object holds, whatever its state. */
export interface ResponseFields {
  id: string
  object: "response"
  created_at: number
  error: null
  incomplete_details: null
  model: string
  output: Array<OutputItem>
  instructions: string | null
  tools: Array<EchoedFunctionTool>
  tool_choice: EchoedToolChoice
  parallel_tool_calls: boolean
  temperature: number | null
  top_p: number | null
  max_output_tokens: number | null
  previous_response_id: null
  text: TextConfig
  reasoning: typeof ReasoningConfig.Type | null
  metadata: { [key: string]: string }
  user?: string
  usage?: ResponseUsage
}

/**
 * While streaming. No `output_text`: it is the SDK's convenience, which it computes only when the
 * field is absent, so a stale "" here would stick to a snapshot built from the deltas.
 */
export interface InProgressResponseObject extends ResponseFields {
  status: "in_progress"
}

/** A finished response (the non-streaming answer, or a stream's last event). */
export interface ResponseObject extends Omit<ResponseFields, "incomplete_details"> {
  status: "completed" | "incomplete"
  incomplete_details: { reason: "max_output_tokens" | "content_filter" } | null
  output_text: string
}

/** A failed response carries the upstream's own error code, which the SDK's literal list lacks. */
export interface FailedResponseObject extends Omit<ResponseFields, "error"> {
  status: "failed"
  error: { code: string; message: string }
}

interface Sequenced {
  sequence_number: number
}
interface AtItem extends Sequenced {
  item_id: string
  output_index: number
}
interface AtPart extends AtItem {
  content_index: number
}

type Lifecycle<T extends string, R> = Sequenced & { type: T; response: R }
type ItemEvent<T extends string> = Sequenced & { type: T; output_index: number; item: OutputItem }
type PartEvent<T extends string> = AtPart & { type: T; part: OutputTextPart | ReasoningTextPart }

export type ResponsesEvent =
  | Lifecycle<"response.created", InProgressResponseObject>
  | Lifecycle<"response.in_progress", InProgressResponseObject>
  | Lifecycle<"response.completed", ResponseObject>
  | Lifecycle<"response.incomplete", ResponseObject>
  | Lifecycle<"response.failed", FailedResponseObject>
  | ItemEvent<"response.output_item.added">
  | ItemEvent<"response.output_item.done">
  | PartEvent<"response.content_part.added">
  | PartEvent<"response.content_part.done">
  | AtPart & { type: "response.output_text.delta"; delta: string; logprobs: Array<never> }
  | AtPart & { type: "response.output_text.done"; text: string; logprobs: Array<never> }
  | AtPart & { type: "response.reasoning_text.delta"; delta: string }
  | AtPart & { type: "response.reasoning_text.done"; text: string }
  | AtItem & { type: "response.function_call_arguments.delta"; delta: string }
  | AtItem & { type: "response.function_call_arguments.done"; name: string; arguments: string }
  | Sequenced & { type: "error"; code: string | null; message: string; param: string | null }
