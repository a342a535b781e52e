/** Headers of the gateway ⇄ neuron contract. */

/**
 * Sent by the gateway on a non-streamed call, with an interval in ms: while the answer is not
 * ready, the neuron sends `102 Processing` that often, so the gateway's idle timeout (which
 * covers the wait for the answer's head) tells a slow generation from a dead upstream. A direct
 * client that does not send it gets a plain answer.
 */
export const PROGRESS_HEADER = "x-cortex-progress"

/** The interval the neuron honours: between a quarter second and a minute. */
export const progressIntervalMs = (header: string | undefined): number | undefined => {
  if (header === undefined) return undefined
  const ms = Number(header)
  return Number.isFinite(ms) ? Math.min(60_000, Math.max(250, ms)) : undefined
}

/**
 * Sent by the gateway with the model name as the client wrote it (an alias, say): the gateway
 * rewrites the body's `model` to the neuron's id, and the neuron answers with this name instead,
 * so every answer names the model the client asked for. Percent-encoded: a name may hold
 * characters a header cannot.
 */
export const MODEL_NAME_HEADER = "x-cortex-model-name"

export const encodeModelName = (name: string) => encodeURIComponent(name)

/** The name to answer with: the header's when it decodes to a plausible model name, else the body's. */
export const answeredModelName = (header: string | undefined, bodyModel: string): string => {
  if (header === undefined || header.length === 0 || header.length > 3 * 256) return bodyModel
  try {
    const name = decodeURIComponent(header)
    return name.length > 0 && name.length <= 256 ? name : bodyModel
  } catch {
    return bodyModel
  }
}
