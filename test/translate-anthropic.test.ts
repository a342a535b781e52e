/**
 * Anthropic Messages ⇄ OpenAI chat translation: examples for each mapping, and properties over
 * realistic requests and arbitrary upstream chunk sequences.
 */
import * as Sdk from "@anthropic-ai/sdk"
import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc, Schema } from "effect"
import type {
  AnthropicStreamEvent,
  AssistantBlock,
  MessageParam,
  MessagesRequest as MessagesRequestType,
  UserBlock
} from "../src/domain/anthropic.js"
import { MessagesRequest } from "../src/domain/anthropic.js"
import type { ChatCompletion, ChatCompletionChunk, FinishReason } from "../src/domain/openai-output.js"
import type { ChatCompletionRequest as ChatRequest, ChatMessage } from "../src/domain/openai.js"
import { ChatCompletionRequest } from "../src/domain/openai.js"
import {
  AnthropicStream,
  anthropicToChat,
  chatToAnthropic,
  formatSse,
  toAnthropicError,
  toAnthropicStreamError
} from "../src/gateway/translate/Anthropic.js"

const decodeAnthropic = Schema.decodeUnknownSync(MessagesRequest)
const decodeChat = Schema.decodeUnknownSync(ChatCompletionRequest)

/** Decodes the Anthropic body as the edge would, translates it, and checks the result against the chat schema. */
const translate = (body: unknown): ChatRequest => {
  const chat = anthropicToChat(decodeAnthropic(body))
  expect(decodeChat(chat)).toEqual(chat)
  return chat
}

const base = { model: "m", max_tokens: 64 }

describe("MessagesRequest schema", () => {
  it("accepts what Claude Code sends: cache_control, block arrays for system, unknown fields", () => {
    const request = decodeAnthropic({
      ...base,
      system: [{ type: "text", text: "You are terse.", cache_control: { type: "ephemeral" } }],
      messages: [{ role: "user", content: [{ type: "text", text: "hi", cache_control: { type: "ephemeral" } }] }],
      thinking: { type: "adaptive" },
      context_management: { edits: [] },
      metadata: { user_id: "u-1" }
    })
    expect(request.system).toEqual([{ type: "text", text: "You are terse.", cache_control: { type: "ephemeral" } }])
  })

  it("requires max_tokens and refuses blocks in the wrong role", () => {
    expect(() => decodeAnthropic({ model: "m", messages: [{ role: "user", content: "hi" }] })).toThrow()
    expect(() =>
      decodeAnthropic({
        ...base,
        messages: [{ role: "user", content: [{ type: "tool_use", id: "t", name: "f", input: {} }] }]
      })
    ).toThrow()
  })
})

