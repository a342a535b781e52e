import { describe, expect, it } from "@effect/vitest"
import { Effect, FastCheck as fc, Schema } from "effect"
import OpenAI from "openai"
import type { Response as SdkResponse, ResponseStreamEvent } from "openai/resources/responses/responses"
import { InvalidRequest } from "../src/domain/errors.js"
import type { ChatCompletion, ChatCompletionChunk, FinishReason } from "../src/domain/openai-output.js"
import type { ChatMessage } from "../src/domain/openai.js"
import { ChatCompletionRequest, decodeBody } from "../src/domain/openai.js"
import type { ResponseObject, ResponsesEvent } from "../src/domain/responses.js"
import { ResponsesRequest } from "../src/domain/responses.js"
import {
  chatToResponses,
  formatSse,
  ResponsesStream,
  responsesToChat,
  unservable
} from "../src/gateway/translate/Responses.js"

const decodeRequest = Schema.decodeUnknownSync(ResponsesRequest)
const decodeChat = Schema.decodeUnknownSync(ChatCompletionRequest)
const translate = (raw: unknown) => responsesToChat(decodeRequest(raw))

type Delta = ChatCompletionChunk["choices"][number]["delta"]
const chunk = (delta: Delta, finish: FinishReason | null = null): ChatCompletionChunk => ({
  id: "chatcmpl-1",
  object: "chat.completion.chunk",
  created: 1,
  model: "m",
  choices: [{ index: 0, delta, finish_reason: finish }]
})
const usageChunk = (prompt: number, completion: number, cached = 0): ChatCompletionChunk => ({
  id: "chatcmpl-1",
  object: "chat.completion.chunk",
  created: 1,
  model: "m",
  choices: [],
  usage: {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
    prompt_tokens_details: { cached_tokens: cached }
  }
})

const options = { id: "resp_test", createdAt: 1_700_000_000 }
const runStream = (req: ResponsesRequest, chunks: ReadonlyArray<ChatCompletionChunk>) => {
  const stream = new ResponsesStream(req, options)
  return [...stream.start(), ...chunks.flatMap((c) => stream.chunk(c)), ...stream.end()]
}

type EventOf<T extends ResponsesEvent["type"]> = Extract<ResponsesEvent, { type: T }>
const ofType = <T extends ResponsesEvent["type"]>(events: ReadonlyArray<ResponsesEvent>, type: T) =>
  events.filter((e): e is EventOf<T> => e.type === type)

const finalResponse = (events: ReadonlyArray<ResponsesEvent>): ResponseObject => {
  const last = events[events.length - 1]
  if (last?.type !== "response.completed" && last?.type !== "response.incomplete") {
    throw new Error(`stream ended with ${last?.type}`)
  }
  return last.response
}

/** An openai SDK client whose transport answers every request with `body`: no network. */
const sdkAnswering = (body: string, contentType: string) =>
  new OpenAI({
    apiKey: "test",
    baseURL: "http://cortex.invalid/v1",
    maxRetries: 0,
    fetch: async () => new Response(body, { status: 200, headers: { "content-type": contentType } })
  })

const completion = (message: ChatCompletion["choices"][number]["message"], finish: FinishReason): ChatCompletion => ({
  id: "chatcmpl-1",
  object: "chat.completion",
  created: 1_700_000_000,
  model: "upstream-model",
  choices: [{ index: 0, message, finish_reason: finish }],
  usage: { prompt_tokens: 12, completion_tokens: 5, total_tokens: 17, prompt_tokens_details: { cached_tokens: 4 } }
})

