// GPU parity check shared by the vitest suite (runs where a GPU and the built addon exist, skips visibly
// elsewhere) and the H200 smoke run (bench/h200_worker_smoke.ts): the CUDA backend against the TypeScript
// reference on fresh random experts and tokens, with more experts than GPU slots (eviction + re-upload), rows
// outside every slice, per-row weights, bf16 and fp32 tokens.

import { bytesToFloat32, DType, valuesToBytes } from "@switchyard/protocol";
import { randomExpert, rng, uniform } from "../testing.js";
import { ReferenceBackend } from "./reference.js";
import type { ExpertBackend, PreparedSlice } from "./types.js";

export interface ParityResult {
  seed: number;
  cases: { name: string; relerr: number; zeroRowsOk: boolean; ms: number }[];
  ok: boolean;
}

export async function cudaParity(cuda: ExpertBackend, seed = Date.now() >>> 0): Promise<ParityResult> {
  const next = rng(seed);
  const ref = new ReferenceBackend();
  const d = 256;
  const f = 192;
  const nExperts = 8;
  const weights = Array.from({ length: nExperts }, () => randomExpert(d, f, "bfloat16", next));
  const gpu = await Promise.all(weights.map((w) => cuda.prepare(w)));
  const cpu = await Promise.all(weights.map((w) => ref.prepare(w)));
  const cases: ParityResult["cases"] = [];
  for (const [name, dtype, rows, want] of [
    ["bf16 tokens, 3 experts", DType.BFLOAT16, 37, 3],
    ["fp32 tokens, 5 experts", DType.FLOAT32, 64, 5],
    ["bf16 one row", DType.BFLOAT16, 1, 1],
    ["bf16 5 other experts", DType.BFLOAT16, 90, 5],
  ] as const) {
    const x = uniform(rows * d, 1, next);
    const tokens = new Uint8Array(valuesToBytes(x, dtype));
    const rowWeights = uniform(rows, 1, next).map((v) => 0.25 + Math.abs(v));
    const order = Array.from({ length: nExperts }, (_, i) => i)
      .sort(() => next() - 0.5)
      .slice(0, want);
    const slicesOf = (prep: typeof gpu): PreparedSlice[] => {
      const out: PreparedSlice[] = [];
      let at = 0;
      order.forEach((e, i) => {
        const left = rows - at;
        const count =
          i === order.length - 1
            ? Math.max(0, left - (rows > 4 ? 2 : 0))
            : Math.floor((left / (order.length - i)) * (0.5 + next()));
        out.push({ expert: prep[e] as (typeof prep)[number], offset: at, count: Math.min(count, left) });
        at += Math.min(count, left);
      });
      return out;
    };
    const sg = slicesOf(gpu);
    const sc = sg.map((s, i) => ({ ...s, expert: cpu[order[i] as number] as (typeof cpu)[number] }));
    const t0 = performance.now();
    const yg = bytesToFloat32(await cuda.run({ dtype, tokens, rows, cols: d, slices: sg, rowWeights }), dtype);
    const ms = performance.now() - t0;
    const yc = bytesToFloat32(await ref.run({ dtype, tokens, rows, cols: d, slices: sc, rowWeights }), dtype);
    let num = 0;
    let den = 0;
    for (let i = 0; i < yc.length; i++) {
      const a = yg[i] as number;
      const b = yc[i] as number;
      num += (a - b) * (a - b);
      den += b * b;
    }
    const covered = sg.reduce((n, s) => n + s.count, 0);
    let zeroRowsOk = true;
    for (let r = covered; r < rows; r++) for (let c = 0; c < d; c++) if (yg[r * d + c] !== 0) zeroRowsOk = false;
    cases.push({ name, relerr: Math.sqrt(num / Math.max(den, 1e-30)), zeroRowsOk, ms });
  }
  return { seed, cases, ok: cases.every((c) => c.relerr < 1e-2 && c.zeroRowsOk) };
}
