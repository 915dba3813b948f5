import { describe, expect, it } from "vitest";
import type { ExpertFFNWeights, MoeLayerWeights } from "./checkpoint.js";
import { uniformTensor } from "./generate.js";
import { expertFFNFlops, referenceExpertFFN, referenceExpertFFN64, referenceMoeBlock } from "./reference.js";
import { defaultSpec, MODEL_FAMILIES, type ModelSpec } from "./spec.js";

function expertW(seed: number, d: number, f: number): ExpertFFNWeights {
  return {
    hidden: d,
    intermediate: f,
    gate: uniformTensor(seed, "g", f * d, Math.sqrt(3 / d)),
    up: uniformTensor(seed, "u", f * d, Math.sqrt(3 / d)),
    down: uniformTensor(seed, "d", d * f, Math.sqrt(3 / f)),
  };
}

// Naive oracle: one row at a time, textbook formula, float64.
function naiveRow(x: ArrayLike<number>, w: ExpertFFNWeights): number[] {
  const { hidden: d, intermediate: f } = w;
  const a: number[] = [];
  for (let j = 0; j < f; j++) {
    let g = 0;
    let u = 0;
    for (let i = 0; i < d; i++) {
      g += x[i] * w.gate[j * d + i];
      u += x[i] * w.up[j * d + i];
    }
    a.push((g / (1 + Math.exp(-g))) * u);
  }
  const y: number[] = [];
  for (let i = 0; i < d; i++) {
    let s = 0;
    for (let j = 0; j < f; j++) s += a[j] * w.down[i * f + j];
    y.push(s);
  }
  return y;
}

function maxRelErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let e = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    e = Math.max(e, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return m === 0 ? e : e / m;
}

describe("referenceExpertFFN", () => {
  it("matches a naive float64 oracle on awkward sizes (1 token, empty experts, d % 8 != 0, 257 experts)", () => {
    for (const [d, f, experts, rowsPer] of [
      [13, 7, 3, [1, 0, 5]],
      [24, 40, 257, null],
      [1, 1, 1, [1]],
    ] as const) {
      const counts = rowsPer
        ? [...rowsPer]
        : Array.from({ length: experts }, (_, e) => (e % 3 === 0 ? 0 : (e % 5) + 1));
      const n = counts.reduce((a, b) => a + b, 0);
      const ws = Array.from({ length: experts }, (_, e) => expertW(100 + e, d, f));
      const x = uniformTensor(1, "x", n * d, Math.sqrt(3));
      const rw = uniformTensor(2, "rw", n, 1);
      const slices = [];
      let off = 0;
      for (let e = 0; e < experts; e++) {
        slices.push({ expert: e, offset: off, count: counts[e] });
        off += counts[e];
      }
      const y32 = referenceExpertFFN(x, d, slices, (e) => ws[e], rw);
      const y64 = referenceExpertFFN64(x, d, slices, (e) => ws[e], rw);
      const want: number[] = [];
      for (const s of slices)
        for (let r = s.offset; r < s.offset + s.count; r++)
          want.push(...naiveRow(x.subarray(r * d, (r + 1) * d), ws[s.expert]).map((v) => v * rw[r]));
      expect(maxRelErr(y64, want)).toBeLessThan(1e-12);
      expect(maxRelErr(y32, want)).toBeLessThan(1e-6);
    }
  });
  it("leaves rows in no slice at zero and accepts slices in any order", () => {
    const d = 5;
    const w = expertW(1, d, 3);
    const x = uniformTensor(3, "x", 6 * d, 1);
    const y = referenceExpertFFN(
      x,
      d,
      [
        { expert: 0, offset: 4, count: 2 },
        { expert: 0, offset: 0, count: 1 },
      ],
      () => w,
    );
    expect(Array.from(y.subarray(d, 4 * d)).every((v) => v === 0)).toBe(true);
    expect(Array.from(y.subarray(0, d)).some((v) => v !== 0)).toBe(true);
  });
  it("rejects bad slices, weights and shapes naming the field", () => {
    const d = 4;
    const w = expertW(1, d, 2);
    const x = new Float32Array(3 * d);
    expect(() => referenceExpertFFN(x, d, [{ expert: 0, offset: 2, count: 2 }], () => w)).toThrow(
      "slices[0]: rows [2, 4) outside [0, 3)",
    );
    expect(() =>
      referenceExpertFFN(
        x,
        d,
        [
          { expert: 0, offset: 0, count: 2 },
          { expert: 1, offset: 1, count: 1 },
        ],
        () => w,
      ),
    ).toThrow("slices[1]: row 1 is already in another slice");
    expect(() => referenceExpertFFN(x, d, [], () => w, new Float32Array(2))).toThrow(
      "rowWeights: length 2, expected 3",
    );
    expect(() => referenceExpertFFN(x, 5, [], () => w)).toThrow("tokens: length 12 is not a multiple of hidden (5)");
    expect(() =>
      referenceExpertFFN(x, d, [{ expert: 0, offset: 0, count: 1 }], () => ({ ...w, down: new Float32Array(3) })),
    ).toThrow("experts[0].down: length 3, expected 4×2");
  });
  it("counts FLOPs as 3 matmuls", () => {
    expect(expertFFNFlops(256, 1024, 3584)).toBe(2 * 3 * 256 * 1024 * 3584);
  });
});

