/**
 * API keys: `Authorization: Bearer <key>` or `x-api-key`. With require_auth, a missing or
 * unknown key is refused (401 in the route's dialect); without it, any key is accepted (clients
 * send placeholders) and a known key still names its principal.
 */
import { Redacted } from "effect"
import type { GatewaySettings } from "./GatewayConfig.js"

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
  const known = key !== undefined ? config.keys.find((k) => Redacted.value(k.key) === key) : undefined
  if (known) return known.name
  if (config.requireAuth) return undefined
  return `anonymous@${remote}`
}