describe("anthropicToChat", () => {
  it("maps the system prompt, joining text blocks, and plain texts to string content", () => {
    const chat = translate({
      ...base,
      system: [{ type: "text", text: "rule one" }, { type: "text", text: "rule two" }],
      messages: [
        { role: "user", content: "hello" },
        { role: "assistant", content: [{ type: "text", text: "hi" }] },
        { role: "user", content: [{ type: "text", text: "a" }, { type: "text", text: "b" }] }
      ]
    })
    expect(chat.messages).toEqual([
      { role: "system", content: "rule one\n\nrule two" },
      { role: "user", content: "hello" },
      { role: "assistant", content: "hi" },
      { role: "user", content: "a\n\nb" }
    ])
  })

  it("carries images through as image_url parts in their place", () => {
    const chat = translate({
      ...base,
      messages: [{
        role: "user",
        content: [
          { type: "text", text: "what is this?" },
          { type: "image", source: { type: "base64", media_type: "image/png", data: "iVBORw0KGgo=" } },
          { type: "image", source: { type: "url", url: "https://example.com/cat.jpg" } }
        ]
      }]
    })
    expect(chat.messages).toEqual([{
      role: "user",
      content: [
        { type: "text", text: "what is this?" },
        { type: "image_url", image_url: { url: "data:image/png;base64,iVBORw0KGgo=" } },
        { type: "image_url", image_url: { url: "https://example.com/cat.jpg" } }
      ]
    }])
  })

  it("maps tool_use to tool_calls (content null) and tool_result to tool messages before the turn's text", () => {
    const chat = translate({
      ...base,
      messages: [
        { role: "user", content: "Weather in Oslo and Rome?" },
        {
          role: "assistant",
          content: [
            { type: "thinking", thinking: "Two cities, two calls.", signature: "sig" },
            { type: "redacted_thinking", data: "opaque" },
            { type: "tool_use", id: "toolu_1", name: "weather", input: { city: "Oslo" } },
            { type: "tool_use", id: "toolu_2", name: "weather", input: { city: "Rome", units: ["c"] } }
          ]
        },
        {
          role: "user",
          content: [
            { type: "text", text: "Here you go" },
            { type: "tool_result", tool_use_id: "toolu_1", content: "4°C" },
            {
              type: "tool_result",
              tool_use_id: "toolu_2",
              content: [{ type: "text", text: "timeout" }],
              is_error: true
            }
          ]
        }
      ]
    })
    expect(chat.messages).toEqual([
      { role: "user", content: "Weather in Oslo and Rome?" },
      {
        role: "assistant",
        content: null,
        reasoning_content: "Two cities, two calls.",
        tool_calls: [
          { id: "toolu_1", type: "function", function: { name: "weather", arguments: "{\"city\":\"Oslo\"}" } },
          {
            id: "toolu_2",
            type: "function",
            function: { name: "weather", arguments: "{\"city\":\"Rome\",\"units\":[\"c\"]}" }
          }
        ]
      },
      { role: "tool", tool_call_id: "toolu_1", content: "4°C" },
      { role: "tool", tool_call_id: "toolu_2", content: "Error: timeout" },
      { role: "user", content: "Here you go" }
    ])
  })

  it("keeps the assistant's text beside its tool calls, a tool result without content, and images in tool results", () => {
    const chat = translate({
      ...base,
      messages: [
        { role: "user", content: "look" },
        {
          role: "assistant",
          content: [{ type: "text", text: "Taking a screenshot." }, {
            type: "tool_use",
            id: "t1",
            name: "screenshot",
            input: {}
          }, { type: "tool_use", id: "t2", name: "noop", input: {} }]
        },
        {
          role: "user",
          content: [
            {
              type: "tool_result",
              tool_use_id: "t1",
              content: [{ type: "image", source: { type: "base64", media_type: "image/jpeg", data: "AAAA" } }]
            },
            { type: "tool_result", tool_use_id: "t2" }
          ]
        }
      ]
    })
    expect(chat.messages.slice(1)).toEqual([
      {
        role: "assistant",
        content: "Taking a screenshot.",
        tool_calls: [
          { id: "t1", type: "function", function: { name: "screenshot", arguments: "{}" } },
          { id: "t2", type: "function", function: { name: "noop", arguments: "{}" } }
        ]
      },
      {
        role: "tool",
        tool_call_id: "t1",
        content: [{ type: "image_url", image_url: { url: "data:image/jpeg;base64,AAAA" } }]
      },
      { role: "tool", tool_call_id: "t2", content: "" }
    ])
  })

  it("maps sampling, limits, stops, tools, stream and user", () => {
    const chat = translate({
      ...base,
      max_tokens: 300,
      messages: [{ role: "user", content: "hi" }],
      temperature: 0.2,
      top_p: 0.9,
      top_k: 40,
      stop_sequences: ["\n\nHuman:", "END"],
      stream: true,
      tools: [
        {
          name: "weather",
          description: "Current weather",
          input_schema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] }
        },
        { name: "now", input_schema: { type: "object" } }
      ],
      tool_choice: { type: "auto", disable_parallel_tool_use: true },
      thinking: { type: "enabled", budget_tokens: 1024 },
      metadata: { user_id: "user-42" }
    })
    expect(chat).toEqual({
      model: "m",
      messages: [{ role: "user", content: "hi" }],
      max_completion_tokens: 300,
      temperature: 0.2,
      top_p: 0.9,
      top_k: 40,
      stop: ["\n\nHuman:", "END"],
      stream: true,
      stream_options: { include_usage: true },
      tools: [
        {
          type: "function",
          function: {
            name: "weather",
            description: "Current weather",
            parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] }
          }
        },
        { type: "function", function: { name: "now", parameters: { type: "object" } } }
      ],
      tool_choice: "auto",
      parallel_tool_calls: false,
      user: "user-42"
    })
  })

  it("maps each tool_choice", () => {
    const choiceOf = (tool_choice: unknown) =>
      translate({
        ...base,
        messages: [{ role: "user", content: "hi" }],
        tools: [{ name: "f", input_schema: { type: "object" } }],
        tool_choice
      }).tool_choice
    expect(choiceOf({ type: "auto" })).toBe("auto")
    expect(choiceOf({ type: "any" })).toBe("required")
    expect(choiceOf({ type: "none" })).toBe("none")
    expect(choiceOf({ type: "tool", name: "f" })).toEqual({ type: "function", function: { name: "f" } })
  })

  it("leaves out what was not asked for", () => {
    const chat = translate({ ...base, messages: [{ role: "user", content: "hi" }], stream: false, stop_sequences: [] })
    expect(chat).toEqual({ model: "m", messages: [{ role: "user", content: "hi" }], max_completion_tokens: 64 })
  })
})

const completion = (
  message: ChatCompletion["choices"][number]["message"],
  finish: FinishReason | null,
  usage?: ChatCompletion["usage"]
): ChatCompletion => ({
  id: "chatcmpl-abc123",
  object: "chat.completion",
  created: 1,
  model: "upstream-name",
  choices: [{ index: 0, message, finish_reason: finish }],
  ...(usage ? { usage } : {})
})

