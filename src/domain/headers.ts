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
