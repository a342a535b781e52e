/**
 * What the engine must honour for agent clients (#9), through a real gateway to a real neuron,
 * with the official SDKs: token log-probabilities (chat and completions, streamed and not),
 * several choices (`n`), the stop sequence that ended an answer, count_tokens equal to what the
 * messages call evaluates (tools included), a forced tool call cut by max_tokens, and answers
 * that name the model as the client did (an alias).
 */
import Anthropic from "@anthropic-ai/sdk"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import OpenAI from "openai"
import type { GatewayProcess } from "./fixtures/gateway.js"
import { postJson } from "./fixtures/neuron.js"
import { type Stack, startStack } from "./fixtures/stack.js"

let stack: Stack
let gateway: GatewayProcess
let openai: OpenAI
let anthropic: Anthropic

const ALIAS = "gpt-tiny-alias"
/** A name a header cannot carry as is. */
const ODD_ALIAS = "org/tiny-é:latest"

beforeAll(async () => {
  stack = await startStack({ models: ["tiny"], defaultModels: ["tiny"], toml: "max_in_flight = 2\nmax_n = 3\n" }, {
    modelsToml: ["[[models]]\nid = \"tiny\"", `[aliases]\n"${ALIAS}" = "tiny"\n"${ODD_ALIAS}" = "tiny"`].join("\n")
  })
  ;({ anthropic, gateway, openai } = stack)
}, 180_000)

afterAll(() => stack?.stop())

const messages = [{ role: "user" as const, content: "tell me a story" }]
const bytesOf = (text: string) => Array.from(Buffer.from(text, "utf8"))

describe("chat logprobs", () => {
  it("reports each content token with its log-probability and the top alternatives", async () => {
    const res = await openai.chat.completions.create({
      model: "tiny",
      messages,
      max_tokens: 8,
      temperature: 0,
      logprobs: true,
      top_logprobs: 3
    })
    const choice = res.choices[0]!
    const content = choice.logprobs!.content!
    expect(content.length).toBeGreaterThan(0)
    expect(content.map((t) => t.token).join("")).toBe(choice.message.content)
    for (const entry of content) {
      expect(entry.logprob).toBeLessThanOrEqual(0)
      expect(entry.bytes).toEqual(bytesOf(entry.token))
      expect(entry.top_logprobs).toHaveLength(3)
      // Greedy: the sampled token is the likeliest one.
      expect(entry.top_logprobs[0]!.token).toBe(entry.token)
      expect(entry.top_logprobs[0]!.logprob).toBeCloseTo(entry.logprob, 5)
      expect(entry.top_logprobs[1]!.logprob).toBeLessThanOrEqual(entry.top_logprobs[0]!.logprob)
    }
  })

  it("streams them chunk by chunk, the same as the whole answer", async () => {
    const request = { model: "tiny", messages, max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 2 }
    const whole = await openai.chat.completions.create(request)
    const stream = await openai.chat.completions.create({ ...request, stream: true })
    const entries: Array<OpenAI.ChatCompletionTokenLogprob> = []
    let text = ""
    for await (const chunk of stream) {
      const choice = chunk.choices[0]
      if (!choice) continue
      text += choice.delta.content ?? ""
      entries.push(...(choice.logprobs?.content ?? []))
    }
    expect(text).toBe(whole.choices[0]!.message.content)
    expect(entries.map((e) => e.token).join("")).toBe(text)
    expect(entries.map((e) => e.logprob)).toEqual(whole.choices[0]!.logprobs!.content!.map((e) => e.logprob))
  })

  it("is null when not asked for", async () => {
    const res = await openai.chat.completions.create({ model: "tiny", messages, max_tokens: 2, temperature: 0 })
    expect(res.choices[0]!.logprobs).toBeNull()
  })

  it("refuses values out of range, naming the parameter", async () => {
    const tooMany = await postJson(`${gateway.url}/v1/chat/completions`, {
      model: "tiny",
      messages,
      logprobs: true,
      top_logprobs: 21
    })
    expect(tooMany.status).toBe(422)
    expect(((await tooMany.json()) as any).error.param).toBe("top_logprobs")
    const without = await postJson(`${gateway.url}/v1/chat/completions`, { model: "tiny", messages, top_logprobs: 2 })
    expect(without.status).toBe(422)
    expect(((await without.json()) as any).error.param).toBe("top_logprobs")
  })
})