describe("responsesToChat", () => {
  it("puts instructions first as a system message and a string input as one user message", () => {
    const chat = translate({ model: "m", instructions: "Be terse.", input: "Hello" })
    expect(chat.messages).toEqual([{ role: "system", content: "Be terse." }, { role: "user", content: "Hello" }])
    expect(decodeChat(chat)).toEqual(chat)
  })

  it("maps message items in order: text parts fold to a string, images become image_url parts", () => {
    const chat = translate({
      model: "m",
      input: [
        { role: "developer", content: "Rules." },
        {
          type: "message",
          role: "user",
          content: [
            { type: "input_text", text: "What is " },
            { type: "input_text", text: "this?" }
          ]
        },
        {
          role: "user",
          content: [
            { type: "input_text", text: "And this:" },
            { type: "input_image", image_url: "data:image/png;base64,AAAA", detail: "low" }
          ]
        },
        { type: "message", role: "assistant", content: [{ type: "output_text", text: "A cat.", annotations: [] }] }
      ]
    })
    expect(chat.messages).toEqual([
      { role: "developer", content: "Rules." },
      { role: "user", content: "What is this?" },
      {
        role: "user",
        content: [
          { type: "text", text: "And this:" },
          { type: "image_url", image_url: { url: "data:image/png;base64,AAAA", detail: "low" } }
        ]
      },
      { role: "assistant", content: "A cat." }
    ])
    decodeChat(chat)
  })

  it("turns consecutive function_call items into one assistant tool-call turn and outputs into tool messages", () => {
    const chat = translate({
      model: "m",
      input: [
        { role: "user", content: "Weather in Paris and Rome?" },
        { type: "function_call", id: "fc_1", call_id: "call_a", name: "weather", arguments: "{\"city\":\"Paris\"}" },
        { type: "function_call", call_id: "call_b", name: "weather", arguments: "{\"city\":\"Rome\"}" },
        { type: "function_call_output", call_id: "call_a", output: "18C" },
        { type: "function_call_output", call_id: "call_b", output: [{ type: "input_text", text: "21C" }] },
        { role: "assistant", content: "Paris 18C, Rome 21C." }
      ]
    })
    expect(chat.messages).toEqual([
      { role: "user", content: "Weather in Paris and Rome?" },
      {
        role: "assistant",
        content: null,
        tool_calls: [
          { id: "call_a", type: "function", function: { name: "weather", arguments: "{\"city\":\"Paris\"}" } },
          { id: "call_b", type: "function", function: { name: "weather", arguments: "{\"city\":\"Rome\"}" } }
        ]
      },
      { role: "tool", tool_call_id: "call_a", content: "18C" },
      { role: "tool", tool_call_id: "call_b", content: "21C" },
      { role: "assistant", content: "Paris 18C, Rome 21C." }
    ])
    decodeChat(chat)
  })

  it("joins function calls to the assistant message before them, and reasoning to the assistant turn after it", () => {
    const chat = translate({
      model: "m",
      input: [
        { type: "reasoning", id: "rs_0", summary: [{ type: "summary_text", text: "dropped: a user turn follows" }] },
        { role: "user", content: "Go" },
        { type: "reasoning", summary: [], content: [{ type: "reasoning_text", text: "Need the tool." }] },
        { role: "assistant", content: "Checking." },
        { type: "function_call", call_id: "c1", name: "look", arguments: "{}" },
        { type: "function_call_output", call_id: "c1", output: "ok" },
        { type: "reasoning", summary: [{ type: "summary_text", text: "Look again." }], encrypted_content: "x" },
        { type: "function_call", call_id: "c2", name: "look", arguments: "{}" }
      ]
    })
    expect(chat.messages).toEqual([
      { role: "user", content: "Go" },
      {
        role: "assistant",
        content: "Checking.",
        reasoning_content: "Need the tool.",
        tool_calls: [{ id: "c1", type: "function", function: { name: "look", arguments: "{}" } }]
      },
      { role: "tool", tool_call_id: "c1", content: "ok" },
      {
        role: "assistant",
        content: null,
        reasoning_content: "Look again.",
        tool_calls: [{ id: "c2", type: "function", function: { name: "look", arguments: "{}" } }]
      }
    ])
    decodeChat(chat)
  })

  it("maps function tools and tool_choice, drops hosted tools and unknown items, ignores unknown fields", () => {
    const chat = translate({
      model: "m",
      input: [{ type: "web_search_call", id: "ws_1", status: "completed" }, { role: "user", content: "hi" }],
      tools: [
        { type: "function", name: "add", description: "Adds", parameters: { type: "object" }, strict: true },
        { type: "web_search_preview" },
        { type: "function", name: "sub" }
      ],
      tool_choice: { type: "function", name: "add" },
      parallel_tool_calls: false,
      include: ["reasoning.encrypted_content"],
      truncation: "auto"
    })
    expect(chat).toEqual({
      model: "m",
      messages: [{ role: "user", content: "hi" }],
      tools: [
        {
          type: "function",
          function: { name: "add", description: "Adds", parameters: { type: "object" }, strict: true }
        },
        { type: "function", function: { name: "sub" } }
      ],
      tool_choice: { type: "function", function: { name: "add" } },
      parallel_tool_calls: false
    })
    decodeChat(chat)
  })

  it("restricts tools to an allowed_tools choice and uses its mode", () => {
    const chat = translate({
      model: "m",
      input: "hi",
      tools: [{ type: "function", name: "a" }, { type: "function", name: "b" }],
      tool_choice: { type: "allowed_tools", mode: "required", tools: [{ type: "function", name: "b" }] }
    })
    expect(chat.tools?.map((t) => t.function.name)).toEqual(["b"])
    expect(chat.tool_choice).toBe("required")
  })

  it("maps sampling, max_output_tokens, text.format and stream", () => {
    const chat = translate({
      model: "m",
      input: "hi",
      temperature: 0.2,
      top_p: 0.9,
      max_output_tokens: 64,
      stream: true,
      user: "u1",
      store: false,
      metadata: { k: "v" },
      reasoning: { effort: "low" },
      text: { format: { type: "json_schema", name: "answer", schema: { type: "object" }, strict: true } }
    })
    expect(chat).toEqual({
      model: "m",
      messages: [{ role: "user", content: "hi" }],
      temperature: 0.2,
      top_p: 0.9,
      max_completion_tokens: 64,
      user: "u1",
      response_format: {
        type: "json_schema",
        json_schema: { name: "answer", schema: { type: "object" }, strict: true }
      },
      stream: true,
      stream_options: { include_usage: true }
    })
    expect(translate({ model: "m", input: "x", text: { format: { type: "json_object" } } }).response_format)
      .toEqual({ type: "json_object" })
    decodeChat(chat)
  })

  it("flags stateful fields for a 400 naming them; a plain request has none", () => {
    const base = { model: "m", input: "hi" }
    expect(unservable(decodeRequest(base))).toBeUndefined()
    expect(unservable(decodeRequest({ ...base, previous_response_id: "resp_1" }))?.param).toBe("previous_response_id")
    expect(unservable(decodeRequest({ ...base, conversation: "conv_1" }))?.param).toBe("conversation")
    expect(
      unservable(
        decodeRequest({ model: "m", input: [{ type: "item_reference", id: "msg_1" }, { role: "user", content: "x" }] })
      )
        ?.param
    ).toBe("input[0]")
    const fileImage = { role: "user", content: [{ type: "input_image", file_id: "file_1", detail: "auto" }] }
    expect(unservable(decodeRequest({ model: "m", input: [fileImage] }))?.param).toBe("input[0].content[0].file_id")
    // Still translatable: the caller decides, the translator ignores the field.
    decodeChat(translate({ ...base, previous_response_id: "resp_1" }))
  })

  it.effect("refuses a tool_choice that forces a hosted tool with a 422 naming tool_choice", () =>
    Effect.gen(function*() {
      const body = JSON.stringify({
        model: "m",
        input: "hi",
        tools: [{ type: "web_search_preview" }],
        tool_choice: { type: "web_search_preview" }
      })
      const error = yield* Effect.flip(decodeBody(ResponsesRequest, body))
      expect(error).toBeInstanceOf(InvalidRequest)
      expect(error._tag).toBe("InvalidRequest")
      expect((error as InvalidRequest).param).toBe("tool_choice")
      expect(error.message).toContain("web_search_preview")
      expect(error.message).toContain("only function tools")
    }))

  it.effect("names the offending field of a malformed item", () =>
    Effect.gen(function*() {
      const param = (input: unknown) =>
        Effect.flip(decodeBody(ResponsesRequest, JSON.stringify({ model: "m", input }))).pipe(
          Effect.map((e) => (e as InvalidRequest).param)
        )
      expect(yield* param([{ role: "bot", content: "x" }])).toBe("input.0.role")
      expect(yield* param([{ role: "user", content: "x" }, { role: "user", content: [{ type: "input_audio" }] }]))
        .toBe("input.1.content.0.type")
      expect(yield* param([{ type: "function_call", call_id: "c", arguments: "{}" }])).toBe("input.0.name")
    }))

  it("accepts hosted tools that are offered but not forced", () => {
    const chat = translate({ model: "m", input: "hi", tools: [{ type: "web_search_preview" }], tool_choice: "auto" })
    expect(chat.tools).toBeUndefined()
    expect(chat.tool_choice).toBeUndefined()
  })

  it("rejects an input with nothing to send the model", () => {
    expect(() => decodeRequest({ model: "m", input: [] })).toThrow(/input must hold/)
    expect(() => decodeRequest({ model: "m", input: [{ type: "reasoning", summary: [] }] })).toThrow(/input must hold/)
    expect(translate({ model: "m", input: [], instructions: "Hi" }).messages).toEqual([{
      role: "system",
      content: "Hi"
    }])
  })
})

