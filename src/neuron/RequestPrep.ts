/**
 * A chat or text completion request made into a worker job before it takes a seat: sampling
 * resolved, n, logprobs, echo, response_format and tools/tool_choice checked (422 by name, never
 * ignored), and a prompt refused whose size alone proves it cannot fit the context.
 */
import { Effect } from "effect"
import { type ApiError, ContextLengthExceeded, InvalidRequest, isApiError } from "../domain/errors.js"
import type { ImageLimits } from "../domain/images.js"
import type { ChatCompletionRequest, CompletionRequest } from "../domain/openai.js"
import { toWorkerMessages } from "./ChatMessages.js"
import { resolveSampling } from "./Sampling.js"
import { minPromptTokens } from "./worker/promptSize.js"
import type { GenerationParams, Job, PromptShape } from "./worker/protocol.js"

export type Kind = "chat" | "completion"

type Sampling = ReturnType<typeof resolveSampling>

export interface Prepared {
  readonly job: Job
  readonly params: GenerationParams
  readonly n: number
}

/** The tools a chat request offers, as the worker renders them; also what `/tokenize` counts with. */
export const promptShapeOf = (
  request: Pick<ChatCompletionRequest, "tools" | "tool_choice">
): PromptShape => {
  const tools = (request.tools ?? []).map((t) => ({
    name: t.function.name,
    ...(t.function.description !== undefined ? { description: t.function.description } : {}),
    ...(t.function.parameters !== undefined ? { parameters: t.function.parameters } : {})
  }))
  const choice = request.tool_choice ?? "auto"
  const toolChoice = typeof choice === "string" ? choice : { name: choice.function.name }
  if (typeof toolChoice === "object" && !tools.some((t) => t.name === toolChoice.name)) {
    throw new InvalidRequest({
      message: `tool_choice names '${toolChoice.name}', which is not in tools`,
      param: "tool_choice"
    })
  }
  return { tools, toolChoice: tools.length === 0 ? "none" : toolChoice }
}

const prepareCompletion = (request: CompletionRequest, params: Sampling) => {
  if (request.echo === true && request.logprobs != null) {
    // The prompt's own token log-probabilities would need a scoring pass the engine does not make.
    throw new InvalidRequest({ message: "echo cannot be combined with logprobs", param: "echo" })
  }
  return {
    job: {
      kind: "completion" as const,
      prompt: typeof request.prompt === "string" ? request.prompt : request.prompt[0]!
    },
    params: {
      ...params,
      tools: [],
      toolChoice: "none" as const,
      ...(request.logprobs != null ? { logprobs: request.logprobs } : {})
    }
  }
}

const prepareChat = (request: ChatCompletionRequest, params: Sampling, vision: ImageLimits | undefined) => {
  if (request.top_logprobs != null && request.logprobs !== true) {
    throw new InvalidRequest({ message: "top_logprobs needs logprobs: true", param: "top_logprobs" })
  }
  const format = request.response_format
  const responseFormat = format?.type === "json_object"
    ? { kind: "json" as const }
    : format?.type === "json_schema"
    ? format.json_schema.schema
      ? { kind: "schema" as const, schema: format.json_schema.schema }
      : { kind: "json" as const }
    : undefined
  return {
    job: { kind: "chat" as const, messages: toWorkerMessages(request.messages, vision) },
    params: {
      ...params,
      ...(responseFormat ? { responseFormat } : {}),
      ...promptShapeOf(request),
      ...(request.logprobs === true ? { logprobs: request.top_logprobs ?? 0 } : {})
    }
  }
}

/** The job, its generation parameters and its choice count; 422 for what this server will not do. */
export const prepare = (
  request: ChatCompletionRequest | CompletionRequest,
  kind: Kind,
  maxN: number,
  /** The model's image limits when it has vision; images are refused without. */
  vision?: ImageLimits
): Effect.Effect<Prepared, ApiError> =>
  Effect.try({
    try: (): Prepared => {
      const n = request.n ?? 1
      if (n > maxN) {
        throw new InvalidRequest({
          message: `n is ${n}; this server generates at most ${maxN} choices per request (max_n)`,
          param: "n"
        })
      }
      const sampling = resolveSampling(request)
      const prepared = kind === "completion"
        ? prepareCompletion(request as CompletionRequest, sampling)
        : prepareChat(request as ChatCompletionRequest, sampling, vision)
      return { ...prepared, n }
    },
    catch: (e) => isApiError(e) ? e : new InvalidRequest({ message: String(e), param: null })
  })

/**
 * Refuse, before admission and before any tokenizing, a prompt whose byte size alone proves
 * it cannot fit the context (400 context_length_exceeded, `requested` then being that lower
 * bound). Without this a multi-MB prompt took a seat and held the device worker for seconds
 * while it was tokenized, only to be refused. Prompts under the bound are tokenized, and
 * checked exactly, by the worker.
 */
export const refuseOversized = (
  model: string,
  job: Job,
  limits: { readonly maxTokenBytes: number; readonly contextSize: number }
): Effect.Effect<void, ContextLengthExceeded> => {
  const atLeast = minPromptTokens(job, limits.maxTokenBytes)
  return atLeast >= limits.contextSize
    ? Effect.fail(new ContextLengthExceeded({ model, limit: limits.contextSize, requested: atLeast }))
    : Effect.void
}
