/**
 * The SSE answer of a streamed generation. The generation runs in its own fiber and writes
 * frames through a plain `SseWriter` into a Node stream the server pipes to the socket (the
 * per-token path: no Effect, no Schema, one `JSON.stringify` per chunk). A failure before the
 * generation started, within the head start, is a plain HTTP error; after the headers went out it
 * is an in-band error event (never `[DONE]`). Keep-alives go out every second; a client hanging up
 * takes the generation down.
 */
import { HttpServerResponse } from "@effect/platform"
import { Cause, Deferred, Effect, Exit, Fiber, Option } from "effect"
import { Readable } from "node:stream"
import type { ApiError } from "../domain/errors.js"
import { errorResponse, newRequestId, publicBody, reportInternal } from "./ErrorAnswers.js"
import { toApiError } from "./WorkerJobs.js"

const frame = (value: unknown) => Buffer.from(`data: ${JSON.stringify(value)}\n\n`)
const KEEPALIVE = Buffer.from(": keep-alive\n\n")
const KEEPALIVE_MS = 1000
/** How long a stream may stay silent before its headers go out with a keep-alive. */
const HEAD_START_MS = 750

export interface SseWriter {
  /** The generation has started (prefill done): from now on a failure is an in-band event. */
  readonly started: () => void
  /** One `data:` frame. */
  readonly send: (value: unknown) => void
  /** `data: [DONE]`. */
  readonly done: () => void
}

/** Serve what `generation` writes as an SSE answer; `model` names a defect's InternalError. */
export const sseResponse = <R>(
  model: string,
  generation: (writer: SseWriter) => Effect.Effect<void, ApiError, R>
) =>
  Effect.gen(function*() {
    const requestId = newRequestId()
    // The body is a plain Node stream the server pipes to the socket: frames go from the worker's
    // message to the socket without a fiber, a queue or a Stream pull per frame.
    const body = new Readable({ read() {} })
    const push = (bytes: Uint8Array) => {
      if (!body.destroyed && !body.readableEnded) body.push(bytes)
    }
    const started = yield* Deferred.make<void, ApiError>()
    // Frames written in one synchronous run (a worker message, the closing chunks) leave as one
    // buffer: one socket write instead of one per frame.
    let frames = ""
    const flush = () => {
      if (frames === "") return
      const text = frames
      frames = ""
      push(Buffer.from(text))
    }
    const write = (text: string) => {
      if (frames === "") queueMicrotask(flush)
      frames += text
    }
    const writer: SseWriter = {
      started: () => Deferred.unsafeDone(started, Exit.void),
      send: (value) => write(`data: ${JSON.stringify(value)}\n\n`),
      done: () => write("data: [DONE]\n\n")
    }
    const keepAlive = setInterval(() => push(KEEPALIVE), KEEPALIVE_MS)
    const end = () => {
      clearInterval(keepAlive)
      flush()
      if (!body.destroyed && !body.readableEnded) body.push(null)
    }
    const run = generation(writer).pipe(
      Effect.catchAllCause((cause) => {
        if (Cause.isInterruptedOnly(cause)) return Effect.void
        const failure = Cause.failureOption(cause)
        const error = Option.isSome(failure) ? failure.value : toApiError(model, undefined)(Cause.squash(cause))
        return reportInternal(error, requestId).pipe(
          Effect.zipRight(Effect.sync(() => {
            Deferred.unsafeDone(started, Exit.fail(error))
            flush()
            push(frame(publicBody(error, requestId)))
          }))
        )
      }),
      Effect.ensuring(Effect.sync(end))
    )
    const fiber = yield* Effect.forkDaemon(run)
    // The client hung up (the server destroys the body) or the answer ended: the generation goes too.
    body.once("close", () => {
      clearInterval(keepAlive)
      Effect.runFork(Fiber.interrupt(fiber))
    })
    // The client may hang up before the stream starts: take the generation down with it.
    const head = yield* Deferred.await(started).pipe(
      Effect.timeout(`${HEAD_START_MS} millis`),
      Effect.either,
      Effect.onInterrupt(() => Effect.sync(() => body.destroy()))
    )
    if (head._tag === "Left" && head.left._tag !== "TimeoutException") {
      body.destroy()
      yield* Fiber.interrupt(fiber)
      return errorResponse(head.left as ApiError, requestId)
    }
    // Still prefilling after the head start: the headers go out now, with a keep-alive to carry them.
    if (head._tag === "Left") push(KEEPALIVE)
    return HttpServerResponse.raw(body, {
      contentType: "text/event-stream",
      headers: { "cache-control": "no-cache", "x-accel-buffering": "no", connection: "keep-alive" }
    })
  })
