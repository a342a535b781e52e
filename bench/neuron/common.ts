/** What the three sides of the neuron benchmark share: requests, samples, prompts, statistics. */

export interface Message {
  readonly role: "user" | "assistant"
  readonly content: string
}

/** One chat request, as every side serves it (the chat template from the GGUF, greedy). */
export interface ChatRequest {
  readonly messages: ReadonlyArray<Message>
  readonly maxTokens: number
  /** In-process only: the context sequence to run on (the servers pick their own slot). */
  readonly sequence?: number
}

/** What one request did and how long it took, from the client's side. */
export interface Sample {
  /** Tokens in the prompt as the side counts them. */
  readonly promptTokens: number
  /** Prompt tokens the side reused from its cache, where it says (null: not reported). */
  readonly cachedTokens: number | null
  readonly completionTokens: number
  /** Request start → first content text. */
  readonly ttftMs: number
  /** First content text → last content text. */
  readonly decodeSpanMs: number
  /** Start and end on the measuring clock (for aggregates over concurrent requests). */
  readonly startMs: number
  readonly endMs: number
  /** The generated text (a second turn sends it back as the assistant's reply). */
  readonly text: string
  /** The server's own account, where it gives one (llama-server `timings`, neuron `usage.timing`). */
  readonly server?: Record<string, number>
}

/** A load of the model on one side. */
export interface LoadSample {
  readonly ms: number
  readonly detail?: Record<string, number>
}

/** One side of the bench: the in-process child or one of the two servers. */
export interface Side {
  readonly name: string
  /** Load the model afresh (the per-repeat load-time measurement); the side is ready afterwards. */
  readonly load: () => Promise<LoadSample>
  /** Run the requests at once; their samples in order. */
  readonly chats: (requests: ReadonlyArray<ChatRequest>) => Promise<ReadonlyArray<Sample>>
  readonly stop: () => Promise<void>
}

// ---------------------------------------------------------------------------------------------
// Prompts

/** Deterministic filler text of `n` words from the bench vocabulary (about one token a word). */
export const fillerText = (n: number, seed = 0x12345678): string => {
  const words = (
    "the of and to in is it you that he was for on are with as his they be at one have this from or had by "
    + "but what some we can out other were all there when up use your how said an each she which do their time "
    + "if will way about many then them write would like so these her long make thing see him two has look more "
    + "day could go come did number sound no most people my over know water than call first who may down side"
  ).split(" ")
  let state = seed >>> 0
  const out: Array<string> = []
  for (let i = 0; i < n; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0
    out.push(words[state % words.length]!)
  }
  return out.join(" ")
}

// ---------------------------------------------------------------------------------------------
// Statistics

export interface Summary {
  readonly median: number
  readonly min: number
  readonly max: number
  readonly samples: ReadonlyArray<number>
}

export const round = (x: number, digits = 2) => {
  const f = 10 ** digits
  return Math.round(x * f) / f
}

export const summarize = (samples: ReadonlyArray<number>): Summary => {
  const sorted = [...samples].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  const median = sorted.length === 0
    ? NaN
    : sorted.length % 2 === 1
    ? sorted[mid]!
    : (sorted[mid - 1]! + sorted[mid]!) / 2
  return {
    median: round(median),
    min: round(sorted[0] ?? NaN),
    max: round(sorted[sorted.length - 1] ?? NaN),
    samples: samples.map((x) => round(x))
  }
}

export const decodeRate = (s: Sample) => s.decodeSpanMs > 0 ? (s.completionTokens - 1) / (s.decodeSpanMs / 1000) : NaN
export const prefillRate = (s: Sample) => s.promptTokens / (s.ttftMs / 1000)

/** Total completion tokens over the span from the first start to the last end. */
export const aggregateRate = (samples: ReadonlyArray<Sample>) => {
  const start = Math.min(...samples.map((s) => s.startMs))
  const end = Math.max(...samples.map((s) => s.endMs))
  return samples.reduce((n, s) => n + s.completionTokens, 0) / ((end - start) / 1000)
}

// ---------------------------------------------------------------------------------------------
// SSE

/** Parse an SSE response body into `data:` payloads, skipping comment lines such as keep-alives. */
export async function* sseEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder()
  let buffer = ""
  const reader = body.getReader()
  try {
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n")
      let boundary: number
      while ((boundary = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, boundary)
        buffer = buffer.slice(boundary + 2)
        const data = event
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n")
        if (data.length > 0) yield data
      }
    }
  } finally {
    reader.releaseLock()
  }
}
