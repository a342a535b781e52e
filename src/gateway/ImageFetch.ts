/**
 * Images in chat requests, on the gateway: an image sent to a model whose catalogue entry lacks
 * the `vision` capability is refused (400 vision_unsupported, in the client's dialect), and
 * http(s) image URLs are fetched here and sent on as data: URLs (neurons never fetch).
 *
 * Fetching is guarded against SSRF: `[gateway] image_fetch = "off" | "public"`; every address
 * a host name resolves to is checked *after* DNS resolution and the connection goes to that
 * checked address (no rebinding between check and connect); loopback, private, link-local,
 * CGNAT, multicast and reserved ranges are refused unless `image_fetch_allow_private = true`;
 * each redirect is checked the same way (at most 3); the body is capped at
 * `image_fetch_max_bytes` and the whole fetch at `image_fetch_timeout_secs`.
 */
import { Schema } from "effect"
import { lookup as dnsLookup } from "node:dns"
import * as http from "node:http"
import * as https from "node:https"
import { BlockList, isIP, type LookupFunction } from "node:net"
import { ImageRejected } from "../domain/errors.js"
import { imageRefs, readImageHeader } from "../domain/images.js"

const opt = <S extends Schema.Schema.Any>(s: S) => Schema.optionalWith(s, { exact: true })

/** The `[gateway]` keys (GatewayConfig.ts spreads them into its table). */
export const ImageFetchKeys = {
  /** "public" (default): fetch http(s) image URLs from public addresses; "off": refuse image URLs. */
  image_fetch: opt(Schema.Literal("off", "public")),
  /** Also fetch from loopback, private and link-local addresses (default false). */
  image_fetch_allow_private: opt(Schema.Boolean),
  /** Largest fetched image (default 20 MiB). */
  image_fetch_max_bytes: opt(Schema.Int.pipe(Schema.positive())),
  /** Whole fetch, redirects included (default 10 s). */
  image_fetch_timeout_secs: opt(Schema.Number.pipe(Schema.positive()))
}

export interface ImageFetchSettings {
  readonly mode: "off" | "public"
  readonly allowPrivate: boolean
  readonly maxBytes: number
  readonly timeoutMs: number
}

export const resolveImageFetch = (
  gateway: {
    readonly image_fetch?: "off" | "public"
    readonly image_fetch_allow_private?: boolean
    readonly image_fetch_max_bytes?: number
    readonly image_fetch_timeout_secs?: number
  } | undefined
): ImageFetchSettings => ({
  mode: gateway?.image_fetch ?? "public",
  allowPrivate: gateway?.image_fetch_allow_private ?? false,
  maxBytes: gateway?.image_fetch_max_bytes ?? 20 * 1024 * 1024,
  timeoutMs: (gateway?.image_fetch_timeout_secs ?? 10) * 1000
})

const blocked = new BlockList()
for (
  const [net, prefix] of [
    ["0.0.0.0", 8], // "this" network
    ["10.0.0.0", 8],
    ["100.64.0.0", 10], // CGNAT
    ["127.0.0.0", 8],
    ["169.254.0.0", 16], // link-local (cloud metadata lives here)
    ["172.16.0.0", 12],
    ["192.0.0.0", 24],
    ["192.0.2.0", 24],
    ["192.168.0.0", 16],
    ["198.18.0.0", 15],
    ["198.51.100.0", 24],
    ["203.0.113.0", 24],
    ["224.0.0.0", 4], // multicast
    ["240.0.0.0", 4] // reserved, broadcast
  ] as const
) blocked.addSubnet(net, prefix, "ipv4")
for (
  const [net, prefix] of [
    ["::", 128],
    ["::1", 128],
    ["fc00::", 7], // unique local
    ["fe80::", 10], // link-local
    ["ff00::", 8], // multicast
    ["2001:db8::", 32],
    ["64:ff9b::", 96] // NAT64 of any v4 address
  ] as const
) blocked.addSubnet(net, prefix, "ipv6")

/** Whether an address is one a default gateway must not fetch from. */
export const isPrivateAddress = (address: string): boolean => {
  const family = isIP(address)
  if (family === 4) return blocked.check(address, "ipv4")
  if (family === 6) {
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)
    if (mapped) return blocked.check(mapped[1]!, "ipv4")
    return blocked.check(address, "ipv6")
  }
  return true
}

const refused = (param: string, why: string) =>
  new ImageRejected({ code: "image_fetch_failed", message: `${param}: the image URL was not fetched: ${why}`, param })

/** A DNS lookup for the connection that refuses private addresses: the check and the connect use the same address. */
const guardedLookup =
  (settings: ImageFetchSettings, onRefused: (address: string) => void): LookupFunction =>
  (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (error, addresses) => {
      if (error) return callback(error, "", 0)
      const list = addresses as unknown as ReadonlyArray<{ address: string; family: number }>
      const bad = list.find((a) => isPrivateAddress(a.address))
      if (bad && !settings.allowPrivate) {
        onRefused(bad.address)
        return callback(new Error(`${hostname} resolves to ${bad.address}, a private address`), "", 0)
      }
      const first = list[0]
      if (!first) return callback(new Error(`${hostname} has no address`), "", 0)
      if ((options as { all?: boolean }).all) {
        return (callback as unknown as (e: null, a: typeof list) => void)(null, list)
      }
      callback(null, first.address, first.family)
    })
  }

