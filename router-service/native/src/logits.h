// Router logits, the gate's matrix-vector products (packages/moe routerLogits is the TypeScript twin and the oracle):
//
//   out[t, e] = fp32( s0 + s1 ),  s0 = sum over even i of x[t, i] * W[e, i],  s1 = the same over odd i
//
// in double, in increasing i, exactly as the TypeScript loop evaluates it (an fp32 x fp32 product is exact in
// double), so both give the same bits and route tokens to the same experts. The weight comes transposed, wt[i, e]
// = W[e, i], so that the experts are the vector lanes: each expert's sums keep the scalar order, and the loads are
// contiguous. The hidden states come as fp32 or as bf16 (widened exactly; the router need not decode them first).
#pragma once
#include <cstdint>

namespace switchyard {

void RouterLogits(const float* x, int tokens, int d, const float* wt, int experts, float* out);
void RouterLogitsBf16(const uint16_t* x, int tokens, int d, const float* wt, int experts, float* out);

}  // namespace switchyard
