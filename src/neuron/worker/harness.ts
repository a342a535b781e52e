/**
 * The engine harness seam: a device worker runs one engine behind one protocol (protocol.ts).
 * `text` is node-llama-cpp (engine.ts, the default, every text model); `vision` is
 * @fugood/llama.node (vision-engine.ts), for models with a multimodal projector (mmproj). Which
 * engine serves a model is the neuron's choice per model (ModelStore: a projector beside the
 * GGUF or named in neuron.toml); the gateway only ever sees capabilities.
 *
 * This module is imported by the neuron too (DeviceWorker): it must not load either engine.
 */
import type { ChildProcess } from "node:child_process"
import { createInterface } from "node:readline"
import type {
  EmbedResult,
  EngineInfo,
  GenerationParams,
  GenerationResult,
  Job,
  LoadedInfo,
  MemoryState,
  ModelEstimate,
  PromptShape,
  RequestBudget,
  TokenLogprob
} from "./protocol.js"

export type WorkerEngineKind = "text" | "vision"

export const isWorkerEngineKind = (s: string | undefined): s is WorkerEngineKind => s === "text" || s === "vision"

export interface StreamSink {
  readonly chunk: (
    choice: number,
    kind: "content" | "reasoning",
    text: string,
    logprobs?: ReadonlyArray<TokenLogprob>
  ) => void
  readonly prefilled: (promptTokens: number, cachedTokens: number) => void
}

/** What the worker's entry point (main.ts) asks of an engine: one method per protocol job. */
export interface WorkerEngine {
  info(): Promise<EngineInfo>
  memory(): Promise<MemoryState>
  estimate(path: string, contextSize: number, sequences: number, batchSize: number): Promise<ModelEstimate>
  load(
    id: string,
    path: string,
    contextSize: number,
    sequences: number,
    batchSize: number,
    gpuLayers?: number,
    estimate?: ModelEstimate,
    projector?: string
  ): Promise<LoadedInfo>
  unload(id: string): Promise<boolean>
  generate(
    id: string,
    job: Job,
    params: GenerationParams,
    budget: RequestBudget,
    signal: AbortSignal,
    sink: StreamSink,
    choices?: number,
    parallel?: number
  ): Promise<GenerationResult>
  embed(id: string, inputs: ReadonlyArray<string>): Promise<EmbedResult>
  countPromptTokens(id: string, job: Job, shape?: PromptShape): Promise<number>
  dispose(): Promise<void>
}

/** Native log lines worth passing on: errors, failed asserts, aborts. */
const NATIVE_ERROR = /\b(error|failed|failure|abort|assert|GGML_ASSERT|exception|fatal)\b/i

/**
 * Read a child's piped stderr line by line: pass on the error lines (prefixed with the worker's
 * name), drop the rest (the vision engine logs every tokenize and decode step), and keep the last
 * error line so a crash can say what the native code said before it died.
 */
export const filterNativeLog = (child: ChildProcess, name: string) => {
  let last: string | undefined
  if (child.stderr) {
    const lines = createInterface({ input: child.stderr, crlfDelay: Infinity })
    lines.on("line", (line) => {
      if (!NATIVE_ERROR.test(line)) return
      last = line.trim().slice(0, 500)
      process.stderr.write(`[worker ${name}] ${line}\n`)
    })
  }
  return { last: () => last }
}