// Naive MoE block: token by token, as transformers' formulas read, with the routing recomputed in float64.
function naiveBlock(spec: ModelSpec, w: MoeLayerWeights, hidden: Float32Array): number[] {
  const d = spec.hiddenSize;
  const E = spec.experts;
  const T = hidden.length / d;
  const out: number[] = [];
  for (let t = 0; t < T; t++) {
    const x = hidden.subarray(t * d, (t + 1) * d);
    const logits = Array.from({ length: E }, (_, e) => {
      let s = 0;
      for (let i = 0; i < d; i++) s += x[i] * w.gate[e * d + i];
      return s;
    });
    let chosen: { e: number; wt: number }[];
    if (spec.scoring === "softmax") {
      const m = Math.max(...logits);
      const ex = logits.map((v) => Math.exp(v - m));
      const z = ex.reduce((a, b) => a + b, 0);
      const p = ex.map((v) => v / z);
      const ids = p
        .map((_, i) => i)
        .sort((a, b) => p[b] - p[a] || a - b)
        .slice(0, spec.topK);
      const mass = ids.reduce((a, i) => a + p[i], 0);
      chosen = ids.map((e) => ({ e, wt: spec.normTopKProb ? p[e] / mass : p[e] }));
    } else {
      const s = logits.map((v) => 1 / (1 + Math.exp(-v)));
      const c = s.map((v, i) => v + (w.correctionBias?.[i] ?? 0));
      const per = E / spec.nGroup;
      const gs = Array.from({ length: spec.nGroup }, (_, g) => {
        const grp = c.slice(g * per, (g + 1) * per).sort((a, b) => b - a);
        return grp[0] + grp[1];
      });
      const keep = new Set(
        gs
          .map((_, i) => i)
          .sort((a, b) => gs[b] - gs[a] || a - b)
          .slice(0, spec.topkGroup),
      );
      const ids = c
        .map((_, i) => i)
        .filter((i) => keep.has(Math.floor(i / per)))
        .sort((a, b) => c[b] - c[a] || a - b)
        .slice(0, spec.topK);
      const sum = ids.reduce((a, i) => a + s[i], 0) + 1e-20;
      chosen = ids.map((e) => ({ e, wt: (spec.normTopKProb ? s[e] / sum : s[e]) * spec.routedScalingFactor }));
    }
    const y = new Array(d).fill(0);
    for (const { e, wt } of chosen)
      naiveRow(x, w.experts[e]).forEach((v, i) => {
        y[i] += wt * v;
      });
    if (w.shared) {
      let g = 1;
      if (w.sharedGate) {
        let s = 0;
        for (let i = 0; i < d; i++) s += x[i] * w.sharedGate[i];
        g = 1 / (1 + Math.exp(-s));
      }
      naiveRow(x, w.shared).forEach((v, i) => {
        y[i] += g * v;
      });
    }
    out.push(...y);
  }
  return out;
}

