/**
 * Running one job on a seat's device worker, as an Effect: the worker's `WorkerError` mapped to
 * the client's error by its `reason.tag`, interruption cancelling the job. The worker's
 * callbacks (prefilled, per-token chunks) are passed through untouched: that path has no Effect.
 */
import { Effect } from "effect"
import {
  type ApiError,
  ContextLengthExceeded,
  InsufficientVram,
  InternalError,
  InvalidRequest,
  isApiError,
  ModelUnavailable,
  WorkerCrashed
} from "../domain/errors.js"
import { type StreamHandlers, type WorkerCall, WorkerError } from "./DeviceWorker.js"
import type { Seat } from "./ModelManager.js"
import type { NeuronSettings } from "./NeuronConfig.js"
import type { GenerationParams, GenerationResult, Job } from "./worker/protocol.js"

/** Any failure of a request as the client's error; a worker's reason names which. */
export const toApiError = (model: string, seat: Seat | undefined) => (error: unknown): ApiError => {
  if (isApiError(error)) return error
  if (error instanceof WorkerError) {
    const r = error.reason
    switch (r.tag) {
      case "Crashed":
        return new WorkerCrashed({ device: r.device, detail: r.detail })
      case "ContextLengthExceeded":
        return new ContextLengthExceeded({ model, limit: r.limit, requested: r.requested })
      case "InsufficientVram":
        return new InsufficientVram({
          model,
          device: seat?.device ?? "unknown",
          required_mb: r.required_mb,
          free_mb: r.free_mb,
          phase: "request"
        })
      case "NotLoaded":
        return new ModelUnavailable({ model, state: "not_loaded" })
      case "InvalidRequest":
        return new InvalidRequest({ message: r.message, param: r.param })
      case "Failed":
        return new InternalError({ detail: r.message })
    }
  }
  return new InternalError({ detail: (error as Error)?.message ?? String(error) })
}

/** Run one job on the seat's worker; interruption cancels it and waits (bounded) for the worker to stop. */
export const runOnWorker = <A>(seat: Seat, message: WorkerCall, events: StreamHandlers = {}) =>
  Effect.async<A, ApiError>((resume) => {
    const { id, promise } = seat.worker.call<A>(message, events)
    promise.then(
      (value) => resume(Effect.succeed(value)),
      (error) => resume(Effect.fail(toApiError(seat.model, seat)(error)))
    )
    return Effect.sync(() => seat.worker.cancel(id)).pipe(
      Effect.zipRight(Effect.promise(() => promise.catch(() => undefined))),
      Effect.timeout("5 seconds"),
      Effect.ignore
    )
  })

const hasImages = (job: Job) =>
  job.kind === "chat" && job.messages.some((m) => m.role === "user" && (m.images?.length ?? 0) > 0)

/** A generation on the seat's worker, with the seat's memory budget; streamed when `events.onChunk` is given. */
export const generate = (
  config: Pick<NeuronSettings, "prefillBaseMb" | "prefillMbPer1kTokens" | "vision" | "streamCoalesceMs">,
  seat: Seat,
  job: Job,
  params: GenerationParams,
  n: number,
  events: StreamHandlers
) =>
  runOnWorker<GenerationResult>(seat, {
    _tag: "generate",
    model: seat.model,
    job,
    params,
    stream: events.onChunk !== undefined,
    ...(events.onChunk !== undefined ? { coalesceMs: config.streamCoalesceMs } : {}),
    ...(n > 1 ? { choices: n, parallel: seat.seats } : {}),
    budget: {
      freeMb: seat.freeMb,
      prefillBaseMb: config.prefillBaseMb,
      prefillMbPer1kTokens: config.prefillMbPer1kTokens,
      device: seat.device,
      ...(hasImages(job) ? { imageEncoderMb: config.vision.encoderMb } : {})
    }
  }, events)