describe("completions logprobs", () => {
  it("reports tokens, token_logprobs, top_logprobs (with the sampled token) and text_offset", async () => {
    const res = await openai.completions.create({
      model: "tiny",
      prompt: "once upon a time",
      max_tokens: 8,
      temperature: 0,
      logprobs: 2
    })
    const choice = res.choices[0]!
    const logprobs = choice.logprobs!
    expect(logprobs.tokens!.join("")).toBe(choice.text)
    expect(logprobs.token_logprobs).toHaveLength(logprobs.tokens!.length)
    let offset = 0
    logprobs.tokens!.forEach((token, i) => {
      expect(logprobs.text_offset![i]).toBe(offset)
      offset += token.length
      const top = logprobs.top_logprobs![i]!
      expect(Object.keys(top).length).toBeGreaterThanOrEqual(1)
      expect(Object.keys(top).length).toBeLessThanOrEqual(3)
      expect(top[token]).toBeCloseTo(logprobs.token_logprobs![i]!, 5)
    })
  })

  it("streams them, text_offset running on across chunks", async () => {
    const request = { model: "tiny", prompt: "once upon a time", max_tokens: 8, temperature: 0, logprobs: 1 }
    const whole = await openai.completions.create(request)
    const stream = await openai.completions.create({ ...request, stream: true })
    const tokens: Array<string> = []
    const offsets: Array<number> = []
    for await (const chunk of stream) {
      const lp = chunk.choices[0]?.logprobs
      if (!lp) continue
      tokens.push(...lp.tokens!)
      offsets.push(...lp.text_offset!)
    }
    expect(tokens).toEqual(whole.choices[0]!.logprobs!.tokens)
    expect(offsets).toEqual(whole.choices[0]!.logprobs!.text_offset)
  })

  it("echo returns the prompt before the text, streamed and not; with logprobs it is refused", async () => {
    const request = { model: "tiny", prompt: "once upon a time", max_tokens: 4, temperature: 0 }
    const plain = await openai.completions.create(request)
    const echoed = await openai.completions.create({ ...request, echo: true })
    expect(echoed.choices[0]!.text).toBe(request.prompt + plain.choices[0]!.text)
    let streamed = ""
    for await (const chunk of await openai.completions.create({ ...request, echo: true, stream: true })) {
      streamed += chunk.choices[0]?.text ?? ""
    }
    expect(streamed).toBe(echoed.choices[0]!.text)
    const refused = await postJson(`${gateway.url}/v1/completions`, { ...request, echo: true, logprobs: 1 })
    expect(refused.status).toBe(422)
    expect(((await refused.json()) as any).error.param).toBe("echo")
  })

  it("refuses logprobs over 5, naming it", async () => {
    const res = await postJson(`${gateway.url}/v1/completions`, { model: "tiny", prompt: "x", logprobs: 6 })
    expect(res.status).toBe(422)
    expect(((await res.json()) as any).error.param).toBe("logprobs")
  })
})

