import { Schema } from "effect"
import { JsonSchema, ModelName, ToolName } from "./json.js"

/**
 * Anthropic Messages wire shapes: request Schemas (validated once at the edge; unknown fields
 * ignored) and plain types for what the gateway answers (built as plain objects, per token too).
 */

const opt = <S extends Schema.Schema.Any>(s: S) => Schema.optionalWith(s, { exact: true })

const CacheControl = Schema.NullOr(Schema.Struct({ type: Schema.String, ttl: opt(Schema.String) }))

export const TextBlock = Schema.Struct({
  type: Schema.Literal("text"),
  text: Schema.String,
  cache_control: opt(CacheControl)
})
export type TextBlock = typeof TextBlock.Type

export const ImageSource = Schema.Union(
  Schema.Struct({ type: Schema.Literal("base64"), media_type: Schema.String, data: Schema.String }),
  Schema.Struct({ type: Schema.Literal("url"), url: Schema.String })
)
export type ImageSource = typeof ImageSource.Type

export const ImageBlock = Schema.Struct({
  type: Schema.Literal("image"),
  source: ImageSource,
  cache_control: opt(CacheControl)
})
export type ImageBlock = typeof ImageBlock.Type

const ToolInput = Schema.Record({ key: Schema.String, value: Schema.Unknown })

export const ToolUseBlock = Schema.Struct({
  type: Schema.Literal("tool_use"),
  id: Schema.String,
  name: Schema.String,
  input: ToolInput,
  cache_control: opt(CacheControl)
})
export type ToolUseBlock = typeof ToolUseBlock.Type

export const ToolResultBlock = Schema.Struct({
  type: Schema.Literal("tool_result"),
  tool_use_id: Schema.String,
  content: opt(Schema.Union(Schema.String, Schema.Array(Schema.Union(TextBlock, ImageBlock)))),
  is_error: opt(Schema.Boolean),
  cache_control: opt(CacheControl)
})
export type ToolResultBlock = typeof ToolResultBlock.Type

export const ThinkingBlock = Schema.Struct({
  type: Schema.Literal("thinking"),
  thinking: Schema.String,
  // Required by Anthropic; optional here because our own answers carry "" and some clients drop it.
  signature: opt(Schema.String)
})
export type ThinkingBlock = typeof ThinkingBlock.Type

export const RedactedThinkingBlock = Schema.Struct({ type: Schema.Literal("redacted_thinking"), data: Schema.String })
export type RedactedThinkingBlock = typeof RedactedThinkingBlock.Type

export const UserBlock = Schema.Union(TextBlock, ImageBlock, ToolResultBlock)
export type UserBlock = typeof UserBlock.Type

export const AssistantBlock = Schema.Union(TextBlock, ToolUseBlock, ThinkingBlock, RedactedThinkingBlock)
export type AssistantBlock = typeof AssistantBlock.Type

export const UserMessage = Schema.Struct({
  role: Schema.Literal("user"),
  content: Schema.Union(Schema.String, Schema.Array(UserBlock))
})
export type UserMessage = typeof UserMessage.Type

export const AssistantMessage = Schema.Struct({
  role: Schema.Literal("assistant"),
  content: Schema.Union(Schema.String, Schema.Array(AssistantBlock))
})
export type AssistantMessage = typeof AssistantMessage.Type

/**
 * Not in Anthropic's published API, but current Claude Code sends system turns inside
 * `messages` (after the first user turn, with cache_control): kept at their position.
 */
export const SystemMessage = Schema.Struct({
  role: Schema.Literal("system"),
  content: Schema.Union(Schema.String, Schema.Array(TextBlock))
})
export type SystemMessage = typeof SystemMessage.Type

export const MessageParam = Schema.Union(UserMessage, AssistantMessage, SystemMessage)
export type MessageParam = typeof MessageParam.Type

export const SystemPrompt = Schema.Union(Schema.String, Schema.Array(TextBlock))
export type SystemPrompt = typeof SystemPrompt.Type

export const Tool = Schema.Struct({
  type: opt(Schema.Literal("custom")),
  name: ToolName,
  description: opt(Schema.String),
  input_schema: JsonSchema,
  cache_control: opt(CacheControl)
})
export type Tool = typeof Tool.Type

const disableParallel = { disable_parallel_tool_use: opt(Schema.Boolean) }
export const ToolChoice = Schema.Union(
  Schema.Struct({ type: Schema.Literal("auto"), ...disableParallel }),
  Schema.Struct({ type: Schema.Literal("any"), ...disableParallel }),
  Schema.Struct({ type: Schema.Literal("tool"), name: Schema.String, ...disableParallel }),
  Schema.Struct({ type: Schema.Literal("none") })
)
export type ToolChoice = typeof ToolChoice.Type

export const ThinkingConfig = Schema.Union(
  Schema.Struct({ type: Schema.Literal("enabled"), budget_tokens: Schema.Int.pipe(Schema.nonNegative()) }),
  Schema.Struct({ type: Schema.Literal("disabled") }),
  // Newer clients (Claude Code) send this one.
  Schema.Struct({ type: Schema.Literal("adaptive") })
)
export type ThinkingConfig = typeof ThinkingConfig.Type

