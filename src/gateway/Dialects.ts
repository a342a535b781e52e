/**
 * How each client dialect answers: its error envelope and status codes, its stream keep-alive,
 * and (for dialects other than the neuron's own OpenAI) the translators for JSON answers and
 * stream chunks. Plain values, shared by the Effect routes (Http.ts) and the node:http
 * inference routes (InferenceRoutes.ts, Proxy.ts).
 */
import { Effect } from "effect"
import type { ServerResponse } from "node:http"
import type { MessagesRequest } from "../domain/anthropic.js"
import type { ApiError } from "../domain/errors.js"
import type { ChatCompletion, ChatCompletionChunk } from "../domain/openai-output.js"
import type { ResponsesRequest } from "../domain/responses.js"
import * as Anthropic from "./translate/Anthropic.js"
import * as Responses from "./translate/Responses.js"

/** An error as one dialect sends it. */
export interface DialectError {
  readonly status: number
  readonly headers: Record<string, string>
  readonly body: unknown
}

/** Turns upstream chunks into the client's stream frames. */
export interface StreamTranslator {
  readonly start: () => ReadonlyArray<string>
  readonly chunk: (chunk: ChatCompletionChunk) => ReadonlyArray<string>
  readonly end: () => ReadonlyArray<string>
  readonly fail: (error: { readonly type: string; readonly message: string }) => ReadonlyArray<string>
}

export interface Dialect {
  /** The `route` label of the metrics. */
  readonly route: string
  readonly error: (error: ApiError) => DialectError
  /** undefined: the upstream JSON is relayed as bytes (same dialect). */
  readonly json: ((upstream: unknown) => unknown) | undefined
  /** undefined: relay the upstream SSE bytes unchanged. */
  readonly translator: (() => StreamTranslator) | undefined
  readonly keepAlive: string
  /** A keep-alive that carries a line of text (a model pull's progress): a comment, or a ping's `progress`. */
  readonly keepAliveWith: (text: string) => string
}

export const openaiError = (error: ApiError): DialectError => ({
  status: error.status,
  headers: error.headers,
  body: error.body
})

export const anthropicError = (error: ApiError): DialectError => {
  const translated = Anthropic.toAnthropicError(error.status, error.body)
  return { status: translated.status, headers: error.headers, body: translated.body }
}

const KEEPALIVE = ": keep-alive\n\n"
const keepAliveComment = (text: string) => `: keep-alive ${text.replace(/[\r\n]+/g, " ")}\n\n`

/** The neuron's own dialect: answers are relayed as they come. */
export const openaiDialect = (route: string): Dialect => ({
  route,
  error: openaiError,
  json: undefined,
  translator: undefined,
  keepAlive: KEEPALIVE,
  keepAliveWith: keepAliveComment
})

export const anthropicDialect = (request: MessagesRequest): Dialect => ({
  route: "messages",
  error: anthropicError,
  json: (upstream) => Anthropic.chatToAnthropic(upstream as ChatCompletion, request.model),
  translator: () => {
    const stream = new Anthropic.AnthropicStream(request.model)
    const format = (events: ReadonlyArray<Parameters<typeof Anthropic.formatSse>[0]>) => events.map(Anthropic.formatSse)
    return {
      start: () => format(stream.start()),
      chunk: (c) => format(stream.chunk(c)),
      end: () => format(stream.end()),
      fail: (e) => format(stream.fail(Anthropic.toAnthropicStreamError({ error: e })))
    }
  },
  keepAlive: Anthropic.formatSse({ type: "ping" }),
  keepAliveWith: (text) => `event: ping\ndata: ${JSON.stringify({ type: "ping", progress: text })}\n\n`
})

export const responsesDialect = (request: ResponsesRequest): Dialect => ({
  route: "responses",
  error: openaiError,
  json: (upstream) => Responses.chatToResponses(upstream as ChatCompletion, request),
  translator: () => {
    const stream = new Responses.ResponsesStream(request)
    const format = (events: ReadonlyArray<Parameters<typeof Responses.formatSse>[0]>) => events.map(Responses.formatSse)
    return {
      start: () => format(stream.start()),
      chunk: (c) => format(stream.chunk(c)),
      end: () => format(stream.end()),
      fail: (e) => format(stream.fail(e))
    }
  },
  keepAlive: KEEPALIVE,
  keepAliveWith: keepAliveComment
})

/** Answer with a JSON body on a plain node:http response. */
export const sendJson = (
  res: ServerResponse,
  status: number,
  body: string | Buffer,
  headers: Record<string, string> = {}
) => {
  if (res.headersSent) {
    // Too late for a status: the connection is the only signal left.
    res.destroy()
    return
  }
  res.writeHead(status, {
    ...headers,
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body)
  })
  res.end(body)
}

/** Answer an error in the dialect's envelope. An internal failure's detail goes to the log, under its id. */
export const sendError = (res: ServerResponse, dialect: Pick<Dialect, "error">, error: ApiError) => {
  if (error._tag === "InternalError") Effect.runFork(Effect.logError(`internal error ${error.id}: ${error.detail}`))
  const answer = dialect.error(error)
  sendJson(res, answer.status, JSON.stringify(answer.body), answer.headers)
}
