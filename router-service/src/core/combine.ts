// Combine: out[t] = sum over the token's slots s (in slot order) of weight[t,s] * expertOut[t,s], in fp32,
// then narrowed to the request's dtype (round to nearest even). Summing in slot order, not in reply order, makes
// the answer bit-identical however the worker replies interleave.

import { bf16ToF32, DType, f16ToF32, f32ToBf16, f32ToF16, valuesToBytes } from "@switchyard/protocol";

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
  results: readonly (Float32Array | Uint16Array)[];
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

// Scratch rows reused across calls (the router is single-threaded); grown on demand.
let scratchAcc = new Float32Array(0);
let scratchTmp = new Float32Array(0);
function scratch(d: number): [Float32Array, Float32Array] {
  if (scratchAcc.length < d) {
    scratchAcc = new Float32Array(d);
    scratchTmp = new Float32Array(d);
  }
  return [scratchAcc.subarray(0, d), scratchTmp.subarray(0, d)];
}

/**
 * Same sum as combineF32, written row by row straight into `dst` (the response's data, already in the request
 * dtype: Float32Array for FLOAT32, Uint16Array of half bits otherwise). No [tokens, d] temporaries; one
 * monomorphic loop per dtype so V8 keeps each one optimised.
 */
export function combineInto(c: CombineInput, dst: Float32Array | Uint16Array): void {
  if (c.dtype === DType.FLOAT32) combineF32Into(c, dst as Float32Array);
  else combineHalfInto(c, dst as Uint16Array, c.dtype === DType.BFLOAT16);
}

function combineF32Into(c: CombineInput, dst: Float32Array): void {
  const { tokens, d, slots, weights, locations } = c;
  const results = c.results as readonly Float32Array[];
  const [acc] = scratch(d);
  for (let t = 0; t < tokens; t++) {
    if (c.base) acc.set(c.base.subarray(t * d, (t + 1) * d));
    else acc.fill(0);
    for (let s = 0; s < slots; s++) {
      const li = (t * slots + s) * 2;
      const ri = locations[li];
      if (ri < 0) continue;
      const w = weights[t * slots + s];
      const src = results[ri];
      const base = locations[li + 1] * d;
      for (let j = 0; j < d; j++) acc[j] += w * src[base + j];
    }
    dst.set(acc, t * d);
  }
}

function combineHalfInto(c: CombineInput, dst: Uint16Array, bf16: boolean): void {
  const { tokens, d, slots, weights, locations } = c;
  const results = c.results as readonly Uint16Array[];
  const [acc, tmp] = scratch(d);
  for (let t = 0; t < tokens; t++) {
    if (c.base) acc.set(c.base.subarray(t * d, (t + 1) * d));
    else acc.fill(0);
    for (let s = 0; s < slots; s++) {
      const li = (t * slots + s) * 2;
      const ri = locations[li];
      if (ri < 0) continue;
      const w = weights[t * slots + s];
      const base = locations[li + 1] * d;
      const row = results[ri].subarray(base, base + d);
      if (bf16) bf16ToF32(row, tmp);
      else f16ToF32(row, tmp);
      for (let j = 0; j < d; j++) acc[j] += w * tmp[j];
    }
    const out = dst.subarray(t * d, (t + 1) * d);
    if (bf16) f32ToBf16(acc, out);
    else f32ToF16(acc, out);
  }
}
