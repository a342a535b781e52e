/**
 * The limits' meters on the embedded store (in-memory PGlite, migrated as at start), at chosen
 * instants: the sliding window's previous bucket, a calendar month, a balance, concurrency, and
 * settling to the real amount. No process, no clock: every reservation names its `now`.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Effect, Either, Layer } from "effect"
import { bucketOf, type Meter, reserve, retryAfterSecs, settle } from "../src/accounting/Limits.js"
import { layerPglite } from "../src/store/Pglite.js"
import { migrate } from "../src/store/Store.js"
import { parseWindow } from "../src/store/StoreConfig.js"

const Store = Layer.effectDiscard(migrate).pipe(Layer.provideMerge(layerPglite("memory://")))

const MINUTE = 60_000
const T0 = Date.UTC(2026, 10, 28, 12, 0, 0)
const key = { scope: "key", id: "k1", name: "k1" } as const

const tryReserve = (meters: ReadonlyArray<Meter>, tokens: number, usd: number, now: number) =>
  Effect.either(reserve(meters, { tokens, usd }, now).pipe(Effect.catchTag("SqlError", Effect.die)))

describe("budget windows", () => {
  it("parses rolling seconds, durations, month and balance; refuses the rest", () => {
    expect(parseWindow("rolling:3600")).toEqual({ kind: "rolling", seconds: 3600 })
    expect(parseWindow("30d")).toEqual({ kind: "rolling", seconds: 30 * 86400 })
    expect(parseWindow("month")).toEqual({ kind: "month" })
    expect(parseWindow("balance")).toEqual({ kind: "balance" })
    for (const bad of ["rolling:0", "0d", "weekly", "30x", ""]) expect(parseWindow(bad)).toBeUndefined()
  })

  it("a calendar month runs to the next month's start; Retry-After says so", () => {
    const meter: Meter = { ...key, kind: "spend", cap: 1, window: { kind: "month" } }
    const now = Date.UTC(2026, 1, 27, 0, 0, 0)
    expect(bucketOf(meter, now)).toEqual({ start: Date.UTC(2026, 1, 1), length: 28 * 86400_000, weight: 0 })
    expect(retryAfterSecs(meter, now)).toBe(2 * 86400)
  })
})

// One store for these cases: each uses its own key, so they share nothing.
layer(Store, { timeout: 120_000 })("meters in the store", (it) => {
  it.effect("requests per minute slide: the previous minute counts for the part still in the window", () =>
    Effect.gen(function*() {
      const rpm: Meter = { ...key, kind: "rpm", cap: 4 }
      for (let i = 0; i < 4; i++) expect(Either.isRight(yield* tryReserve([rpm], 0, 0, T0 + 1000))).toBe(true)
      const refused = yield* tryReserve([rpm], 0, 0, T0 + 2000)
      expect(Either.isLeft(refused) && refused.left.limit === "rpm" && refused.left.retry_after_secs).toBe(58)
      // 15 s into the next minute, the last minute's 4 weigh 3: one more fits, not two.
      expect(Either.isRight(yield* tryReserve([rpm], 0, 0, T0 + MINUTE + 15_000))).toBe(true)
      expect(Either.isLeft(yield* tryReserve([rpm], 0, 0, T0 + MINUTE + 15_000))).toBe(true)
      // Two minutes on, nothing of the first minute is left.
      for (let i = 0; i < 4; i++) {
        expect(Either.isRight(yield* tryReserve([rpm], 0, 0, T0 + 3 * MINUTE + 1000))).toBe(true)
      }
    }))

  it.effect("a request's checks are one transaction: a refusal by one rolls back the others", () =>
    Effect.gen(function*() {
      const who = { scope: "key", id: "k2", name: "k2" } as const
      const rpm: Meter = { ...who, kind: "rpm", cap: 100 }
      const tpm: Meter = { ...who, kind: "tpm", cap: 50 }
      const first = yield* reserve([rpm, tpm], { tokens: 40, usd: 0 }, T0)
      const refused = yield* tryReserve([rpm, tpm], 40, 0, T0)
      expect(Either.isLeft(refused) && refused.left.limit).toBe("tpm")
      // The refused request's rpm count was rolled back: one request so far, so one more fits under 2.
      expect(Either.isRight(yield* tryReserve([{ ...rpm, cap: 2 }], 0, 0, T0))).toBe(true)
      expect(Either.isLeft(yield* tryReserve([{ ...rpm, cap: 2 }], 0, 0, T0))).toBe(true)
      // The first request settles to its real 10 tokens: 40 more fit now.
      yield* settle(first, { tokens: 10, usd: 0 })
      expect(Either.isRight(yield* tryReserve([tpm], 40, 0, T0 + 1000))).toBe(true)
      expect(Either.isLeft(yield* tryReserve([tpm], 1, 0, T0 + 1000))).toBe(true)
    }))

  it.effect("a balance never resets; settling moves it to the real spend; concurrency gives seats back", () =>
    Effect.gen(function*() {
      const who = { scope: "key", id: "k3", name: "k3" } as const
      const balance: Meter = { ...who, kind: "spend", cap: 10, window: { kind: "balance" } }
      const seat: Meter = { ...who, kind: "concurrent", cap: 1 }
      const first = yield* reserve([balance, seat], { tokens: 0, usd: 8 }, T0)
      const busy = yield* tryReserve([seat], 0, 0, T0)
      expect(Either.isLeft(busy) && busy.left.limit).toBe("concurrent")
      yield* settle(first, { tokens: 0, usd: 3 })
      // 3 spent: 7 more fit a year later (a balance has no window), 8 do not.
      const later = T0 + 365 * 86400_000
      expect(Either.isLeft(yield* tryReserve([balance], 0, 8, later))).toBe(true)
      expect(Either.isRight(yield* tryReserve([balance, seat], 0, 7, later))).toBe(true)
    }))
})