describe("chatToResponses", () => {
  const req = decodeRequest({
    model: "alias-model",
    input: "hi",
    instructions: "Be terse.",
    max_output_tokens: 5,
    tools: [{ type: "function", name: "look", parameters: { type: "object" } }],
    metadata: { trace: "1" }
  })

  it("answers a completed response with reasoning, message, usage and the request's echoes", () => {
    const res = chatToResponses(
      completion({ role: "assistant", content: "Hi!", reasoning_content: "Greet." }, "stop"),
      req,
      options
    )
    const typed: SdkResponse = res
    expect(typed.output_text).toBe("Hi!")
    expect(res).toEqual({
      id: "resp_test",
      object: "response",
      created_at: 1_700_000_000,
      status: "completed",
      error: null,
      incomplete_details: null,
      model: "alias-model",
      output: [
        {
          type: "reasoning",
          id: "rs_test_0",
          summary: [],
          content: [{ type: "reasoning_text", text: "Greet." }],
          status: "completed"
        },
        {
          type: "message",
          id: "msg_test_1",
          role: "assistant",
          status: "completed",
          content: [{ type: "output_text", text: "Hi!", annotations: [] }]
        }
      ],
      output_text: "Hi!",
      instructions: "Be terse.",
      tools: [{ type: "function", name: "look", description: null, parameters: { type: "object" }, strict: null }],
      tool_choice: "auto",
      parallel_tool_calls: true,
      temperature: null,
      top_p: null,
      max_output_tokens: 5,
      previous_response_id: null,
      text: { format: { type: "text" } },
      reasoning: null,
      metadata: { trace: "1" },
      usage: {
        input_tokens: 12,
        input_tokens_details: { cached_tokens: 4 },
        output_tokens: 5,
        output_tokens_details: { reasoning_tokens: 0 },
        total_tokens: 17
      }
    })
  })

  it("is incomplete with reason max_output_tokens when the upstream stopped for length", () => {
    const res = chatToResponses(completion({ role: "assistant", content: "Hel" }, "length"), req, options)
    expect(res.status).toBe("incomplete")
    expect(res.incomplete_details).toEqual({ reason: "max_output_tokens" })
    expect(res.output.map((item) => item.status)).toEqual(["incomplete"])
  })

  it("includes every function call in the output, after the text", () => {
    const res = chatToResponses(
      completion({
        role: "assistant",
        content: "Looking.",
        tool_calls: [
          { id: "call_1", type: "function", function: { name: "look", arguments: "{\"at\":1}" } },
          { id: "call_2", type: "function", function: { name: "look", arguments: "{\"at\":2}" } }
        ]
      }, "tool_calls"),
      req,
      options
    )
    expect(res.status).toBe("completed")
    expect(res.output).toEqual([
      {
        type: "message",
        id: "msg_test_0",
        role: "assistant",
        status: "completed",
        content: [{ type: "output_text", text: "Looking.", annotations: [] }]
      },
      {
        type: "function_call",
        id: "fc_test_1",
        call_id: "call_1",
        name: "look",
        arguments: "{\"at\":1}",
        status: "completed"
      },
      {
        type: "function_call",
        id: "fc_test_2",
        call_id: "call_2",
        name: "look",
        arguments: "{\"at\":2}",
        status: "completed"
      }
    ])
    const calls = chatToResponses(
      completion({
        role: "assistant",
        content: null,
        tool_calls: [{ id: "c", type: "function", function: { name: "look", arguments: "{}" } }]
      }, "tool_calls"),
      req,
      options
    )
    expect(calls.output.map((item) => item.type)).toEqual(["function_call"])
    expect(calls.output_text).toBe("")
  })

  it("is read by the openai SDK, which finds the text and the function calls", async () => {
    const res = chatToResponses(
      completion({
        role: "assistant",
        content: "Sure.",
        tool_calls: [{ id: "call_9", type: "function", function: { name: "look", arguments: "{}" } }]
      }, "tool_calls"),
      req,
      options
    )
    const client = sdkAnswering(JSON.stringify(res), "application/json")
    const got = await client.responses.create({ model: "alias-model", input: "hi" })
    expect(got.output_text).toBe("Sure.")
    expect(got.output.filter((item) => item.type === "function_call").map((item) => item.call_id)).toEqual(["call_9"])
  })
})