describe("chatToAnthropic", () => {
  it("answers with the request's model, a msg_ id, a text block, end_turn and usage with cached tokens apart", () => {
    const message = chatToAnthropic(
      completion({ role: "assistant", content: "Hello!" }, "stop", {
        prompt_tokens: 30,
        completion_tokens: 3,
        total_tokens: 33,
        prompt_tokens_details: { cached_tokens: 12 }
      }),
      "claude-alias"
    )
    expect(message).toEqual({
      id: "msg_abc123",
      type: "message",
      role: "assistant",
      model: "claude-alias",
      content: [{ type: "text", text: "Hello!" }],
      stop_reason: "end_turn",
      stop_sequence: null,
      usage: { input_tokens: 18, output_tokens: 3, cache_read_input_tokens: 12, cache_creation_input_tokens: 0 }
    })
  })

  it("puts thinking first, drops empty text beside tool calls, and parses arguments", () => {
    const message = chatToAnthropic(
      completion({
        role: "assistant",
        content: null,
        reasoning_content: "Need the weather.",
        tool_calls: [
          { id: "call_1", type: "function", function: { name: "weather", arguments: "{\"city\":\"Oslo\"}" } },
          { id: "call_2", type: "function", function: { name: "now", arguments: "" } },
          { id: "call_3", type: "function", function: { name: "broken", arguments: "{\"city\": Osl" } },
          { id: "call_4", type: "function", function: { name: "list", arguments: "[1,2]" } }
        ]
      }, "tool_calls"),
      "m"
    )
    expect(message.content).toEqual([
      { type: "thinking", thinking: "Need the weather.", signature: "" },
      { type: "tool_use", id: "call_1", name: "weather", input: { city: "Oslo" } },
      { type: "tool_use", id: "call_2", name: "now", input: {} },
      { type: "tool_use", id: "call_3", name: "broken", input: { raw_arguments: "{\"city\": Osl" } },
      { type: "tool_use", id: "call_4", name: "list", input: { raw_arguments: "[1,2]" } }
    ])
    expect(message.stop_reason).toBe("tool_use")
    expect(message.usage).toEqual({
      input_tokens: 0,
      output_tokens: 0,
      cache_read_input_tokens: 0,
      cache_creation_input_tokens: 0
    })
  })

  it("keeps text beside tool calls when there is some", () => {
    const message = chatToAnthropic(
      completion({
        role: "assistant",
        content: "Checking.",
        tool_calls: [{ id: "c", type: "function", function: { name: "f", arguments: "{}" } }]
      }, "tool_calls"),
      "m"
    )
    expect(message.content.map((block) => block.type)).toEqual(["text", "tool_use"])
  })

  it("maps finish reasons to stop reasons, with stop_sequence only when known", () => {
    const stopOf = (finish: FinishReason | null, hint?: { stopSequence: string }) => {
      const message = chatToAnthropic(completion({ role: "assistant", content: "x" }, finish), "m", hint)
      return [message.stop_reason, message.stop_sequence]
    }
    expect(stopOf("stop")).toEqual(["end_turn", null])
    expect(stopOf(null)).toEqual(["end_turn", null])
    expect(stopOf("length")).toEqual(["max_tokens", null])
    expect(stopOf("tool_calls")).toEqual(["tool_use", null])
    expect(stopOf("content_filter")).toEqual(["refusal", null])
    expect(stopOf("stop", { stopSequence: "END" })).toEqual(["stop_sequence", "END"])
    expect(stopOf("length", { stopSequence: "END" })).toEqual(["max_tokens", null])
    // vLLM names the matched stop string on the choice.
    const vllm = completion({ role: "assistant", content: "x" }, "stop")
    const withStop = { ...vllm, choices: [{ ...vllm.choices[0]!, stop_reason: "###" }] }
    expect(chatToAnthropic(withStop, "m").stop_sequence).toBe("###")
  })
})

// ---- streams ----

const chunkOf = (
  delta: ChatCompletionChunk["choices"][number]["delta"],
  finish: FinishReason | null = null,
  extra: Partial<ChatCompletionChunk> = {}
): ChatCompletionChunk => ({
  id: "chatcmpl-s1",
  object: "chat.completion.chunk",
  created: 1,
  model: "upstream",
  choices: [{ index: 0, delta, finish_reason: finish }],
  ...extra
})

const usageChunk = (prompt: number, completion: number, cached = 0): ChatCompletionChunk => ({
  id: "chatcmpl-s1",
  object: "chat.completion.chunk",
  created: 1,
  model: "upstream",
  choices: [],
  usage: {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
    prompt_tokens_details: { cached_tokens: cached }
  }
})

const run = (stream: AnthropicStream, chunks: ReadonlyArray<ChatCompletionChunk>) => [
  ...chunks.flatMap((c) => stream.chunk(c)),
  ...stream.end()
]

