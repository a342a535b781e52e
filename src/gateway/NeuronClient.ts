/**
 * HTTP calls from the gateway to one neuron's control plane (short timeouts; JSON). Every answer
 * is decoded with its schema from the contract (src/domain/contract.ts): a neuron that answers
 * something else fails here, naming the field, instead of three calls later.
 */
import { Data, Effect, Either, ParseResult, Redacted, Schema } from "effect"
import type { NeuronEndpoint } from "./GatewayConfig.js"

export class NeuronUnreachable extends Data.TaggedError("NeuronUnreachable")<{
  readonly node: string
  readonly detail: string
}> {}

/** A neuron answered with an error status; `body` is its OpenAI error envelope. */
export class NeuronRefused extends Data.TaggedError("NeuronRefused")<{
  readonly node: string
  readonly status: number
  readonly body: unknown
  readonly retryAfter: string | null
}> {}

/** A neuron answered 2xx with a body the contract does not allow (another version, a bug). */
export class NeuronAnswerInvalid extends Data.TaggedError("NeuronAnswerInvalid")<{
  readonly node: string
  readonly detail: string
}> {}

export type NeuronError = NeuronUnreachable | NeuronRefused | NeuronAnswerInvalid

export const authHeaders = (neuron: NeuronEndpoint): Record<string, string> =>
  neuron.token ? { authorization: `Bearer ${Redacted.value(neuron.token)}` } : {}

/** Why `body` is not an `A`: the first issue, with its path. */
const mismatch = <A, I>(schema: Schema.Schema<A, I>, body: unknown): Either.Either<A, string> =>
  Either.mapLeft(Schema.decodeUnknownEither(schema, { errors: "first" })(body), (error) => {
    const issue = ParseResult.ArrayFormatter.formatErrorSync(error)[0]
    return issue ? `${issue.path.length > 0 ? `${issue.path.join(".")}: ` : ""}${issue.message}` : "invalid"
  })

export const callNeuron = <A, I>(
  neuron: NeuronEndpoint,
  path: string,
  schema: Schema.Schema<A, I>,
  options: { readonly body?: unknown; readonly timeoutMs: number; readonly headers?: Record<string, string> }
): Effect.Effect<A, NeuronError> =>
  Effect.tryPromise({
    try: async (signal) => {
      const timeout = AbortSignal.timeout(options.timeoutMs)
      const res = await fetch(`${neuron.endpoint}${path}`, {
        method: options.body === undefined ? "GET" : "POST",
        headers: {
          ...authHeaders(neuron),
          ...(options.body === undefined ? {} : { "content-type": "application/json" }),
          ...options.headers
        },
        ...(options.body === undefined ? {} : { body: JSON.stringify(options.body) }),
        signal: AbortSignal.any([signal, timeout])
      })
      const text = await res.text()
      let body: unknown = text
      try {
        body = JSON.parse(text)
      } catch {
        // not JSON: keep the text
      }
      return { status: res.status, body, retryAfter: res.headers.get("retry-after") }
    },
    catch: (e) => new NeuronUnreachable({ node: neuron.name, detail: (e as Error).message })
  }).pipe(
    Effect.flatMap((res): Effect.Effect<A, NeuronError> => {
      if (res.status < 200 || res.status >= 300) {
        return Effect.fail(
          new NeuronRefused({ node: neuron.name, status: res.status, body: res.body, retryAfter: res.retryAfter })
        )
      }
      const decoded = mismatch(schema, res.body)
      return Either.isRight(decoded)
        ? Effect.succeed(decoded.right)
        : Effect.fail(
          new NeuronAnswerInvalid({
            node: neuron.name,
            detail: `${path} answered outside the contract: ${decoded.left}`
          })
        )
    })
  )

/** A one-line description of a failed call, for logs and node state. */
export const describeNeuronError = (error: NeuronError): string =>
  error._tag === "NeuronRefused" ? `HTTP ${error.status}` : error.detail

/**
 * The control-plane client as a service, so the services that load and unload (ColdLoader,
 * Evictor) can be tested against a recorder instead of a neuron.
 */
export class NeuronClient extends Effect.Service<NeuronClient>()("cortex/NeuronClient", {
  succeed: { call: callNeuron }
}) {}
