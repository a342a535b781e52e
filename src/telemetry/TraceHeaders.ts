/** The W3C traceparent of the current span, for calls made outside the platform's HttpClient. */
import { Effect, Option, type Tracer } from "effect"

export const traceparentOf = (span: Tracer.AnySpan) => `00-${span.traceId}-${span.spanId}-${span.sampled ? "01" : "00"}`

/** `{ traceparent }` under the current span, or no header outside one. */
export const traceHeaders: Effect.Effect<Record<string, string>> = Effect.map(
  Effect.option(Effect.currentSpan),
  (span): Record<string, string> => Option.isSome(span) ? { traceparent: traceparentOf(span.value) } : {}
)
