/**
 * Prefix reuse on /v1/completions: the prompt is tokenized once, exactly as the completion
 * evaluates it, so a second request that shares a long prefix with the first reuses it (issue
 * #18: a second tokenization with another leading-space rule made node-llama-cpp erase the
 * sequence and prefill everything twice, and no prefix was ever reused on this route). On chat, a
 * conversation's next turn reuses the turns before it, on whichever sequence holds them (#17).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { type NeuronProcess, postJson, startNeuron } from "./fixtures/neuron.js"

let neuron: NeuronProcess
let seats2: NeuronProcess

beforeAll(async () => {
  // One seat: both requests land on the same sequence.
  ;[neuron, seats2] = await Promise.all([
    startNeuron({ models: ["tiny"], defaultModels: ["tiny"], env: { NEURON_MAX_IN_FLIGHT: "1" } }),
    // Two seats (two sequences of one context): each request goes to the one sharing most.
    startNeuron({ models: ["tiny"], defaultModels: ["tiny"], env: { NEURON_MAX_IN_FLIGHT: "2" } })
  ])
}, 180_000)

afterAll(async () => {
  await Promise.all([neuron?.stop(), seats2?.stop()])
})

const prefix = Array.from({ length: 120 }, (_, i) => `line ${i} of a shared document`).join("\n")

const complete = async (prompt: string) => {
  const res = await postJson(`${neuron.url}/v1/completions`, { model: "tiny", prompt, max_tokens: 2, temperature: 0 })
  expect(res.status).toBe(200)
  return (await res.json() as any).usage
}

describe("completions reuse a shared prefix", () => {
  it("reports the shared prefix as cached tokens on the second request", async () => {
    const first = await complete(prefix)
    expect(first.prompt_tokens).toBeGreaterThan(500)
    const second = await complete(`${prefix}\nand one more line`)
    console.log(
      `completions: first ${first.prompt_tokens} tokens prefilled in ${first.timing.prefill_ms} ms; ` +
        `second ${second.prompt_tokens} tokens, ${second.prompt_tokens_details.cached_tokens} cached, ` +
        `prefill ${second.timing.prefill_ms} ms`
    )
    // Everything but the last token or two of the first prompt (a boundary token may re-split).
    expect(second.prompt_tokens_details.cached_tokens).toBeGreaterThanOrEqual(first.prompt_tokens - 2)
  })

  it("counts the same prompt tokens that /tokenize reports", async () => {
    const usage = await complete(prefix)
    const res = await postJson(`${neuron.url}/tokenize`, { model: "tiny", text: prefix })
    expect(((await res.json()) as any).tokens).toBe(usage.prompt_tokens)
  })
})

type Message = { role: "user" | "assistant"; content: string }

const chat = async (target: NeuronProcess, messages: ReadonlyArray<Message>) => {
  const res = await postJson(`${target.url}/v1/chat/completions`, {
    model: "tiny",
    messages,
    max_tokens: 6,
    temperature: 0
  })
  expect(res.status).toBe(200)
  const body = await res.json() as any
  return { text: body.choices[0].message.content as string, usage: body.usage }
}

const document = (topic: string) =>
  Array.from({ length: 60 }, (_, i) => `${topic} note ${i}: the water and the people`).join("\n")

describe("chat turns reuse the conversation so far", () => {
  it("prefills only the new turn of a conversation's second request", async () => {
    const history: Array<Message> = [{ role: "user", content: document("alpha") }]
    const first = await chat(neuron, history)
    expect(first.usage.prompt_tokens).toBeGreaterThan(300)
    history.push({ role: "assistant", content: first.text }, { role: "user", content: "And then?" })
    const second = await chat(neuron, history)
    // The first prompt is a prefix of the second's: all of it is reused (the reply's re-rendering
    // may re-split a token or two at the turn boundary).
    expect(second.usage.prompt_tokens_details.cached_tokens).toBeGreaterThanOrEqual(first.usage.prompt_tokens - 2)
    expect(second.usage.prompt_tokens - second.usage.prompt_tokens_details.cached_tokens).toBeLessThan(40)
  })

  it("places each conversation's next turn on the sequence that holds it", async () => {
    const a: Array<Message> = [{ role: "user", content: document("alpha") }]
    const b: Array<Message> = [{ role: "user", content: document("beta") }]
    // Both at once, so they take both sequences.
    const [a1, b1] = await Promise.all([chat(seats2, a), chat(seats2, b)])
    a.push({ role: "assistant", content: a1.text }, { role: "user", content: "And then?" })
    b.push({ role: "assistant", content: b1.text }, { role: "user", content: "And then?" })
    // One after the other, in the other order: each must find its own conversation.
    const b2 = await chat(seats2, b)
    const a2 = await chat(seats2, a)
    expect(b2.usage.prompt_tokens_details.cached_tokens).toBeGreaterThanOrEqual(b1.usage.prompt_tokens - 2)
    expect(a2.usage.prompt_tokens_details.cached_tokens).toBeGreaterThanOrEqual(a1.usage.prompt_tokens - 2)
  })
})
