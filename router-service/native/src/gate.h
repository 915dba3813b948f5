// The gate's selection over router logits: softmax top-k (Mixtral, Qwen-MoE) and sigmoid group-limited top-k with
// the correction bias (DeepSeek-V3). packages/moe gating.ts (softmaxTopK, sigmoidGroupTopK) is the TypeScript twin
// and the oracle: every step here is the same IEEE operation in the same order (double arithmetic, fp32 stores where
// the TypeScript stores into a Float32Array, ties to the lower expert id), so both route every token to the same
// experts with the same weights. The one operation that is not the same code is exp: std::exp (libm) here, V8's own
// Math.exp there. Both are within an ulp of the true double; they differ in the last bit of about 10% of doubles, and
// every result goes through an fp32 store before it is compared or summed, which agreed on all of 20 M samples in
// [-40, 20] (glibc 2.36, Node 20: bench/exp-agreement/run.sh, bench/results/exp-agreement.json). A difference would
// need the true value within one double ulp of an fp32 rounding midpoint. router-service/src/core/native-gate.test.ts
// compares the two over every family's gate.
#pragma once
#include <cstdint>

namespace switchyard {

struct GateArgs {
  const float* logits;  // [tokens, experts]
  int tokens, experts, k;
  bool sigmoid;          // false: softmax top-k
  bool normTopK;
  double scale;          // routed scaling factor (1 for softmax gates without one)
  int nGroup, topkGroup;  // sigmoid only; nGroup divides experts, groups of >= 2 when nGroup > 1
  const float* bias;     // sigmoid only: e_score_correction_bias [experts], or nullptr
  int32_t* ids;          // [tokens, k]
  float* weights;        // [tokens, k]
};

/**
 * Gates every token. Returns -1, or the flat index of the first logit that is NaN or +Infinity (the caller names it;
 * nothing is written for that token or later ones).
 */
int64_t Gate(const GateArgs& a);

}  // namespace switchyard