describe("ResponsesStream", () => {
  const req = decodeRequest({ model: "m", input: "hi", stream: true })

  it("streams text as created, in_progress, item and part events, deltas, then the closing events", () => {
    const events = runStream(req, [
      chunk({ role: "assistant", content: "" }),
      chunk({ content: "Hel" }),
      chunk({ content: "lo" }),
      chunk({}, "stop"),
      usageChunk(3, 2)
    ])
    expect(events.map((e) => e.type)).toEqual([
      "response.created",
      "response.in_progress",
      "response.output_item.added",
      "response.content_part.added",
      "response.output_text.delta",
      "response.output_text.delta",
      "response.output_text.done",
      "response.content_part.done",
      "response.output_item.done",
      "response.completed"
    ])
    expect(events.map((e) => e.sequence_number)).toEqual(events.map((_, i) => i))
    expect(events[4]).toEqual({
      type: "response.output_text.delta",
      sequence_number: 4,
      item_id: "msg_test_0",
      output_index: 0,
      content_index: 0,
      delta: "Hel",
      logprobs: []
    })
    expect(events[0]).toMatchObject({ response: { status: "in_progress", output: [], id: "resp_test" } })
    const final = finalResponse(events)
    expect(final.output_text).toBe("Hello")
    expect(final.usage).toEqual({
      input_tokens: 3,
      input_tokens_details: { cached_tokens: 0 },
      output_tokens: 2,
      output_tokens_details: { reasoning_tokens: 0 },
      total_tokens: 5
    })
  })

  it("ends with response.incomplete when the upstream stopped for length", () => {
    const events = runStream(req, [chunk({ content: "Hel" }), chunk({}, "length")])
    const final = finalResponse(events)
    expect(events[events.length - 1]?.type).toBe("response.incomplete")
    expect(final.status).toBe("incomplete")
    expect(final.incomplete_details).toEqual({ reason: "max_output_tokens" })
  })

  it("ends with the same response object as the non-streaming translation", () => {
    const stream = [
      chunk({ role: "assistant" }),
      chunk({ reasoning_content: "Think" }),
      chunk({ reasoning_content: "ing." }),
      chunk({ content: "Calling." }),
      chunk({ tool_calls: [{ index: 0, id: "call_1", type: "function", function: { name: "look", arguments: "" } }] }),
      chunk({ tool_calls: [{ index: 0, function: { arguments: "{\"a\":" } }] }),
      chunk({ tool_calls: [{ index: 0, function: { arguments: "1}" } }] }),
      chunk({ tool_calls: [{ index: 1, id: "call_2", function: { name: "look", arguments: "{}" } }] }),
      chunk({}, "tool_calls"),
      usageChunk(12, 5, 4)
    ]
    const whole = completion({
      role: "assistant",
      content: "Calling.",
      reasoning_content: "Thinking.",
      tool_calls: [
        { id: "call_1", type: "function", function: { name: "look", arguments: "{\"a\":1}" } },
        { id: "call_2", type: "function", function: { name: "look", arguments: "{}" } }
      ]
    }, "tool_calls")
    expect(finalResponse(runStream(req, stream))).toEqual(chatToResponses(whole, req, options))
  })

  it("holds a tool call until its name arrives", () => {
    const events = runStream(req, [
      chunk({ tool_calls: [{ index: 0, id: "call_1", function: { arguments: "{\"x\"" } }] }),
      chunk({ tool_calls: [{ index: 0, function: { name: "look", arguments: ":1}" } }] }),
      chunk({}, "tool_calls")
    ])
    const added = ofType(events, "response.output_item.added")
    expect(added.map((e) => e.item)).toEqual([
      { type: "function_call", id: "fc_test_0", call_id: "call_1", name: "look", arguments: "", status: "in_progress" }
    ])
    expect(ofType(events, "response.function_call_arguments.delta").map((e) => e.delta)).toEqual(["{\"x\":1}"])
    expect(ofType(events, "response.function_call_arguments.done")[0]).toMatchObject({
      name: "look",
      arguments: "{\"x\":1}"
    })
  })

  it("fails with an error event then response.failed, and emits nothing after", () => {
    const stream = new ResponsesStream(req, options)
    const events = [
      ...stream.start(),
      ...stream.chunk(chunk({ content: "partial" })),
      ...stream.fail({ type: "server_error", message: "worker died", code: "worker_crashed" })
    ]
    const [error, failed] = events.slice(-2)
    expect(error).toEqual({
      type: "error",
      sequence_number: 5,
      code: "worker_crashed",
      message: "worker died",
      param: null
    })
    expect(failed?.type).toBe("response.failed")
    expect(failed).toMatchObject({
      sequence_number: 6,
      response: {
        status: "failed",
        error: { code: "worker_crashed", message: "worker died" },
        output: [{ type: "message", status: "incomplete" }]
      }
    })
    expect([...stream.chunk(chunk({ content: "more" })), ...stream.end()]).toEqual([])
  })

  it("formats server-sent events with the event name and the JSON payload", () => {
    const [created] = new ResponsesStream(req, options).start()
    if (!created) throw new Error("no event")
    expect(formatSse(created)).toBe(`event: response.created\ndata: ${JSON.stringify(created)}\n\n`)
  })

  it("types: every non-failure event is an openai SDK stream event, every final response an SDK Response", () => {
    const events = runStream(req, [chunk({ reasoning_content: "r" }), chunk({ content: "t" }), chunk({}, "stop")])
    // Lifecycle events before the end lack `output_text`, which the SDK types as always present
    // but computes itself; failures carry codes outside its literal list.
    type Checked = Exclude<ResponsesEvent, { type: "response.created" | "response.in_progress" | "response.failed" }>
    const sdkEvents: Array<ResponseStreamEvent> = events.filter((e): e is Checked =>
      e.type !== "response.created" && e.type !== "response.in_progress" && e.type !== "response.failed"
    )
    const inProgress: Array<Omit<SdkResponse, "output_text">> = ofType(events, "response.created").map((e) =>
      e.response
    )
    const sdkResponse: SdkResponse = finalResponse(events)
    expect(sdkEvents.length).toBe(events.length - 2)
    expect(inProgress[0]).not.toHaveProperty("output_text")
    expect(sdkResponse.output_text).toBe("t")
  })
})

