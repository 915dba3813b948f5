// Combine: out[t] = sum over the token's slots s (in slot order) of weight[t,s] * expertOut[t,s], in fp32,
// then narrowed to the request's dtype (round to nearest even). Summing in slot order, not in reply order, makes
// the answer bit-identical however the worker replies interleave.
// A worker that summed some of a token's slots itself (deduplicated batches with `combine`) leaves those slots empty
// here: its sums arrive in `base` (router.ts baseWithPartials).

import { DType, f16ToF32, f32ToF16, valuesToBytes } from "@switchyard/protocol";
import { routerAddon } from "./native-combine.js";

/** A worker's output rows as received: little-endian bytes of `dtype`, [rows, d]. */
export interface ResultRows {
  data: Uint8Array;
  dtype: DType;
}

/** Aligned element view of a result (copies once when grpc-js handed us an unaligned Buffer). */
export function alignedRows(r: ResultRows): Float32Array | Uint16Array {
  const { data, dtype } = r;
  if (dtype === DType.FLOAT32) {
    if (data.byteOffset % 4 === 0) return new Float32Array(data.buffer, data.byteOffset, data.byteLength >>> 2);
    return new Float32Array(new Uint8Array(data).buffer);
  }
  if (data.byteOffset % 2 === 0) return new Uint16Array(data.buffer, data.byteOffset, data.byteLength >>> 1);
  return new Uint16Array(new Uint8Array(data).buffer);
}

/**
 * Rows for combineInto without a copy: an element view when aligned; half-precision rows at an odd address (where
 * grpc-js's framing put them) stay bytes, which the bf16 combine reads two at a time (a 2 MiB copy saved), and so
 * do unaligned fp32 rows when the native combine is loaded.
 */
export function resultRows(r: ResultRows): Float32Array | Uint16Array | Uint8Array {
  if (r.dtype !== DType.FLOAT32 && r.data.byteOffset % 2 !== 0) return r.data;
  // The native combine reads fp32 rows at any address: no aligning copy when it will run.
  if (r.dtype === DType.FLOAT32 && r.data.byteOffset % 4 !== 0 && routerAddon()) return r.data;
  return alignedRows(r);
}

export interface CombineInput {
  tokens: number;
  d: number;
  dtype: DType;
  /** Slots per token including shared experts. */
  slots: number;
  /** [tokens * slots] combine weight per slot. */
  weights: Float32Array;
  /** [tokens * slots * 2]: (result index, row) per slot; result index -1 = slot empty or dropped. */
  locations: Int32Array;
  /** Per result: elements of `dtype`, or (half dtypes, combineInto only) the raw little-endian bytes. */
  results: readonly (Float32Array | Uint16Array | Uint8Array)[];
  /** Added to every token first (the shared-expert output), [tokens * d] fp32. */
  base?: Float32Array | null;
}

/** Weighted sum in fp32 (after `base`); returns the fp32 accumulator [tokens * d]. */
export function combineF32(c: CombineInput): Float32Array {
  const { tokens, d, slots, weights, locations, results, dtype } = c;
  const acc = c.base ? Float32Array.from(c.base) : new Float32Array(tokens * d);
  const tmp = dtype === DType.FLOAT16 ? new Float32Array(d) : null;
  const bits = new Uint32Array(1);
  const asF32 = new Float32Array(bits.buffer);
  for (let t = 0; t < tokens; t++) {
    const o = t * d;
    for (let s = 0; s < slots; s++) {
      const li = (t * slots + s) * 2;
      const ri = locations[li];
      if (ri < 0) continue;
      const w = weights[t * slots + s];
      const src = results[ri];
      const base = locations[li + 1] * d;
      if (dtype === DType.FLOAT32) {
        const f = src as Float32Array;
        for (let j = 0; j < d; j++) acc[o + j] += w * f[base + j];
      } else if (dtype === DType.BFLOAT16) {
        const h = src as Uint16Array;
        for (let j = 0; j < d; j++) {
          bits[0] = h[base + j] << 16;
          acc[o + j] += w * asF32[0];
        }
      } else {
        f16ToF32((src as Uint16Array).subarray(base, base + d), tmp!);
        for (let j = 0; j < d; j++) acc[o + j] += w * tmp![j];
      }
    }
  }
  return acc;
}

/** combineF32, then the bytes of the request's dtype. */
export function combine(c: CombineInput): Buffer {
  return valuesToBytes(combineF32(c), c.dtype);
}

