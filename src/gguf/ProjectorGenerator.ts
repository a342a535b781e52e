/**
 * Deterministic multimodal projectors ("mmproj" GGUFs) for tests: a small CLIP-style vision
 * encoder with a LLaVA `mlp` projector, in the `clip` architecture llama.cpp's mtmd loader reads
 * (tools/mtmd/clip.cpp of the llama.cpp that @fugood/llama.node ships). Its output width equals
 * the language model's `embedding_length`, which mtmd checks before it accepts the pair.
 *
 * Tensors (dims innermost first): `v.patch_embd.weight` [patch, patch, 3, embd] (F16: the conv
 * goes through im2col), `v.patch_embd.bias`?, `v.position_embd.weight` [embd, patches],
 * `v.pre_ln.*`, per block `v.blk.N.{attn_q,attn_k,attn_v,attn_out}.{weight,bias}`,
 * `v.blk.N.{ln1,ln2}.{weight,bias}`, `v.blk.N.ffn_up` [embd, ff], `v.blk.N.ffn_down` [ff, embd],
 * then the projector `mm.0` [embd, hidden] → GELU → `mm.2` [hidden, lmDim].
 */
import * as Gguf from "./GgufWriter.js"
import { linearScale, uniform, writeAtomically, writeModel } from "./ModelGenerator.js"

export interface ProjectorSpec {
  /** The language model's embedding width: the projector's output width. */
  readonly lmDim: number
  readonly imageSize: number
  readonly patchSize: number
  readonly dim: number
  readonly heads: number
  readonly ffn: number
  readonly layers: number
  readonly hidden: number
}

/** 64×64 pixels in 8×8 patches: 64 image tokens per image, enough to span several prefill windows. */
export const TINY_PROJECTOR: ProjectorSpec = {
  lmDim: 64,
  imageSize: 64,
  patchSize: 8,
  dim: 32,
  heads: 2,
  ffn: 96,
  layers: 2,
  hidden: 64
}

export const imageTokens = (spec: ProjectorSpec): number => (spec.imageSize / spec.patchSize) ** 2

export interface ProjectorOptions {
  readonly spec?: ProjectorSpec
  /** Default 1. */
  readonly seed?: number
  /** Metadata keys to leave out (loader errors). */
  readonly omitKeys?: ReadonlyArray<string>
  /**
   * Give `mm.0.weight` an input width that does not match the encoder's: llama.cpp's warmup
   * then fails GGML_ASSERT(ggml_can_mul_mat) and aborts the process (crash tests).
   */
  readonly mismatchedProjection?: boolean
}

