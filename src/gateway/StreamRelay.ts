/**
 * One streamed answer's bookkeeping, fed chunk by chunk (as AnthropicStream is in
 * translate/Anthropic.ts): each upstream chunk is relayed as it came (same dialect) or translated,
 * and the SSE payloads it completes are read for what the metrics and the client need: the first
 * token's time (content, reasoning or a tool call: not the first byte, lesson 14), the usage,
 * whether `[DONE]` came, why the stream failed, and whether an error frame went out (one at most).
 * Hot path: nothing is allocated per chunk beyond the parser's payloads and the translator's frames.
 */
import type { ChatCompletionChunk, Usage } from "../domain/openai-output.js"
import type { StreamTranslator } from "./Dialects.js"
import type { Outcome } from "./Metrics.js"
import { SseParser } from "./Sse.js"

export type Frames = ReadonlyArray<string> | string | Uint8Array

export interface StreamError {
  readonly type: string
  readonly message: string
  readonly code?: string | null | undefined
}

const firstTokenIn = (chunk: ChatCompletionChunk) => {
  const delta = chunk.choices?.[0]?.delta
  return !!delta && (!!delta.content || !!delta.reasoning_content || (delta.tool_calls?.length ?? 0) > 0)
}

export class StreamRelay {
  /** ms from the request's receipt to the first generated token. */
  private ttftMs: number | undefined = undefined
  private usage: Usage | null | undefined = undefined
  private sawDone = false
  /** Why the stream failed; the first reason wins. */
  private failed: string | undefined = undefined
  /** An error frame went out (ours, or the neuron's own, relayed). */
  private reported = false
  private readonly parser = new SseParser()

  constructor(
    private readonly received: number,
    private readonly translator: StreamTranslator | undefined,
    private readonly write: (frames: Frames) => void,
    private readonly keepAliveFrame: string
  ) {}

  /**
   * What keeps a waiting client connected. A translated stream opens its message on the first
   * upstream chunk, which knows the prompt's size, unless a keep-alive must go out first: then the
   * message opens before it (Anthropic clients expect message_start before any ping; the input
   * tokens then come in message_delta). The translator's `start` is empty once the message is open.
   * `frame`: a keep-alive that says more (a model pull's progress, from the dialect's `keepAliveWith`).
   */
  keepAlive(frame: string = this.keepAliveFrame): Frames {
    return this.translator ? [...this.translator.start(), frame] : frame
  }

  /** One upstream chunk. */
  chunk(value: Uint8Array): void {
    const translator = this.translator
    if (!translator) this.write(value)
    for (const data of this.parser.push(value)) {
      if (data === "[DONE]") {
        this.sawDone = true
        if (translator) this.write(translator.end())
        continue
      }
      // Relayed frames are parsed only for what the metrics need: after the first token, only a
      // frame that may carry the usage or an error (most carry one token).
      if (!translator && this.ttftMs !== undefined && !data.includes("\"usage\"") && !data.includes("\"error\"")) {
        continue
      }
      let chunk: ChatCompletionChunk & { error?: StreamError }
      try {
        chunk = JSON.parse(data)
      } catch {
        continue
      }
      if (chunk.error) {
        this.failed = chunk.error.code ?? chunk.error.type
        // A relayed stream already carried the neuron's own error event.
        if (translator) this.fail(chunk.error)
        else this.reported = true
        continue
      }
      if (this.ttftMs === undefined && firstTokenIn(chunk)) this.ttftMs = Date.now() - this.received
      if (chunk.usage) this.usage = chunk.usage
      if (translator) this.write(translator.chunk(chunk))
    }
  }

  /** One error frame in the dialect, at most once: after it the stream only ends. */
  fail(error: StreamError): void {
    if (this.reported) return
    this.reported = true
    this.write(this.translator ? this.translator.fail(error) : `data: ${JSON.stringify({ error })}\n\n`)
  }

  /** The stream failed for `reason` (kept unless one is known already); tell the client, once. */
  failWith(reason: string, error: StreamError): void {
    this.failed ??= reason
    this.fail(error)
  }

  /** The upstream broke off for `reason`, unless a reason is known already. */
  broke(reason: string): void {
    this.failed ??= reason
  }

  /** The upstream ended: without `[DONE]` it must never look complete (lesson 14). */
  end(idleTimeoutSecs: number): void {
    if (this.sawDone) return
    const failed = this.failed ??= "truncated"
    if (failed === "client_disconnected") return
    this.fail({
      type: "server_error",
      code: failed.startsWith("upstream:") ? "upstream_failed" : failed,
      message: failed === "upstream_timeout"
        ? `the upstream sent nothing for ${idleTimeoutSecs} s`
        : failed === "truncated"
        ? "the upstream stream ended before it was complete"
        : `the upstream failed: ${failed}`
    })
  }

  /** Why it failed, when it did. */
  get failure(): string | undefined {
    return this.failed
  }

  /** The stream's outcome for the metrics and the log line (its head said 200). */
  outcome(): Outcome {
    return {
      status: 200,
      usage: this.usage,
      ttftMs: this.ttftMs,
      ...(this.failed !== undefined ? { error: this.failed } : {})
    }
  }
}
