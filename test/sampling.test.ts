import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import type { SamplingDefaults } from "../src/neuron/Sampling.js"
import { fallback, resolveSampling } from "../src/neuron/Sampling.js"

type SamplingRequest = Parameters<typeof resolveSampling>[0]

/** Drops undefined entries, so optional keys are absent rather than undefined. */
const present = <A extends Record<string, unknown>>(fields: A) =>
  Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined))

/** A request value: absent, explicit null, or a value (0 included, which must not count as absent). */
const requestValue = <A>(value: fc.Arbitrary<A>) => fc.oneof(fc.constant(undefined), fc.constant(null), value)
const defaultValue = <A>(value: fc.Arbitrary<A>) => fc.option(value, { nil: undefined })

const unit = fc.oneof(fc.constant(0), fc.double({ min: 0, max: 1, noNaN: true }))
const temperature = fc.oneof(fc.constant(0), fc.double({ min: 0, max: 2, noNaN: true }))
const topK = fc.nat({ max: 200 })
const tokens = fc.integer({ min: 1, max: 100_000 })
const penalty = fc.oneof(fc.constant(1), fc.double({ min: 0, max: 10, noNaN: true }))
const signedPenalty = fc.oneof(fc.constant(0), fc.double({ min: -2, max: 2, noNaN: true }))

const firstGiven = <A>(...values: ReadonlyArray<A | null | undefined>): A | undefined =>
  values.find((v): v is A => v !== null && v !== undefined)

