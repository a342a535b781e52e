/**
 * Token log-probabilities for OpenAI's `logprobs`. Plain code on the per-token path, and only
 * built for a request that asks: without one, nothing here runs.
 *
 * node-llama-cpp 3.21 computes probabilities only in `LlamaContextSequence.evaluateWithMetadata`;
 * `LlamaChat` and `LlamaCompletion` call the plain `sequence.evaluate`. Rather than re-implement
 * their generation loops (chat templates, function calling, segments, stop triggers), a recorder
 * shadows `evaluate` on the one sequence for the one generation with the same loop over
 * `evaluateWithMetadata` (as `evaluate` itself is written), records each sampled token with its
 * probabilities, and is removed afterwards. The emitted chunks then name the tokens they carry;
 * they are matched in order against the record (tokens held back or dropped, such as a stop
 * trigger, are skipped).
 *
 * The probabilities are those llama.cpp sampled from: after penalties, grammar, and (when
 * temperature > 0) top-k/top-p/min-p and temperature; under greedy decoding, the model's full
 * distribution.
 */
import type { LlamaContextSequence, LlamaModel, Token } from "node-llama-cpp"
import type { TokenAlternative, TokenLogprob } from "./protocol.js"

interface Sampled {
  readonly token: Token
  readonly confidence?: number
  readonly probabilities?: Map<Token, number>
}

/** OpenAI's floor for a token the distribution gives no mass (a log of 0 is not JSON). */
const FLOOR = -9999
const logOf = (p: number | undefined) => p === undefined || !(p > 0) ? FLOOR : Math.max(FLOOR, Math.log(p))
/** Tokens of context to detokenize a token with its leading space, as it reads in the text. */
const CONTEXT = 4

export class LogprobRecorder {
  private readonly sampled: Array<Sampled> = []
  private next = 0
  private context: Array<Token>

  constructor(private readonly model: LlamaModel, private readonly top: number, prompt: ReadonlyArray<Token>) {
    this.context = prompt.slice(-CONTEXT)
  }

  /** Make the sequence's `evaluate` record probabilities; returns the undo. */
  attach(sequence: LlamaContextSequence): () => void {
    const metadata = this.top > 0 ? { probabilities: true, confidence: true } : { confidence: true }
    const sampled = this.sampled
    const recording = async function*(tokens: Array<Token>, options?: Parameters<LlamaContextSequence["evaluate"]>[1]) {
      const iterator = sequence.evaluateWithMetadata(tokens, metadata, options)
      let input: void | Token | Array<Token> = undefined
      try {
        while (true) {
          const { done, value } = await iterator.next(input)
          if (done) return
          sampled.push(value as Sampled)
          input = yield value.token
        }
      } finally {
        await iterator.return()
      }
    }
    Object.defineProperty(sequence, "evaluate", { value: recording, configurable: true, writable: true })
    return () => {
      delete (sequence as { evaluate?: unknown }).evaluate
    }
  }

  /** The entries for tokens emitted as output, in order. */
  take(tokens: ReadonlyArray<Token>): Array<TokenLogprob> {
    const out: Array<TokenLogprob> = []
    for (const token of tokens) {
      const found = this.find(token)
      if (found === undefined) continue
      const text = this.text(token)
      const top: Array<TokenAlternative> = []
      if (this.top > 0 && found.probabilities) {
        for (const [alternative, p] of found.probabilities) {
          if (top.length >= this.top) break
          const altText = this.text(alternative)
          top.push({ token: altText, logprob: logOf(p), bytes: bytesOf(altText) })
        }
      }
      out.push({
        token: text,
        logprob: logOf(found.probabilities?.get(token) ?? found.confidence),
        bytes: bytesOf(text),
        top_logprobs: top
      })
      this.context.push(token)
      if (this.context.length > 2 * CONTEXT) this.context = this.context.slice(-CONTEXT)
    }
    return out
  }

  /** Tokens emitted as something other than content (reasoning): consumed, not reported. */
  skip(tokens: ReadonlyArray<Token>) {
    for (const token of tokens) {
      if (this.find(token) !== undefined) this.context.push(token)
    }
  }

  private find(token: Token): Sampled | undefined {
    for (let i = this.next; i < this.sampled.length; i++) {
      if (this.sampled[i]!.token === token) {
        this.next = i + 1
        return this.sampled[i]
      }
    }
    return undefined
  }

  private text(token: Token) {
    return this.model.detokenize([token], false, this.context)
  }
}

const bytesOf = (text: string) => Array.from(Buffer.from(text, "utf8"))