describe("AnthropicStream", () => {
  it("opens the message on the first chunk with the prompt size the neuron reports, and streams text", () => {
    const events = run(new AnthropicStream("claude-alias"), [
      chunkOf({ role: "assistant", content: "" }, null, { cortex: { prompt_tokens: 20, cached_tokens: 5 } }),
      chunkOf({ content: "Hel" }),
      chunkOf({ content: "lo" }),
      chunkOf({}, "stop"),
      usageChunk(20, 2, 5)
    ])
    expect(events).toEqual([
      {
        type: "message_start",
        message: {
          id: "msg_s1",
          type: "message",
          role: "assistant",
          model: "claude-alias",
          content: [],
          stop_reason: null,
          stop_sequence: null,
          usage: { input_tokens: 15, output_tokens: 0, cache_read_input_tokens: 5, cache_creation_input_tokens: 0 }
        }
      },
      { type: "content_block_start", index: 0, content_block: { type: "text", text: "" } },
      { type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "Hel" } },
      { type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "lo" } },
      { type: "content_block_stop", index: 0 },
      {
        type: "message_delta",
        delta: { stop_reason: "end_turn", stop_sequence: null },
        usage: { output_tokens: 2, input_tokens: 15, cache_read_input_tokens: 5 }
      },
      { type: "message_stop" }
    ])
  })

  it("can open early for keep-alive pings, then reports the input size at the end", () => {
    const stream = new AnthropicStream("m", { id: "msg_early" })
    const opened = stream.start()
    expect(opened).toHaveLength(1)
    expect(opened[0]).toMatchObject({ type: "message_start", message: { id: "msg_early", usage: { input_tokens: 0 } } })
    expect(stream.start()).toEqual([])
    expect(stream.ping()).toEqual({ type: "ping" })
    const events = run(stream, [
      chunkOf({ role: "assistant", content: "" }, null, { cortex: { prompt_tokens: 9, cached_tokens: 0 } }),
      chunkOf({ content: "ok" }, "length")
    ])
    expect(events.map((e) => e.type)).toEqual([
      "content_block_start",
      "content_block_delta",
      "content_block_stop",
      "message_delta",
      "message_stop"
    ])
    expect(events[3]).toEqual({
      type: "message_delta",
      delta: { stop_reason: "max_tokens", stop_sequence: null },
      usage: { output_tokens: 0, input_tokens: 9, cache_read_input_tokens: 0 }
    })
  })

  it("takes input tokens given up front, until the neuron counts them", () => {
    const [start] = new AnthropicStream("m", { inputTokens: 42 }).start()
    expect(start).toMatchObject({ message: { usage: { input_tokens: 42, cache_read_input_tokens: 0 } } })
    const [lazy] = new AnthropicStream("m", { inputTokens: 42 }).chunk(
      chunkOf({ role: "assistant", content: "" }, null, { cortex: { prompt_tokens: 60, cached_tokens: 8 } })
    )
    expect(lazy).toMatchObject({ message: { usage: { input_tokens: 52, cache_read_input_tokens: 8 } } })
  })

  it("streams thinking, then text, then one tool_use block per call, including calls sent together", () => {
    const events = run(new AnthropicStream("m"), [
      chunkOf({ role: "assistant", content: "" }),
      chunkOf({ reasoning_content: "Hmm" }),
      chunkOf({ content: "Let me check." }),
      chunkOf({
        tool_calls: [
          { index: 0, id: "call_a", type: "function", function: { name: "weather", arguments: "{\"city\":\"Oslo\"}" } },
          { index: 1, id: "call_b", type: "function", function: { name: "now", arguments: "" } }
        ]
      }),
      chunkOf({}, "tool_calls"),
      usageChunk(10, 7)
    ])
    expect(events.slice(1)).toEqual([
      { type: "content_block_start", index: 0, content_block: { type: "thinking", thinking: "", signature: "" } },
      { type: "content_block_delta", index: 0, delta: { type: "thinking_delta", thinking: "Hmm" } },
      { type: "content_block_stop", index: 0 },
      { type: "content_block_start", index: 1, content_block: { type: "text", text: "" } },
      { type: "content_block_delta", index: 1, delta: { type: "text_delta", text: "Let me check." } },
      { type: "content_block_stop", index: 1 },
      {
        type: "content_block_start",
        index: 2,
        content_block: { type: "tool_use", id: "call_a", name: "weather", input: {} }
      },
      {
        type: "content_block_delta",
        index: 2,
        delta: { type: "input_json_delta", partial_json: "{\"city\":\"Oslo\"}" }
      },
      { type: "content_block_stop", index: 2 },
      {
        type: "content_block_start",
        index: 3,
        content_block: { type: "tool_use", id: "call_b", name: "now", input: {} }
      },
      { type: "content_block_stop", index: 3 },
      {
        type: "message_delta",
        delta: { stop_reason: "tool_use", stop_sequence: null },
        usage: { output_tokens: 7, input_tokens: 10, cache_read_input_tokens: 0 }
      },
      { type: "message_stop" }
    ])
  })

  it("drops a fragment for a tool call whose block has closed rather than put it in another block", () => {
    const events = run(new AnthropicStream("m"), [
      chunkOf({ tool_calls: [{ index: 0, id: "c0", type: "function", function: { name: "f", arguments: "{}" } }] }),
      chunkOf({ content: "between" }),
      chunkOf({ tool_calls: [{ index: 0, function: { arguments: " " } }] }),
      chunkOf({}, "tool_calls")
    ])
    expect(events.filter((e) => e.type === "content_block_delta").map((e) => e.delta)).toEqual([
      { type: "input_json_delta", partial_json: "{}" },
      { type: "text_delta", text: "between" }
    ])
    expect(events.filter((e) => e.type === "content_block_stop")).toHaveLength(2)
  })

  it("reports the stop sequence it is told of", () => {
    const events = run(new AnthropicStream("m", { stopSequence: "END" }), [chunkOf({ content: "x" }, "stop")])
    expect(events.at(-2)).toMatchObject({ delta: { stop_reason: "stop_sequence", stop_sequence: "END" } })
  })

  it("still opens and closes a whole message when the upstream sends nothing", () => {
    const events = new AnthropicStream("m").end()
    expect(events.map((e) => e.type)).toEqual(["message_start", "message_delta", "message_stop"])
  })

  it("ends a failed stream with an error event and emits nothing after it", () => {
    const stream = new AnthropicStream("m")
    const before = stream.chunk(chunkOf({ content: "partial" }))
    const failed = stream.fail({ type: "overloaded_error", message: "worker crashed" })
    expect(before.map((e) => e.type)).toEqual(["message_start", "content_block_start", "content_block_delta"])
    expect(failed).toEqual([{ type: "error", error: { type: "overloaded_error", message: "worker crashed" } }])
    expect(stream.chunk(chunkOf({ content: "more" }))).toEqual([])
    expect(stream.end()).toEqual([])
    expect(stream.fail({ type: "api_error", message: "again" })).toEqual([])
  })

  it("is read by the Anthropic SDK into the final message, and a failure raises its error", async () => {
    const sseClient = (events: ReadonlyArray<AnthropicStreamEvent>) =>
      new Sdk.Anthropic({
        apiKey: "unused",
        maxRetries: 0,
        fetch: async () =>
          new Response(events.map(formatSse).join(""), { headers: { "content-type": "text/event-stream" } })
      })
    const params = { model: "m", max_tokens: 10, messages: [{ role: "user" as const, content: "hi" }] }
    const chunks = [
      chunkOf({ role: "assistant", content: "" }, null, { cortex: { prompt_tokens: 12, cached_tokens: 2 } }),
      chunkOf({ reasoning_content: "Think." }),
      chunkOf({ content: "Calling." }),
      chunkOf({
        tool_calls: [{ index: 0, id: "c0", type: "function", function: { name: "f", arguments: "{\"a\":" } }]
      }),
      chunkOf({ tool_calls: [{ index: 0, function: { arguments: "[1]}" } }] }),
      chunkOf({}, "tool_calls"),
      usageChunk(12, 5, 2)
    ]
    const message = await sseClient(run(new AnthropicStream("m"), chunks)).messages.stream(params).finalMessage()
    expect(message.content).toMatchObject([
      { type: "thinking", thinking: "Think." },
      { type: "text", text: "Calling." },
      { type: "tool_use", id: "c0", name: "f", input: { a: [1] } }
    ])
    expect(message.stop_reason).toBe("tool_use")
    expect(message.usage).toMatchObject({ input_tokens: 10, output_tokens: 5, cache_read_input_tokens: 2 })

    const failing = new AnthropicStream("m")
    const events = [...failing.chunk(chunks[2]!), ...failing.fail({ type: "overloaded_error", message: "gone" })]
    const error = await sseClient(events).messages.stream(params).finalMessage().catch((e: unknown) => e)
    expect(error).toBeInstanceOf(Sdk.APIError)
    expect((error as Sdk.APIError).type).toBe("overloaded_error")
  })

  it("formats events as SSE frames", () => {
    expect(formatSse({ type: "ping" })).toBe("event: ping\ndata: {\"type\":\"ping\"}\n\n")
    expect(formatSse({ type: "content_block_stop", index: 2 })).toBe(
      "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n"
    )
  })
})

