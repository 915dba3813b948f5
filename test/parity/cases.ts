// The parity cases: small seeded checkpoints (one or more per family) plus fp32 hidden states.
import { type GenerateOptions, uniformTensor } from "@switchyard/moe";

export const TOKENS = 64;

/** One case per family; the sizes are small but not tiny, and each family's gate options are exercised. */
export type ParityCase = GenerateOptions & { name: string };

export const CASES: ParityCase[] = [
  {
    name: "mixtral",
    family: "mixtral",
    dir: "",
    seed: 11,
    layers: 1,
    experts: 8,
    hiddenSize: 256,
    intermediateSize: 320,
    topK: 2,
    dtype: "bfloat16",
  },
  // qwen2: shared expert with sigmoid gate, norm_topk_prob false (the Qwen1.5-MoE default)
  {
    name: "qwen2-moe",
    family: "qwen2-moe",
    dir: "",
    seed: 12,
    layers: 1,
    experts: 8,
    hiddenSize: 256,
    intermediateSize: 192,
    topK: 4,
    normTopKProb: false,
    sharedIntermediateSize: 384,
    dtype: "bfloat16",
  },
  // qwen3: norm_topk_prob true, fp16 weights
  {
    name: "qwen3-moe",
    family: "qwen3-moe",
    dir: "",
    seed: 13,
    layers: 1,
    experts: 16,
    hiddenSize: 256,
    intermediateSize: 128,
    topK: 4,
    normTopKProb: true,
    dtype: "float16",
  },
  // deepseek-v3: 4 groups of 4, keep 2 groups, top-4, scaling 2.5, one shared expert
  {
    name: "deepseek-v3",
    family: "deepseek-v3",
    dir: "",
    seed: 14,
    layers: 1,
    experts: 16,
    hiddenSize: 256,
    intermediateSize: 128,
    topK: 4,
    nGroup: 4,
    topkGroup: 2,
    routedScalingFactor: 2.5,
    normTopKProb: true,
    dtype: "bfloat16",
  },
  // deepseek-v3 with a large correction bias, so corrected scores go negative inside kept groups: the group mask's
  // fill value (-inf vs 0.0) decides the result; 8 groups of 4, keep 3, top-12 (every kept expert, so negative ones
  // are chosen under -inf and lose to masked zeros under 0.0), no renormalisation, scaling 1.0
  {
    name: "deepseek-v3-negative-bias",
    family: "deepseek-v3",
    dir: "",
    seed: 15,
    layers: 1,
    experts: 32,
    hiddenSize: 256,
    intermediateSize: 64,
    topK: 12,
    nGroup: 8,
    topkGroup: 3,
    routedScalingFactor: 1,
    normTopKProb: false,
    biasScale: 0.8,
    dtype: "bfloat16",
  },
];

export function hiddenFor(c: ParityCase): Float32Array {
  // std 1 hidden states, as after an RMSNorm
  return uniformTensor(1000 + (c.seed ?? 0), `parity-hidden-${c.name}`, TOKENS * (c.hiddenSize ?? 0), Math.sqrt(3));
}
