/** HTTP calls from the gateway to one neuron's control plane (short timeouts; JSON). */
import { Data, Effect, Redacted } from "effect"
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

export const authHeaders = (neuron: NeuronEndpoint): Record<string, string> =>
  neuron.token ? { authorization: `Bearer ${Redacted.value(neuron.token)}` } : {}

export const callNeuron = <A>(
  neuron: NeuronEndpoint,
  path: string,
  options: { readonly body?: unknown; readonly timeoutMs: number; readonly headers?: Record<string, string> }
) =>
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
    Effect.flatMap((res) =>
      res.status >= 200 && res.status < 300
        ? Effect.succeed(res.body as A)
        : Effect.fail(
          new NeuronRefused({ node: neuron.name, status: res.status, body: res.body, retryAfter: res.retryAfter })
        )
    )
  )
