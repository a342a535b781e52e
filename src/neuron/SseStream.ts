/**
 * The SSE answer of a streamed generation. The generation runs in its own fiber and writes
 * frames to a queue through a plain `SseWriter` (the per-token path: no Effect, no Schema, one
 * `JSON.stringify` per chunk). A failure before the generation started, within the head start,
 * is a plain HTTP error; after the headers went out it is an in-band error event (never
 * `[DONE]`). Keep-alives go out every second; a client hanging up takes the generation down.
 */
import { HttpServerResponse } from "@effect/platform"
import { Cause, Deferred, Effect, Exit, Fiber, Option, Queue, Schedule, Stream } from "effect"
import type { ApiError } from "../domain/errors.js"
import { errorResponse, newRequestId, publicBody, reportInternal } from "./ErrorAnswers.js"
import { toApiError } from "./WorkerJobs.js"

const encoder = new TextEncoder()
const frame = (value: unknown) => encoder.encode(`data: ${JSON.stringify(value)}\n\n`)
const KEEPALIVE = encoder.encode(": keep-alive\n\n")
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
    const queue = yield* Queue.unbounded<Uint8Array | null>()
    const started = yield* Deferred.make<void, ApiError>()
    const push = (bytes: Uint8Array) => Queue.unsafeOffer(queue, bytes)
    // Frames written in one synchronous run (a worker message, the closing chunks) leave as one
    // buffer: one pull of the body stream and one socket write instead of one per frame.
    let frames = ""
    const flush = () => {
      if (frames === "") return
      const text = frames
      frames = ""
      push(encoder.encode(text))
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
      Effect.ensuring(Effect.sync(flush).pipe(Effect.zipRight(Queue.offer(queue, null))))
    )
    const fiber = yield* Effect.forkDaemon(run)
    // The client may hang up before the stream starts: take the generation down with it.
    const head = yield* Deferred.await(started).pipe(
      Effect.timeout(`${HEAD_START_MS} millis`),
      Effect.either,
      Effect.onInterrupt(() => Fiber.interrupt(fiber))
    )
    if (head._tag === "Left" && head.left._tag !== "TimeoutException") {
      yield* Fiber.interrupt(fiber)
      return errorResponse(head.left as ApiError, requestId)
    }
    const body = Stream.fromQueue(queue).pipe(
      Stream.takeWhile((item): item is Uint8Array => item !== null),
      Stream.merge(Stream.repeatValue(KEEPALIVE).pipe(Stream.schedule(Schedule.spaced("1 second"))), {
        haltStrategy: "left"
      }),
      Stream.ensuring(Fiber.interrupt(fiber))
    )
    return HttpServerResponse.stream(body, {
      contentType: "text/event-stream",
      headers: { "cache-control": "no-cache", "x-accel-buffering": "no", connection: "keep-alive" }
    })
  })
