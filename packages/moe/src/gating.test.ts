import { bf16BitsToF32, f32ToBf16Bits } from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import {
  applyGate,
  expertCounts,
  gateConfigFromSpec,
  gateLogitsDtype,
  gateWeightsDtype,
  groupByExpert,
  roundToDtype,
  routerLogits,
  sharedGateScale,
  sigmoidGroupTopK,
  softmaxTopK,
  softmaxTopP,
} from "./gating.js";
import { uniformTensor } from "./generate.js";
import { defaultSpec } from "./spec.js";

// Oracles written differently from the implementation: full sorts in float64.
function sortedDesc(vals: number[]): number[] {
  return vals.map((_, i) => i).sort((a, b) => vals[b] - vals[a] || a - b);
}
function softmax64(row: number[]): number[] {
  const m = Math.max(...row);
  const ex = row.map((v) => Math.exp(v - m));
  const s = ex.reduce((a, b) => a + b, 0);
  return ex.map((v) => v / s);
}
function rowOf(a: Float32Array, t: number, e: number): number[] {
  return Array.from(a.subarray(t * e, (t + 1) * e));
}

describe("routerLogits", () => {
  it("is hidden · gate^T", () => {
    const d = 7;
    const h = uniformTensor(1, "h", 3 * d, 1);
    const w = uniformTensor(2, "w", 5 * d, 1);
    const l = routerLogits(h, w, d);
    for (let t = 0; t < 3; t++)
      for (let e = 0; e < 5; e++) {
        let s = 0;
        for (let i = 0; i < d; i++) s += h[t * d + i] * w[e * d + i];
        expect(l[t * 5 + e]).toBeCloseTo(s, 5);
      }
    expect(() => routerLogits(h, w, 6)).toThrow(/^hidden: length 21 is not a multiple of hiddenSize 6/);
  });
});

describe("softmax top-k", () => {
  it("matches a sort-based oracle, renormalised (Mixtral) and not (Qwen norm_topk_prob=false)", () => {
    const E = 60;
    const T = 50;
    const logits = uniformTensor(3, "logits", T * E, 3);
    const norm = softmaxTopK(logits, E, { topK: 4, normTopKProb: true });
    const raw = softmaxTopK(logits, E, { topK: 4, normTopKProb: false });
    expect(norm.k).toBe(4);
    for (let t = 0; t < T; t++) {
      const p = softmax64(rowOf(logits, t, E));
      const top = sortedDesc(p).slice(0, 4);
      expect(Array.from(norm.ids.subarray(t * 4, t * 4 + 4))).toEqual(top);
      expect(Array.from(raw.ids.subarray(t * 4, t * 4 + 4))).toEqual(top);
      const mass = top.reduce((a, i) => a + p[i], 0);
      for (let j = 0; j < 4; j++) {
        expect(raw.weights[t * 4 + j]).toBeCloseTo(p[top[j]], 6);
        expect(norm.weights[t * 4 + j]).toBeCloseTo(p[top[j]] / mass, 6);
      }
    }
  });
  it("breaks ties towards the lower expert id and handles -Infinity (masked) logits", () => {
    const r = softmaxTopK(new Float32Array([1, 2, 2, 2, Number.NEGATIVE_INFINITY]), 5, { topK: 2, normTopKProb: true });
    expect(Array.from(r.ids)).toEqual([1, 2]);
    expect(Array.from(r.weights)).toEqual([0.5, 0.5]);
    const m = softmaxTopK(new Float32Array([Number.NEGATIVE_INFINITY, 0, Number.NEGATIVE_INFINITY]), 3, {
      topK: 1,
      normTopKProb: false,
    });
    expect(Array.from(m.ids)).toEqual([1]);
    expect(m.weights[0]).toBe(1);
  });
  it("rejects bad input naming the field", () => {
    expect(() => softmaxTopK(new Float32Array([0, Number.NaN, 0, 0]), 2, { topK: 1, normTopKProb: true })).toThrow(
      "logits[0, 1]: must be finite or -Infinity, got NaN",
    );
    expect(() => softmaxTopK(new Float32Array(6), 4, { topK: 1, normTopKProb: true })).toThrow(
      "logits: length 6 is not a multiple of experts (4)",
    );
    expect(() => softmaxTopK(new Float32Array(8), 4, { topK: 5, normTopKProb: true })).toThrow(
      "topK: must be an integer in [1, 4], got 5",
    );
    expect(() =>
      softmaxTopK(new Float32Array([0, Number.POSITIVE_INFINITY]), 2, {
        topK: 1,
        normTopKProb: true,
        field: "router_logits",
      }),
    ).toThrow("router_logits[0, 1]: must be finite or -Infinity, got Infinity");
  });
});