// ---- Properties ----

const word = fc.stringMatching(/^[a-z][a-z0-9_]{0,7}$/)
const text = fc.string({ maxLength: 12 })

/** A request item sequence as an agent builds it: turns, tool-call rounds, reasoning, hosted-tool items. */
const inputPart = fc.oneof(
  text.map((t) => ({ type: "input_text", text: t })),
  word.map((w) => ({ type: "input_image", image_url: `https://img.test/${w}.png`, detail: "auto" }))
)
const userTurn = fc.record({
  role: fc.constantFrom("user", "system", "developer"),
  content: fc.oneof(text, fc.array(inputPart, { minLength: 1, maxLength: 3 })),
  typed: fc.boolean()
}).map(({ typed, ...m }) => [typed ? { type: "message", ...m } : m])
const assistantTurn = fc.record({
  content: fc.oneof(
    text,
    fc.array(text.map((t) => ({ type: "output_text", text: t, annotations: [] })), { maxLength: 2 })
  ),
  reasoning: fc.option(text, { nil: undefined })
}).map(({ content, reasoning }) => [
  ...(reasoning !== undefined ? [{ type: "reasoning", summary: [{ type: "summary_text", text: reasoning }] }] : []),
  { type: "message", role: "assistant", content }
])
const toolRound = fc.record({
  calls: fc.array(fc.record({ name: word, args: fc.json({ maxDepth: 1 }), result: text }), {
    minLength: 1,
    maxLength: 3
  }),
  reversed: fc.boolean()
}).map(({ calls, reversed }) => {
  const outputs = calls.map((c, k) => ({ type: "function_call_output", call_id: `#${k}`, output: c.result }))
  return [
    ...calls.map((c, k) => ({ type: "function_call", call_id: `#${k}`, name: c.name, arguments: c.args })),
    ...(reversed ? outputs.reverse() : outputs)
  ]
})
const hostedItem = fc.constant([{ type: "web_search_call", id: "ws_1", status: "completed" }])

