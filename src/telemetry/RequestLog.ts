/**
 * What one gateway request came to, filled in by the proxy as it learns it, and written at the
 * end as one structured line (logfmt or JSON, `[telemetry] log_format`). Plain code: it runs
 * once per request on the node:http hot path, so no Effect, one string built, one write.
 */
import { randomBytes } from "node:crypto"
import type { LogFormat } from "./TelemetryConfig.js"

/** A per-process prefix and a counter: unique enough to grep for, no syscall per request. */
const PREFIX = randomBytes(4).toString("hex")
let counter = 0
export const nextRequestId = () => `${PREFIX}-${(++counter).toString(36)}`

export class RequestSummary {
  node = "none"
  /** The answer's status: the HTTP status, or 499 when the client went away first. */
  status = 0
  promptTokens: number | undefined = undefined
  completionTokens: number | undefined = undefined
  cachedTokens: number | undefined = undefined
  ttftMs: number | undefined = undefined
  error: string | undefined = undefined
  /** The client hung up before the answer was complete. */
  clientGone = false
  /** The proxy (or the route, for a request refused before it) has said how it ended. */
  recorded = false
  onRecorded: (() => void) | undefined = undefined
  constructor(readonly requestId: string) {}

  /** How it ended is known (at most once). */
  markRecorded() {
    if (this.recorded) return
    this.recorded = true
    this.onRecorded?.()
  }
}

/** The model name as the client sent it, bounded: a client chooses it. */
const MAX_MODEL = 128

const logfmtValue = (value: string) => /^[A-Za-z0-9_.:/@+-]+$/.test(value) ? value : JSON.stringify(value)

export interface RequestLine {
  readonly requestId: string
  readonly traceId: string
  readonly route: string
  readonly model: string
  readonly principal: string
  readonly durationMs: number
  readonly summary: RequestSummary
}

/** The line, newline included; undefined when the format is "off". */
export const formatRequestLine = (format: LogFormat, line: RequestLine): string | undefined => {
  if (format === "off") return undefined
  const s = line.summary
  const model = line.model.length > MAX_MODEL ? line.model.slice(0, MAX_MODEL) : line.model
  const clientGone = s.clientGone
  if (format === "json") {
    return JSON.stringify({
      ts: new Date().toISOString(),
      msg: "request",
      request_id: line.requestId,
      trace_id: line.traceId,
      route: line.route,
      model,
      node: s.node,
      principal: line.principal,
      status: s.status,
      prompt_tokens: s.promptTokens ?? null,
      completion_tokens: s.completionTokens ?? null,
      cached_tokens: s.cachedTokens ?? null,
      ttft_ms: s.ttftMs ?? null,
      duration_ms: line.durationMs,
      client_gone: clientGone,
      error: s.error ?? null
    }) + "\n"
  }
  let out = `ts=${new Date().toISOString()} msg=request request_id=${line.requestId} trace_id=${line.traceId}` +
    ` route=${line.route} model=${logfmtValue(model)} node=${logfmtValue(s.node)}` +
    ` principal=${logfmtValue(line.principal)} status=${s.status}`
  if (s.promptTokens !== undefined) out += ` prompt_tokens=${s.promptTokens}`
  if (s.completionTokens !== undefined) out += ` completion_tokens=${s.completionTokens}`
  if (s.cachedTokens !== undefined) out += ` cached_tokens=${s.cachedTokens}`
  if (s.ttftMs !== undefined) out += ` ttft_ms=${s.ttftMs}`
  out += ` duration_ms=${line.durationMs} client_gone=${clientGone}`
  if (s.error !== undefined) out += ` error=${logfmtValue(s.error)}`
  return out + "\n"
}

/**
 * Write a request's line to stdout, coalesced with the other lines of this turn of the event
 * loop: one write (a syscall when stdout is a pipe) per turn instead of one per request.
 */
const pending: Array<string> = []
const flush = () => {
  const text = pending.join("")
  pending.length = 0
  process.stdout.write(text)
}
export const writeLine = (line: string) => {
  if (pending.push(line) === 1) setImmediate(flush)
}
