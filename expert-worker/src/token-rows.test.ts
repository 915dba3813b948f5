import { bf16ToF32, DType, encodeTensor } from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import { loadNativeAddon } from "./backend/native-cpu.js";
import { rng, uniform } from "./testing.js";
import { gatherRows, sumRowsByToken } from "./token-rows.js";

const d = 24;
const rows = new Uint32Array([2, 0, 1, 2, 2, 0]); // 6 assignment rows over 3 distinct tokens

/** The sum spelled out: each row widened to fp32 and added into its token, in row order. */
function expected(out: Uint8Array, dtype: DType, distinct: number, w?: Float32Array): Float32Array {
  const x =
    dtype === DType.BFLOAT16
      ? bf16ToF32(new Uint16Array(out.buffer, out.byteOffset, out.byteLength / 2))
      : new Float32Array(out.buffer, out.byteOffset, out.byteLength / 4);
  const acc = new Float32Array(distinct * d);
  rows.forEach((u, i) => {
    for (let j = 0; j < d; j++) acc[u * d + j] += (w ? w[i] : 1) * x[i * d + j];
  });
  return acc;
}

describe("token rows", () => {
  it("gatherRows: row i is token row rows[i]", () => {
    const tokens = new Uint8Array(3 * 8).map((_, i) => i);
    const g = gatherRows(tokens, rows, 8);
    rows.forEach((u, i) => {
      expect([...g.subarray(i * 8, (i + 1) * 8)]).toEqual([...tokens.subarray(u * 8, u * 8 + 8)]);
    });
  });

  it.each([DType.FLOAT32, DType.BFLOAT16])(
    "sumRowsByToken (dtype %i): each token's rows added in row order",
    (dtype) => {
      const out = encodeTensor(uniform(6 * d, 1, rng(4)), [6, d], dtype).data;
      const w = new Float32Array([0.5, -1, 2, 0.25, 1, 3]);
      for (const weights of [undefined, w]) {
        const want = expected(out, dtype, 3, weights);
        const got = sumRowsByToken(out, dtype, rows, 3, d, weights);
        // the native sum rounds each product in fp32 (or fuses it), this reference adds in double
        const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
        expect(scale).toBeGreaterThan(0);
        for (let i = 0; i < want.length; i++) expect(Math.abs(got[i] - want[i])).toBeLessThanOrEqual(1e-6 * scale);
      }
    },
  );

  it("the native sum refuses a token row past the accumulator, naming it", () => {
    const native = loadNativeAddon();
    if (!native) {
      console.log(`[token-rows] native check skipped: CPU addon not built`);
      return;
    }
    const out = new Uint8Array(2 * d * 4);
    expect(() => native.sumRowsByToken(out, DType.FLOAT32, new Uint32Array([0, 3]), new Float32Array(3 * d))).toThrow(
      /tokenRows/,
    );
  });
});
