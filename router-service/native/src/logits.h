// Router logits, the gate's matrix-vector products (packages/moe routerLogits is the TypeScript twin and the oracle):
//
//   out[t, e] = fp32( s0 + s1 ),  s0 = sum over even i of x[t, i] * W[e, i],  s1 = the same over odd i
//
// in double, in increasing i, exactly as the TypeScript loop evaluates it (an fp32 x fp32 product is exact in
// double), so both give the same bits and route tokens to the same experts. The weight comes transposed in panels
// (router-service/src/checkpoint-model.ts transposeGate): experts e0 .. e0 + w - 1 (w = kGatePanel, less for the
// last panel) as one contiguous [d, w] block at offset e0 * d, wt[e0 * d + i * w + (e - e0)] = W[e, i]. The experts
// are the vector lanes, so each expert's sums keep the scalar order and the loads are contiguous, and a panel is one
// sequential read that stays in cache for every token of a call. The hidden states come as fp32 or as bf16 (widened
// exactly; the router need not decode them first).
#pragma once
#include <cstdint>

namespace switchyard {

/** Experts per panel of the transposed gate (checkpoint-model.ts GATE_PANEL must say the same). */
constexpr int kGatePanel = 32;

inline int GatePanels(int experts) { return (experts + kGatePanel - 1) / kGatePanel; }

// The logits of panels [p0, p1) (all of them: 0, GatePanels(experts)); panels write disjoint columns of `out`, so
// threads may take a range each.
void RouterLogits(const float* x, int tokens, int d, const float* wt, int experts, float* out, int p0, int p1);
void RouterLogitsBf16(const uint16_t* x, int tokens, int d, const float* wt, int experts, float* out, int p0,
                      int p1);

}  // namespace switchyard