describe("DeepSeek-V3 sigmoid group-limited top-k", () => {
  function oracle(row: number[], bias: number[], G: number, TG: number, k: number, norm: boolean, scale: number) {
    const E = row.length;
    const per = E / G;
    const s = row.map((v) => 1 / (1 + Math.exp(-v)));
    const c = s.map((v, i) => v + bias[i]);
    const gs = Array.from({ length: G }, (_, g) => {
      const grp = c.slice(g * per, (g + 1) * per).sort((a, b) => b - a);
      return grp[0] + grp[1];
    });
    const keep = new Set(sortedDesc(gs).slice(0, TG));
    const masked = c.map((v, i) => (keep.has(Math.floor(i / per)) ? v : Number.NEGATIVE_INFINITY));
    const ids = sortedDesc(masked).slice(0, k);
    let w = ids.map((i) => s[i]);
    if (norm) {
      const sum = w.reduce((a, b) => a + b, 0) + 1e-20;
      w = w.map((v) => v / sum);
    }
    return { ids, w: w.map((v) => v * scale) };
  }
  it("matches the oracle: bias changes the choice only, weights from uncorrected scores, scaling", () => {
    const E = 32;
    const T = 40;
    const logits = uniformTensor(5, "l", T * E, 2);
    const bias = uniformTensor(6, "b", E, 0.3); // large enough to change choices
    for (const norm of [true, false]) {
      const r = sigmoidGroupTopK(logits, E, {
        topK: 6,
        normTopKProb: norm,
        nGroup: 8,
        topkGroup: 3,
        routedScalingFactor: 2.5,
        correctionBias: bias,
      });
      for (let t = 0; t < T; t++) {
        const o = oracle(rowOf(logits, t, E), Array.from(bias), 8, 3, 6, norm, 2.5);
        expect(new Set(r.ids.subarray(t * 6, t * 6 + 6))).toEqual(new Set(o.ids));
        expect(Array.from(r.ids.subarray(t * 6, t * 6 + 6))).toEqual(o.ids);
        for (let j = 0; j < 6; j++) expect(r.weights[t * 6 + j]).toBeCloseTo(o.w[j], 5);
      }
    }
  });
  it("the bias really changes selection but never the weights' source", () => {
    const logits = new Float32Array([0, 0.1, 0.2, 0.3]);
    const bias = new Float32Array([1, 0, 0, 0]);
    const r = sigmoidGroupTopK(logits, 4, {
      topK: 1,
      normTopKProb: false,
      nGroup: 1,
      topkGroup: 1,
      routedScalingFactor: 1,
      correctionBias: bias,
    });
    expect(r.ids[0]).toBe(0);
    expect(r.weights[0]).toBeCloseTo(0.5, 6); // sigmoid(0), not sigmoid(0) + 1
  });
  it("only experts of the kept groups are chosen", () => {
    // group 1 (experts 2,3) has the single best expert but group 0 has the best top-2 sum
    const logits = new Float32Array([2, 2, 5, -5]);
    const r = sigmoidGroupTopK(logits, 4, {
      topK: 2,
      normTopKProb: true,
      nGroup: 2,
      topkGroup: 1,
      routedScalingFactor: 1,
    });
    expect(Array.from(r.ids)).toEqual([0, 1]);
  });
  it("refuses a topK larger than the experts of the kept groups (it would route into dropped groups)", () => {
    // 8 experts in 4 groups of 2, 1 group kept: at most 2 experts can be chosen
    const logits = new Float32Array([3, 2, 1, 0, -1, -2, -3, -4]);
    expect(() =>
      sigmoidGroupTopK(logits, 8, { topK: 3, normTopKProb: true, nGroup: 4, topkGroup: 1, routedScalingFactor: 1 }),
    ).toThrow("topK: 3 exceeds the 2 experts of the topkGroup (1) groups kept per token");
  });
  it("refuses a non-finite correction bias, naming the element (NaN/Inf would silently change selection)", () => {
    const logits = new Float32Array([0, 0.1, 0.2, 0.3]);
    const opts = { topK: 1, normTopKProb: false, nGroup: 1, topkGroup: 1, routedScalingFactor: 1 };
    for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
      const correctionBias = new Float32Array([0, 0, 0, bad]);
      expect(() => sigmoidGroupTopK(logits, 4, { ...opts, correctionBias })).toThrow(
        `correctionBias[3]: must be finite, got ${bad}`,
      );
      // the native kernel is never handed it either
      const kernel = () => {
        throw new Error("kernel called");
      };
      expect(() => sigmoidGroupTopK(logits, 4, { ...opts, correctionBias }, kernel)).toThrow(/^correctionBias\[3\]: /);
    }
  });
  it("applyGate follows the spec", () => {
    const spec = defaultSpec("deepseek-v3");
    const logits = uniformTensor(8, "x", 3 * spec.experts, 2);
    const bias = uniformTensor(9, "y", spec.experts, 0.05);
    const a = applyGate(logits, spec.experts, gateConfigFromSpec(spec), bias);
    const b = sigmoidGroupTopK(logits, spec.experts, { ...gateConfigFromSpec(spec), correctionBias: bias });
    expect(a).toEqual(b);
    expect(() => sigmoidGroupTopK(logits, 16, { ...gateConfigFromSpec(spec), nGroup: 3 })).toThrow(
      "nGroup: must divide experts (16), got 3",
    );
    expect(() =>
      sigmoidGroupTopK(logits, 16, { ...gateConfigFromSpec(spec), correctionBias: new Float32Array(3) }),
    ).toThrow("correctionBias: length 3, expected 16");
  });
});

