/**
 * A pure GGUF v3 writer: metadata, tensor infos and tensor data (F32, F16, Q8_0), little-endian,
 * 32-byte aligned. It does no I/O and returns the whole file as bytes.
 */

export type TensorType = "F32" | "F16" | "Q8_0"

export type NumberType = "u8" | "i8" | "u16" | "i16" | "u32" | "i32" | "f32" | "f64"

export type GgufValue =
  | { readonly type: NumberType; readonly value: number }
  | { readonly type: "u64" | "i64"; readonly value: bigint }
  | { readonly type: "bool"; readonly value: boolean }
  | { readonly type: "string"; readonly value: string }
  | { readonly type: "array"; readonly elementType: "string"; readonly value: ReadonlyArray<string> }
  | { readonly type: "array"; readonly elementType: NumberType; readonly value: ArrayLike<number> }

export const u32 = (value: number): GgufValue => ({ type: "u32", value })
export const i32 = (value: number): GgufValue => ({ type: "i32", value })
export const f32 = (value: number): GgufValue => ({ type: "f32", value })
export const u64 = (value: bigint | number): GgufValue => ({ type: "u64", value: BigInt(value) })
export const bool = (value: boolean): GgufValue => ({ type: "bool", value })
export const string = (value: string): GgufValue => ({ type: "string", value })
export const strings = (value: ReadonlyArray<string>): GgufValue => ({ type: "array", elementType: "string", value })
export const i32s = (value: ArrayLike<number>): GgufValue => ({ type: "array", elementType: "i32", value })
export const f32s = (value: ArrayLike<number>): GgufValue => ({ type: "array", elementType: "f32", value })

export interface GgufTensor {
  readonly name: string
  /** Innermost (contiguous) dimension first, as GGUF stores them. */
  readonly dims: ReadonlyArray<number>
  readonly type: TensorType
  /** A thunk lets large files be written holding one tensor's floats at a time. */
  readonly values: Float32Array | (() => Float32Array)
}

export interface GgufFile {
  readonly metadata: ReadonlyArray<readonly [key: string, value: GgufValue]>
  readonly tensors: ReadonlyArray<GgufTensor>
}

export const ALIGNMENT = 32
export const QK8_0 = 32

const VALUE_TYPE_ID: Record<NumberType | "bool" | "string" | "array" | "u64" | "i64", number> = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  string: 8,
  array: 9,
  u64: 10,
  i64: 11,
  f64: 12
}

const TENSOR_TYPE_ID: Record<TensorType, number> = { F32: 0, F16: 1, Q8_0: 8 }

const scratchF32 = new Float32Array(1)
const scratchU32 = new Uint32Array(scratchF32.buffer)

/** IEEE 754 binary32 → binary16 bits, round-to-nearest-even, done on the integer bits only. */
export const f32ToF16 = (x: number): number => {
  scratchF32[0] = x
  const bits = scratchU32[0]!
  const sign = (bits >>> 16) & 0x8000
  const exponent = (bits >>> 23) & 0xff
  const mantissa = bits & 0x7fffff
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa !== 0 ? 0x200 : 0)
  const e = exponent - 127 + 15
  if (e >= 0x1f) return sign | 0x7c00
  if (e <= 0) {
    // Subnormal half: shift the full 24-bit significand down to units of 2^-24.
    if (e < -10) return sign
    const significand = mantissa | 0x800000
    const shift = 14 - e
    const half = 1 << (shift - 1)
    const rest = significand & ((1 << shift) - 1)
    let h = significand >>> shift
    if (rest > half || (rest === half && (h & 1) === 1)) h++
    return sign | h
  }
  const rest = mantissa & 0x1fff
  let h = (e << 10) | (mantissa >>> 13)
  // A carry out of the mantissa correctly bumps the exponent (up to infinity).
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h++
  return sign | h
}

/** binary16 bits → number (exact). */
export const f16ToF32 = (h: number): number => {
  const sign = (h & 0x8000) !== 0 ? -1 : 1
  const exponent = (h >>> 10) & 0x1f
  const mantissa = h & 0x3ff
  if (exponent === 0) return sign * mantissa * 2 ** -24
  if (exponent === 0x1f) return mantissa === 0 ? sign * Infinity : NaN
  return sign * (1024 + mantissa) * 2 ** (exponent - 25)
}

const elementCount = (dims: ReadonlyArray<number>): number => dims.reduce((a, b) => a * b, 1)

export const tensorByteSize = (type: TensorType, dims: ReadonlyArray<number>): number => {
  const n = elementCount(dims)
  switch (type) {
    case "F32":
      return n * 4
    case "F16":
      return n * 2
    case "Q8_0":
      return (n / QK8_0) * (2 + QK8_0)
  }
}

const alignUp = (n: number): number => Math.ceil(n / ALIGNMENT) * ALIGNMENT

const utf8 = new TextEncoder()

