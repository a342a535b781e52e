/** The neuron's shared api_token, compared in constant time. */
import { createHash, timingSafeEqual } from "node:crypto"

const digest = (text: string) => createHash("sha256").update(text, "utf8").digest()

/**
 * Whether a presented token is the configured one. Both sides are hashed first so the buffers
 * are always of equal length: `timingSafeEqual` then leaks neither the content nor the length.
 */
export const tokenMatches = (presented: string | undefined, expected: string) =>
  presented !== undefined && timingSafeEqual(digest(presented), digest(expected))
