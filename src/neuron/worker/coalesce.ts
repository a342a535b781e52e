/**
 * Streamed pieces on their way from a device worker to the neuron. Sending each token as its own
 * IPC message costs the neuron one message parse, one SSE frame and one socket write per token;
 * pieces that come within `windowMs` of the last message sent are held and joined instead (same
 * choice and kind: texts concatenated, log-probabilities appended), and go out when the window
 * ends. The first piece of a job, and any piece after a quiet window, is sent at once, so time
 * to first token never waits; `flush` sends what is held before the job's result.
 */
import type { ChunkMessage, TokenLogprob } from "./protocol.js"

interface Held {
  readonly choice: number
  readonly kind: "content" | "reasoning"
  text: string
  logprobs: Array<TokenLogprob> | undefined
}

export interface Coalescer {
  readonly push: (
    choice: number,
    kind: "content" | "reasoning",
    text: string,
    logprobs?: ReadonlyArray<TokenLogprob>
  ) => void
  /** Send everything held now (before the result, or when the job ends). */
  readonly flush: () => void
}

export const coalescer = (
  id: number,
  windowMs: number,
  send: (message: ChunkMessage) => void,
  now: () => number = performance.now.bind(performance)
): Coalescer => {
  let held: Array<Held> = []
  let lastSent = -Infinity
  let timer: ReturnType<typeof setTimeout> | undefined

  const message = (h: Held): ChunkMessage =>
    // The common case (one choice, no logprobs) stays the plain four-field message.
    h.choice === 0 && h.logprobs === undefined
      ? { _tag: "chunk", id, kind: h.kind, text: h.text }
      : {
        _tag: "chunk",
        id,
        kind: h.kind,
        text: h.text,
        choice: h.choice,
        ...(h.logprobs ? { logprobs: h.logprobs } : {})
      }

  const flush = () => {
    if (timer !== undefined) {
      clearTimeout(timer)
      timer = undefined
    }
    if (held.length === 0) return
    const out = held
    held = []
    lastSent = now()
    for (const h of out) send(message(h))
  }

  const hold = (
    choice: number,
    kind: "content" | "reasoning",
    text: string,
    logprobs?: ReadonlyArray<TokenLogprob>
  ) => {
    const last = held[held.length - 1]
    if (last !== undefined && last.choice === choice && last.kind === kind) {
      last.text += text
      if (logprobs) (last.logprobs ??= []).push(...logprobs)
    } else {
      held.push({ choice, kind, text, logprobs: logprobs ? [...logprobs] : undefined })
    }
  }

  const push: Coalescer["push"] = (choice, kind, text, logprobs) => {
    hold(choice, kind, text, logprobs)
    const waited = now() - lastSent
    if (windowMs <= 0 || waited >= windowMs) return flush()
    timer ??= setTimeout(flush, windowMs - waited)
  }

  return { push, flush }
}