/** A growable little-endian byte sink for the header. */
const makeSink = () => {
  let bytes = new Uint8Array(4096)
  let view = new DataView(bytes.buffer)
  let length = 0
  const reserve = (n: number) => {
    if (length + n <= bytes.length) return
    let size = bytes.length * 2
    while (size < length + n) size *= 2
    const next = new Uint8Array(size)
    next.set(bytes.subarray(0, length))
    bytes = next
    view = new DataView(bytes.buffer)
  }
  const sink = {
    u8: (v: number) => {
      reserve(1)
      view.setUint8(length, v)
      length += 1
    },
    i8: (v: number) => {
      reserve(1)
      view.setInt8(length, v)
      length += 1
    },
    u16: (v: number) => {
      reserve(2)
      view.setUint16(length, v, true)
      length += 2
    },
    i16: (v: number) => {
      reserve(2)
      view.setInt16(length, v, true)
      length += 2
    },
    u32: (v: number) => {
      reserve(4)
      view.setUint32(length, v, true)
      length += 4
    },
    i32: (v: number) => {
      reserve(4)
      view.setInt32(length, v, true)
      length += 4
    },
    f32: (v: number) => {
      reserve(4)
      view.setFloat32(length, v, true)
      length += 4
    },
    f64: (v: number) => {
      reserve(8)
      view.setFloat64(length, v, true)
      length += 8
    },
    u64: (v: bigint) => {
      reserve(8)
      view.setBigUint64(length, v, true)
      length += 8
    },
    i64: (v: bigint) => {
      reserve(8)
      view.setBigInt64(length, v, true)
      length += 8
    },
    raw: (b: Uint8Array) => {
      reserve(b.length)
      bytes.set(b, length)
      length += b.length
    },
    string: (s: string) => {
      const encoded = utf8.encode(s)
      sink.u64(BigInt(encoded.length))
      sink.raw(encoded)
    },
    length: () => length,
    bytes: () => bytes.subarray(0, length)
  }
  return sink
}

type Sink = ReturnType<typeof makeSink>

const writeValue = (sink: Sink, value: GgufValue): void => {
  switch (value.type) {
    case "u64":
    case "i64":
      sink[value.type](value.value)
      return
    case "bool":
      sink.u8(value.value ? 1 : 0)
      return
    case "string":
      sink.string(value.value)
      return
    case "array": {
      sink.u32(VALUE_TYPE_ID[value.elementType])
      sink.u64(BigInt(value.value.length))
      if (value.elementType === "string") {
        for (const s of value.value as ReadonlyArray<string>) sink.string(s)
      } else {
        const write = sink[value.elementType]
        const items = value.value as ArrayLike<number>
        for (let i = 0; i < items.length; i++) write(items[i]!)
      }
      return
    }
    default:
      sink[value.type](value.value)
  }
}

const encodeTensor = (view: DataView, offset: number, tensor: GgufTensor, values: Float32Array): void => {
  const n = values.length
  switch (tensor.type) {
    case "F32":
      for (let i = 0; i < n; i++) view.setFloat32(offset + i * 4, values[i]!, true)
      return
    case "F16":
      for (let i = 0; i < n; i++) view.setUint16(offset + i * 2, f32ToF16(values[i]!), true)
      return
    case "Q8_0":
      for (let block = 0; block < n / QK8_0; block++) {
        const base = block * QK8_0
        const at = offset + block * (2 + QK8_0)
        let amax = 0
        for (let j = 0; j < QK8_0; j++) amax = Math.max(amax, Math.abs(values[base + j]!))
        const d = Math.fround(amax / 127)
        const id = d !== 0 ? 1 / d : 0
        view.setUint16(at, f32ToF16(d), true)
        for (let j = 0; j < QK8_0; j++) {
          const x = values[base + j]! * id
          // Round half away from zero, like C's roundf.
          view.setInt8(at + 2 + j, x < 0 ? -Math.round(-x) : Math.round(x))
        }
      }
      return
  }
}

export const writeGguf = (file: GgufFile): Uint8Array => {
  const sink = makeSink()
  sink.raw(utf8.encode("GGUF"))
  sink.u32(3)
  sink.u64(BigInt(file.tensors.length))
  sink.u64(BigInt(file.metadata.length))
  for (const [key, value] of file.metadata) {
    sink.string(key)
    sink.u32(VALUE_TYPE_ID[value.type])
    writeValue(sink, value)
  }

  const offsets: Array<number> = []
  let dataSize = 0
  for (const tensor of file.tensors) {
    if (tensor.type === "Q8_0" && (tensor.dims[0] ?? 0) % QK8_0 !== 0) {
      throw new Error(`Q8_0 tensor ${tensor.name}: innermost dimension must be a multiple of ${QK8_0}`)
    }
    offsets.push(dataSize)
    dataSize = alignUp(dataSize + tensorByteSize(tensor.type, tensor.dims))
    sink.string(tensor.name)
    sink.u32(tensor.dims.length)
    for (const d of tensor.dims) sink.u64(BigInt(d))
    sink.u32(TENSOR_TYPE_ID[tensor.type])
    sink.u64(BigInt(offsets[offsets.length - 1]!))
  }

  const dataStart = alignUp(sink.length())
  const out = new Uint8Array(dataStart + dataSize)
  out.set(sink.bytes())
  const view = new DataView(out.buffer)
  file.tensors.forEach((tensor, i) => {
    const values = typeof tensor.values === "function" ? tensor.values() : tensor.values
    if (values.length !== elementCount(tensor.dims)) {
      throw new Error(`tensor ${tensor.name}: ${values.length} values for dims [${tensor.dims.join(", ")}]`)
    }
    encodeTensor(view, dataStart + offsets[i]!, tensor, values)
  })
  return out
}