interface Fetched {
  readonly status: number
  readonly location: string | undefined
  readonly contentType: string | undefined
  readonly body: Buffer
}

const get = (url: URL, settings: ImageFetchSettings, param: string, deadline: number): Promise<Fetched> =>
  new Promise((resolve, reject) => {
    let privateAddress: string | undefined
    // A literal IP skips DNS: check it here.
    const host = url.hostname.replace(/^\[|\]$/g, "")
    if (isIP(host) && isPrivateAddress(host) && !settings.allowPrivate) {
      return reject(refused(param, `${host} is a private address`))
    }
    const client = url.protocol === "https:" ? https : http
    const req = client.get(url, {
      lookup: guardedLookup(settings, (address) => (privateAddress = address)),
      timeout: Math.max(1, deadline - Date.now()),
      headers: { accept: "image/*", "user-agent": "cortex-gateway" }
    }, (res) => {
      const status = res.statusCode ?? 0
      if (status >= 300 && status < 400) {
        res.resume()
        return resolve({ status, location: res.headers.location, contentType: undefined, body: Buffer.alloc(0) })
      }
      const declared = Number(res.headers["content-length"] ?? NaN)
      if (Number.isFinite(declared) && declared > settings.maxBytes) {
        res.destroy()
        return reject(refused(param, `it is ${declared} bytes; the limit is ${settings.maxBytes}`))
      }
      const chunks: Array<Buffer> = []
      let size = 0
      res.on("data", (chunk: Buffer) => {
        size += chunk.length
        if (size > settings.maxBytes) {
          res.destroy()
          reject(refused(param, `it is over the limit of ${settings.maxBytes} bytes`))
        } else chunks.push(chunk)
      })
      res.on(
        "end",
        () =>
          resolve({
            status,
            location: undefined,
            contentType: res.headers["content-type"],
            body: Buffer.concat(chunks)
          })
      )
      res.on("error", (e) => reject(refused(param, e.message)))
    })
    req.on("timeout", () => req.destroy(new Error("timed out")))
    req.on("error", (e) => {
      reject(
        privateAddress !== undefined
          ? refused(param, `${url.hostname} resolves to ${privateAddress}, a private address`)
          : refused(param, e.message)
      )
    })
  })

const MAX_REDIRECTS = 3

/** Fetch one image URL as a data: URL, or an ImageRejected naming the part. */
export const fetchImage = async (raw: string, param: string, settings: ImageFetchSettings): Promise<string> => {
  if (settings.mode === "off") {
    throw refused(param, "fetching image URLs is off on this gateway ([gateway] image_fetch); send a data: URL")
  }
  const deadline = Date.now() + settings.timeoutMs
  let url = new URL(raw)
  for (let hop = 0;; hop++) {
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw refused(param, `only http and https URLs are fetched, not ${url.protocol}`)
    }
    if (Date.now() >= deadline) throw refused(param, "timed out")
    const fetched = await get(url, settings, param, deadline)
    if (fetched.location !== undefined) {
      if (hop >= MAX_REDIRECTS) throw refused(param, `more than ${MAX_REDIRECTS} redirects`)
      url = new URL(fetched.location, url)
      continue
    }
    if (fetched.status !== 200) throw refused(param, `the server answered ${fetched.status}`)
    const header = readImageHeader(fetched.body)
    if (!header) throw refused(param, "the response is not a PNG, JPEG, GIF or WebP image")
    const mime = header.format === "jpeg" ? "image/jpeg" : `image/${header.format}`
    return `data:${mime};base64,${fetched.body.toString("base64")}`
  }
}

/**
 * A chat body's images made ready for a neuron: refused when the model lacks vision (known
 * from the catalogue; a model not polled yet is left to the neuron), URLs fetched to data:
 * URLs. Returns the body unchanged (same object) when it has no image to fetch.
 */
export const prepareImages = async (
  body: Record<string, unknown>,
  capabilities: ReadonlyArray<string> | undefined,
  settings: ImageFetchSettings
): Promise<Record<string, unknown>> => {
  const messages = body.messages
  if (!Array.isArray(messages)) return body
  const refs = imageRefs(messages)
  if (refs.length === 0) return body
  if (capabilities !== undefined && !capabilities.includes("vision")) {
    const first = refs[0]!
    throw new ImageRejected({
      code: "vision_unsupported",
      message:
        `${first.param}: the model '${body.model}' does not take images (image_url parts need a model with the vision capability)`,
      param: first.param
    })
  }
  const remote = refs.filter((r) => /^https?:/i.test(r.url))
  if (remote.length === 0) return body
  const fetched = await Promise.all(remote.map((r) => fetchImage(r.url, r.param, settings)))
  const copy = messages.map((m) => ({ ...m, content: Array.isArray(m.content) ? [...m.content] : m.content }))
  remote.forEach((r, i) => {
    const part = copy[r.message].content[r.part]
    const detail = typeof part.image_url === "object" && part.image_url?.detail ? { detail: part.image_url.detail } : {}
    copy[r.message].content[r.part] = { ...part, image_url: { url: fetched[i], ...detail } }
  })
  return { ...body, messages: copy }
}
