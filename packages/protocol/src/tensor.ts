// Tensor codec: the generated `Tensor` message (dtype, shape, little-endian bytes) <-> typed arrays.
//
// decodeTensor validates everything a peer can get wrong (dtype, shape, rank, dims, byte length) and throws
// INVALID_ARGUMENT naming the field. Half types are widened to Float32Array; FLOAT32 and INT32 are zero-copy
// views onto the message bytes when the bytes are 4-byte aligned (grpc-js hands out Buffers at arbitrary
// offsets, so we copy when they are not).
//
// The f32 <-> bf16/f16 conversions round to nearest, ties to even, keep NaN a (quiet) NaN, keep ±Inf,
// handle subnormals and overflow to ±Inf. They run over Uint32 views with no per-element allocation:
// d=4096 × 256 tokens (1M elements) is the common size.

import { invalidArgument } from "./errors.js";
import { DType, dTypeToJSON, type Tensor } from "./gen/switchyard/v1/tensor.js";

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export type TensorValues = Float32Array | Int32Array;

export interface DecodedTensor {
  dtype: DType;
  shape: number[];
  /** FLOAT32/BFLOAT16/FLOAT16 -> Float32Array (half types widened), INT32 -> Int32Array. */
  values: TensorValues;
}

export interface TensorExpect {
  /** Allowed dtypes (default: any of the four). */
  dtype?: DType | readonly DType[];
  /** Required rank. Implied by `shape` when that is given. */
  rank?: number;
  /** Required dims; null = any size. */
  shape?: readonly (number | null)[];
  /** Upper bound on the element count (protects servers from huge allocations). */
  maxElements?: number;
}

export interface DecodeOptions {
  /** Always copy FLOAT32/INT32 data, never alias the message bytes. */
  copy?: boolean;
}

const KNOWN_DTYPES: readonly DType[] = [DType.FLOAT32, DType.BFLOAT16, DType.FLOAT16, DType.INT32];

/** Bytes per element. */
export function dtypeSize(dtype: DType): number {
  switch (dtype) {
    case DType.FLOAT32:
    case DType.INT32:
      return 4;
    case DType.BFLOAT16:
    case DType.FLOAT16:
      return 2;
    default:
      throw invalidArgument("dtype", `unknown dtype ${dtype}`);
  }
}

/** The proto enum name, for error messages; unknown numbers stay visible as DType(n). */
export function dtypeName(dtype: DType): string {
  const name = dTypeToJSON(dtype);
  return name === "UNRECOGNIZED" ? `DType(${dtype})` : name;
}

export function isFloatDType(dtype: DType): boolean {
  return dtype === DType.FLOAT32 || dtype === DType.BFLOAT16 || dtype === DType.FLOAT16;
}

/**
 * Product of dims; throws INVALID_ARGUMENT (naming `field`) for a dim that is not a non-negative integer or does not
 * fit the wire's uint32 (protobuf would keep its low 32 bits: [2^32, 0] would go out as [0, 0]).
 */
export function shapeElements(shape: readonly number[], field = "shape"): number {
  let n = 1;
  for (let i = 0; i < shape.length; i++) {
    const d = shape[i];
    if (!Number.isInteger(d) || d < 0)
      throw invalidArgument(`${field}[${i}]`, `must be a non-negative integer, got ${d}`);
    if (d > 0xffffffff) throw invalidArgument(`${field}[${i}]`, `must be at most 4294967295 (uint32), got ${d}`);
    n *= d;
  }
  if (!Number.isSafeInteger(n)) throw invalidArgument(field, `element count overflows: [${shape.join(", ")}]`);
  return n;
}

/**
 * Validate and decode a Tensor. `field` names it in errors ("batch.tokens"), e.g.
 * "batch.tokens.shape[1]: expected 4096, got 4095".
 */