/** Call ids made unique across rounds: `#k` → `call_<round>_<k>`. */
const numbered = (rounds: ReadonlyArray<ReadonlyArray<Record<string, unknown>>>) =>
  rounds.flatMap((items, r) =>
    items.map((item) =>
      typeof item.call_id === "string" ? { ...item, call_id: `call_${r}_${item.call_id.slice(1)}` } : item
    )
  )

const functionTools = fc.uniqueArray(word, { maxLength: 3 }).map((names) =>
  names.map((name) => ({ type: "function", name, parameters: { type: "object", properties: {} } }))
)
const requestArb = fc.record({
  instructions: fc.option(text, { nil: undefined }),
  input: fc.oneof(
    { weight: 1, arbitrary: text },
    {
      weight: 4,
      arbitrary: fc.array(fc.oneof(userTurn, assistantTurn, toolRound, hostedItem), { minLength: 1, maxLength: 8 })
        .map(numbered)
    }
  ),
  tools: functionTools,
  choice: fc.constantFrom("auto", "none", "required", "named"),
  temperature: fc.option(fc.double({ min: 0, max: 2, noNaN: true }), { nil: undefined }),
  max_output_tokens: fc.option(fc.integer({ min: 1, max: 4096 }), { nil: undefined }),
  stream: fc.option(fc.boolean(), { nil: undefined }),
  format: fc.constantFrom(undefined, { type: "text" }, { type: "json_object" }, {
    type: "json_schema",
    name: "out",
    schema: { type: "object" }
  })
}).filter((r) =>
  typeof r.input === "string" || Boolean(r.instructions) ||
  r.input.some((item) => item.type !== "reasoning" && item.type !== "web_search_call")
).map(({ choice, format, input, instructions, tools, ...r }) => ({
  model: "m",
  input,
  ...(instructions !== undefined ? { instructions } : {}),
  ...Object.fromEntries(Object.entries(r).filter(([, v]) => v !== undefined)),
  ...(format ? { text: { format } } : {}),
  ...(tools.length > 0
    ? { tools, tool_choice: choice === "named" ? { type: "function", name: tools[0]?.name } : choice }
    : {})
}))

type RawPart = { type: string; text?: string; image_url?: string }
const partsText = (content: unknown): string =>
  typeof content === "string"
    ? content
    : (content as ReadonlyArray<RawPart>).map((p) => p.text ?? `[image ${p.image_url}]`).join("")

/** What the model must see, in order: each turn's text, each call and each result. */
const itemTrace = (raw: { instructions?: string; input: unknown }) => {
  const trace: Array<string> = raw.instructions ? [`system|${raw.instructions}`] : []
  if (typeof raw.input === "string") return [...trace, `user|${raw.input}`]
  for (const item of raw.input as ReadonlyArray<Record<string, unknown>>) {
    if (item.type === undefined || item.type === "message") trace.push(`${item.role}|${partsText(item.content)}`)
    if (item.type === "function_call") trace.push(`call|${item.call_id}|${item.name}|${item.arguments}`)
    if (item.type === "function_call_output") trace.push(`tool|${item.call_id}|${partsText(item.output)}`)
  }
  return trace
}
const chatText = (content: ChatMessage["content"]) =>
  typeof content === "string"
    ? content
    : (content ?? []).map((p) =>
      p.type === "text"
        ? (p as { text: string }).text
        : `[image ${(p as { image_url: { url: string } }).image_url.url}]`
    ).join("")
const chatTrace = (messages: ReadonlyArray<ChatMessage>) =>
  messages.flatMap((m) =>
    m.role === "tool"
      ? [`tool|${m.tool_call_id}|${chatText(m.content)}`]
      : [
        ...(m.content !== null && m.content !== undefined ? [`${m.role}|${chatText(m.content)}`] : []),
        ...(m.tool_calls ?? []).map((c) => `call|${c.id}|${c.function.name}|${c.function.arguments as string}`)
      ]
  )

