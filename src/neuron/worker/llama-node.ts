/**
 * The part of @fugood/llama.node the vision engine uses, typed here. The package ships its
 * TypeScript sources without declarations, and they do not compile under this project's strict
 * options (exactOptionalPropertyTypes), so it is loaded with require and given these types.
 */
import { createRequire } from "node:module"

export interface MessagePart {
  readonly type: string
  readonly text?: string
  readonly image_url?: { readonly url: string }
}

export interface ChatMessage {
  readonly role: string
  readonly content: string | ReadonlyArray<MessagePart>
}

export interface CompletionToken {
  readonly token: string
}

export interface CompletionResult {
  readonly text: string
  readonly tokens_predicted: number
  readonly tokens_evaluated: number
  readonly interrupted: boolean
  readonly stopped_eos?: boolean
  readonly stopped_words?: boolean
  readonly stopping_word?: string
  readonly stopped_limited?: boolean
  readonly timings: { readonly prompt_n: number; readonly prompt_ms: number; readonly predicted_n: number }
}

export interface CompletionOptions {
  readonly prompt: string
  readonly media_paths?: ReadonlyArray<string>
  readonly n_predict: number
  readonly temperature: number
  readonly top_k: number
  readonly top_p: number
  readonly min_p: number
  readonly seed?: number
  readonly penalty_repeat: number
  readonly penalty_freq: number
  readonly penalty_present: number
  readonly penalty_last_n: number
  readonly stop: ReadonlyArray<string>
}

export interface LlamaContext {
  completion(options: CompletionOptions, onToken?: (token: CompletionToken) => void): Promise<CompletionResult>
  stopCompletion(): void
  tokenize(
    text: string,
    options: { readonly media_paths: ReadonlyArray<string> }
  ): Promise<{ readonly tokens: Int32Array }>
  getFormattedChat(
    messages: ReadonlyArray<ChatMessage>
  ): string | { readonly prompt: string; readonly media_paths?: Array<string> }
  initMultimodal(options: { readonly path: string; readonly use_gpu: boolean }): boolean
  getMultimodalSupport(): { readonly vision: boolean; readonly audio: boolean }
  getModelInfo(): { readonly metadata: Readonly<Record<string, string>> }
  release(): Promise<void>
}

export interface ModelOptions {
  readonly model: string
  readonly n_ctx: number
  readonly n_batch: number
  readonly n_ubatch: number
  readonly n_threads: number
  readonly n_gpu_layers: number
  readonly n_parallel: number
  readonly flash_attn_type: "auto" | "on" | "off"
  /** Which prebuilt package: "cuda" loads @fugood/node-llama-<platform>-cuda (falls back to the CPU one). */
  readonly lib_variant?: "default" | "cuda" | "vulkan"
}

export interface BackendDevice {
  readonly backend: string
  readonly type: string
  readonly deviceName: string
  readonly maxMemorySize: number
}

interface Binding {
  loadModel(options: ModelOptions): Promise<LlamaContext>
  getBackendDevicesInfo(): Promise<Array<BackendDevice>>
}

const require = createRequire(import.meta.url)

export const binding = (): Binding => require("@fugood/llama.node") as Binding

export const bindingVersion = (): string => {
  try {
    return (require("@fugood/llama.node/package.json") as { version: string }).version
  } catch {
    return "unknown"
  }
}
