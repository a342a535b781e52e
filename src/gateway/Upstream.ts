/**
 * The gateway's HTTP client for neuron inference calls: node:http with a keep-alive agent per
 * neuron. Measured in bench/gateway, global fetch (web streams over undici) was about a third of
 * the gateway's CPU per request; a plain node:http request costs a fraction of that.
 */
import * as http from "node:http"
import * as https from "node:https"

export interface UpstreamResponse {
  readonly status: number
  readonly headers: http.IncomingHttpHeaders
  readonly body: http.IncomingMessage
}

const agents = new Map<string, http.Agent>()

const agentFor = (url: URL): http.Agent => {
  let agent = agents.get(url.origin)
  if (!agent) {
    const options = { keepAlive: true, maxSockets: 512, keepAliveMsecs: 10_000 }
    agent = url.protocol === "https:" ? new https.Agent(options) : new http.Agent(options)
    agents.set(url.origin, agent)
  }
  return agent
}

export const post = (
  target: string,
  headers: Record<string, string>,
  body: string,
  signal: AbortSignal
): Promise<UpstreamResponse> =>
  new Promise((resolve, reject) => {
    const url = new URL(target)
    const request = (url.protocol === "https:" ? https : http).request(url, {
      method: "POST",
      agent: agentFor(url),
      headers: { ...headers, "content-length": Buffer.byteLength(body) },
      signal
    }, (res) => resolve({ status: res.statusCode ?? 502, headers: res.headers, body: res }))
    request.once("error", reject)
    request.end(body)
  })

export const readAll = (body: http.IncomingMessage): Promise<Buffer> =>
  new Promise((resolve, reject) => {
    const chunks: Array<Buffer> = []
    body.on("data", (chunk: Buffer) => chunks.push(chunk))
    body.once("end", () => resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)))
    body.once("error", reject)
    body.once("aborted", () => reject(new Error("upstream closed the connection")))
  })

export const parseJson = (bytes: Buffer): unknown => {
  try {
    return JSON.parse(bytes.toString("utf8"))
  } catch {
    return bytes.toString("utf8")
  }
}
