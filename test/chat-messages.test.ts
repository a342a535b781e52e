import { describe, expect, it } from "@effect/vitest"
import { Effect, FastCheck as fc } from "effect"
import { ImageRejected, InvalidRequest } from "../src/domain/errors.js"
import type { ChatMessage } from "../src/domain/openai.js"
import { ChatCompletionRequest, decodeBody } from "../src/domain/openai.js"
import { toWorkerMessages } from "../src/neuron/ChatMessages.js"

const decodeChat = (body: unknown) =>
  decodeBody(ChatCompletionRequest, typeof body === "string" ? body : JSON.stringify(body))

/** The InvalidRequest a call throws, or a failed assertion when it throws nothing or something else. */
const thrown = (f: () => unknown): InvalidRequest | ImageRejected => {
  try {
    f()
  } catch (e) {
    expect(e instanceof InvalidRequest || e instanceof ImageRejected).toBe(true)
    return e as InvalidRequest | ImageRejected
  }
  expect.fail("expected an InvalidRequest to be thrown")
}

/** Decodes a body that must be rejected and returns the InvalidRequest's param. */
const rejectedParam = (body: unknown) =>
  Effect.gen(function*() {
    const error = yield* Effect.flip(decodeChat(body))
    expect(error._tag).toBe("InvalidRequest")
    return error._tag === "InvalidRequest" ? error.param : undefined
  })

describe("toWorkerMessages", () => {
  it("maps system and developer messages to system turns", () => {
    const out = toWorkerMessages([
      { role: "system", content: "be brief" },
      { role: "developer", content: "use metric units" },
      { role: "user", content: "hi" }
    ])
    expect(out).toEqual([
      { role: "system", text: "be brief" },
      { role: "system", text: "use metric units" },
      { role: "user", text: "hi" }
    ])
  })

  it("joins text content parts", () => {
    const out = toWorkerMessages([
      { role: "system", content: [{ type: "text", text: "rule " }, { type: "text", text: "one" }] },
      { role: "user", content: [{ type: "text", text: "Hello, " }, { type: "text", text: "world" }] }
    ])
    expect(out).toEqual([
      { role: "system", text: "rule one" },
      { role: "user", text: "Hello, world" }
    ])
  })

  it.effect("attaches a tool result to the assistant call it answers", () =>
    Effect.gen(function*() {
      const request = yield* decodeChat({
        model: "m",
        messages: [
          { role: "user", content: "Weather in Oslo and Rome?" },
          {
            role: "assistant",
            content: null,
            tool_calls: [
              {
                id: "call_1",
                type: "function",
                function: { name: "get_weather", arguments: "{\"city\":\"Oslo\"}" }
              },
              {
                id: "call_2",
                type: "function",
                function: { name: "get_weather", arguments: "{\"city\":\"Rome\"}" }
              }
            ]
          },
          { role: "tool", tool_call_id: "call_2", content: "sunny" },
          { role: "tool", tool_call_id: "call_1", content: "{\"temp_c\":-3}" },
          { role: "user", content: "Thanks" }
        ]
      })
      const out = toWorkerMessages(request.messages)
      expect(out).toEqual([
        { role: "user", text: "Weather in Oslo and Rome?" },
        {
          role: "assistant",
          text: "",
          toolCalls: [
            { name: "get_weather", params: { city: "Oslo" }, result: { temp_c: -3 } },
            { name: "get_weather", params: { city: "Rome" }, result: "sunny" }
          ]
        },
        { role: "user", text: "Thanks" }
      ])
    }))

  it("keeps the reasoning of an assistant turn and accepts arguments sent as an object", () => {
    const out = toWorkerMessages([
      {
        role: "assistant",
        content: "Let me check.",
        reasoning_content: "need the tool",
        tool_calls: [{ id: "c", function: { name: "lookup", arguments: { q: "x" } } }]
      }
    ])
    expect(out).toEqual([
      {
        role: "assistant",
        text: "Let me check.",
        reasoning: "need the tool",
        toolCalls: [{ name: "lookup", params: { q: "x" }, result: null }]
      }
    ])
  })

  it("turns a tool result with no matching call into a user turn", () => {
    const out = toWorkerMessages([
      { role: "user", content: "go" },
      { role: "tool", tool_call_id: "nope", name: "search", content: "42" }
    ])
    expect(out).toEqual([
      { role: "user", text: "go" },
      { role: "user", text: "Result of search: 42" }
    ])
  })

  it("rejects image parts on a text-only model (400 vision_unsupported) with the param naming the message and part", () => {
    const messages: ReadonlyArray<ChatMessage> = [
      { role: "system", content: "s" },
      {
        role: "user",
        content: [
          { type: "text", text: "what is this?" },
          { type: "image_url", image_url: { url: "data:image/png;base64,AAAA" } }
        ]
      }
    ]
    const error = thrown(() => toWorkerMessages(messages))
    expect(error._tag).toBe("ImageRejected")
    expect(error.status).toBe(400)
    expect(error.body.error.code).toBe("vision_unsupported")
    expect(error.param).toBe("messages.1.content.1")
    expect(error.message).toContain("image_url")
  })

  it.effect("rejects an image part that came through decodeBody", () =>
    Effect.gen(function*() {
      const request = yield* decodeChat({
        model: "m",
        messages: [{ role: "user", content: [{ type: "image_url", image_url: "https://example.com/cat.png" }] }]
      })
      const error = thrown(() => toWorkerMessages(request.messages))
      expect(error.param).toBe("messages.0.content.0")
    }))
})