// ---- errors ----

const sdkErrorFor = (status: number, body: unknown) =>
  Sdk.APIError.generate(status, body as object, undefined, new Headers())

describe("toAnthropicError", () => {
  const envelope = (message: string, type = "invalid_request_error", code: string | null = null) => ({
    error: { message, type, code, param: null }
  })

  it.each(
    [
      [400, 400, "invalid_request_error", Sdk.BadRequestError],
      [401, 401, "authentication_error", Sdk.AuthenticationError],
      [403, 403, "permission_error", Sdk.PermissionDeniedError],
      [404, 404, "not_found_error", Sdk.NotFoundError],
      [413, 413, "request_too_large", Sdk.ContentTooLargeError],
      [422, 400, "invalid_request_error", Sdk.BadRequestError],
      [429, 429, "rate_limit_error", Sdk.RateLimitError],
      [500, 500, "api_error", Sdk.InternalServerError],
      [502, 500, "api_error", Sdk.InternalServerError],
      [503, 529, "overloaded_error", Sdk.OverloadedError],
      [504, 504, "timeout_error", Sdk.GatewayTimeoutError],
      [507, 529, "overloaded_error", Sdk.OverloadedError]
    ] as const
  )("maps %i to %i %s, which the SDK raises as its class", (status, expected, type, sdkClass) => {
    const mapped = toAnthropicError(status, envelope("boom"))
    expect(mapped).toEqual({ status: expected, body: { type: "error", error: { type, message: "boom" } } })
    const raised = sdkErrorFor(mapped.status, mapped.body)
    expect(raised).toBeInstanceOf(sdkClass)
    expect(raised.type).toBe(type)
  })

  it("takes the message from either envelope or a text body, else says the status", () => {
    expect(toAnthropicError(404, { type: "error", error: { type: "not_found_error", message: "nope" } }).body.error)
      .toEqual({ type: "not_found_error", message: "nope" })
    expect(toAnthropicError(500, "upstream exploded").body.error.message).toBe("upstream exploded")
    expect(toAnthropicError(502, null).body.error.message).toBe("Upstream answered HTTP 502")
    expect(toAnthropicError(418, {}).status).toBe(418)
  })

  it("words an over-long prompt as Anthropic does", () => {
    const body = {
      error: {
        ...envelope("too long", "invalid_request_error", "context_length_exceeded").error,
        limit: 2048,
        requested: 5000
      }
    }
    expect(toAnthropicError(400, body).body.error).toEqual({
      type: "invalid_request_error",
      message: "prompt is too long: 5000 tokens > 2048 maximum"
    })
  })

  it("maps an in-band stream error by its OpenAI type", () => {
    expect(toAnthropicStreamError(envelope("crashed", "server_error"))).toEqual({
      type: "api_error",
      message: "crashed"
    })
    expect(toAnthropicStreamError(envelope("no memory", "insufficient_vram")).type).toBe("overloaded_error")
    expect(toAnthropicStreamError(envelope("bad", "invalid_request_error")).type).toBe("invalid_request_error")
    expect(toAnthropicStreamError("garbage")).toEqual({ type: "api_error", message: "garbage" })
    expect(
      toAnthropicStreamError({ error: { type: "server_error", code: "upstream_timeout", message: "silent" } }).type
    )
      .toBe("timeout_error")
  })
})

// ---- properties: requests ----