describe("n choices", () => {
  it("answers n choices, indexed, with completion tokens summed and the prompt counted once", async () => {
    const one = await openai.chat.completions.create({ model: "tiny", messages, max_tokens: 5, temperature: 0 })
    const res = await openai.chat.completions.create({ model: "tiny", messages, max_tokens: 5, temperature: 0, n: 2 })
    expect(res.choices.map((c) => c.index)).toEqual([0, 1])
    for (const choice of res.choices) {
      expect(choice.message.content!.length).toBeGreaterThan(0)
      expect(choice.finish_reason).toBe("length")
    }
    expect(res.usage!.prompt_tokens).toBe(one.usage!.prompt_tokens)
    expect(res.usage!.completion_tokens).toBe(2 * one.usage!.completion_tokens)
    expect(res.usage!.total_tokens).toBe(res.usage!.prompt_tokens + res.usage!.completion_tokens)
  })

  it("runs more choices than seats, in turns", async () => {
    const res = await openai.completions.create({ model: "tiny", prompt: "hello", max_tokens: 3, temperature: 0, n: 3 })
    expect(res.choices.map((c) => c.index)).toEqual([0, 1, 2])
    expect(new Set(res.choices.map((c) => c.text)).size).toBe(1)
    expect(res.usage!.completion_tokens).toBe(9)
  })

  it("streams every choice under its index", async () => {
    const stream = await openai.chat.completions.create({
      model: "tiny",
      messages,
      max_tokens: 5,
      temperature: 0,
      n: 2,
      stream: true,
      stream_options: { include_usage: true }
    })
    const texts = ["", ""]
    const finishes: Array<string | null> = [null, null]
    let usage: OpenAI.CompletionUsage | undefined
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage
      for (const choice of chunk.choices) {
        texts[choice.index] += choice.delta.content ?? ""
        if (choice.finish_reason) finishes[choice.index] = choice.finish_reason
      }
    }
    expect(texts[0]!.length).toBeGreaterThan(0)
    expect(texts[1]).toBe(texts[0])
    expect(finishes).toEqual(["length", "length"])
    expect(usage!.completion_tokens).toBe(10)
  })

  it("refuses more than max_n, naming n", async () => {
    const res = await postJson(`${gateway.url}/v1/chat/completions`, { model: "tiny", messages, n: 4 })
    expect(res.status).toBe(422)
    const body = (await res.json()) as any
    expect(body.error.param).toBe("n")
    expect(body.error.message).toContain("max_n")
  })
})

describe("stop sequences", () => {
  const ask = { model: "tiny", max_tokens: 24, temperature: 0, messages }

  it("name the matched string: stop_reason on the choice (OpenAI) and stop_sequence (Anthropic)", async () => {
    const free = await anthropic.messages.create(ask)
    const text = (free.content[0] as Anthropic.TextBlock).text
    // Precondition: the greedy answer has a space after some text.
    expect(text.trimStart().includes(" ")).toBe(true)

    const stopped = await anthropic.messages.create({ ...ask, stop_sequences: ["zzz-never", " "] })
    expect(stopped.stop_reason).toBe("stop_sequence")
    expect(stopped.stop_sequence).toBe(" ")
    expect(text.startsWith((stopped.content[0] as Anthropic.TextBlock).text)).toBe(true)

    const openaiAnswer = await openai.chat.completions.create({ ...ask, stop: [" "] })
    expect(openaiAnswer.choices[0]!.finish_reason).toBe("stop")
    expect((openaiAnswer.choices[0] as unknown as { stop_reason: string }).stop_reason).toBe(" ")
  })

  it("streamed: message_delta carries stop_reason stop_sequence and the string", async () => {
    const stream = anthropic.messages.stream({ ...ask, stop_sequences: [" "] })
    const final = await stream.finalMessage()
    expect(final.stop_reason).toBe("stop_sequence")
    expect(final.stop_sequence).toBe(" ")
  })

  it("a natural end is end_turn, a cut one max_tokens", async () => {
    const cut = await anthropic.messages.create({ ...ask, max_tokens: 2 })
    expect(cut.stop_reason).toBe("max_tokens")
    expect(cut.stop_sequence).toBeNull()
  })
})

const bigTool = {
  name: "run_query",
  description: "Runs a query against the warehouse. ".repeat(40),
  input_schema: {
    type: "object" as const,
    properties: {
      sql: { type: "string", description: "The SQL text to run, one statement." },
      limit: { type: "integer", description: "Rows to return at most." },
      dry_run: { type: "boolean" }
    },
    required: ["sql"]
  }
}