/**
 * `effort` steers how much a Claude model thinks; a local model reasons by its template, so it
 * is accepted and ignored. `format` (structured outputs) is honoured as a JSON-schema grammar.
 */
export const OutputConfig = Schema.Struct({
  effort: opt(Schema.NullOr(Schema.Literal("low", "medium", "high", "max"))),
  format: opt(Schema.NullOr(Schema.Struct({ type: Schema.Literal("json_schema"), schema: JsonSchema })))
})
export type OutputConfig = typeof OutputConfig.Type

export const MessagesRequest = Schema.Struct({
  model: ModelName,
  max_tokens: Schema.Int.pipe(Schema.positive()),
  messages: Schema.Array(MessageParam).pipe(Schema.minItems(1)),
  system: opt(SystemPrompt),
  // The upstream (OpenAI `stop`) takes at most 16: refuse more up front rather than drop some.
  stop_sequences: opt(Schema.Array(Schema.String).pipe(Schema.maxItems(16))),
  temperature: opt(Schema.Number.pipe(Schema.between(0, 1))),
  top_p: opt(Schema.Number.pipe(Schema.between(0, 1))),
  top_k: opt(Schema.Int.pipe(Schema.nonNegative())),
  stream: opt(Schema.Boolean),
  tools: opt(Schema.Array(Tool)),
  tool_choice: opt(ToolChoice),
  thinking: opt(ThinkingConfig),
  metadata: opt(Schema.Struct({ user_id: opt(Schema.NullOr(Schema.String)) })),
  output_config: opt(OutputConfig),
  // Server-side context editing (clearing old tool results): the gateway keeps no context to
  // edit, so it is accepted and ignored (README: compatibility).
  context_management: opt(Schema.NullOr(Schema.Record({ key: Schema.String, value: Schema.Unknown })))
})
export type MessagesRequest = typeof MessagesRequest.Type

export const CountTokensRequest = Schema.Struct({
  model: ModelName,
  messages: Schema.Array(MessageParam).pipe(Schema.minItems(1)),
  system: opt(SystemPrompt),
  tools: opt(Schema.Array(Tool)),
  tool_choice: opt(ToolChoice),
  thinking: opt(ThinkingConfig)
})
export type CountTokensRequest = typeof CountTokensRequest.Type

// ---- What the gateway answers: plain types, no Schema on the hot path ----

export type StopReason = "end_turn" | "max_tokens" | "stop_sequence" | "tool_use" | "pause_turn" | "refusal"

/** `input_tokens` excludes cached prompt tokens, which are counted in `cache_read_input_tokens`. */
export interface AnthropicUsage {
  readonly input_tokens: number
  readonly output_tokens: number
  readonly cache_read_input_tokens: number
  readonly cache_creation_input_tokens: number
}

export interface TextBlockOut {
  readonly type: "text"
  readonly text: string
}
export interface ThinkingBlockOut {
  readonly type: "thinking"
  readonly thinking: string
  readonly signature: string
}
export interface ToolUseBlockOut {
  readonly type: "tool_use"
  readonly id: string
  readonly name: string
  readonly input: Readonly<Record<string, unknown>>
}
export type ContentBlockOut = TextBlockOut | ThinkingBlockOut | ToolUseBlockOut

export interface AnthropicMessage {
  readonly id: string
  readonly type: "message"
  readonly role: "assistant"
  readonly model: string
  readonly content: ReadonlyArray<ContentBlockOut>
  readonly stop_reason: StopReason | null
  readonly stop_sequence: string | null
  readonly usage: AnthropicUsage
}

export type BlockDelta =
  | { readonly type: "text_delta"; readonly text: string }
  | { readonly type: "input_json_delta"; readonly partial_json: string }
  | { readonly type: "thinking_delta"; readonly thinking: string }
  | { readonly type: "signature_delta"; readonly signature: string }

export interface AnthropicErrorDetail {
  readonly type: string
  readonly message: string
}

export type AnthropicStreamEvent =
  | { readonly type: "message_start"; readonly message: AnthropicMessage }
  | { readonly type: "content_block_start"; readonly index: number; readonly content_block: ContentBlockOut }
  | { readonly type: "content_block_delta"; readonly index: number; readonly delta: BlockDelta }
  | { readonly type: "content_block_stop"; readonly index: number }
  | {
    readonly type: "message_delta"
    readonly delta: { readonly stop_reason: StopReason; readonly stop_sequence: string | null }
    /** input and cache figures repeat message_start's, now final (the SDK overwrites with them). */
    readonly usage: {
      readonly output_tokens: number
      readonly input_tokens?: number
      readonly cache_read_input_tokens?: number
    }
  }
  | { readonly type: "message_stop" }
  | { readonly type: "ping" }
  | { readonly type: "error"; readonly error: AnthropicErrorDetail }

/** Anthropic's error envelope, in bodies and in a stream's `error` event. */
export interface AnthropicErrorBody {
  readonly type: "error"
  readonly error: AnthropicErrorDetail
}