const word = fc.string({ minLength: 0, maxLength: 12 })
const id = fc.string({ minLength: 1, maxLength: 8, unit: fc.constantFrom(..."abcdef0123456789") }).map((s) =>
  `toolu_${s}`
)
const toolName = fc.constantFrom("weather", "search", "read_file", "bash", "now")
const jsonObject = fc.dictionary(fc.string({ maxLength: 6 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4 }).map(
  (o) => JSON.parse(JSON.stringify(o)) as Record<string, unknown>
)
const textBlock = word.map((text) => ({ type: "text" as const, text }))
const imageBlock = fc.oneof(
  fc.base64String({ maxLength: 16 }).map((data) => ({
    type: "image" as const,
    source: { type: "base64" as const, media_type: "image/png", data }
  })),
  fc.webUrl().map((url) => ({ type: "image" as const, source: { type: "url" as const, url } }))
)

/** A conversation that alternates roles, whose tool results answer the previous assistant turn's calls. */
const conversation = fc.array(
  fc.record({
    userText: fc.array(fc.oneof({ weight: 4, arbitrary: textBlock }, { weight: 1, arbitrary: imageBlock }), {
      maxLength: 3
    }),
    plainUser: fc.option(word, { nil: undefined }),
    thinking: fc.option(word, { nil: undefined }),
    assistantText: fc.array(word, { maxLength: 2 }),
    calls: fc.uniqueArray(fc.record({ id, name: toolName, input: jsonObject }), {
      maxLength: 3,
      selector: (call) => call.id
    }),
    results: fc.array(fc.record({ text: word, isError: fc.boolean(), asBlocks: fc.boolean() }), { maxLength: 3 })
  }),
  { minLength: 1, maxLength: 4 }
).map((turns) => {
  const messages: Array<MessageParam> = []
  let pendingCalls: ReadonlyArray<{ id: string }> = []
  for (const turn of turns) {
    const results: Array<UserBlock> = pendingCalls.map((call, i) => {
      const result = turn.results[i] ?? { text: "", isError: false, asBlocks: false }
      return {
        type: "tool_result",
        tool_use_id: call.id,
        content: result.asBlocks ? [{ type: "text", text: result.text }] : result.text,
        ...(result.isError ? { is_error: true } : {})
      }
    })
    messages.push(
      results.length === 0 && turn.plainUser !== undefined
        ? { role: "user", content: turn.plainUser }
        : { role: "user", content: [...results, ...turn.userText] }
    )
    const assistant: Array<AssistantBlock> = [
      ...(turn.thinking !== undefined ? [{ type: "thinking" as const, thinking: turn.thinking, signature: "" }] : []),
      ...turn.assistantText.map((text) => ({ type: "text" as const, text })),
      ...turn.calls.map((call) => ({ type: "tool_use" as const, ...call }))
    ]
    messages.push({ role: "assistant", content: assistant })
    pendingCalls = turn.calls
  }
  return messages
})

const anthropicRequest: fc.Arbitrary<MessagesRequestType> = fc.record({
  model: fc.constantFrom("claude-sonnet", "tiny", "qwen3:8b"),
  max_tokens: fc.integer({ min: 1, max: 64_000 }),
  messages: conversation,
  system: fc.option(fc.oneof(word, fc.array(textBlock, { maxLength: 3 })), { nil: undefined }),
  stop_sequences: fc.option(fc.array(fc.string({ minLength: 1, maxLength: 4 }), { maxLength: 4 }), { nil: undefined }),
  temperature: fc.option(fc.double({ min: 0, max: 1, noNaN: true }), { nil: undefined }),
  top_p: fc.option(fc.double({ min: 0, max: 1, noNaN: true }), { nil: undefined }),
  top_k: fc.option(fc.nat({ max: 500 }), { nil: undefined }),
  stream: fc.option(fc.boolean(), { nil: undefined }),
  tools: fc.option(
    fc.uniqueArray(
      fc.record({
        name: toolName,
        description: fc.option(word, { nil: undefined }),
        input_schema: fc.constant({ type: "object" })
      }),
      { maxLength: 3, selector: (tool) => tool.name }
    ),
    { nil: undefined }
  ),
  tool_choice: fc.option(
    fc.oneof(
      fc.constant({ type: "auto" as const }),
      fc.record({ type: fc.constant("any" as const), disable_parallel_tool_use: fc.boolean() }),
      fc.constant({ type: "none" as const }),
      toolName.map((name) => ({ type: "tool" as const, name }))
    ),
    { nil: undefined }
  ),
  metadata: fc.option(fc.record({ user_id: fc.option(word, { nil: null }) }), { nil: undefined })
}, { requiredKeys: ["model", "max_tokens", "messages"] }).map(
  // fc.record leaves optional keys absent, but nested option(nil: undefined) values must go too.
  (request) => JSON.parse(JSON.stringify(request)) as MessagesRequestType
)

/** The way back, for the round trip: chat messages → Anthropic turns (tool messages rejoin their user turn). */
const chatToAnthropicRequest = (chat: ChatRequest) => {
  const textOf = (content: ChatMessage["content"]) =>
    typeof content === "string"
      ? content
      : (content ?? []).flatMap((part) => part.type === "text" ? [(part as { text: string }).text] : []).join("\n\n")
  const system = chat.messages.filter((m) => m.role === "system").map((m) => textOf(m.content)).join("\n\n")
  const messages: Array<{ role: "user" | "assistant"; blocks: Array<UserBlock | AssistantBlock> }> = []
  for (const m of chat.messages) {
    const last = messages.at(-1)
    if (m.role === "tool") {
      const block: UserBlock = { type: "tool_result", tool_use_id: m.tool_call_id ?? "", content: textOf(m.content) }
      if (last?.role === "user") last.blocks.push(block)
      else messages.push({ role: "user", blocks: [block] })
    } else if (m.role === "user") {
      const blocks: Array<UserBlock> = typeof m.content === "string"
        ? [{ type: "text", text: m.content }]
        : (m.content ?? []).map((part) =>
          part.type === "image_url"
            ? {
              type: "image",
              source: { type: "url", url: (part as { image_url: { url: string } }).image_url.url }
            }
            : { type: "text", text: (part as { text: string }).text }
        )
      if (last?.role === "user") last.blocks.push(...blocks)
      else messages.push({ role: "user", blocks })
    } else if (m.role === "assistant") {
      messages.push({
        role: "assistant",
        blocks: [
          ...(m.reasoning_content ? [{ type: "thinking" as const, thinking: m.reasoning_content }] : []),
          ...(m.content !== null && m.content !== undefined
            ? [{ type: "text" as const, text: textOf(m.content) }]
            : []),
          ...(m.tool_calls ?? []).map((call) => ({
            type: "tool_use" as const,
            id: call.id,
            name: call.function.name,
            input: JSON.parse(call.function.arguments as string) as Record<string, unknown>
          }))
        ]
      })
    }
  }
  return { system, messages, tools: (chat.tools ?? []).map((tool) => tool.function.name) }
}

const imageUrlOf = (source: { type: "base64"; media_type: string; data: string } | { type: "url"; url: string }) =>
  source.type === "base64" ? `data:${source.media_type};base64,${source.data}` : source.url

/** What a translation must keep, in a form both directions can be compared in. */
const essentials = (
  system: string,
  messages: ReadonlyArray<{ role: string; blocks: ReadonlyArray<UserBlock | AssistantBlock> }>,
  tools: ReadonlyArray<string>
) => ({
  system,
  tools,
  turns: messages.map(({ blocks, role }) => ({
    role,
    text: blocks.flatMap((b) => b.type === "text" ? [b.text] : []).join("\n\n"),
    images: blocks.flatMap((b) => b.type === "image" ? [imageUrlOf(b.source)] : []),
    thinking: blocks.flatMap((b) => b.type === "thinking" && b.thinking.length > 0 ? [b.thinking] : []).join("\n\n"),
    toolUses: blocks.flatMap((b) => b.type === "tool_use" ? [{ id: b.id, name: b.name, input: b.input }] : []),
    toolResults: blocks.flatMap((b) => {
      if (b.type !== "tool_result") return []
      const text = typeof b.content === "string"
        ? b.content
        : (b.content ?? []).flatMap((c) => c.type === "text" ? [c.text] : []).join("\n\n")
      return [{ id: b.tool_use_id, text: (b.is_error ? "Error: " : "") + text }]
    })
  }))
})

const essentialsOfRequest = (request: MessagesRequestType) =>
  essentials(
    request.system === undefined
      ? ""
      : typeof request.system === "string"
      ? request.system
      : request.system.map((b) => b.text).join("\n\n"),
    request.messages.map((m) => ({
      role: m.role,
      blocks: typeof m.content === "string" ? [{ type: "text" as const, text: m.content }] : m.content
    })),
    (request.tools ?? []).map((tool) => tool.name)
  )

describe("request properties", () => {
  it.prop("a valid Anthropic request translates to a valid chat request", [anthropicRequest], ([request]) => {
    const decoded = decodeAnthropic(request)
    const chat = anthropicToChat(decoded)
    expect(decodeChat(chat)).toEqual(chat)
    expect(chat.max_completion_tokens).toBe(request.max_tokens)
    expect(chat.stream === true).toBe(request.stream === true)
  })

  it.prop(
    "translating back keeps system text, message texts, images, tool names and tool inputs",
    [anthropicRequest],
    ([request]) => {
      const back = chatToAnthropicRequest(anthropicToChat(decodeAnthropic(request)))
      expect(essentials(back.system, back.messages, back.tools)).toEqual(essentialsOfRequest(request))
    }
  )
})

// ---- properties: streams ----

type Segment =
  | { readonly kind: "reasoning" | "content"; readonly fragments: ReadonlyArray<string> }
  | { readonly kind: "tool"; readonly id: string; readonly name: string; readonly fragments: ReadonlyArray<string> }

/** A string cut at random points into fragments that concatenate back to it. */
const fragmentsOf = (text: fc.Arbitrary<string>) =>
  fc.tuple(text, fc.array(fc.nat(), { maxLength: 6 })).map(([s, cuts]) => {
    const points = [...new Set(cuts.map((c) => c % (s.length + 1)))].sort((a, b) => a - b)
    return [0, ...points].map((from, i) => s.slice(from, points[i] ?? s.length))
  })

const segment: fc.Arbitrary<Segment> = fc.oneof(
  fc.record({
    kind: fc.constantFrom("reasoning" as const, "content" as const),
    fragments: fragmentsOf(fc.string({ minLength: 1, maxLength: 30 }))
  }),
  fc.record({
    kind: fc.constant("tool" as const),
    id,
    name: toolName,
    fragments: fragmentsOf(fc.oneof(jsonObject.map((o) => JSON.stringify(o)), fc.constant("")))
  })
)

const streamCase = fc.record({
  segments: fc.array(segment, { maxLength: 8 }),
  finish: fc.constantFrom<FinishReason>("stop", "length", "tool_calls", "content_filter"),
  promptTokens: fc.nat({ max: 10_000 }),
  completionTokens: fc.nat({ max: 10_000 }),
  withCortex: fc.boolean(),
  withUsage: fc.boolean(),
  earlyStart: fc.boolean()
})
type StreamCase = typeof streamCase extends fc.Arbitrary<infer A> ? A : never

const chunksOf = (c: StreamCase): Array<ChatCompletionChunk> => {
  let toolIndex = 0
  const body = c.segments.flatMap((s): Array<ChatCompletionChunk> => {
    if (s.kind !== "tool") {
      return s.fragments.map((f) => chunkOf(s.kind === "reasoning" ? { reasoning_content: f } : { content: f }))
    }
    const index = toolIndex++
    return s.fragments.map((f, i) =>
      chunkOf({
        tool_calls: [
          i === 0
            ? { index, id: `${s.id}_${index}`, type: "function", function: { name: s.name, arguments: f } }
            : { index, function: { arguments: f } }
        ]
      })
    )
  })
  return [
    chunkOf(
      { role: "assistant", content: "" },
      null,
      c.withCortex ? { cortex: { prompt_tokens: c.promptTokens, cached_tokens: 0 } } : {}
    ),
    ...body,
    chunkOf({}, c.finish),
    ...(c.withUsage ? [usageChunk(c.promptTokens, c.completionTokens)] : [])
  ]
}

const eventsOf = (c: StreamCase, chunks: ReadonlyArray<ChatCompletionChunk>) => {
  const stream = new AnthropicStream("m")
  const early = c.earlyStart ? [...stream.start(), stream.ping()] : []
  return { stream, events: [...early, ...chunks.flatMap((chunk) => stream.chunk(chunk))] }
}

type BlockType = "text" | "thinking" | "tool_use"
const deltaFits: Record<BlockType, ReadonlyArray<string>> = {
  text: ["text_delta"],
  thinking: ["thinking_delta", "signature_delta"],
  tool_use: ["input_json_delta"]
}

/**
 * Checks the event grammar (one message_start first; balanced, sequential blocks holding only
 * their own deltas) and returns what the blocks carried.
 */
const readBlocks = (events: ReadonlyArray<AnthropicStreamEvent>) => {
  expect(events[0]?.type).toBe("message_start")
  expect(events.filter((e) => e.type === "message_start")).toHaveLength(1)
  const blocks: Array<{ type: BlockType; id?: string; name?: string; data: string }> = []
  let open: number | undefined
  for (const event of events.slice(1)) {
    switch (event.type) {
      case "content_block_start": {
        expect(open).toBeUndefined()
        expect(event.index).toBe(blocks.length)
        const block = event.content_block
        blocks.push(
          block.type === "tool_use" ? { type: block.type, id: block.id, name: block.name, data: "" } : {
            type: block.type,
            data: ""
          }
        )
        open = event.index
        break
      }
      case "content_block_delta": {
        expect(event.index).toBe(open)
        const block = blocks[event.index]!
        expect(deltaFits[block.type]).toContain(event.delta.type)
        const d = event.delta
        block.data += d.type === "text_delta"
          ? d.text
          : d.type === "thinking_delta"
          ? d.thinking
          : d.type === "input_json_delta"
          ? d.partial_json
          : ""
        break
      }
      case "content_block_stop":
        expect(event.index).toBe(open)
        open = undefined
        break
      case "message_delta":
      case "message_stop":
        expect(open).toBeUndefined()
        break
      case "ping":
      case "error":
        break
      case "message_start":
        expect.fail("a second message_start")
    }
  }
  return { blocks, open }
}

const stopReasonFor: Record<FinishReason, string> = {
  stop: "end_turn",
  length: "max_tokens",
  tool_calls: "tool_use",
  content_filter: "refusal",
  function_call: "tool_use"
}

describe("stream properties", () => {
  it.prop(
    "any upstream chunk sequence becomes a well-formed event sequence carrying all of it",
    [streamCase],
    ([c]) => {
      const { events: body, stream } = eventsOf(c, chunksOf(c))
      const events = [...body, ...stream.end()]
      const { blocks } = readBlocks(events)

      const deltas = events.filter((e) => e.type === "message_delta")
      expect(deltas).toHaveLength(1)
      expect(events.at(-1)?.type).toBe("message_stop")
      expect(events.at(-2)).toEqual(deltas[0])
      expect(events.filter((e) => e.type === "message_stop")).toHaveLength(1)

      const joined = (kind: Segment["kind"]) => c.segments.flatMap((s) => s.kind === kind ? s.fragments : []).join("")
      const carried = (type: BlockType) => blocks.filter((b) => b.type === type).map((b) => b.data).join("")
      expect(carried("text")).toBe(joined("content"))
      expect(carried("thinking")).toBe(joined("reasoning"))

      const tools = c.segments.flatMap((s) => s.kind === "tool" ? [s] : [])
      const toolBlocks = blocks.filter((b) => b.type === "tool_use")
      expect(toolBlocks.map((b) => b.name)).toEqual(tools.map((t) => t.name))
      expect(toolBlocks.map((b) => b.id)).toEqual(tools.map((t, i) => `${t.id}_${i}`))
      toolBlocks.forEach((block, i) => {
        const args = tools[i]!.fragments.join("")
        expect(block.data === "" ? {} : JSON.parse(block.data)).toEqual(args === "" ? {} : JSON.parse(args))
      })

      const [delta] = deltas
      if (delta?.type !== "message_delta") return expect.fail("no message_delta")
      expect(delta.delta.stop_reason).toBe(stopReasonFor[c.finish])
      expect(delta.usage.output_tokens).toBe(c.withUsage ? c.completionTokens : 0)
      const start = events[0]
      const knownInput = c.withCortex || c.withUsage ? c.promptTokens : undefined
      if (start?.type === "message_start") {
        expect(start.message.usage.input_tokens).toBe(c.earlyStart || !c.withCortex ? 0 : c.promptTokens)
      }
      expect(delta.usage.input_tokens).toBe(knownInput)
    }
  )

  it.prop(
    "a failure ends the sequence with an error event, never a message_stop",
    [streamCase, fc.nat()],
    ([c, cut]) => {
      const chunks = chunksOf(c)
      const { events: body, stream } = eventsOf(c, chunks.slice(0, cut % (chunks.length + 1)))
      const events = [...body, ...stream.fail({ type: "api_error", message: "upstream failed" })]
      expect(stream.chunk(chunks.at(-1)!)).toEqual([])
      expect(stream.end()).toEqual([])
      expect(events.at(-1)).toEqual({ type: "error", error: { type: "api_error", message: "upstream failed" } })
      expect(events.filter((e) => e.type === "error")).toHaveLength(1)
      expect(events.some((e) => e.type === "message_stop" || e.type === "message_delta")).toBe(false)
      if (events.length > 1) readBlocks(events)
    }
  )
})
