/**
 * Deterministic GGUF `llama` models for tests, demos and benchmarks. The weights come from an
 * integer hash and are shaped with + - * / sqrt only, so the bytes are identical on every machine.
 */
import { createHash, randomBytes } from "node:crypto"
import { mkdir, rename, rm, writeFile } from "node:fs/promises"
import { dirname } from "node:path"
import * as Gguf from "./GgufWriter.js"

export type ModelShape = "tiny" | "bench"

export interface ShapeSpec {
  readonly layers: number
  readonly dim: number
  readonly heads: number
  readonly kvHeads: number
  readonly ffn: number
  readonly vocab: number
  readonly contextLength: number
  readonly tensorType: Gguf.TensorType
}

export const SHAPES: Readonly<Record<ModelShape, ShapeSpec>> = {
  tiny: { layers: 2, dim: 64, heads: 4, kvHeads: 2, ffn: 128, vocab: 1100, contextLength: 4096, tensorType: "F32" },
  bench: {
    layers: 8,
    dim: 512,
    heads: 8,
    kvHeads: 4,
    ffn: 1408,
    vocab: 32000,
    contextLength: 8192,
    tensorType: "F16"
  }
}

export interface GenerateOptions {
  readonly shape: ModelShape
  /** Default 1. */
  readonly seed?: number
  /** Metadata keys to leave out, e.g. to build a GGUF that makes llama.cpp abort. */
  readonly omitKeys?: ReadonlyArray<string>
  /** Overrides the shape's weight type (norms stay F32). */
  readonly tensorType?: Gguf.TensorType
}

export const CHATML_TEMPLATE = "{%- for message in messages %}"
  + "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
  + "{%- endfor %}"
  + "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"

// Token types as llama.cpp reads them.
const NORMAL = 1
const UNKNOWN = 2
const CONTROL = 3
const BYTE = 6

export const UNK_ID = 0
export const BOS_ID = 1
export const EOS_TEXT_ID = 2
const BYTE_BASE = 3
export const IM_START_ID = BYTE_BASE + 256
export const IM_END_ID = IM_START_ID + 1

const SPACE = "\u2581"

const WORDS = (
  "the of and to in is it you that he was for on are with as his they be at one have this from or had by "
  + "but what some we can out other were all there when up use your how said an each she which do their time "
  + "if will way about many then them write would like so these her long make thing see him two has look more "
  + "day could go come did number sound no most people my over know water than call first who may down side "
  + "been now find any new work part take get place made live where after back little only round man year came "
  + "show every good me give our under name very through just form sentence great think say help low line "
  + "hello world hi model test token text word answer question yes thanks please"
).split(" ")

const CAPITALIZED = "The It He She We They You This What Hello I A".split(" ")

const LETTERS = "abcdefghijklmnopqrstuvwxyz"

