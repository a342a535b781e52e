/**
 * How a failure answers an OpenAI client: the envelope it reads, the status and headers it
 * gets, and what of an internal error goes to the log instead (under a short request id).
 */
import { HttpServerResponse } from "@effect/platform"
import { Effect } from "effect"
import { randomBytes } from "node:crypto"
import { type ApiError, type OpenAIErrorBody, scrubMessage } from "../domain/errors.js"

/** A short id that ties an answer to its log line. */
export const newRequestId = () => randomBytes(4).toString("hex")

/**
 * The envelope a client sees. An internal error says only that it happened, under a request
 * id; its detail goes to the log (`reportInternal`) under the same id.
 */
export const publicBody = (error: ApiError, requestId: string): OpenAIErrorBody => {
  if (error._tag === "InternalError") {
    return {
      error: {
        message: `Internal server error (request id ${requestId})`,
        type: "server_error",
        code: "internal_error",
        param: null
      }
    }
  }
  const body = error.body
  return { error: { ...body.error, message: scrubMessage(body.error.message) } }
}

/** Log what the client will not see of an error. */
export const reportInternal = (error: ApiError, requestId: string) =>
  error._tag === "InternalError"
    ? Effect.logError(`internal error (request id ${requestId}): ${error.detail}`)
    : Effect.void

export const errorResponse = (error: ApiError, requestId = newRequestId()) =>
  HttpServerResponse.unsafeJson(publicBody(error, requestId), { status: error.status, headers: error.headers })