describe("resolveSampling", () => {
  it.prop(
    "takes each field from the request, then the model defaults, then the fallback",
    {
      temperature: requestValue(temperature),
      top_p: requestValue(unit),
      top_k: requestValue(topK),
      min_p: requestValue(unit),
      dTemperature: defaultValue(temperature),
      dTopP: defaultValue(unit),
      dTopK: defaultValue(topK),
      dMinP: defaultValue(unit)
    },
    ({ dMinP, dTemperature, dTopK, dTopP, min_p, temperature, top_k, top_p }) => {
      const request = present({ temperature, top_p, top_k, min_p }) as SamplingRequest
      const defaults = present({
        temperature: dTemperature,
        top_p: dTopP,
        top_k: dTopK,
        min_p: dMinP
      }) as SamplingDefaults
      const params = resolveSampling(request, defaults)
      expect(params.temperature).toBe(firstGiven(temperature, dTemperature, fallback.temperature))
      expect(params.topP).toBe(firstGiven(top_p, dTopP, fallback.top_p))
      expect(params.topK).toBe(firstGiven(top_k, dTopK, fallback.top_k))
      expect(params.minP).toBe(firstGiven(min_p, dMinP, fallback.min_p))
    }
  )

  it.prop(
    "takes max_completion_tokens over max_tokens over the model default, and omits it when none is given",
    {
      max_completion_tokens: requestValue(tokens),
      max_tokens: requestValue(tokens),
      dMax: defaultValue(tokens)
    },
    ({ dMax, max_completion_tokens, max_tokens }) => {
      const params = resolveSampling(
        present({ max_completion_tokens, max_tokens }) as SamplingRequest,
        present({ max_tokens: dMax }) as SamplingDefaults
      )
      const expected = firstGiven(max_completion_tokens, max_tokens, dMax)
      if (expected === undefined) expect(params).not.toHaveProperty("maxTokens")
      else expect(params.maxTokens).toBe(expected)
    }
  )

  it.prop(
    "adds a repeat penalty only when some penalty is not neutral",
    {
      repeat_penalty: requestValue(penalty),
      frequency_penalty: requestValue(signedPenalty),
      presence_penalty: requestValue(signedPenalty),
      dPenalty: defaultValue(penalty)
    },
    ({ dPenalty, frequency_penalty, presence_penalty, repeat_penalty }) => {
      const params = resolveSampling(
        present({ repeat_penalty, frequency_penalty, presence_penalty }) as SamplingRequest,
        present({ repeat_penalty: dPenalty }) as SamplingDefaults
      )
      const penaltyValue = firstGiven(repeat_penalty, dPenalty) ?? 1
      const frequency = frequency_penalty ?? 0
      const presence = presence_penalty ?? 0
      if (penaltyValue === 1 && frequency === 0 && presence === 0) {
        expect(params).not.toHaveProperty("repeatPenalty")
      } else {
        expect(params.repeatPenalty).toEqual({
          penalty: penaltyValue,
          frequencyPenalty: frequency,
          presencePenalty: presence
        })
      }
    }
  )

  it("uses the fallback when neither request nor defaults say anything", () => {
    expect(resolveSampling({})).toEqual({
      temperature: fallback.temperature,
      topP: fallback.top_p,
      topK: fallback.top_k,
      minP: fallback.min_p,
      stop: []
    })
  })

  it("keeps an explicit zero from the request over the defaults", () => {
    const params = resolveSampling(
      { temperature: 0, top_k: 0, min_p: 0, top_p: 0 },
      { temperature: 1.2, top_k: 10, min_p: 0.1, top_p: 0.5 }
    )
    expect(params).toMatchObject({ temperature: 0, topK: 0, minP: 0, topP: 0 })
  })

  it("treats null like an absent field", () => {
    const params = resolveSampling(
      {
        temperature: null,
        top_p: null,
        top_k: null,
        min_p: null,
        seed: null,
        max_tokens: null,
        max_completion_tokens: null,
        repeat_penalty: null,
        frequency_penalty: null,
        presence_penalty: null,
        stop: null
      },
      { temperature: 0.3, top_k: 7, max_tokens: 64 }
    )
    expect(params).toEqual({
      temperature: 0.3,
      topP: fallback.top_p,
      topK: 7,
      minP: fallback.min_p,
      maxTokens: 64,
      stop: []
    })
  })

  it("prefers max_completion_tokens to max_tokens", () => {
    expect(resolveSampling({ max_completion_tokens: 10, max_tokens: 500 }, { max_tokens: 99 }).maxTokens).toBe(10)
    expect(resolveSampling({ max_tokens: 500 }, { max_tokens: 99 }).maxTokens).toBe(500)
    expect(resolveSampling({ max_completion_tokens: null, max_tokens: 500 }).maxTokens).toBe(500)
  })

  it("turns a stop string into a one-element list", () => {
    expect(resolveSampling({ stop: "###" }).stop).toEqual(["###"])
  })

  it("removes empty and duplicate stops, keeping first-seen order", () => {
    expect(resolveSampling({ stop: ["\n\n", "", "END", "\n\n", "", "END", "x"] }).stop).toEqual(["\n\n", "END", "x"])
    expect(resolveSampling({ stop: [] }).stop).toEqual([])
    expect(resolveSampling({ stop: [""] }).stop).toEqual([])
  })

  it.prop(
    "stop lists come out deduplicated and without empty strings",
    [fc.array(fc.oneof(fc.constant(""), fc.constantFrom("a", "b", "\n"), fc.string()), { maxLength: 16 })],
    ([stop]) => {
      const out = resolveSampling({ stop }).stop
      expect(new Set(out).size).toBe(out.length)
      expect(out).not.toContain("")
      expect(new Set(out)).toEqual(new Set(stop.filter((s) => s.length > 0)))
    }
  )

  it("passes the seed through, zero and negatives included", () => {
    expect(resolveSampling({ seed: 42 }).seed).toBe(42)
    expect(resolveSampling({ seed: 0 }).seed).toBe(0)
    expect(resolveSampling({ seed: -7 }).seed).toBe(-7)
    expect(resolveSampling({})).not.toHaveProperty("seed")
  })

  it("adds a neutral repeat penalty when only frequency or presence is set", () => {
    expect(resolveSampling({ frequency_penalty: 0.5 }).repeatPenalty).toEqual({
      penalty: 1,
      frequencyPenalty: 0.5,
      presencePenalty: 0
    })
    expect(resolveSampling({ presence_penalty: -1 }).repeatPenalty).toEqual({
      penalty: 1,
      frequencyPenalty: 0,
      presencePenalty: -1
    })
    expect(resolveSampling({ repeat_penalty: 1, frequency_penalty: 0, presence_penalty: 0 })).not.toHaveProperty(
      "repeatPenalty"
    )
    expect(resolveSampling({}, { repeat_penalty: 1.1 }).repeatPenalty).toEqual({
      penalty: 1.1,
      frequencyPenalty: 0,
      presencePenalty: 0
    })
  })
})
