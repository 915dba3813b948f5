// The half-precision parity cases: the real models' gate shapes (hidden size, experts, top-k, groups) with tiny
// experts, bf16 weights and bf16 hidden states, as an engine running a bf16 model sends them. What differs between a
// bf16 block and ours is mostly the gate's precision, and that depends on the gate's shape, not the experts'.

import { uniformTensor } from "@switchyard/moe";
import { f32ToBf16 } from "@switchyard/protocol";
import type { ParityCase } from "./cases.js";

export const HALF_TOKENS = 2048;

export const HALF_CASES: ParityCase[] = [
  // Mixtral-8x7B's gate: 4096 x 8, top-2
  {
    name: "mixtral-8x7b-gate",
    family: "mixtral",
    dir: "",
    seed: 21,
    layers: 1,
    experts: 8,
    hiddenSize: 4096,
    intermediateSize: 8,
    topK: 2,
    dtype: "bfloat16",
  },
  // Qwen1.5-MoE-A2.7B's gate: 2048 x 60, top-4, norm_topk_prob false, a sigmoid-gated shared expert
  {
    name: "qwen1.5-moe-a2.7b-gate",
    family: "qwen2-moe",
    dir: "",
    seed: 22,
    layers: 1,
    experts: 60,
    hiddenSize: 2048,
    intermediateSize: 8,
    topK: 4,
    normTopKProb: false,
    sharedIntermediateSize: 8,
    dtype: "bfloat16",
  },
  // Qwen3-30B-A3B's gate: 2048 x 128, top-8, norm_topk_prob true
  {
    name: "qwen3-30b-a3b-gate",
    family: "qwen3-moe",
    dir: "",
    seed: 23,
    layers: 1,
    experts: 128,
    hiddenSize: 2048,
    intermediateSize: 8,
    topK: 8,
    normTopKProb: true,
    dtype: "bfloat16",
  },
  // DeepSeek-V3's gate: 7168 x 256, 8 groups keep 4, top-8, scaling 2.5, one shared expert
  {
    name: "deepseek-v3-gate",
    family: "deepseek-v3",
    dir: "",
    seed: 24,
    layers: 1,
    experts: 256,
    hiddenSize: 7168,
    intermediateSize: 8,
    topK: 8,
    nGroup: 8,
    topkGroup: 4,
    routedScalingFactor: 2.5,
    normTopKProb: true,
    sharedIntermediateSize: 8,
    dtype: "bfloat16",
  },
];

/** std-1 hidden states (as after an RMSNorm) rounded to bf16: the bits an engine sends. */
export function halfHiddenFor(c: ParityCase): Uint16Array {
  const d = c.hiddenSize ?? 0;
  return f32ToBf16(uniformTensor(2000 + (c.seed ?? 0), `half-hidden-${c.name}`, HALF_TOKENS * d, Math.sqrt(3)));
}
