/** StreamRelay: one stream's bookkeeping, fed chunk by chunk as the proxy feeds it. */
import { describe, expect, it } from "@effect/vitest"
import type { StreamTranslator } from "../src/gateway/Dialects.js"
import { type Frames, StreamRelay } from "../src/gateway/StreamRelay.js"

const frame = (data: unknown) => `data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`
const token = (text: string) => frame({ choices: [{ index: 0, delta: { content: text } }] })
const usage = { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 }

const relayed = () => {
  const out: Array<string> = []
  const write = (f: Frames) => {
    if (typeof f === "string") out.push(f)
    else if (f instanceof Uint8Array) out.push(Buffer.from(f).toString())
    else out.push(...f)
  }
  return { out, relay: new StreamRelay(Date.now() - 5, undefined, write, ": keep-alive\n\n") }
}

describe("StreamRelay", () => {
  it("relays bytes as they come, reads the first token and the usage across split chunks", () => {
    const { out, relay } = relayed()
    const body = frame({ choices: [{ index: 0, delta: { role: "assistant" } }] }) + token("hi") +
      frame({ choices: [], usage }) + frame("[DONE]")
    const bytes = Buffer.from(body)
    for (let i = 0; i < bytes.length; i += 7) relay.chunk(bytes.subarray(i, i + 7))
    relay.end(30)
    expect(out.join("")).toBe(body)
    const outcome = relay.outcome()
    expect(outcome.usage).toEqual(usage)
    expect(outcome.ttftMs).toBeGreaterThanOrEqual(0)
    expect(outcome.error).toBeUndefined()
  })

  it("a stream without [DONE] ends with one error event, never looking complete", () => {
    const { out, relay } = relayed()
    relay.chunk(Buffer.from(token("hi")))
    relay.end(30)
    relay.end(30)
    expect(relay.outcome().error).toBe("truncated")
    expect(out.filter((f) => f.includes("\"error\"")).length).toBe(1)
    expect(out.at(-1)).toContain("\"code\":\"truncated\"")
  })

  it("a relayed neuron error is counted, not repeated; a client that left gets no error frame", () => {
    const { out, relay } = relayed()
    relay.chunk(Buffer.from(frame({ error: { type: "server_error", message: "boom", code: "worker_crashed" } })))
    relay.end(30)
    expect(relay.outcome().error).toBe("worker_crashed")
    expect(out.filter((f) => f.includes("\"error\"")).length).toBe(1)
    const gone = relayed()
    gone.relay.broke("client_disconnected")
    gone.relay.end(30)
    expect(gone.out).toEqual([])
    expect(gone.relay.outcome().error).toBe("client_disconnected")
  })

  it("a translated stream goes through the translator; keep-alives open its message first", () => {
    const frames: Array<string> = []
    let started = false
    const translator: StreamTranslator = {
      start: () => started ? [] : (started = true, ["start"]),
      chunk: (c) => [`chunk:${c.choices?.[0]?.delta?.content ?? ""}`],
      end: () => ["end"],
      fail: (e) => [`fail:${e.message}`]
    }
    const relay = new StreamRelay(Date.now(), translator, (f) => {
      if (typeof f === "string") frames.push(f)
      else if (!(f instanceof Uint8Array)) frames.push(...f)
    }, "ping")
    frames.push(...(relay.keepAlive() as ReadonlyArray<string>))
    frames.push(...(relay.keepAlive() as ReadonlyArray<string>))
    relay.chunk(Buffer.from(token("a") + frame("[DONE]")))
    relay.end(30)
    expect(frames).toEqual(["start", "ping", "ping", "chunk:a", "end"])
  })
})
