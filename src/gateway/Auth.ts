/**
 * API keys: `Authorization: Bearer <key>` or `x-api-key`. With require_auth, a missing or
 * unknown key is refused (401 in the route's dialect); without it, any key is accepted (clients
 * send placeholders) and a known key still names its principal.
 */
import { Redacted } from "effect"
import { createHash, timingSafeEqual } from "node:crypto"
import type { GatewaySettings } from "./GatewayConfig.js"

type Keys = GatewaySettings["keys"]

const digest = (secret: string) => createHash("sha256").update(secret).digest()

/** The configured keys' digests, computed once per key list. */
const digests = new WeakMap<Keys, ReadonlyArray<Buffer>>()

/**
 * The configured key equal to `key`. Compared as SHA-256 digests with timingSafeEqual: equal
 * lengths whatever the key, and no early exit on the first differing byte, so the answer's
 * timing says nothing about how close a guess was. Every key is compared.
 */
export const findKey = (keys: Keys, key: string): Keys[number] | undefined => {
  let known = digests.get(keys)
  if (!known) {
    known = keys.map((k) => digest(Redacted.value(k.key)))
    digests.set(keys, known)
  }
  const given = digest(key)
  let found: Keys[number] | undefined
  known.forEach((d, i) => {
    if (timingSafeEqual(d, given) && found === undefined) found = keys[i]
  })
  return found
}

export const keyFrom = (headers: Readonly<Record<string, string | undefined>>): string | undefined => {
  const auth = headers["authorization"]
  if (auth && /^bearer\s+/i.test(auth)) return auth.replace(/^bearer\s+/i, "").trim()
  return headers["x-api-key"]?.trim()
}

/** The principal for this request, or undefined when it must be refused. */
export const principalFor = (
  config: Pick<GatewaySettings, "requireAuth" | "keys">,
  headers: Readonly<Record<string, string | undefined>>,
  remote: string
): string | undefined => {
  const key = keyFrom(headers)
  const known = key !== undefined ? findKey(config.keys, key) : undefined
  if (known) return known.name
  if (config.requireAuth) return undefined
  return `anonymous@${remote}`
}