export const generateProjector = (options: ProjectorOptions = {}): Uint8Array => {
  const spec = options.spec ?? TINY_PROJECTOR
  const seed = options.seed ?? 1
  const patches = imageTokens(spec)
  const metadata: Array<readonly [string, Gguf.GgufValue]> = [
    ["general.architecture", Gguf.string("clip")],
    ["general.name", Gguf.string(`cortex-vision-projector-seed${seed}`)],
    ["general.file_type", Gguf.u32(0)],
    ["clip.has_vision_encoder", Gguf.bool(true)],
    ["clip.has_text_encoder", Gguf.bool(false)],
    ["clip.projector_type", Gguf.string("mlp")],
    ["clip.use_gelu", Gguf.bool(true)],
    ["clip.vision.image_size", Gguf.u32(spec.imageSize)],
    ["clip.vision.patch_size", Gguf.u32(spec.patchSize)],
    ["clip.vision.embedding_length", Gguf.u32(spec.dim)],
    ["clip.vision.feed_forward_length", Gguf.u32(spec.ffn)],
    ["clip.vision.projection_dim", Gguf.u32(spec.lmDim)],
    ["clip.vision.attention.head_count", Gguf.u32(spec.heads)],
    ["clip.vision.attention.layer_norm_epsilon", Gguf.f32(1e-5)],
    // The llava graph runs blocks 0..n-2 (the "second to last layer" convention); one more is read.
    ["clip.vision.block_count", Gguf.u32(spec.layers)],
    ["clip.vision.image_mean", Gguf.f32s([0.5, 0.5, 0.5])],
    ["clip.vision.image_std", Gguf.f32s([0.5, 0.5, 0.5])]
  ]

  const random = (name: string, dims: ReadonlyArray<number>, fanIn: number, type: Gguf.TensorType = "F32") => ({
    name,
    dims,
    type,
    values: () => uniform(seed, name, dims.reduce((a, b) => a * b, 1), linearScale(fanIn))
  })
  const filled = (name: string, n: number, value: number): Gguf.GgufTensor => ({
    name,
    dims: [n],
    type: "F32",
    values: () => new Float32Array(n).fill(value)
  })
  const norm = (prefix: string, n: number) => [filled(`${prefix}.weight`, n, 1), filled(`${prefix}.bias`, n, 0)]

  const d = spec.dim
  const tensors: Array<Gguf.GgufTensor> = [
    random("v.patch_embd.weight", [spec.patchSize, spec.patchSize, 3, d], 3 * spec.patchSize ** 2, "F16"),
    filled("v.patch_embd.bias", d, 0),
    {
      ...random("v.position_embd.weight", [d, patches], d),
      values: () => uniform(seed, "v.position_embd", d * patches, 0.5)
    },
    ...norm("v.pre_ln", d)
  ]
  for (let i = 0; i < spec.layers; i++) {
    const blk = `v.blk.${i}`
    tensors.push(
      ...norm(`${blk}.ln1`, d),
      random(`${blk}.attn_q.weight`, [d, d], d),
      filled(`${blk}.attn_q.bias`, d, 0),
      random(`${blk}.attn_k.weight`, [d, d], d),
      filled(`${blk}.attn_k.bias`, d, 0),
      random(`${blk}.attn_v.weight`, [d, d], d),
      filled(`${blk}.attn_v.bias`, d, 0),
      random(`${blk}.attn_out.weight`, [d, d], d),
      filled(`${blk}.attn_out.bias`, d, 0),
      ...norm(`${blk}.ln2`, d),
      random(`${blk}.ffn_up.weight`, [d, spec.ffn], d),
      filled(`${blk}.ffn_up.bias`, spec.ffn, 0),
      random(`${blk}.ffn_down.weight`, [spec.ffn, d], spec.ffn),
      filled(`${blk}.ffn_down.bias`, d, 0)
    )
  }
  tensors.push(
    random("mm.0.weight", [options.mismatchedProjection ? d + 8 : d, spec.hidden], d),
    filled("mm.0.bias", spec.hidden, 0),
    // Scaled up so an image's tokens weigh about as much as the text embeddings (uniform ±1).
    {
      ...random("mm.2.weight", [spec.hidden, spec.lmDim], spec.hidden),
      values: () => uniform(seed, "mm.2.weight", spec.hidden * spec.lmDim, 3 * linearScale(spec.hidden))
    },
    filled("mm.2.bias", spec.lmDim, 0)
  )
  const omit = new Set(options.omitKeys ?? [])
  return Gguf.writeGguf({ metadata: metadata.filter(([key]) => !omit.has(key)), tensors })
}

export const writeProjector = (
  path: string,
  options: ProjectorOptions = {}
): Promise<{ bytes: number; sha256: string }> => writeAtomically(path, generateProjector(options))

/** The projector file the neuron pairs with the model at `modelPath`: `<id>.mmproj.gguf` beside it. */
export const projectorPathFor = (modelPath: string) => modelPath.replace(/(\.gguf)?$/i, ".mmproj.gguf")

/**
 * `cortex make-model --shape vision`: a tiny language model at `path` and its projector beside
 * it (`<id>.mmproj.gguf`), which makes the neuron serve it with the vision engine.
 */
export const writeVisionModel = async (path: string, seed = 1) => {
  const model = await writeModel(path, { shape: "tiny", seed })
  const projector = projectorPathFor(path)
  const mmproj = await writeProjector(projector, { seed })
  return { model, projector, mmproj }
}