describe("referenceMoeBlock", () => {
  for (const family of MODEL_FAMILIES) {
    it(`${family}: equals the token-by-token formula`, () => {
      const spec = defaultSpec(family, { hiddenSize: 20, intermediateSize: 12, layers: 1 });
      const d = spec.hiddenSize;
      const w: MoeLayerWeights = {
        gate: uniformTensor(1, "gate", spec.experts * d, Math.sqrt(3 / d)),
        experts: Array.from({ length: spec.experts }, (_, e) => expertW(10 + e, d, spec.intermediateSize)),
      };
      if (spec.sharedExperts > 0) w.shared = expertW(99, d, spec.sharedIntermediateSize);
      if (spec.sharedExpertGate) w.sharedGate = uniformTensor(2, "sg", d, Math.sqrt(3 / d));
      if (spec.scoring === "sigmoid") w.correctionBias = uniformTensor(3, "b", spec.experts, 0.05);
      const hidden = uniformTensor(4, "h", 9 * d, Math.sqrt(3));
      const r = referenceMoeBlock(spec, w, hidden);
      expect(r.routing.tokens).toBe(9);
      expect(maxRelErr(r.output, naiveBlock(spec, w, hidden))).toBeLessThan(1e-5);
      // an explicit routing gives the same result as the computed one
      const again = referenceMoeBlock(spec, w, hidden, { routing: r.routing });
      expect(Array.from(again.output)).toEqual(Array.from(r.output));
    });
  }
  it("qwen2-moe in a bf16 model scales the shared expert by a bf16 sigmoid of a bf16 logit, as transformers does", () => {
    // x · shared_expert_gate = 1 + 5 * 2^-10 (fp32 exact) rounds to bf16 1 + 2^-7; its sigmoid 0.732586 to 188/256
    // (gating.test.ts: the fp32 gate's 0.732018 would round to 187/256). Routed experts with a zero down
    // projection leave the shared expert alone in the output.
    const d = 2;
    const spec = defaultSpec("qwen2-moe", { hiddenSize: d, intermediateSize: 1, sharedIntermediateSize: 1 });
    const zero = (): ExpertFFNWeights => ({ ...expertW(1, d, 1), down: new Float32Array(d) });
    const shared: ExpertFFNWeights = {
      hidden: d,
      intermediate: 1,
      gate: new Float32Array([1, 0]),
      up: new Float32Array([1, 0]),
      down: new Float32Array([1, 0]),
    };
    const w: MoeLayerWeights = {
      gate: uniformTensor(1, "gate", spec.experts * d, 1),
      experts: Array.from({ length: spec.experts }, zero),
      shared,
      sharedGate: new Float32Array([1, 5 * 2 ** -10]),
    };
    const x = new Float32Array([1, 1]);
    const ffn = referenceExpertFFN(x, d, [{ expert: 0, offset: 0, count: 1 }], () => shared)[0]; // silu(1)
    const bf16 = referenceMoeBlock(spec, w, x, { activations: "bfloat16" });
    expect(Array.from(bf16.output)).toEqual([Math.fround((188 / 256) * ffn), 0]);
    // with a given routing too (the router's explicit assignments; the local verifier's top-p)
    const given = referenceMoeBlock(spec, w, x, { routing: bf16.routing, activations: "bfloat16" });
    expect(Array.from(given.output)).toEqual(Array.from(bf16.output));
    // fp32 activations keep the fp32 gate
    const fp32 = referenceMoeBlock(spec, w, x);
    const s = Math.fround(1 / (1 + Math.exp(-(1 + 5 * 2 ** -10))));
    expect(Array.from(fp32.output)).toEqual([Math.fround(s * ffn), 0]);
  });

  it("rejects missing weights", () => {
    const spec = defaultSpec("qwen2-moe", { hiddenSize: 4, intermediateSize: 2 });
    const w: MoeLayerWeights = {
      gate: new Float32Array(spec.experts * 4),
      experts: Array.from({ length: spec.experts }, (_, e) => expertW(e, 4, 2)),
    };
    expect(() => referenceMoeBlock(spec, w, new Float32Array(8))).toThrow(
      "weights.shared: required: the model has 1 shared expert(s)",
    );
    expect(() => referenceMoeBlock(spec, w, new Float32Array(7))).toThrow(
      "hidden: length 7 is not a multiple of hiddenSize (4)",
    );
  });
});
