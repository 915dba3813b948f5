// The native gate (native/src/gate.h) against packages/moe softmaxTopK / sigmoidGroupTopK, which it must match: the
// same experts and the same weights bit for bit, fresh random logits each run, every family's gate (Mixtral,
// Qwen-MoE with and without norm_topk_prob, DeepSeek-V3's groups and correction bias), masked experts, whole masked
// rows, ties, k = E, one expert, no tokens; bad logits must name the same field as the TypeScript gate does.

import { type GateKernel, mulberry32, sigmoidGroupTopK, softmaxTopK } from "@switchyard/moe";
import { describe, expect, it } from "vitest";
import { nativeCombineStatus, routerAddon } from "./native-combine.js";

const addon = routerAddon();
const kernel: GateKernel | undefined = addon?.routerGate;
if (!kernel && process.env.CI === "true") throw new Error(`router gate not loadable in CI: ${nativeCombineStatus()}`);
if (!kernel) console.warn(`native router-gate tests SKIPPED: ${nativeCombineStatus()}`);

const seed = (Date.now() ^ (process.pid << 8)) >>> 0;
const rand = mulberry32(seed);

/** Logits as a gate gives them (a few units), with some experts masked and some rows tied where `ties`. */
function logits(T: number, E: number, o: { masked?: number; ties?: boolean; scale?: number } = {}): Float32Array {
  const l = new Float32Array(T * E);
  for (let i = 0; i < l.length; i++) l[i] = (rand() * 2 - 1) * (o.scale ?? 4);
  if (o.ties) for (let i = 0; i < l.length; i++) l[i] = Math.round(l[i]); // many equal values: the lower id must win
  for (let i = 0; i < (o.masked ?? 0) * T; i++) l[Math.floor(rand() * l.length)] = Number.NEGATIVE_INFINITY;
  return l;
}

function sameRouting(a: { ids: Int32Array; weights: Float32Array }, b: { ids: Int32Array; weights: Float32Array }) {
  expect(b.ids).toEqual(a.ids);
  // bit for bit: compare the fp32 patterns, so that -0 / +0 and NaN would show too
  expect(new Uint32Array(b.weights.buffer)).toEqual(new Uint32Array(a.weights.buffer));
}

describe.skipIf(!kernel)(`native router gate (seed ${seed})`, () => {
  const softmax: [string, number, number, number, boolean, number?][] = [
    ["mixtral", 300, 8, 2, true],
    ["qwen3-30b-a3b", 300, 128, 8, true],
    ["qwen1.5-moe (no norm)", 200, 60, 4, false],
    ["scaled, no norm", 50, 64, 6, false, 2.5],
    ["k = E", 20, 16, 16, true],
    ["one expert", 9, 1, 1, true],
    ["no tokens", 0, 32, 4, true],
  ];
  for (const [name, T, E, k, norm, scale] of softmax) {
    it(`softmax top-k: ${name} (T ${T}, E ${E}, k ${k})`, () => {
      for (const o of [{}, { masked: 3 }, { ties: true }, { scale: 40 }]) {
        const l = logits(T, E, o);
        const opts = { topK: k, normTopKProb: norm, routedScalingFactor: scale };
        sameRouting(softmaxTopK(l, E, opts), softmaxTopK(l, E, opts, kernel));
      }
    });
  }

  it("softmax top-k: a row with every expert masked gets the TypeScript gate's uniform row", () => {
    const l = logits(4, 16);
    l.fill(Number.NEGATIVE_INFINITY, 16, 32);
    const opts = { topK: 3, normTopKProb: true };
    sameRouting(softmaxTopK(l, 16, opts), softmaxTopK(l, 16, opts, kernel));
  });

  const sigmoid: [string, number, number, number, number, number, boolean][] = [
    ["deepseek-v3", 300, 256, 8, 8, 4, true],
    ["deepseek-v3, no norm", 100, 256, 8, 8, 4, false],
    ["one group", 100, 64, 6, 1, 1, true],
    ["every group kept", 60, 64, 6, 8, 8, true],
    ["groups of 2", 60, 16, 3, 8, 2, true],
  ];
  for (const [name, T, E, k, G, TG, norm] of sigmoid) {
    it(`sigmoid group top-k: ${name} (T ${T}, E ${E}, k ${k}, ${G} groups keep ${TG})`, () => {
      const bias = Float32Array.from({ length: E }, () => (rand() - 0.5) * 0.2);
      for (const o of [{}, { masked: 2 }, { ties: true }]) {
        const l = logits(T, E, o);
        for (const correctionBias of [bias, undefined]) {
          const opts = {
            topK: k,
            normTopKProb: norm,
            nGroup: G,
            topkGroup: TG,
            routedScalingFactor: 2.5,
            correctionBias,
          };
          sameRouting(sigmoidGroupTopK(l, E, opts), sigmoidGroupTopK(l, E, opts, kernel));
        }
      }
    });
  }

  it("many tokens at DeepSeek-V3's and Qwen3's gates: every expert and weight the same", () => {
    const E = 256;
    const l = logits(20000, E, { scale: 8 });
    const bias = Float32Array.from({ length: E }, () => (rand() - 0.5) * 0.2);
    const ds = { topK: 8, normTopKProb: true, nGroup: 8, topkGroup: 4, routedScalingFactor: 2.5, correctionBias: bias };
    sameRouting(sigmoidGroupTopK(l, E, ds), sigmoidGroupTopK(l, E, ds, kernel));
    const qw = { topK: 8, normTopKProb: true };
    sameRouting(softmaxTopK(l, E, qw), softmaxTopK(l, E, qw, kernel));
  });

  it("a NaN or +Infinity logit names the same element as the TypeScript gate's error", () => {
    for (const bad of [Number.NaN, Number.POSITIVE_INFINITY]) {
      const l = logits(5, 32);
      l[3 * 32 + 17] = bad;
      const opts = { topK: 4, normTopKProb: true, field: "router_logits" };
      expect(() => softmaxTopK(l, 32, opts)).toThrow(/router_logits\[3, 17\]/);
      expect(() => softmaxTopK(l, 32, opts, kernel)).toThrow(/router_logits\[3, 17\]/);
      const sg = { topK: 4, normTopKProb: true, nGroup: 4, topkGroup: 2, routedScalingFactor: 1 };
      expect(() => sigmoidGroupTopK(l, 32, sg, kernel)).toThrow(/logits\[3, 17\]/);
    }
  });

  it("a bad call throws instead of writing out of bounds", () => {
    const g = kernel as GateKernel;
    const l = logits(4, 8);
    const ids = new Int32Array(8);
    const w = new Float32Array(8);
    expect(() => g(l, 5, 8, 2, 0, 1, 1, 1, 1, null, ids, w)).toThrow(/logits: shorter/);
    expect(() => g(l, 4, 8, 3, 0, 1, 1, 1, 1, null, ids, w)).toThrow(/ids: shorter/);
    expect(() => g(l, 4, 8, 9, 0, 1, 1, 1, 1, null, new Int32Array(36), new Float32Array(36))).toThrow(
      /k: out of range/,
    );
    expect(() => g(l, 4, 8, 2, 1, 1, 1, 3, 1, null, ids, w)).toThrow(/nGroup/);
    expect(() => g(l, 4, 8, 2, 1, 1, 1, 2, 1, new Float32Array(3), ids, w)).toThrow(/bias: shorter/);
    expect(() => g(l, 4, 8, 2, 0, 1, 1, 1, 1, null, new Float32Array(8) as unknown as Int32Array, w)).toThrow(
      /ids: expected an Int32Array/,
    );
  });
});