export function decodeTensor(
  t: Tensor | undefined | null,
  field: string,
  expect: TensorExpect = {},
  options: DecodeOptions = {},
): DecodedTensor {
  if (!t) throw invalidArgument(field, "required");
  const dtype = t.dtype;
  if (!KNOWN_DTYPES.includes(dtype)) {
    throw invalidArgument(
      `${field}.dtype`,
      dtype === DType.DTYPE_UNSPECIFIED
        ? "must be set (FLOAT32, BFLOAT16, FLOAT16 or INT32)"
        : `unknown dtype ${dtype}`,
    );
  }
  if (expect.dtype !== undefined) {
    const allowed = typeof expect.dtype === "number" ? [expect.dtype] : expect.dtype;
    if (!allowed.includes(dtype)) {
      throw invalidArgument(
        `${field}.dtype`,
        `expected ${allowed.length === 1 ? "" : "one of "}${allowed.map(dtypeName).join(", ")}, got ${dtypeName(dtype)}`,
      );
    }
  }
  const shape = t.shape;
  if (!Array.isArray(shape) || shape.length === 0) throw invalidArgument(`${field}.shape`, "required (rank >= 1)");
  const rank = expect.shape ? expect.shape.length : expect.rank;
  if (rank !== undefined && shape.length !== rank) {
    throw invalidArgument(`${field}.shape`, `expected rank ${rank}, got ${shape.length} ([${shape.join(", ")}])`);
  }
  const n = shapeElements(shape, `${field}.shape`);
  if (expect.shape) {
    for (let i = 0; i < expect.shape.length; i++) {
      const want = expect.shape[i];
      if (want !== null && shape[i] !== want)
        throw invalidArgument(`${field}.shape[${i}]`, `expected ${want}, got ${shape[i]}`);
    }
  }
  if (expect.maxElements !== undefined && n > expect.maxElements) {
    throw invalidArgument(`${field}.shape`, `${n} elements exceed the limit of ${expect.maxElements}`);
  }
  const size = dtypeSize(dtype);
  const data = t.data;
  if (!(data instanceof Uint8Array)) throw invalidArgument(`${field}.data`, "required");
  if (data.byteLength !== n * size) {
    throw invalidArgument(
      `${field}.data`,
      `expected ${n * size} bytes ([${shape.join(", ")}] × ${size} bytes ${dtypeName(dtype)}), got ${data.byteLength}`,
    );
  }
  return { dtype, shape: shape.slice(), values: bytesToValues(data, dtype, n, options.copy ?? false) };
}

/** Raw little-endian bytes of `n` elements of `dtype` -> typed array (half types widened to f32). */
export function bytesToValues(
  data: Uint8Array,
  dtype: DType,
  n = data.byteLength / dtypeSize(dtype),
  copy = false,
): TensorValues {
  // A typed-array length rounds a fractional count down, which would drop trailing bytes without a word.
  const size = dtypeSize(dtype);
  if (!Number.isInteger(n) || n < 0 || n * size > data.byteLength)
    throw invalidArgument(
      "data",
      `${data.byteLength} bytes do not hold ${Number.isInteger(n) ? n : "whole"} ${dtypeName(dtype)} elements of ${size} bytes`,
    );
  switch (dtype) {
    case DType.FLOAT32: {
      const v = view32(data, n, copy);
      return new Float32Array(v.buffer, v.byteOffset, v.length);
    }
    case DType.INT32: {
      const v = view32(data, n, copy);
      return new Int32Array(v.buffer, v.byteOffset, v.length);
    }
    case DType.BFLOAT16:
      return bf16ToF32(view16(data, n));
    case DType.FLOAT16:
      return f16ToF32(view16(data, n));
    default:
      throw invalidArgument("dtype", `unknown dtype ${dtype}`);
  }
}

/** Float32 values widened from raw bytes of a float dtype (FLOAT32 is copied only when unaligned or asked). */
export function bytesToFloat32(data: Uint8Array, dtype: DType, copy = false): Float32Array {
  if (!isFloatDType(dtype)) throw invalidArgument("dtype", `expected a float dtype, got ${dtypeName(dtype)}`);
  return bytesToValues(data, dtype, data.byteLength / dtypeSize(dtype), copy) as Float32Array;
}

// Aligned 4-byte element view of raw LE bytes: the message's own memory when aligned (and not asked to copy),
// else a fresh copy. Callers wrap it as Float32Array or Int32Array over the same memory.
interface Span32 {
  buffer: ArrayBufferLike;
  byteOffset: number;
  length: number;
}

