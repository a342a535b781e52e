/**
 * A lower bound on a prompt's token count from its size in bytes, so a prompt that cannot fit
 * the context is refused before anyone tokenizes it (tokenizing 5 MB takes seconds, on the
 * worker that also serves everyone else's decode). Pure.
 */
import type { Job } from "./protocol.js"

const bytes = (text: string) => Buffer.byteLength(text, "utf8")

/**
 * Bytes of the prompt text that reach the tokenizer verbatim: message texts (trimmed, since
 * some chat templates trim them), or the completion prompt. Template markup, tool schemas and
 * tool results only add tokens, and earlier turns' reasoning may be dropped by the template,
 * so leaving those out keeps this a lower bound.
 */
export const promptBytes = (job: Job): number => {
  if (job.kind === "completion") return bytes(job.prompt)
  let total = 0
  for (const m of job.messages) total += bytes(m.text.trim())
  return total
}

/**
 * The fewest tokens `promptBytes` can become when no token covers more than `maxTokenBytes`
 * bytes of input (see Engine.maxTokenBytes for how that figure is made safe).
 */
export const minPromptTokens = (job: Job, maxTokenBytes: number): number =>
  maxTokenBytes > 0 ? Math.floor(promptBytes(job) / maxTokenBytes) : 0
