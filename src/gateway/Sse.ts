/** Incremental SSE parsing of upstream bytes: data payloads out, comments and blank lines skipped. */
export class SseParser {
  private buffer = ""
  private readonly decoder = new TextDecoder()

  /** Feed bytes; returns the complete `data:` payloads they finish. */
  push(bytes: Uint8Array): Array<string> {
    this.buffer += this.decoder.decode(bytes, { stream: true })
    const out: Array<string> = []
    let start = 0
    for (;;) {
      const end = this.buffer.indexOf("\n", start)
      if (end < 0) break
      let line = this.buffer.slice(start, end)
      start = end + 1
      if (line.endsWith("\r")) line = line.slice(0, -1)
      if (line.startsWith("data:")) out.push(line.slice(line[5] === " " ? 6 : 5))
    }
    this.buffer = this.buffer.slice(start)
    return out
  }
}