function view32(data: Uint8Array, n: number, copy: boolean): Span32 {
  if (!LITTLE_ENDIAN) return { buffer: byteSwapped32(data, n), byteOffset: 0, length: n };
  if (!copy && data.byteOffset % 4 === 0) return { buffer: data.buffer, byteOffset: data.byteOffset, length: n };
  const out = new Uint8Array(n * 4);
  out.set(data.subarray(0, n * 4));
  return { buffer: out.buffer, byteOffset: 0, length: n };
}

function byteSwapped32(data: Uint8Array, n: number): ArrayBuffer {
  const dv = new DataView(data.buffer, data.byteOffset, n * 4);
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = dv.getUint32(i * 4, true);
  return out.buffer;
}

function view16(data: Uint8Array, n: number): Uint16Array {
  if (!LITTLE_ENDIAN) {
    const dv = new DataView(data.buffer, data.byteOffset, n * 2);
    const out = new Uint16Array(n);
    for (let i = 0; i < n; i++) out[i] = dv.getUint16(i * 2, true);
    return out;
  }
  if (data.byteOffset % 2 === 0) return new Uint16Array(data.buffer, data.byteOffset, n);
  const out = new Uint8Array(n * 2);
  out.set(data.subarray(0, n * 2));
  return new Uint16Array(out.buffer);
}

/**
 * Build a Tensor message. Float32Array goes with FLOAT32/BFLOAT16/FLOAT16 (narrowed with RNE), Int32Array with
 * INT32. FLOAT32/INT32 data aliases `values` (no copy); do not mutate them until the message is sent.
 */
export function encodeTensor(values: TensorValues, shape: readonly number[], dtype: DType): Tensor {
  const n = shapeElements(shape, "shape");
  if (shape.length === 0) throw invalidArgument("shape", "required (rank >= 1)");
  if (values.length !== n) {
    throw invalidArgument(
      "values",
      `length ${values.length} does not match shape [${shape.join(", ")}] (${n} elements)`,
    );
  }
  return { dtype, shape: shape.slice(), data: valuesToBytes(values, dtype) };
}

/** Typed array -> little-endian bytes of `dtype` as a Buffer (aliasing for FLOAT32/INT32 on LE hosts). */
export function valuesToBytes(values: TensorValues, dtype: DType): Buffer {
  const isInt = values instanceof Int32Array;
  if (dtype === DType.INT32) {
    if (!isInt) throw invalidArgument("dtype", "INT32 needs Int32Array values");
  } else if (isFloatDType(dtype)) {
    if (isInt) throw invalidArgument("dtype", `${dtypeName(dtype)} needs Float32Array values`);
  } else {
    throw invalidArgument("dtype", `unknown dtype ${dtype}`);
  }
  if (dtype === DType.BFLOAT16 || dtype === DType.FLOAT16) {
    const h = dtype === DType.BFLOAT16 ? f32ToBf16(values as Float32Array) : f32ToF16(values as Float32Array);
    if (!LITTLE_ENDIAN) swap16InPlace(h);
    return Buffer.from(h.buffer, h.byteOffset, h.byteLength);
  }
  if (!LITTLE_ENDIAN) {
    const out = Buffer.alloc(values.length * 4);
    for (let i = 0; i < values.length; i++) {
      if (isInt) out.writeInt32LE(values[i], i * 4);
      else out.writeFloatLE(values[i], i * 4);
    }
    return out;
  }
  return Buffer.from(values.buffer, values.byteOffset, values.byteLength);
}

function swap16InPlace(h: Uint16Array): void {
  for (let i = 0; i < h.length; i++) h[i] = ((h[i] & 0xff) << 8) | (h[i] >>> 8);
}

// ---------------------------------------------------------------------------------------------------------------
// Half-precision conversions over bit patterns.

/** bf16 bits -> f32: exact (bf16 is the top half of an f32). */
export function bf16ToF32(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  if (dst.length < src.length) throw invalidArgument("dst", `length ${dst.length} < ${src.length}`);
  const d32 = new Uint32Array(dst.buffer, dst.byteOffset, src.length);
  const n = src.length;
  for (let i = 0; i < n; i++) d32[i] = src[i] << 16;
  return dst;
}

