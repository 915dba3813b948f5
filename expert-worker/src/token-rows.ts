// Deduplicated batches (ExpertBatch.token_rows / combine): the router sends each distinct token once, the worker
// expands them to one row per (token, expert) for the backend and, with `combine`, sums each token's weighted rows
// back into one FLOAT32 row. Both directions then carry U rows instead of N = U x (experts per token here): at
// DeepSeek-V3 on one worker 15 tokens instead of 136 rows, 14 KB each, per flush. The sum runs in the CPU addon
// where it is built (a JavaScript loop took several milliseconds of the worker's event loop per batch).

import { bf16ToF32, DType, f16ToF32 } from "@switchyard/protocol";
import { loadNativeAddon } from "./backend/native-cpu.js";

/** [rows.length, rowBytes]: row i is tokens' row rows[i] (the backend's input rows). */
export function gatherRows(tokens: Uint8Array, rows: Uint32Array, rowBytes: number): Uint8Array {
  const out = Buffer.allocUnsafe(rows.length * rowBytes); // every byte is written below
  for (let i = 0; i < rows.length; i++) {
    const at = rows[i] * rowBytes;
    out.set(tokens.subarray(at, at + rowBytes), i * rowBytes);
  }
  return out;
}

/**
 * Sums the backend's output rows per distinct token: FLOAT32 [distinct, d], weights[i] * row i added into token
 * rows[i] in fp32, in row order: each term exactly as the router's own combine forms it (the row as the backend
 * rounded it to the batch's dtype, then scaled in fp32). No weights: 1. Rows of no slice are zero in the backend's
 * output and add nothing.
 */
export function sumRowsByToken(
  out: Uint8Array,
  dtype: DType,
  rows: Uint32Array,
  distinct: number,
  d: number,
  weights?: Float32Array,
): Float32Array {
  return addRowsByToken(new Float32Array(distinct * d), out, dtype, rows, d, weights);
}

/**
 * sumRowsByToken's sum into an accumulator the caller holds (FLOAT32 [distinct, d]), which keeps what it has: a
 * worker over several GPUs adds each device's sums into one (multi-device.ts).
 */
export function addRowsByToken(
  acc: Float32Array,
  out: Uint8Array,
  dtype: DType,
  rows: Uint32Array,
  d: number,
  weights?: Float32Array,
): Float32Array {
  const native = loadNativeAddon();
  if (native?.sumRowsByToken && rows.length > 0) {
    native.sumRowsByToken(out, dtype, rows, acc, weights);
    return acc;
  }
  const n = rows.length;
  if (dtype === DType.FLOAT32) {
    const src = aligned(out, 4, (b, o, l) => new Float32Array(b, o, l));
    for (let i = 0; i < n; i++) {
      const a = rows[i] * d;
      const s = i * d;
      const w = weights ? weights[i] : 1;
      for (let j = 0; j < d; j++) acc[a + j] += w * src[s + j];
    }
    return acc;
  }
  const src = aligned(out, 2, (b, o, l) => new Uint16Array(b, o, l));
  const wide = new Float32Array(d); // one row widened at a time
  for (let i = 0; i < n; i++) {
    const row = src.subarray(i * d, (i + 1) * d);
    if (dtype === DType.BFLOAT16) bf16ToF32(row, wide);
    else f16ToF32(row, wide);
    const a = rows[i] * d;
    const w = weights ? weights[i] : 1;
    for (let j = 0; j < d; j++) acc[a + j] += w * wide[j];
  }
  return acc;
}

function aligned<T>(b: Uint8Array, size: number, view: (buf: ArrayBufferLike, off: number, len: number) => T): T {
  if (b.byteOffset % size === 0) return view(b.buffer, b.byteOffset, b.byteLength / size);
  const c = new Uint8Array(b.byteLength);
  c.set(b);
  return view(c.buffer, 0, b.byteLength / size);
}
