import { describe, expect, it } from "@effect/vitest"
import type { Llama, LlamaContext, LlamaEmbeddingContext, LlamaModel } from "node-llama-cpp"
import { ChatMLChatWrapper, getLlama, LlamaChat, readGgufFileInfo } from "node-llama-cpp"
import { createHash } from "node:crypto"
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll } from "vitest"
import { f16ToF32, f32ToF16, writeGguf } from "../src/gguf/GgufWriter.js"
import * as Gguf from "../src/gguf/GgufWriter.js"
import { generateModel, IM_END_ID, SHAPES, writeModel } from "../src/gguf/ModelGenerator.js"

const TINY_SHA256 = "fdf3ec83d20a229da81175ef88a06c5ea08a75487ea47fc4fdadb2c4508beaad"
const TINY_BYTES = 884_736

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex")

describe("GgufWriter", () => {
  it("converts f32 to f16 with round-to-nearest-even", () => {
    const cases: ReadonlyArray<readonly [number, number]> = [
      [0, 0x0000],
      [-0, 0x8000],
      [1, 0x3c00],
      [-2, 0xc000],
      [0.1, 0x2e66],
      [65504, 0x7bff],
      [65520, 0x7c00],
      [Infinity, 0x7c00],
      [2 ** -24, 0x0001],
      [2 ** -25, 0x0000],
      [1.5 * 2 ** -25, 0x0001],
      [1 + 2 ** -11, 0x3c00],
      [1 + 3 * 2 ** -11, 0x3c02]
    ]
    for (const [x, bits] of cases) expect(f32ToF16(x), `${x}`).toBe(bits)
    expect(f32ToF16(NaN) & 0x7c00).toBe(0x7c00)
    const mismatches: Array<number> = []
    for (let h = 0; h < 0x10000; h++) {
      const isNaN = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0
      if (!isNaN && f32ToF16(f16ToF32(h)) !== h) mismatches.push(h)
    }
    expect(mismatches).toEqual([])
  })

  it("lays out header, aligned tensor data and Q8_0 blocks", () => {
    const values = Float32Array.from({ length: 32 }, (_, i) => i - 16)
    const bytes = writeGguf({
      metadata: [["general.alignment", Gguf.u32(32)]],
      tensors: [
        { name: "a", dims: [3], type: "F32", values: new Float32Array([1, 2, 3]) },
        { name: "b", dims: [32], type: "Q8_0", values }
      ]
    })
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    expect(new TextDecoder().decode(bytes.subarray(0, 4))).toBe("GGUF")
    expect(view.getUint32(4, true)).toBe(3)
    expect(view.getBigUint64(8, true)).toBe(2n)
    expect(view.getBigUint64(16, true)).toBe(1n)
    expect(bytes.length % 32).toBe(0)
    // Data: F32 "a" (12 bytes, padded to 32), then one Q8_0 block (f16 scale + 32 int8, padded to 64).
    const dataStart = bytes.length - 96
    expect(dataStart % 32).toBe(0)
    expect(view.getFloat32(dataStart + 8, true)).toBe(3)
    expect(f16ToF32(view.getUint16(dataStart + 32, true))).toBeCloseTo(16 / 127, 4)
    expect(view.getInt8(dataStart + 34)).toBe(-127)
    expect(view.getInt8(dataStart + 34 + 16)).toBe(0)
  })
})

describe("ModelGenerator", () => {
  it("generates bit-identical bytes for the same options", () => {
    const tiny = generateModel({ shape: "tiny" })
    expect(tiny.length).toBe(TINY_BYTES)
    expect(sha256(tiny)).toBe(TINY_SHA256)
    expect(sha256(generateModel({ shape: "tiny", seed: 1 }))).toBe(TINY_SHA256)
    const seven = generateModel({ shape: "tiny", seed: 7 })
    expect(sha256(seven)).not.toBe(TINY_SHA256)
    expect(Buffer.from(generateModel({ shape: "tiny", seed: 7 })).equals(Buffer.from(seven))).toBe(true)
  })
})

