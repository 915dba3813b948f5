// The parity cases: one small checkpoint per family, seeded, plus fp32 hidden states.
import { type GenerateOptions, uniformTensor } from "@switchyard/moe";

export const TOKENS = 64;

/** One case per family; the sizes are small but not tiny, and each family's gate options are exercised. */
export const CASES: GenerateOptions[] = [
  {
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
];

export function hiddenFor(c: GenerateOptions): Float32Array {
  // std 1 hidden states, as after an RMSNorm
  return uniformTensor(1000 + (c.seed ?? 0), `parity-hidden-${c.family}`, TOKENS * (c.hiddenSize ?? 0), Math.sqrt(3));
}
