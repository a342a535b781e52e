import { Effect, Either, ParseResult, Schema } from "effect"
import { InvalidJson, InvalidRequest } from "./errors.js"
import { clip, JsonSchema, MAX_JSON_DEPTH, ModelName, tooDeepAt, ToolName } from "./json.js"

/** OpenAI wire schemas, as accepted by the neuron. Unknown fields are ignored, never rejected. */

const opt = <S extends Schema.Schema.Any>(s: S) => Schema.optionalWith(s, { exact: true })

export const TextPart = Schema.Struct({ type: Schema.Literal("text"), text: Schema.String })
export const ImagePart = Schema.Struct({
  type: Schema.Literal("image_url"),
  image_url: Schema.Union(Schema.String, Schema.Struct({ url: Schema.String, detail: opt(Schema.String) }))
})
export const ContentPart = Schema.Union(
  TextPart,
  ImagePart,
  Schema.Struct({ type: Schema.String }, { key: Schema.String, value: Schema.Unknown })
)
export type ContentPart = typeof ContentPart.Type

export const ToolCall = Schema.Struct({
  id: Schema.String,
  type: opt(Schema.Literal("function")),
  function: Schema.Struct({
    name: Schema.String,
    // Clients send a JSON string (the spec) or, sometimes, the object itself: accept both.
    arguments: Schema.Union(Schema.String, Schema.Record({ key: Schema.String, value: Schema.Unknown }))
  })
})
export type ToolCall = typeof ToolCall.Type

export const ChatMessage = Schema.Struct({
  role: Schema.Literal("system", "developer", "user", "assistant", "tool", "function"),
  content: opt(Schema.NullOr(Schema.Union(Schema.String, Schema.Array(ContentPart)))),
  name: opt(Schema.String),
  tool_calls: opt(Schema.NullOr(Schema.Array(ToolCall))),
  tool_call_id: opt(Schema.String),
  reasoning_content: opt(Schema.NullOr(Schema.String))
})
export type ChatMessage = typeof ChatMessage.Type

export const FunctionTool = Schema.Struct({
  type: Schema.Literal("function"),
  function: Schema.Struct({
    name: ToolName,
    description: opt(Schema.String),
    parameters: opt(JsonSchema),
    strict: opt(Schema.NullOr(Schema.Boolean))
  })
})
export type FunctionTool = typeof FunctionTool.Type

export const ToolChoice = Schema.Union(
  Schema.Literal("none", "auto", "required"),
  Schema.Struct({ type: Schema.Literal("function"), function: Schema.Struct({ name: Schema.String }) })
)
export type ToolChoice = typeof ToolChoice.Type

export const ResponseFormat = Schema.Union(
  Schema.Struct({ type: Schema.Literal("text") }),
  Schema.Struct({ type: Schema.Literal("json_object") }),
  Schema.Struct({
    type: Schema.Literal("json_schema"),
    json_schema: Schema.Struct({
      name: opt(Schema.String),
      schema: opt(JsonSchema),
      strict: opt(Schema.NullOr(Schema.Boolean))
    })
  })
)
export type ResponseFormat = typeof ResponseFormat.Type

/**
 * A field cortex cannot honour: accepted when absent, null or empty (clients send defaults), and
 * refused by name otherwise, so a client never believes it got what it asked for.
 */
const Unsupported = (why: string) =>
  Schema.Unknown.pipe(Schema.filter((value) =>
    value === null || value === false || value === 1 || value === "" ||
    (typeof value === "object" && Object.keys(value).length === 0) ||
    `is not supported: ${why}`
  ))

const Stop = Schema.NullOr(Schema.Union(Schema.String, Schema.Array(Schema.String).pipe(Schema.maxItems(16))))
const Tokens = Schema.Int.pipe(Schema.positive())

/** Sampling fields shared by chat and text completions. */
export const SamplingFields = {
  temperature: opt(Schema.NullOr(Schema.Number.pipe(Schema.between(0, 2)))),
  top_p: opt(Schema.NullOr(Schema.Number.pipe(Schema.between(0, 1)))),
  top_k: opt(Schema.NullOr(Schema.Int.pipe(Schema.nonNegative()))),
  min_p: opt(Schema.NullOr(Schema.Number.pipe(Schema.between(0, 1)))),
  seed: opt(Schema.NullOr(Schema.Int)),
  frequency_penalty: opt(Schema.NullOr(Schema.Number.pipe(Schema.between(-2, 2)))),
  presence_penalty: opt(Schema.NullOr(Schema.Number.pipe(Schema.between(-2, 2)))),
  repeat_penalty: opt(Schema.NullOr(Schema.Number.pipe(Schema.between(0, 10)))),
  max_tokens: opt(Schema.NullOr(Tokens)),
  stop: opt(Stop),
  stream: opt(Schema.NullOr(Schema.Boolean)),
  stream_options: opt(Schema.NullOr(Schema.Struct({ include_usage: opt(Schema.Boolean) }))),
  /** Choices per request; the neuron refuses more than its `max_n` (422 naming `n`). */
  n: opt(Schema.NullOr(Schema.Int.pipe(Schema.between(1, 128)))),
  user: opt(Schema.String),
  logit_bias: opt(Unsupported("token biases are not wired to the engine yet"))
}