describe("top-p", () => {
  it("takes the smallest prefix reaching p, capped at maxK, padded with -1", () => {
    // probabilities 0.5, 0.25, 0.125, 0.125
    const logits = new Float32Array([Math.log(4), Math.log(2), 0, 0]);
    const r = softmaxTopP(logits, 4, { topP: 0.7, maxK: 3 });
    expect(Array.from(r.ids)).toEqual([0, 1, -1]);
    expect(r.weights[0]).toBeCloseTo(2 / 3, 6);
    expect(r.weights[2]).toBe(0);
    expect(Array.from(softmaxTopP(logits, 4, { topP: 0.5, maxK: 3 }).ids)).toEqual([0, -1, -1]);
    expect(Array.from(softmaxTopP(logits, 4, { topP: 0.99, maxK: 3 }).ids)).toEqual([0, 1, 2]);
    expect(Array.from(softmaxTopP(logits, 4, { topP: 0.1, maxK: 3, minK: 2 }).ids)).toEqual([0, 1, -1]);
    const raw = softmaxTopP(logits, 4, { topP: 0.7, maxK: 3, normalize: false });
    expect(raw.weights[0]).toBeCloseTo(0.5, 6);
  });
  it("uses more experts for flat distributions than for peaked ones", () => {
    const E = 16;
    const flat = softmaxTopP(new Float32Array(E), E, { topP: 0.5, maxK: 16 });
    expect(Array.from(flat.ids).filter((i) => i >= 0).length).toBe(8);
    const peaked = new Float32Array(E);
    peaked[3] = 10;
    expect(Array.from(softmaxTopP(peaked, E, { topP: 0.5, maxK: 16 }).ids).filter((i) => i >= 0)).toEqual([3]);
  });
  it("multiplies the weights by routedScalingFactor, as top-k does", () => {
    const E = 8;
    const logits = uniformTensor(11, "topp-scale", 5 * E, 2);
    const plain = softmaxTopP(logits, E, { topP: 0.6, maxK: 4 });
    const scaled = softmaxTopP(logits, E, { topP: 0.6, maxK: 4, routedScalingFactor: 2.5 });
    expect(Array.from(scaled.ids)).toEqual(Array.from(plain.ids));
    for (let i = 0; i < plain.weights.length; i++) expect(scaled.weights[i]).toBeCloseTo(plain.weights[i] * 2.5, 5);
    // exactly k experts (minK = maxK) gives top-k's weights, scale included
    const topK = softmaxTopK(logits, E, { topK: 3, normTopKProb: true, routedScalingFactor: 2.5 });
    const asTopP = softmaxTopP(logits, E, { topP: 1, maxK: 3, minK: 3, routedScalingFactor: 2.5 });
    expect(Array.from(asTopP.ids)).toEqual(Array.from(topK.ids));
    for (let i = 0; i < topK.weights.length; i++) expect(asTopP.weights[i]).toBeCloseTo(topK.weights[i], 5);
  });
  it("rejects bad options", () => {
    expect(() => softmaxTopP(new Float32Array(4), 4, { topP: 0, maxK: 2 })).toThrow("topP: must be in (0, 1], got 0");
    for (const bad of [0, -1, Number.NaN, Number.POSITIVE_INFINITY])
      expect(() => softmaxTopP(new Float32Array(4), 4, { topP: 0.5, maxK: 2, routedScalingFactor: bad })).toThrow(
        `routedScalingFactor: must be a positive finite number, got ${bad}`,
      );
    expect(() => softmaxTopP(new Float32Array(4), 4, { topP: 0.5, maxK: 2, minK: 3 })).toThrow(
      "minK: must be an integer in [1, 2], got 3",
    );
  });
});