describe("generated tiny model", () => {
  let dir = ""
  let path = ""
  let llama: Llama
  let model: LlamaModel
  let context: LlamaContext
  let embedding: LlamaEmbeddingContext

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "cortex-gguf-"))
    path = join(dir, "nested", "tiny.gguf")
    llama = await getLlama({ gpu: false, build: "never" })
  })

  afterAll(async () => {
    await embedding?.dispose()
    await context?.dispose()
    await model?.dispose()
    await llama?.dispose()
    await rm(dir, { recursive: true, force: true })
  })

  it("writes atomically and reports size and hash", async () => {
    const written = await writeModel(path, { shape: "tiny" })
    expect(written).toEqual({ bytes: TINY_BYTES, sha256: TINY_SHA256 })
    expect(sha256(await readFile(path))).toBe(TINY_SHA256)
    expect(await readdir(join(dir, "nested"))).toEqual(["tiny.gguf"])
  })

  it("carries the expected metadata", async () => {
    const info = await readGgufFileInfo(path, { logWarnings: false })
    const spec = SHAPES.tiny
    const meta = info.metadata
    expect(info.version).toBe(3)
    expect(meta.general.architecture).toBe("llama")
    expect(meta.llama).toMatchObject({
      context_length: spec.contextLength,
      embedding_length: spec.dim,
      block_count: spec.layers,
      feed_forward_length: spec.ffn,
      attention: { head_count: spec.heads, head_count_kv: spec.kvHeads }
    })
    expect(meta.tokenizer.ggml.model).toBe("llama")
    expect(meta.tokenizer.ggml.tokens).toHaveLength(spec.vocab)
    expect(meta.tokenizer.ggml.tokens.slice(0, 4)).toEqual(["<unk>", "<s>", "</s>", "<0x00>"])
    expect(meta.tokenizer.ggml.token_type).toHaveLength(spec.vocab)
    expect(meta.tokenizer.ggml.tokens[IM_END_ID]).toBe("<|im_end|>")
    expect(meta.tokenizer.ggml.eos_token_id).toBe(IM_END_ID)
    expect(meta.tokenizer.ggml.add_bos_token).toBe(true)
    expect(meta.tokenizer.chat_template).toContain("add_generation_prompt")
    expect(info.tensorInfo).toHaveLength(3 + 9 * spec.layers)

    const broken = join(dir, "broken.gguf")
    await writeModel(broken, { shape: "tiny", omitKeys: ["llama.feed_forward_length"] })
    const brokenInfo = await readGgufFileInfo(broken, { logWarnings: false })
    expect(brokenInfo.metadata.llama).not.toHaveProperty("feed_forward_length")
  })

  it("loads, tokenizes and chats deterministically", async () => {
    model = await llama.loadModel({ modelPath: path })
    const tokens = model.tokenize("hello world")
    expect(tokens.length).toBeGreaterThan(0)
    expect(model.detokenize(tokens)).toBe("hello world")
    const english = "The people who work here will write a good answer to each question about the world."
    expect(model.tokenize(english).length).toBeLessThan(english.length / 2)

    context = await model.createContext({ contextSize: 1024, sequences: 2, threads: 1 })
    const reply = async () => {
      const chat = new LlamaChat({ contextSequence: context.getSequence() })
      expect(chat.chatWrapper).toBeInstanceOf(ChatMLChatWrapper)
      const result = await chat.generateResponse([{ type: "user", text: "hi" }], { maxTokens: 16, temperature: 0 })
      chat.dispose({ disposeSequence: true })
      return result
    }
    const first = await reply()
    expect(first.metadata.stopReason).toBe("maxTokens")
    expect(first.response).toMatch(/^[\x20-\x7e]+$/)
    expect(first.response.trim()).not.toBe("")
    const second = await reply()
    expect(second.response).toBe(first.response)
  })

  it("embeds to the model width", async () => {
    embedding = await model.createEmbeddingContext({ contextSize: 256, threads: 1 })
    const { vector } = await embedding.getEmbeddingFor("hello world")
    expect(vector).toHaveLength(SHAPES.tiny.dim)
    expect(vector.every(Number.isFinite)).toBe(true)
  })
})
