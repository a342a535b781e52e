/** What a client may read of an internal failure: no stack frames, no server files, an id to find the rest. */
import { describe, expect, it } from "@effect/vitest"
import { InternalError, publicDetail } from "../src/domain/errors.js"

describe("internal errors", () => {
  it("keep the first line, without the runtime's wrapper or server files", () => {
    expect(publicDetail("(FiberFailure) RangeError: boom\n    at go (/work/main/node_modules/effect/src/x.ts:1:2)"))
      .toBe("RangeError: boom")
    expect(publicDetail("cannot open /srv/models/qwen.gguf")).toBe("cannot open <path>")
    expect(publicDetail("at k (node_modules/effect/dist/esm/Inspectable.js:147:42)")).toBe("at k (<path>)")
    // URL paths are no secret and say what failed.
    expect(publicDetail("/models/load answered outside the contract")).toBe(
      "/models/load answered outside the contract"
    )
    expect(publicDetail("x".repeat(1000)).length).toBeLessThan(260)
  })

  it("answer with an id that the log carries with the whole detail", () => {
    const error = new InternalError({ detail: "TypeError: x is undefined\n    at /work/main/src/a.ts:3:4" })
    expect(error.body.error.message).toBe(`TypeError: x is undefined (error id ${error.id})`)
    expect(error.detail).toContain("/work/main/src/a.ts")
    expect(new InternalError({ detail: "a" }).id).not.toBe(error.id)
  })
})