// Scratch rows reused across calls (the router is single-threaded); grown on demand. Each has an Int32 alias so
// bf16 widening and narrowing are integer shifts on the same memory (no per-row views or temporaries). Int32, not
// Uint32: bit patterns >= 2^31 would leave V8's small-integer range and turn every element into a double.
let scratchAcc = new Float32Array(0);
let scratchAccU = new Int32Array(0);
let scratchTmp = new Float32Array(0);
let scratchTmpU = new Int32Array(0);
let scratchRow = new Uint16Array(0);
let scratchRow8 = new Uint8Array(0);
function grow(d: number): void {
  if (scratchAcc.length < d) {
    scratchAcc = new Float32Array(d);
    scratchAccU = new Int32Array(scratchAcc.buffer);
    scratchTmp = new Float32Array(d);
    scratchTmpU = new Int32Array(scratchTmp.buffer);
    scratchRow = new Uint16Array(d);
    scratchRow8 = new Uint8Array(scratchRow.buffer);
  }
}

/**
 * Same sum as combineF32, written row by row straight into `dst` (the response's data, already in the request
 * dtype: Float32Array for FLOAT32, Uint16Array of half bits otherwise). No [tokens, d] temporaries; one
 * monomorphic loop per dtype so V8 keeps each one optimised. Returns whether it wrote an Inf or NaN (hasNonFinite).
 */
export function combineInto(c: CombineInput, dst: Float32Array | Uint16Array): boolean {
  const native = c.dtype === DType.FLOAT16 ? null : routerAddon();
  if (native) {
    // Same bits as the TypeScript loops below, 10-30x faster (native/src/combine.cc; NaN payloads may differ). The
    // addon tests for Inf/NaN in its own store loop, at next to no cost; one built before that returns undefined.
    const type = c.dtype === DType.FLOAT32 ? 1 : 2;
    const nonFinite = native.combine(
      dst,
      type,
      c.tokens,
      c.d,
      c.slots,
      c.weights,
      c.locations,
      c.results,
      c.base ?? null,
    );
    return nonFinite ?? hasNonFinite(dst, c.dtype);
  }
  combineIntoTs(c, dst);
  return hasNonFinite(dst, c.dtype);
}

/** combineInto in TypeScript: the fallback without the addon, and the oracle the native combine is tested against. */
export function combineIntoTs(c: CombineInput, dst: Float32Array | Uint16Array): void {
  grow(c.d);
  if (c.dtype === DType.FLOAT32) combineF32Into(c, dst as Float32Array);
  else if (c.dtype === DType.BFLOAT16) combineBf16Into(c, dst as Uint16Array);
  else combineF16Into(c, dst as Uint16Array);
}

function combineF32Into(c: CombineInput, dst: Float32Array): void {
  const { tokens, d, slots, weights, locations } = c;
  const results = c.results as readonly Float32Array[];
  const base = c.base ?? null;
  const acc = scratchAcc;
  for (let t = 0; t < tokens; t++) {
    const o = t * d;
    let first = base === null;
    if (base !== null) for (let j = 0; j < d; j++) acc[j] = base[o + j];
    for (let s = 0; s < slots; s++) {
      const li = (t * slots + s) * 2;
      const ri = locations[li];
      if (ri < 0) continue;
      const w = weights[t * slots + s];
      const src = results[ri];
      const ro = locations[li + 1] * d;
      // `0 +` keeps -0 -> +0 exactly as the zero-initialised sum in combineF32 does.
      if (first) for (let j = 0; j < d; j++) acc[j] = 0 + w * src[ro + j];
      else for (let j = 0; j < d; j++) acc[j] += w * src[ro + j];
      first = false;
    }
    if (first) for (let j = 0; j < d; j++) dst[o + j] = 0;
    else for (let j = 0; j < d; j++) dst[o + j] = acc[j];
  }
}

