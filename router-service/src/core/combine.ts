// Combine: out[t] = sum over the token's slots s (in slot order) of weight[t,s] * expertOut[t,s], in fp32,
// then narrowed to the request's dtype (round to nearest even). Summing in slot order, not in reply order, makes
// the answer bit-identical however the worker replies interleave.

import { DType, f16ToF32, valuesToBytes } from "@switchyard/protocol";

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