const byteToken = (b: number): string => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`

interface Vocab {
  readonly tokens: ReadonlyArray<string>
  readonly types: ReadonlyArray<number>
  readonly scores: ReadonlyArray<number>
}

/** Letter strings in length-then-lexicographic order: a..z, aa..zz, aaa.. */
function* letterCombos(): Generator<string> {
  for (let length = 1;; length++) {
    const digits = new Array<number>(length).fill(0)
    for (;;) {
      yield digits.map((d) => LETTERS[d]).join("")
      let i = length - 1
      while (i >= 0 && digits[i] === LETTERS.length - 1) digits[i--] = 0
      if (i < 0) break
      digits[i]!++
    }
  }
}

/**
 * Word pieces closed under prefixes, so llama.cpp's SPM merges (highest score first) can build every
 * piece from single characters; scoring by length makes merging grow left to right, longest first.
 */
const wordPieces = (size: number): ReadonlyArray<string> => {
  const pieces = new Set<string>([SPACE])
  for (let c = 0x21; c <= 0x7e; c++) pieces.add(String.fromCharCode(c))
  const addWithPrefixes = (word: string) => {
    for (let i = 1; i <= word.length; i++) pieces.add(word.slice(0, i))
  }
  for (const word of [...WORDS, ...CAPITALIZED]) {
    addWithPrefixes(SPACE + word)
    addWithPrefixes(word)
  }
  if (pieces.size > size) throw new Error(`vocabulary needs ${pieces.size} word pieces, room for ${size}`)
  for (const combo of letterCombos()) {
    if (pieces.size >= size) break
    pieces.add(SPACE + combo)
    if (pieces.size < size) pieces.add(combo)
  }
  return [...pieces]
}

const buildVocab = (size: number): Vocab => {
  const tokens: Array<string> = ["<unk>", "<s>", "</s>"]
  const types: Array<number> = [UNKNOWN, CONTROL, CONTROL]
  for (let b = 0; b < 256; b++) {
    tokens.push(byteToken(b))
    types.push(BYTE)
  }
  tokens.push("<|im_start|>", "<|im_end|>")
  types.push(CONTROL, CONTROL)
  for (const piece of wordPieces(size - tokens.length)) {
    tokens.push(piece)
    types.push(NORMAL)
  }
  const scores = tokens.map((token, i) => types[i] === NORMAL ? [...token].length : 0)
  return { tokens, types, scores }
}

/**
 * Tokens greedy decoding may produce: printable, and not whitespace only. Every other `output.weight`
 * row is zeroed, so its logit is exactly 0 while the real tokens' logits spread around 0: the argmax
 * is then a real token (the chance that all of hundreds are negative is nil).
 */
const isEmittable = (token: string, type: number): boolean => {
  if (type === BYTE) {
    const b = parseInt(token.slice(3, 5), 16)
    return b > 0x20 && b < 0x7f
  }
  return type === NORMAL && token.replaceAll(SPACE, "").trim().length > 0
}

/** FNV-1a over the name: a stable per-tensor stream id. */
const hashName = (name: string): number => {
  let h = 0x811c9dc5
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193)
  return h >>> 0
}

const mix32 = (x: number): number => {
  let h = x | 0
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d)
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b)
  return (h ^ (h >>> 16)) >>> 0
}

/** n values uniform in (-scale, scale), a counter-based stream keyed by seed and tensor name. */
export const uniform = (seed: number, name: string, n: number, scale: number): Float32Array => {
  const key = mix32(mix32(seed) ^ hashName(name))
  const out = new Float32Array(n)
  let state = key
  for (let i = 0; i < n; i++) {
    state = (state + 0x9e3779b9) | 0
    const u = mix32(state ^ key)
    out[i] = ((u + 0.5) / 2147483648 - 1) * scale
  }
  return out
}

// Variance 1/fan_in: a linear layer keeps unit-RMS activations at unit scale.
export const linearScale = (fanIn: number): number => Math.sqrt(3 / fanIn)

const FILE_TYPE: Record<Gguf.TensorType, number> = { F32: 0, F16: 1, Q8_0: 7 }

export const generateModel = (options: GenerateOptions): Uint8Array => {
  const spec = SHAPES[options.shape]
  const seed = options.seed ?? 1
  const type = options.tensorType ?? spec.tensorType
  const vocab = buildVocab(spec.vocab)
  const headDim = spec.dim / spec.heads
  const kvDim = headDim * spec.kvHeads
  const omit = new Set(options.omitKeys ?? [])

  const metadata: Array<readonly [string, Gguf.GgufValue]> = [
    ["general.architecture", Gguf.string("llama")],
    ["general.name", Gguf.string(`cortex-${options.shape}-seed${seed}`)],
    ["general.file_type", Gguf.u32(FILE_TYPE[type])],
    ["llama.context_length", Gguf.u32(spec.contextLength)],
    ["llama.embedding_length", Gguf.u32(spec.dim)],
    ["llama.block_count", Gguf.u32(spec.layers)],
    ["llama.feed_forward_length", Gguf.u32(spec.ffn)],
    ["llama.rope.dimension_count", Gguf.u32(headDim)],
    ["llama.rope.freq_base", Gguf.f32(10000)],
    ["llama.attention.head_count", Gguf.u32(spec.heads)],
    ["llama.attention.head_count_kv", Gguf.u32(spec.kvHeads)],
    ["llama.attention.layer_norm_rms_epsilon", Gguf.f32(1e-5)],
    ["llama.vocab_size", Gguf.u32(spec.vocab)],
    ["tokenizer.ggml.model", Gguf.string("llama")],
    ["tokenizer.ggml.tokens", Gguf.strings(vocab.tokens)],
    ["tokenizer.ggml.scores", Gguf.f32s(vocab.scores)],
    ["tokenizer.ggml.token_type", Gguf.i32s(vocab.types)],
    ["tokenizer.ggml.bos_token_id", Gguf.u32(BOS_ID)],
    // ChatML models end a turn with <|im_end|>; making it the EOS lets every stop path agree.
    ["tokenizer.ggml.eos_token_id", Gguf.u32(IM_END_ID)],
    ["tokenizer.ggml.unknown_token_id", Gguf.u32(UNK_ID)],
    ["tokenizer.ggml.padding_token_id", Gguf.u32(UNK_ID)],
    ["tokenizer.ggml.add_bos_token", Gguf.bool(true)],
    ["tokenizer.ggml.add_eos_token", Gguf.bool(false)],
    ["tokenizer.ggml.add_space_prefix", Gguf.bool(true)],
    ["tokenizer.chat_template", Gguf.string(CHATML_TEMPLATE)]
  ]

  const weight = (name: string, dims: readonly [number, number]): Gguf.GgufTensor => ({
    name,
    dims,
    type,
    values: () => uniform(seed, name, dims[0] * dims[1], linearScale(dims[0]))
  })
  const norm = (name: string): Gguf.GgufTensor => ({
    name,
    dims: [spec.dim],
    type: "F32",
    values: () => new Float32Array(spec.dim).fill(1)
  })

  const tensors: Array<Gguf.GgufTensor> = [
    {
      ...weight("token_embd.weight", [spec.dim, spec.vocab]),
      values: () => uniform(seed, "token_embd.weight", spec.dim * spec.vocab, 1)
    }
  ]
  for (let i = 0; i < spec.layers; i++) {
    const blk = `blk.${i}`
    tensors.push(
      norm(`${blk}.attn_norm.weight`),
      weight(`${blk}.attn_q.weight`, [spec.dim, spec.dim]),
      weight(`${blk}.attn_k.weight`, [spec.dim, kvDim]),
      weight(`${blk}.attn_v.weight`, [spec.dim, kvDim]),
      weight(`${blk}.attn_output.weight`, [spec.dim, spec.dim]),
      norm(`${blk}.ffn_norm.weight`),
      weight(`${blk}.ffn_gate.weight`, [spec.dim, spec.ffn]),
      weight(`${blk}.ffn_up.weight`, [spec.dim, spec.ffn]),
      weight(`${blk}.ffn_down.weight`, [spec.ffn, spec.dim])
    )
  }
  tensors.push(norm("output_norm.weight"), {
    ...weight("output.weight", [spec.dim, spec.vocab]),
    values: () => {
      const values = uniform(seed, "output.weight", spec.dim * spec.vocab, linearScale(spec.dim))
      vocab.tokens.forEach((token, id) => {
        if (!isEmittable(token, vocab.types[id]!)) values.fill(0, id * spec.dim, (id + 1) * spec.dim)
      })
      return values
    }
  })

  return Gguf.writeGguf({ metadata: metadata.filter(([key]) => !omit.has(key)), tensors })
}

export const writeModel = (path: string, options: GenerateOptions) => writeAtomically(path, generateModel(options))

/** Write generated bytes through a temp file and a rename: a reader never sees half a GGUF. */
export const writeAtomically = async (path: string, bytes: Uint8Array): Promise<{ bytes: number; sha256: string }> => {
  await mkdir(dirname(path), { recursive: true })
  const temp = `${path}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`
  try {
    await writeFile(temp, bytes)
    await rename(temp, path)
  } catch (error) {
    await rm(temp, { force: true })
    throw error
  }
  return { bytes: bytes.length, sha256: createHash("sha256").update(bytes).digest("hex") }
}