describe("grouping", () => {
  it("groups by expert, skipping -1 slots", () => {
    const r = {
      tokens: 3,
      k: 2,
      ids: new Int32Array([1, 0, 1, -1, 2, 1]),
      weights: new Float32Array([0.6, 0.4, 1, 0, 0.7, 0.3]),
    };
    expect(Array.from(expertCounts(r, 3))).toEqual([1, 3, 1]);
    const g = groupByExpert(r, 3);
    expect(g.map((x) => x.expert)).toEqual([0, 1, 2]);
    expect(Array.from(g[1].tokens)).toEqual([0, 1, 2]);
    expect(Array.from(g[1].weights)).toEqual([Math.fround(0.6), 1, Math.fround(0.3)]);
    expect(() => groupByExpert({ ...r, ids: new Int32Array([5, 0, 0, 0, 0, 0]) }, 3)).toThrow(
      "ids[0, 0]: expert 5 out of range [0, 3)",
    );
  });
});

describe("the gate's precision in a half-precision model (as transformers' blocks compute it)", () => {
  it("Mixtral and Qwen gate in the activations' dtype, DeepSeek-V3 and custom models in fp32", () => {
    for (const f of ["mixtral", "qwen2-moe", "qwen3-moe"] as const) {
      expect(gateLogitsDtype(defaultSpec(f), "bfloat16")).toBe("bfloat16");
      expect(gateLogitsDtype(defaultSpec(f), "float16")).toBe("float16");
      expect(gateLogitsDtype(defaultSpec(f), "float32")).toBe("float32");
    }
    expect(gateLogitsDtype(defaultSpec("deepseek-v3"), "bfloat16")).toBe("float32");
    expect(gateLogitsDtype(defaultSpec("custom"), "bfloat16")).toBe("float32");
    // Qwen casts the routing weights to the logits' dtype; Mixtral keeps its fp32 softmax weights
    expect(gateWeightsDtype(defaultSpec("qwen3-moe"), "bfloat16")).toBe("bfloat16");
    expect(gateWeightsDtype(defaultSpec("qwen2-moe"), "float16")).toBe("float16");
    expect(gateWeightsDtype(defaultSpec("mixtral"), "bfloat16")).toBe("float32");
    expect(gateWeightsDtype(defaultSpec("deepseek-v3"), "bfloat16")).toBe("float32");
  });

  it("roundToDtype rounds in place to nearest-even, as torch's casts do", () => {
    // 1 + 2^-8 is halfway between bf16 1 and 1 + 2^-7: ties to even (1); 1 + 3 * 2^-8 goes up to 1 + 2^-6
    const v = new Float32Array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.7, Number.NEGATIVE_INFINITY, 1e-3]);
    const same = roundToDtype(v, "bfloat16");
    expect(same).toBe(v);
    expect(Array.from(v)).toEqual([
      1,
      1 + 2 ** -6,
      bf16BitsToF32(f32ToBf16Bits(-2.7)),
      Number.NEGATIVE_INFINITY,
      bf16BitsToF32(f32ToBf16Bits(1e-3)),
    ]);
    expect(v[2]).not.toBe(Math.fround(-2.7));
    const h = new Float32Array([1 + 2 ** -11, 1 + 3 * 2 ** -11]); // f16: 10 mantissa bits
    roundToDtype(h, "float16");
    expect(Array.from(h)).toEqual([1, 1 + 2 ** -9]);
    const f = new Float32Array([Math.fround(0.1)]);
    roundToDtype(f, "float32");
    expect(f[0]).toBe(Math.fround(0.1));
  });

  it("bf16 logits tie where fp32 ones do not: the lower id wins, as torch.topk on CUDA picks", () => {
    // expert 3's fp32 logit is a hair above expert 1's; both round to the same bf16 value
    const logits = new Float32Array([0, 1.001, -1, 1.0015, 0.5, -2, 0.2, 0.1]);
    expect(softmaxTopK(logits.slice(), 8, { topK: 1, normTopKProb: true }).ids[0]).toBe(3);
    const rounded = roundToDtype(logits.slice(), "bfloat16");
    expect(rounded[1]).toBe(rounded[3]);
    expect(softmaxTopK(rounded, 8, { topK: 1, normTopKProb: true }).ids[0]).toBe(1);
  });

  it("Qwen2-MoE's shared-expert gate rounds its logit, then its sigmoid, to the activations' dtype", () => {
    // x · w = 1 + 5 * 2^-10, exact in fp32 and fp16; bf16 (8 significant bits) rounds it up to 1 + 2^-7
    const spec = defaultSpec("qwen2-moe", { hiddenSize: 2 });
    const x = new Float32Array([1, 1, -1, -1]);
    const w = new Float32Array([1, 5 * 2 ** -10]);
    const l = 1 + 5 * 2 ** -10;
    const fp32 = [1 / (1 + Math.exp(-l)), 1 / (1 + Math.exp(l))].map(Math.fround); // 0.732018, 0.267982
    expect(Array.from(sharedGateScale(spec, x, w))).toEqual(fp32);
    expect(Array.from(sharedGateScale(spec, x, w, "float32"))).toEqual(fp32);
    // sigmoid(±(1 + 2^-7)) = 0.732586, 0.267414 -> bf16 188/256, 137/512; rounding only the fp32 sigmoid would give
    // 187/256 and 137/512: the first token needs the logit rounded too
    expect(Array.from(sharedGateScale(spec, x, w, "bfloat16"))).toEqual([188 / 256, 137 / 512]);
    expect(Array.from(roundToDtype(Float32Array.from(fp32), "bfloat16"))).toEqual([187 / 256, 137 / 512]);
    // fp16 keeps the logit; its sigmoid rounds to 11 significant bits (0.732018 * 2048 = 1499.17)
    expect(Array.from(sharedGateScale(spec, x, w, "float16"))).toEqual([1499 / 2048, 549 / 2048]);
    // a custom model's gate stays fp32, as its routed gate does (gateLogitsDtype)
    const custom = defaultSpec("custom", { hiddenSize: 2, sharedExperts: 1, sharedExpertGate: true });
    expect(Array.from(sharedGateScale(custom, x, w, "bfloat16"))).toEqual(fp32);
  });

  it("weightsDtype rounds the routing weights, top-k (TypeScript and kernel paths) and top-p", () => {
    const logits = uniformTensor(3, "w", 4 * 16, 2);
    const plain = softmaxTopK(logits, 16, { topK: 4, normTopKProb: false });
    const bf = softmaxTopK(logits, 16, { topK: 4, normTopKProb: false, weightsDtype: "bfloat16" });
    expect(bf.ids).toEqual(plain.ids);
    expect(Array.from(bf.weights)).toEqual(Array.from(roundToDtype(plain.weights.slice(), "bfloat16")));
    expect(Array.from(bf.weights)).not.toEqual(Array.from(plain.weights));
    // a kernel's weights are rounded the same way
    const kernel = (_l: Float32Array, _t: number, _e: number, _k: number, ...rest: unknown[]) => {
      (rest[rest.length - 2] as Int32Array).set(plain.ids);
      (rest[rest.length - 1] as Float32Array).set(plain.weights);
      return -1;
    };
    const viaKernel = softmaxTopK(logits, 16, { topK: 4, normTopKProb: false, weightsDtype: "bfloat16" }, kernel);
    expect(Array.from(viaKernel.weights)).toEqual(Array.from(bf.weights));
    const p = softmaxTopP(logits, 16, { topP: 0.7, maxK: 6 });
    const pb = softmaxTopP(logits, 16, { topP: 0.7, maxK: 6, weightsDtype: "bfloat16" });
    expect(Array.from(pb.weights)).toEqual(Array.from(roundToDtype(p.weights.slice(), "bfloat16")));
  });
});
