/**
 * The floor for the gateway benchmark: the least a reverse proxy in Node can do. Every request
 * goes to the one upstream over a keep-alive agent, headers minus hop-by-hop ones, bodies piped
 * both ways as they come (no buffering, no parsing), plus the principal header the gateway adds.
 *
 *   node --import tsx bench/gateway/floor.ts --upstream http://127.0.0.1:PORT
 *
 * Prints `{"port":N}` on stdout once listening; exits on SIGTERM, SIGINT or when stdin closes.
 */
import * as http from "node:http"
import { parseArgs } from "node:util"
import { serveAsChild } from "../lib.js"

const { values: args } = parseArgs({ options: { upstream: { type: "string" } } })
if (args.upstream === undefined) {
  process.stderr.write("--upstream URL is required\n")
  process.exit(2)
}
const upstream = new URL(args.upstream)
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 })

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "host"
])

const forwardable = (headers: http.IncomingHttpHeaders): http.OutgoingHttpHeaders => {
  const out: http.OutgoingHttpHeaders = {}
  for (const [key, value] of Object.entries(headers)) {
    if (value !== undefined && !HOP_BY_HOP.has(key)) out[key] = value
  }
  return out
}

const server = http.createServer({ keepAliveTimeout: 60_000, noDelay: true }, (req, res) => {
  const outgoing = http.request({
    agent,
    host: upstream.hostname,
    port: upstream.port,
    method: req.method,
    path: req.url,
    headers: { ...forwardable(req.headers), "x-cortex-principal": "anonymous@floor" }
  })
  outgoing.on("response", (answer) => {
    res.writeHead(answer.statusCode ?? 502, forwardable(answer.headers))
    answer.pipe(res)
  })
  outgoing.on("error", (error) => {
    if (!res.headersSent) {
      res.writeHead(502, { "content-type": "application/json" })
      res.end(JSON.stringify({ error: { message: `upstream: ${error.message}`, type: "server_error" } }))
    } else {
      res.destroy()
    }
  })
  // The client hung up before the answer was complete: stop the upstream request too.
  res.on("close", () => {
    if (!res.writableFinished) outgoing.destroy()
  })
  req.pipe(outgoing)
})

serveAsChild(server)