/** bf16 bits of the fp32 whose bits are `u` (int32): round to nearest even, NaN kept quiet. */
function bf16Bits(u: number): number {
  // For non-NaN u, u + 0x7fff + lsb stays inside int32 (positive u is at most 0x7f800000; negative u only grows
  // towards zero), and >>> 16 reads the top half as unsigned. NaN: set the quiet bit so it cannot become Inf.
  return (u & 0x7fffffff) > 0x7f800000 ? (u >>> 16) | 0x0040 : (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
}

// Row kernels, one small function per case: V8 compiles a short loop in its own function markedly better (about 2x
// here) than the same loop nested inside the token/slot loops. acc/accI (and tmp/tmpI) alias one fp32 row.

/** acc = w * widen(h[ho..]) (first contribution; `0 +` turns -0 into +0 like combineF32's zeroed sum). */
function bfFirst(h: Uint16Array, ho: number, w: number, acc: Float32Array, accI: Int32Array, n: number): void {
  for (let j = 0; j < n; j++) {
    accI[j] = h[ho + j] << 16;
    acc[j] = 0 + acc[j] * w;
  }
}

/** bfFirst, then narrowed into dst[o..] in the same pass (a token with one contribution). */
function bfOnly(
  h: Uint16Array,
  ho: number,
  w: number,
  acc: Float32Array,
  accI: Int32Array,
  dst: Uint16Array,
  o: number,
  n: number,
): void {
  for (let j = 0; j < n; j++) {
    accI[j] = h[ho + j] << 16;
    acc[j] = 0 + acc[j] * w;
    dst[o + j] = bf16Bits(accI[j]);
  }
}

/** acc += w * widen(h[ho..]). */
function bfAdd(
  h: Uint16Array,
  ho: number,
  w: number,
  acc: Float32Array,
  tmp: Float32Array,
  tmpI: Int32Array,
  n: number,
): void {
  for (let j = 0; j < n; j++) {
    tmpI[j] = h[ho + j] << 16;
    acc[j] += w * tmp[j];
  }
}

/** bfAdd, then narrowed into dst[o..] in the same pass (the token's last contribution). */
function bfAddLast(
  h: Uint16Array,
  ho: number,
  w: number,
  acc: Float32Array,
  accI: Int32Array,
  tmp: Float32Array,
  tmpI: Int32Array,
  dst: Uint16Array,
  o: number,
  n: number,
): void {
  for (let j = 0; j < n; j++) {
    tmpI[j] = h[ho + j] << 16;
    acc[j] += w * tmp[j];
    dst[o + j] = bf16Bits(accI[j]);
  }
}

/** acc = base[o..]; narrowed into dst too when `narrow` (a token whose slots are all empty). */
function bfBase(
  base: Float32Array,
  acc: Float32Array,
  accI: Int32Array,
  dst: Uint16Array,
  o: number,
  n: number,
  narrow: boolean,
): void {
  for (let j = 0; j < n; j++) acc[j] = base[o + j];
  if (narrow) for (let j = 0; j < n; j++) dst[o + j] = bf16Bits(accI[j]);
}

/**
 * bf16: widening is `bits << 16` through the Int32 alias of an fp32 row, the first contribution is written (not
 * added to a zeroed row) and narrowing is fused into the pass of the last one, so a top-1 token is one pass.
 */
function combineBf16Into(c: CombineInput, dst: Uint16Array): void {
  const { tokens, d, slots, weights, locations } = c;
  const results = c.results as readonly (Uint16Array | Uint8Array)[];
  const base = c.base ?? null;
  const acc = scratchAcc;
  const accI = scratchAccU;
  const tmp = scratchTmp;
  const tmpI = scratchTmpU;
  for (let t = 0; t < tokens; t++) {
    const o = t * d;
    let last = -1;
    for (let s = 0; s < slots; s++) if (locations[(t * slots + s) * 2] >= 0) last = s;
    if (last < 0) {
      if (base === null) dst.fill(0, o, o + d);
      else bfBase(base, acc, accI, dst, o, d, true);
      continue;
    }
    let first = base === null;
    if (base !== null) bfBase(base, acc, accI, dst, o, d, false);
    for (let s = 0; s <= last; s++) {
      const li = (t * slots + s) * 2;
      const ri = locations[li];
      if (ri < 0) continue;
      const w = weights[t * slots + s];
      let h: Uint16Array;
      let ro = locations[li + 1] * d;
      const src = results[ri];
      if (src.BYTES_PER_ELEMENT === 2) h = src as Uint16Array;
      else {
        // Rows at an odd address (grpc-js framing): one memcpy of the row into aligned scratch.
        scratchRow8.set((src as Uint8Array).subarray(ro * 2, (ro + d) * 2));
        h = scratchRow;
        ro = 0;
      }
      if (first && s === last) bfOnly(h, ro, w, acc, accI, dst, o, d);
      else if (first) bfFirst(h, ro, w, acc, accI, d);
      else if (s === last) bfAddLast(h, ro, w, acc, accI, tmp, tmpI, dst, o, d);
      else bfAdd(h, ro, w, acc, tmp, tmpI, d);
      first = false;
    }
  }
}

function combineF16Into(c: CombineInput, dst: Uint16Array): void {
  const { tokens, d, slots, weights, locations } = c;
  const results = c.results as readonly Uint16Array[];
  const acc = scratchAcc.subarray(0, d);
  const tmp = scratchTmp.subarray(0, d);
  for (let t = 0; t < tokens; t++) {
    if (c.base) acc.set(c.base.subarray(t * d, (t + 1) * d));
    else acc.fill(0);
    for (let s = 0; s < slots; s++) {
      const li = (t * slots + s) * 2;
      const ri = locations[li];
      if (ri < 0) continue;
      const w = weights[t * slots + s];
      const base = locations[li + 1] * d;
      let src = results[ri];
      if (src.BYTES_PER_ELEMENT === 1) src = new Uint16Array(new Uint8Array(src.subarray(base * 2)).buffer, 0, d);
      else src = (src as Uint16Array).subarray(base, base + d);
      f16ToF32(src as Uint16Array, tmp);
      for (let j = 0; j < d; j++) acc[j] += w * tmp[j];
    }
    f32ToF16(acc, dst.subarray(t * d, (t + 1) * d));
  }
}

/**
 * Whether combined rows (combineInto's `dst`: fp32, or half-precision bits) hold an Inf or NaN. Finite weights and
 * finite expert outputs can still sum past the dtype's range (a weight of 1e38, activations near fp16's 65504): the
 * router refuses such an answer rather than hand an engine Infs it would carry into every later layer.
 * The router's thread is its bottleneck and this reads every element of every answer, so it is written for V8:
 * integer tests of the exponent bits on the reply's own memory, no branch per element (a lane whose exponent bits
 * are all ones carries into the bit above them), two 16-bit elements per load.
 */
export function hasNonFinite(dst: Float32Array | Uint16Array, dtype: DType): boolean {
  if (dst.length === 0) return false;
  if (dtype === DType.FLOAT32) return expAllOnes32(new Int32Array(dst.buffer, dst.byteOffset, dst.length));
  const exp = dtype === DType.BFLOAT16 ? 0x7f80 : 0x7c00;
  const h = dst as Uint16Array;
  // The elements outside the 4-byte-aligned middle one by one, the middle as pairs.
  const head = (h.byteOffset & 3) !== 0 ? 1 : 0;
  const pairs = (h.length - head) >>> 1;
  let a = 0;
  if (head) a |= expCarry16(h[0], exp);
  if (head + 2 * pairs < h.length) a |= expCarry16(h[h.length - 1], exp);
  if ((a & 0x8000) !== 0) return true;
  return expAllOnes16x2(new Int32Array(h.buffer, h.byteOffset + 2 * head, pairs), exp);
}

/** The index of the first Inf or NaN in combined rows, or -1 (for the error's message once hasNonFinite saw one). */
export function firstNonFinite(dst: Float32Array | Uint16Array, dtype: DType): number {
  const exp = dtype === DType.FLOAT32 ? 0x7f800000 : dtype === DType.BFLOAT16 ? 0x7f80 : 0x7c00;
  const u = dtype === DType.FLOAT32 ? new Int32Array(dst.buffer, dst.byteOffset, dst.length) : dst;
  for (let i = 0; i < u.length; i++) if ((u[i] & exp) === exp) return i;
  return -1;
}

/** fp32: the exponent (8 bits) + 1 reaches bit 8 only when it is all ones. */
function expAllOnes32(u: Int32Array): boolean {
  let a = 0;
  let b = 0;
  const n = u.length;
  let i = 0;
  for (; i + 1 < n; i += 2) {
    a |= ((u[i] >> 23) & 0xff) + 1;
    b |= ((u[i + 1] >> 23) & 0xff) + 1;
  }
  if (i < n) a |= ((u[i] >> 23) & 0xff) + 1;
  return ((a | b) & 0x100) !== 0;
}

/**
 * bf16 / fp16 bits (`exp`: the exponent field): the field + its lowest bit reaches bit 15 only when the field is all
 * ones (0x7f80 + 0x80, 0x7c00 + 0x400).
 */
function expCarry16(h: number, exp: number): number {
  return (h & exp) + (exp & -exp);
}

/** expCarry16 over pairs of elements, one 32-bit load each. */
function expAllOnes16x2(w: Int32Array, exp: number): boolean {
  const one = exp & -exp;
  let a = 0;
  let b = 0;
  const n = w.length;
  let i = 0;
  for (; i + 1 < n; i += 2) {
    const x = w[i];
    const y = w[i + 1];
    a |= ((x & exp) + one) | (((x >>> 16) & exp) + one);
    b |= ((y & exp) + one) | (((y >>> 16) & exp) + one);
  }
  if (i < n) a |= ((w[i] & exp) + one) | (((w[i] >>> 16) & exp) + one);
  return ((a | b) & 0x8000) !== 0;
}
