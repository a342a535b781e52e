/**
 * Prefix reuse on /v1/completions: the prompt is tokenized once, exactly as the completion
 * evaluates it, so a second request that shares a long prefix with the first reuses it (issue
 * #18: a second tokenization with another leading-space rule made node-llama-cpp erase the
 * sequence and prefill everything twice, and no prefix was ever reused on this route).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { type NeuronProcess, postJson, startNeuron } from "./fixtures/neuron.js"

let neuron: NeuronProcess

beforeAll(async () => {
  // One seat: both requests land on the same sequence.
  neuron = await startNeuron({ models: ["tiny"], defaultModels: ["tiny"], env: { NEURON_MAX_IN_FLIGHT: "1" } })
}, 180_000)

afterAll(async () => {
  await neuron?.stop()
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