/** f32 -> bf16 bits, round to nearest even; NaN stays a quiet NaN (payload's top bits kept). */
export function f32ToBf16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  if (dst.length < src.length) throw invalidArgument("dst", `length ${dst.length} < ${src.length}`);
  const s32 = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const n = src.length;
  for (let i = 0; i < n; i++) {
    const u = s32[i];
    if ((u & 0x7fffffff) > 0x7f800000) {
      dst[i] = (u >>> 16) | 0x0040; // set the quiet bit so a signalling NaN cannot truncate to Inf
    } else {
      // u + 0x7fff + lsb never exceeds 2^32 for non-NaN u (largest is -Inf 0xff800000), so no wrap.
      dst[i] = (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
    }
  }
  return dst;
}

let F16_TABLE: Uint32Array | undefined;

/** 65536-entry f16 bits -> f32 bits table, built once (256 KiB): widening becomes one load per element. */
function f16Table(): Uint32Array {
  if (F16_TABLE) return F16_TABLE;
  const t = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) t[h] = f16BitsToF32Bits(h);
  F16_TABLE = t;
  return t;
}

function f16BitsToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0; // Inf / NaN (payload kept)
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0;
  // Subnormal: normalise. value = mant * 2^-24.
  let e = 113;
  while ((mant & 0x400) === 0) {
    mant <<= 1;
    e--;
  }
  return (sign | (e << 23) | ((mant & 0x3ff) << 13)) >>> 0;
}

/** f16 bits -> f32: exact. */
export function f16ToF32(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  if (dst.length < src.length) throw invalidArgument("dst", `length ${dst.length} < ${src.length}`);
  const t = f16Table();
  const d32 = new Uint32Array(dst.buffer, dst.byteOffset, src.length);
  const n = src.length;
  for (let i = 0; i < n; i++) d32[i] = t[src[i]];
  return dst;
}

/** f32 -> f16 bits, round to nearest even; overflow -> ±Inf, NaN -> quiet NaN, subnormals rounded exactly. */
export function f32ToF16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  if (dst.length < src.length) throw invalidArgument("dst", `length ${dst.length} < ${src.length}`);
  const s32 = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const n = src.length;
  for (let i = 0; i < n; i++) dst[i] = f32BitsToF16Bits(s32[i]);
  return dst;
}

function f32BitsToF16Bits(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  const a = u & 0x7fffffff;
  if (a >= 0x47800000) {
    // |x| >= 2^16 (always overflows), Inf or NaN.
    if (a > 0x7f800000) return sign | 0x7e00 | ((a >>> 13) & 0x3ff);
    return sign | 0x7c00;
  }
  if (a >= 0x38800000) {
    // Normal f16 range (|x| >= 2^-14): rebias exponent, round mantissa at bit 13; a carry out of the
    // mantissa bumps the exponent, and a carry out of the top exponent gives exactly Inf (0x7c00).
    return sign | ((a - 0x38000000 + 0xfff + ((a >>> 13) & 1)) >>> 13);
  }
  if (a < 0x33000000) return sign; // |x| <= 2^-25: rounds to ±0 (2^-25 itself is a tie to even 0)
  // Subnormal result: value in units of 2^-24 is mant * 2^(exp - 126); shift is 14..24.
  const exp = a >>> 23;
  const mant = (a & 0x7fffff) | 0x800000;
  const shift = 126 - exp;
  let o = mant >>> shift;
  const rem = mant & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rem > half || (rem === half && (o & 1) === 1)) o++;
  return sign | o;
}

/** Scalar helpers (tests, one-off values). */
export function f32ToBf16Bits(x: number): number {
  return f32ToBf16(new Float32Array([x]))[0];
}
export function bf16BitsToF32(h: number): number {
  return bf16ToF32(new Uint16Array([h]))[0];
}
export function f32ToF16Bits(x: number): number {
  return f32ToF16(new Float32Array([x]))[0];
}
export function f16BitsToF32(h: number): number {
  return f16ToF32(new Uint16Array([h]))[0];
}

/** Round f32 values through a half type and back (what a peer sees after a bf16/f16 hop). */
export function roundTripHalf(values: Float32Array, dtype: DType): Float32Array {
  if (dtype === DType.BFLOAT16) return bf16ToF32(f32ToBf16(values));
  if (dtype === DType.FLOAT16) return f16ToF32(f32ToF16(values));
  if (dtype === DType.FLOAT32) return values.slice();
  throw invalidArgument("dtype", `expected a float dtype, got ${dtypeName(dtype)}`);
}