describe("count_tokens", () => {
  const request = {
    model: "tiny",
    system: "You are terse.",
    messages: [{ role: "user" as const, content: "count me" }]
  }

  it("equals the input tokens of the same messages call, without tools", async () => {
    const counted = await anthropic.messages.countTokens(request)
    const answer = await anthropic.messages.create({ ...request, max_tokens: 1 })
    expect(counted.input_tokens).toBe(answer.usage.input_tokens + (answer.usage.cache_read_input_tokens ?? 0))
  })

  it("counts the tools exactly as the messages call renders them", async () => {
    const bare = await anthropic.messages.countTokens(request)
    const counted = await anthropic.messages.countTokens({ ...request, tools: [bigTool] })
    expect(counted.input_tokens).toBeGreaterThan(bare.input_tokens + 200)
    const answer = await anthropic.messages.create({ ...request, tools: [bigTool], max_tokens: 1 })
    expect(counted.input_tokens).toBe(answer.usage.input_tokens + (answer.usage.cache_read_input_tokens ?? 0))
  })

  it("counts a forced tool_choice as the call renders it", async () => {
    const forced = { ...request, tools: [bigTool], tool_choice: { type: "tool" as const, name: "run_query" } }
    const counted = await anthropic.messages.countTokens(forced)
    const answer = await anthropic.messages.create({ ...forced, max_tokens: 1 })
    expect(counted.input_tokens).toBe(answer.usage.input_tokens + (answer.usage.cache_read_input_tokens ?? 0))
  })
})

describe("a forced tool call cut by max_tokens", () => {
  const forced = {
    model: "tiny",
    max_tokens: 6,
    temperature: 0,
    messages,
    tools: [bigTool],
    tool_choice: { type: "tool" as const, name: "run_query" }
  }

  it("is a partial tool_use with stop_reason max_tokens, not text", async () => {
    const answer = await anthropic.messages.create(forced)
    expect(answer.stop_reason).toBe("max_tokens")
    const call = answer.content.find((b) => b.type === "tool_use") as Anthropic.ToolUseBlock
    expect(call.name).toBe("run_query")
    expect(answer.content.some((b) => b.type === "text" && b.text.length > 0)).toBe(false)
  })

  it("streamed, likewise, the arguments as far as they got", async () => {
    const final = await anthropic.messages.stream({ ...forced, max_tokens: 16 }).finalMessage()
    expect(final.stop_reason).toBe("max_tokens")
    const call = final.content.find((b) => b.type === "tool_use") as Anthropic.ToolUseBlock
    expect(call.name).toBe("run_query")
    expect(typeof call.input).toBe("object")
  })

  it("in OpenAI's dialect: a tool call with finish_reason length", async () => {
    const res = await openai.chat.completions.create({
      model: "tiny",
      max_tokens: 6,
      temperature: 0,
      messages,
      tools: [{
        type: "function",
        function: { name: "run_query", parameters: bigTool.input_schema as Record<string, unknown> }
      }],
      tool_choice: { type: "function", function: { name: "run_query" } }
    })
    const choice = res.choices[0]!
    expect(choice.finish_reason).toBe("length")
    expect((choice.message.tool_calls![0] as OpenAI.ChatCompletionMessageFunctionToolCall).function.name).toBe(
      "run_query"
    )
  })
})

describe("the model name the client sent", () => {
  it("is echoed for an alias, OpenAI chat streamed and not, completions and embeddings", async () => {
    const chat = await openai.chat.completions.create({ model: ALIAS, messages, max_tokens: 2 })
    expect(chat.model).toBe(ALIAS)
    const stream = await openai.chat.completions.create({ model: ALIAS, messages, max_tokens: 2, stream: true })
    for await (const chunk of stream) expect(chunk.model).toBe(ALIAS)
    const completion = await openai.completions.create({ model: ALIAS, prompt: "hi", max_tokens: 2 })
    expect(completion.model).toBe(ALIAS)
    const embedding = await openai.embeddings.create({ model: ALIAS, input: "hi" })
    expect(embedding.model).toBe(ALIAS)
  })

  it("is echoed in Anthropic's dialect, streamed and not", async () => {
    const answer = await anthropic.messages.create({ model: ALIAS, max_tokens: 2, messages })
    expect(answer.model).toBe(ALIAS)
    const final = await anthropic.messages.stream({ model: ALIAS, max_tokens: 2, messages }).finalMessage()
    expect(final.model).toBe(ALIAS)
  })

  it("survives characters a header cannot carry", async () => {
    const chat = await openai.chat.completions.create({ model: ODD_ALIAS, messages, max_tokens: 2 })
    expect(chat.model).toBe(ODD_ALIAS)
  })

  it("is the catalogue id when the client used it", async () => {
    const chat = await openai.chat.completions.create({ model: "tiny", messages, max_tokens: 2 })
    expect(chat.model).toBe("tiny")
  })
})
