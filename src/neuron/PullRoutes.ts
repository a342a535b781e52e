/**
 * The neuron's source routes: `POST /models/pull` starts (or joins) a download and answers at
 * once — 202 with the pull's record while it runs, 200 when the model is already cached —,
 * `POST /models/resolve` says what a pull would fetch (files, bytes) without fetching it, and
 * `POST /models/remove` deletes a cached download (refused while the model is loaded).
 */
import { HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect, Schema } from "effect"
import type { PullRecord, RemoveAnswer, ResolveAnswer } from "../domain/contract.js"
import { InvalidJson, InvalidRequest } from "../domain/errors.js"
import { isRefError, parseHfRef } from "../domain/modelSource.js"
import { decodeBody } from "../domain/openai.js"
import { ModelManager } from "./ModelManager.js"

const opt = <S extends Schema.Schema.Any>(s: S) => Schema.optionalWith(s, { exact: true })

/** `{source, quant}` (as models.toml names it), `{file: "hf:…/x.gguf"}` or `{model: "hf:…"}`. */
export const PullRequest = Schema.Struct({
  model: opt(Schema.String),
  source: opt(Schema.String),
  quant: opt(Schema.String),
  file: opt(Schema.String)
})
export type PullRequest = typeof PullRequest.Type

export const RemoveRequest = Schema.Struct({ model: Schema.String })

/** The model id a pull request names (the canonical `hf:` id). */
export const idOfPull = (request: PullRequest): string | InvalidRequest => {
  const named = [request.model, request.source, request.file].filter((x) => x !== undefined)
  if (named.length !== 1) {
    return new InvalidRequest({ message: "Give one of model, source (with quant) or file", param: "source" })
  }
  if (request.quant !== undefined && request.source === undefined) {
    return new InvalidRequest({ message: "quant goes with source", param: "quant" })
  }
  const ref = parseHfRef(named[0]!, request.quant)
  return isRefError(ref)
    ? new InvalidRequest({ message: ref.error, param: request.model ? "model" : "source" })
    : ref.id
}

const bodyOf = <A, I>(schema: Schema.Schema<A, I>) =>
  Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const text = yield* request.text.pipe(
      Effect.mapError(() => new InvalidJson({ message: "Could not read the request body" }))
    )
    return yield* decodeBody(schema, text)
  })

export const pullRoute = Effect.gen(function*() {
  const models = yield* ModelManager
  const id = idOfPull(yield* bodyOf(PullRequest))
  if (typeof id !== "string") return yield* id
  const record: PullRecord = yield* models.pull(id)
  return HttpServerResponse.unsafeJson(record, { status: record.status === "downloading" ? 202 : 200 })
})

export const resolveRoute = Effect.gen(function*() {
  const models = yield* ModelManager
  const id = idOfPull(yield* bodyOf(PullRequest))
  if (typeof id !== "string") return yield* id
  const answer: ResolveAnswer = yield* models.resolveSource(id)
  return HttpServerResponse.unsafeJson(answer)
})

export const removeRoute = Effect.gen(function*() {
  const models = yield* ModelManager
  const request = yield* bodyOf(RemoveRequest)
  const answer: RemoveAnswer = yield* models.removeCached(request.model)
  return HttpServerResponse.unsafeJson(answer)
})