describe("decodeBody", () => {
  it.effect("fails with InvalidJson on malformed JSON", () =>
    Effect.gen(function*() {
      for (const text of ["{", "{\"model\": \"m\",}", "", "not json"]) {
        const error = yield* Effect.flip(decodeChat(text))
        expect(error._tag).toBe("InvalidJson")
        expect(error.message).toMatch(/^Malformed JSON body/)
      }
    }))

  it.effect("fails with InvalidRequest naming the field path on a wrong type", () =>
    Effect.gen(function*() {
      const messages = [{ role: "user", content: "hi" }]
      expect(yield* rejectedParam({ model: "m", messages, temperature: "hot" })).toBe("temperature")
      expect(yield* rejectedParam({ model: "m", messages: 3 })).toBe("messages")
      expect(yield* rejectedParam({ model: "m", messages, temperature: 3 })).toBe("temperature")
      expect(yield* rejectedParam({ model: "m", messages, max_tokens: 0 })).toBe("max_tokens")
      expect(yield* rejectedParam({ model: "m", messages: [{ role: "robot", content: "x" }] })).toBe(
        "messages.0.role"
      )
      expect(yield* rejectedParam({ model: "m", messages: [...messages, { role: "user", content: 5 }] })).toBe(
        "messages.1.content"
      )
      expect(yield* rejectedParam({ messages })).toBe("model")
    }))

  it.effect("has no param when the body itself has the wrong shape", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(decodeChat("[1, 2]"))
      expect(error._tag).toBe("InvalidRequest")
      if (error._tag === "InvalidRequest") expect(error.param).toBeNull()
    }))

  it.effect("accepts unknown extra fields", () =>
    Effect.gen(function*() {
      const request = yield* decodeChat({
        model: "m",
        messages: [{ role: "user", content: "hi", some_vendor_field: true }],
        logit_bias: {},
        metadata: { team: "x" },
        store: false
      })
      expect(request.model).toBe("m")
      expect(request.messages).toHaveLength(1)
    }))

  it.effect("refuses a field it cannot honour, by name, instead of ignoring it", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(decodeChat({
        model: "m",
        messages: [{ role: "user", content: "hi" }],
        logit_bias: { "50256": -100 }
      }))
      expect(error._tag).toBe("InvalidRequest")
      expect((error as { param: string | null }).param).toBe("logit_bias")
    }))

  it.effect("accepts max_completion_tokens and a stop string", () =>
    Effect.gen(function*() {
      const request = yield* decodeChat({
        model: "m",
        messages: [{ role: "user", content: "hi" }],
        max_completion_tokens: 128,
        stop: "\n\n"
      })
      expect(request.max_completion_tokens).toBe(128)
      expect(request.stop).toBe("\n\n")
      const list = yield* decodeChat({ model: "m", messages: [{ role: "user", content: "hi" }], stop: ["a", "b"] })
      expect(list.stop).toEqual(["a", "b"])
    }))
})

const validMessage = fc.record({
  role: fc.constantFrom("user" as const, "system" as const, "assistant" as const),
  content: fc.string({ maxLength: 40 })
})

/** An assistant turn calling a tool, followed by the tool's answer (ids are fixed up per request). */
const toolExchange = fc.record({ name: fc.string({ minLength: 1, maxLength: 10 }), result: fc.string() }).map((
  { name, result }
) => [
  {
    role: "assistant" as const,
    content: null,
    tool_calls: [{ id: "", type: "function" as const, function: { name, arguments: "{}" } }]
  },
  { role: "tool" as const, tool_call_id: "", content: result }
])

const validMessages = fc.array(fc.oneof(validMessage.map((m) => [m]), toolExchange), { minLength: 1, maxLength: 6 })
  .map((turns) =>
    turns.flatMap((turn, i) =>
      turn.map((m) => {
        if ("tool_calls" in m) {
          return { ...m, tool_calls: m.tool_calls.map((c) => ({ ...c, id: `call_${i}` })) }
        }
        return "tool_call_id" in m ? { ...m, tool_call_id: `call_${i}` } : m
      })
    )
  )

const parsedOrText = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return text
  }
}

const validRequest = fc.record(
  {
    model: fc.string({ minLength: 1, maxLength: 20 }),
    messages: validMessages,
    temperature: fc.double({ min: 0, max: 2, noNaN: true }),
    top_p: fc.oneof(fc.constant(null), fc.double({ min: 0, max: 1, noNaN: true })),
    max_tokens: fc.integer({ min: 1, max: 1_000_000 }),
    seed: fc.integer(),
    stop: fc.oneof(fc.string(), fc.array(fc.string(), { maxLength: 16 })),
    stream: fc.boolean(),
    user: fc.string()
  },
  { requiredKeys: ["model", "messages"] }
)

describe("valid OpenAI chat requests", () => {
  it.prop(
    "decode, and give one worker message per non-tool input message",
    [validRequest],
    ([body]) => {
      const request = Effect.runSync(decodeChat(body))
      expect(request.messages).toHaveLength(body.messages.length)
      const out = toWorkerMessages(request.messages)
      expect(out).toHaveLength(body.messages.filter((m) => m.role !== "tool").length)
      const inputs = body.messages.filter((m) => m.role !== "tool")
      out.forEach((message, i) => {
        const input = inputs[i]!
        expect(message.role).toBe(input.role)
        expect(message.text).toBe(input.content ?? "")
        if (message.role === "assistant" && "tool_calls" in input) {
          const answer = body.messages.find((m) => "tool_call_id" in m && m.tool_call_id === input.tool_calls[0]!.id)
          expect(message.toolCalls).toHaveLength(1)
          expect(message.toolCalls[0]!.params).toEqual({})
          expect(message.toolCalls[0]!.result).toEqual(parsedOrText(String(answer?.content)))
        }
      })
    },
    { fastCheck: { numRuns: 200 } }
  )
})