export const ChatCompletionRequest = Schema.Struct({
  model: ModelName,
  messages: Schema.Array(ChatMessage).pipe(Schema.minItems(1)),
  max_completion_tokens: opt(Schema.NullOr(Tokens)),
  tools: opt(Schema.NullOr(Schema.Array(FunctionTool))),
  tool_choice: opt(Schema.NullOr(ToolChoice)),
  parallel_tool_calls: opt(Schema.NullOr(Schema.Boolean)),
  response_format: opt(Schema.NullOr(ResponseFormat)),
  logprobs: opt(Schema.NullOr(Schema.Boolean)),
  /** Alternatives per token; needs `logprobs: true`. */
  top_logprobs: opt(Schema.NullOr(Schema.Int.pipe(Schema.between(0, 20)))),
  ...SamplingFields
})
export type ChatCompletionRequest = typeof ChatCompletionRequest.Type

export const CompletionRequest = Schema.Struct({
  model: ModelName,
  prompt: Schema.Union(Schema.String, Schema.Array(Schema.String).pipe(Schema.itemsCount(1))),
  echo: opt(Schema.NullOr(Schema.Boolean)),
  suffix: opt(Unsupported("insertion (fill-in-the-middle) needs a model template cortex does not apply")),
  best_of: opt(Unsupported("best_of > 1 would rank candidates by log-probability server-side; use n")),
  /** Log-probabilities of the sampled tokens and this many alternatives each. */
  logprobs: opt(Schema.NullOr(Schema.Int.pipe(Schema.between(0, 5)))),
  ...SamplingFields
})
export type CompletionRequest = typeof CompletionRequest.Type

export const EmbeddingRequest = Schema.Struct({
  model: ModelName,
  input: Schema.Union(Schema.String, Schema.Array(Schema.String).pipe(Schema.minItems(1), Schema.maxItems(2048))),
  encoding_format: opt(Schema.Literal("float", "base64")),
  dimensions: opt(Schema.Int.pipe(Schema.positive())),
  user: opt(Schema.String)
})
export type EmbeddingRequest = typeof EmbeddingRequest.Type

export const LoadRequest = Schema.Struct({
  model: ModelName,
  context_size: opt(Schema.Int.pipe(Schema.between(64, 1 << 20))),
  /** The device group to load on (the gateway's placement: "cuda:0+cuda:1"); the neuron picks when absent. */
  group: opt(Schema.String)
})
export type LoadRequest = typeof LoadRequest.Type

export const UnloadRequest = Schema.Struct({ model: ModelName })
export type UnloadRequest = typeof UnloadRequest.Type

/** Count a prompt as generation would render it: the messages and the tools offered with them. */
export const TokenizeRequest = Schema.Struct({
  model: ModelName,
  text: opt(Schema.String),
  messages: opt(Schema.Array(ChatMessage)),
  tools: opt(Schema.NullOr(Schema.Array(FunctionTool))),
  tool_choice: opt(Schema.NullOr(ToolChoice))
})
export type TokenizeRequest = typeof TokenizeRequest.Type

const decoders = new WeakMap<Schema.Schema.Any, (u: unknown) => Either.Either<unknown, ParseResult.ParseError>>()

/**
 * Parse a request body: malformed JSON is a 400, a wrong shape a 422 naming the field. Also
 * returns the parsed JSON as sent (unknown fields kept) for relaying. Synchronous: the gateway's
 * inference routes call it outside any fiber.
 */
export const parseBody = <A, I>(
  schema: Schema.Schema<A, I>,
  text: string
): Either.Either<{ readonly value: A; readonly json: unknown }, InvalidJson | InvalidRequest> => {
  // Bounded before anything recursive (decoding, its error messages, translation) walks it.
  const deep = tooDeepAt(text)
  if (deep >= 0) {
    return Either.left(
      new InvalidJson({ message: `The JSON body nests deeper than ${MAX_JSON_DEPTH} levels (at character ${deep})` })
    )
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    return Either.left(new InvalidJson({ message: clip(`Malformed JSON body: ${(e as Error).message}`) }))
  }
  let decode = decoders.get(schema)
  if (!decode) {
    decode = Schema.decodeUnknownEither(schema as Schema.Schema<unknown>, { errors: "first" })
    decoders.set(schema, decode)
  }
  const decoded = decode(json)
  if (Either.isRight(decoded)) return Either.right({ value: decoded.right as A, json })
  const issue = ParseResult.ArrayFormatter.formatErrorSync(decoded.left)[0]
  const param = issue && issue.path.length > 0 ? issue.path.join(".") : null
  return Either.left(
    new InvalidRequest({
      message: clip(param ? `Invalid value for '${param}': ${issue?.message}` : `Invalid request: ${issue?.message}`),
      param: param === null ? null : clip(param, 200)
    })
  )
}

export const decodeBody = <A, I>(schema: Schema.Schema<A, I>, text: string) =>
  Effect.map(parseBody(schema, text), (parsed) => parsed.value)