describe("properties", () => {
  it.prop(
    "a realistic Responses request translates to a valid chat request that keeps every turn, call and result in order",
    { raw: requestArb },
    ({ raw }) => {
      const chat = responsesToChat(decodeRequest(raw))
      expect(decodeChat(chat)).toEqual(chat)
      expect(chatTrace(chat.messages)).toEqual(itemTrace(raw))
      // Every result answers a call made earlier, by an assistant turn.
      const called = new Set<string>()
      for (const m of chat.messages) {
        for (const c of m.tool_calls ?? []) called.add(c.id)
        if (m.role === "tool") expect(called.has(m.tool_call_id ?? "")).toBe(true)
        if (m.role === "assistant" && m.content === null) expect(m.tool_calls?.length).toBeGreaterThan(0)
      }
      const r = raw as Record<string, any>
      expect(chat.tools?.map((t) => t.function.name)).toEqual(r.tools?.map((t: { name: string }) => t.name))
      expect(chat.max_completion_tokens).toBe(r.max_output_tokens)
      expect(chat.stream_options).toEqual(r.stream ? { include_usage: true } : undefined)
    }
  )

  const fragments = fc.array(fc.string({ maxLength: 6 }), { maxLength: 6 })
  const scenarioArb = fc.record({
    content: fragments,
    reasoning: fragments,
    calls: fc.array(fc.record({ name: word, fragments, nameLate: fc.boolean() }), { maxLength: 3 }),
    picks: fc.array(fc.nat({ max: 99 }), { minLength: 64, maxLength: 64 }),
    joins: fc.array(fc.boolean(), { minLength: 64, maxLength: 64 }),
    finish: fc.constantFrom<FinishReason>("stop", "length", "tool_calls"),
    usage: fc.boolean()
  })
  type Scenario = typeof scenarioArb extends fc.Arbitrary<infer S> ? S : never

  /** The chunk sequence: a role chunk, the streams' deltas randomly interleaved (some sharing a chunk), finish, usage. */
  const chunksOf = (s: Scenario): Array<ChatCompletionChunk> => {
    const streams: Array<Array<Delta>> = [
      s.content.map((content) => ({ content })),
      s.reasoning.map((reasoning_content) => ({ reasoning_content })),
      ...s.calls.map((call, index) => {
        const id = `call_${index}`
        const [first = "", ...rest] = call.fragments
        const deltas: Array<Delta> = call.nameLate
          ? [
            { tool_calls: [{ index, id, type: "function", function: { arguments: first } }] },
            { tool_calls: [{ index, function: { name: call.name } }] }
          ]
          : [{ tool_calls: [{ index, id, type: "function", function: { name: call.name, arguments: first } }] }]
        return [...deltas, ...rest.map((args): Delta => ({ tool_calls: [{ index, function: { arguments: args } }] }))]
      })
    ]
    const deltas: Array<Delta> = [{ role: "assistant", content: "" }]
    for (let i = 0; streams.some((st) => st.length > 0); i++) {
      const open = streams.filter((st) => st.length > 0)
      const next = open[(s.picks[i % s.picks.length] ?? 0) % open.length]?.shift()
      if (!next) continue
      const last = deltas[deltas.length - 1]
      const clash = last && Object.keys(next).some((k) => k in last)
      if (last && !clash && s.joins[i % s.joins.length]) deltas[deltas.length - 1] = { ...last, ...next }
      else deltas.push(next)
    }
    return [
      ...deltas.map((d) => chunk(d)),
      chunk({}, s.finish),
      ...(s.usage ? [usageChunk(7, 9)] : [])
    ]
  }

  const streamReq = decodeRequest({ model: "m", input: "hi", stream: true })

  const checkNumbering = (events: ReadonlyArray<ResponsesEvent>) => {
    expect(events.map((e) => e.sequence_number)).toEqual(events.map((_, i) => i))
    expect(events.slice(0, 2).map((e) => e.type)).toEqual(["response.created", "response.in_progress"])
  }

  it.prop(
    "any chunk sequence yields a numbered, well-nested event stream whose deltas add up to the content and calls",
    { s: scenarioArb },
    ({ s }) => {
      const events = runStream(streamReq, chunksOf(s))
      checkNumbering(events)
      const last = events[events.length - 1]
      expect(last?.type).toBe(s.finish === "length" ? "response.incomplete" : "response.completed")
      expect(events.filter((e) => e.type === "response.completed" || e.type === "response.incomplete")).toHaveLength(1)

      // Items: added in output order, each done exactly once at the same index, no delta outside its life.
      const added = ofType(events, "response.output_item.added")
      const done = ofType(events, "response.output_item.done")
      expect(added.map((e) => e.output_index)).toEqual(added.map((_, i) => i))
      expect(done.map((e) => e.item.id).sort()).toEqual(added.map((e) => e.item.id).sort())
      for (const a of added) {
        const d = done.filter((e) => e.item.id === a.item.id)
        expect(d).toHaveLength(1)
        expect(d[0]?.output_index).toBe(a.output_index)
        expect(d[0]?.item.type).toBe(a.item.type)
      }
      // Text and reasoning take turns (one open at a time); function calls may stay open alongside.
      const openAt = new Map<string, number>()
      const openTexts = new Set<string>()
      for (const e of events) {
        if (e.type === "response.output_item.added") {
          openAt.set(e.item.id, e.output_index)
          if (e.item.type !== "function_call") openTexts.add(e.item.id)
          expect(openTexts.size).toBeLessThanOrEqual(1)
        } else if (e.type === "response.output_item.done") {
          openAt.delete(e.item.id)
          openTexts.delete(e.item.id)
        } else if ("item_id" in e) expect(openAt.get(e.item_id)).toBe(e.output_index)
      }
      expect(openAt.size).toBe(0)

      const final = finalResponse(events)
      const content = s.content.join("")
      expect(ofType(events, "response.output_text.delta").map((e) => e.delta).join("")).toBe(content)
      expect(final.output_text).toBe(content)
      expect(ofType(events, "response.reasoning_text.delta").map((e) => e.delta).join("")).toBe(s.reasoning.join(""))

      const fcItems = final.output.filter((item) => item.type === "function_call")
      expect(fcItems.map((item) => item.call_id).sort()).toEqual(s.calls.map((_, k) => `call_${k}`))
      for (const [k, call] of s.calls.entries()) {
        const item = fcItems.find((i) => i.call_id === `call_${k}`)
        const args = call.fragments.join("")
        expect(item?.name).toBe(call.name)
        expect(item?.arguments).toBe(args)
        const deltas = ofType(events, "response.function_call_arguments.delta").filter((e) => e.item_id === item?.id)
        expect(deltas.map((e) => e.delta).join("")).toBe(args)
        expect(ofType(events, "response.function_call_arguments.done").find((e) => e.item_id === item?.id))
          .toMatchObject({ name: call.name, arguments: args })
      }

      // The final output is exactly the items as they were done.
      expect(final.output).toEqual([...done].sort((a, b) => a.output_index - b.output_index).map((e) => e.item))
      expect(final.usage?.total_tokens).toBe(s.usage ? 16 : undefined)
    }
  )

  it.prop(
    "a failure at any point ends the stream with response.failed and never a completion",
    {
      s: scenarioArb,
      cut: fc.nat(),
      error: fc.record({ type: word, message: text, code: fc.option(word, { nil: null }) })
    },
    ({ cut, error, s }) => {
      const chunks = chunksOf(s)
      const stream = new ResponsesStream(streamReq, options)
      const events = [
        ...stream.start(),
        ...chunks.slice(0, cut % (chunks.length + 1)).flatMap((c) => stream.chunk(c)),
        ...stream.fail(error)
      ]
      checkNumbering(events)
      expect(events.map((e) => e.type).slice(-2)).toEqual(["error", "response.failed"])
      expect(events.some((e) => e.type === "response.completed" || e.type === "response.incomplete")).toBe(false)
      expect(events[events.length - 2]).toMatchObject({ code: error.code ?? error.type, message: error.message })
      expect([...stream.end(), ...stream.fail(error)]).toEqual([])
    }
  )

  /** What the deltas carry; statuses stay as added, and the SDK adds `parsed` to text parts. */
  const essence = (items: ReadonlyArray<SdkResponse["output"][number] | ResponseObject["output"][number]>) =>
    items.map((item) =>
      item.type === "function_call"
        ? [item.type, item.id, item.call_id, item.name, item.arguments]
        : item.type === "message" || item.type === "reasoning"
        ? [item.type, item.id, (item.content ?? []).map((p) => "text" in p ? p.text : "")]
        : [item.type]
    )
  const sdkFinal = (events: ReadonlyArray<ResponsesEvent>) =>
    sdkAnswering(events.map(formatSse).join(""), "text/event-stream").responses
      .stream({ model: "m", input: "hi" }).finalResponse()

  it("the openai SDK accumulates any translated stream into the final response", async () => {
    await fc.assert(
      fc.asyncProperty(scenarioArb, async (s) => {
        const events = runStream(streamReq, chunksOf(s))
        const final = finalResponse(events)
        // Without the terminal event the SDK's result is what it built from the deltas alone.
        expect(essence((await sdkFinal(events.slice(0, -1))).output)).toEqual(essence(final.output))
        // The SDK adopts a response.completed's object; after response.incomplete it keeps its own.
        const whole = await sdkFinal(events)
        expect(essence(whole.output)).toEqual(essence(final.output))
        if (final.status === "completed") expect(whole.output_text).toBe(s.content.join(""))
      }),
      { numRuns: 40 }
    )
  })
})
