/** Small helpers the benchmark scripts share. */
import { createServer } from "node:net"

/** A free loopback port (listen on 0, read it, close). */
export const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })

/** A numeric command-line option, or exit 2 with a message naming it. */
export const numberArg = (name: string, raw: string | undefined, min: number, integer: boolean): number => {
  const n = Number(raw)
  if (!Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) {
    console.error(`--${name} must be ${integer ? "an integer" : "a number"} ≥ ${min}, got ${raw}`)
    process.exit(2)
  }
  return n
}
