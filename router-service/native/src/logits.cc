#include "logits.h"

#include <cmath>
#include <cstddef>
#include <cstring>

namespace switchyard {

namespace {

inline double Widen(float v) { return v; }
inline double Widen(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// s + a * w, fused or not: the same bits either way, since the product of two fp32 values is exact in double (24 + 24
// significant bits), so rounding it first changes nothing and both round the sum once. The TypeScript loop (a
// multiply, then an add) stays the oracle.
template <bool kFused>
inline double Mac(double a, double w, double s) {
  if constexpr (kFused) return std::fma(a, w, s);
  return s + a * w;
}

// TB tokens x EB experts at a time, their 2 * TB * EB sums in registers (EB is a multiple of 8: one 512-bit vector
// of doubles, or two 256-bit ones): independent chains of additions enough to hide their latency (the old loop over
// all experts kept the sums in memory: 11 us a token at Mixtral's gate against 2), and each weight row is loaded
// once for the TB tokens. Every (token, expert) pair still adds its products in the scalar order, so the blocking
// does not change a bit. `w` is the block's first weight of row 0, `ld` the panel's row stride; `out` the first
// token's first logit of the block, `E` the logits' row stride.
template <int TB, int EB, typename X>
void Block(const X* x, int d, const float* w, int ld, float* out, int E) {
  // Wide blocks are bound by the multiply-adds' throughput: fused, one instruction each. Narrow ones (8 experts) by
  // the accumulators' latency, where a fused multiply-add's (4 cycles) is longer than an add's.
  constexpr bool kFused = EB >= 16;
  double s0[TB][EB] = {}, s1[TB][EB] = {};
  int i = 0;
  for (; i + 1 < d; i += 2) {
    const float* w0 = w + static_cast<std::size_t>(i) * ld;
    const float* w1 = w0 + ld;
    for (int b = 0; b < TB; b++) {
      const double a = Widen(x[static_cast<std::size_t>(b) * d + i]);
      const double c = Widen(x[static_cast<std::size_t>(b) * d + i + 1]);
      for (int e = 0; e < EB; e++) {
        s0[b][e] = Mac<kFused>(a, static_cast<double>(w0[e]), s0[b][e]);
        s1[b][e] = Mac<kFused>(c, static_cast<double>(w1[e]), s1[b][e]);
      }
    }
  }
  if (i < d) {
    const float* w0 = w + static_cast<std::size_t>(i) * ld;
    for (int b = 0; b < TB; b++) {
      const double a = Widen(x[static_cast<std::size_t>(b) * d + i]);
      for (int e = 0; e < EB; e++) s0[b][e] = Mac<kFused>(a, static_cast<double>(w0[e]), s0[b][e]);
    }
  }
  for (int b = 0; b < TB; b++)
    for (int e = 0; e < EB; e++) out[static_cast<std::size_t>(b) * E + e] = static_cast<float>(s0[b][e] + s1[b][e]);
}

// One token, one expert (a narrow last panel's experts past its last multiple of 8).
template <typename X>
void Single(const X* x, int d, const float* w, int ld, float* out) {
  double s0 = 0, s1 = 0;
  int i = 0;
  for (; i + 1 < d; i += 2) {
    s0 += Widen(x[i]) * static_cast<double>(w[static_cast<std::size_t>(i) * ld]);
    s1 += Widen(x[i + 1]) * static_cast<double>(w[static_cast<std::size_t>(i + 1) * ld]);
  }
  if (i < d) s0 += Widen(x[i]) * static_cast<double>(w[static_cast<std::size_t>(i) * ld]);
  *out = static_cast<float>(s0 + s1);
}

// Panel by panel (logits.h: kGatePanel experts, one contiguous [d, width] block each), every token of the call
// against a panel before the next: a panel (917 KB at DeepSeek-V3's d=7168) is read from memory once and then serves
// the call's tokens from the core's cache. Token-major order read the whole gate (7.3 MB at DeepSeek-V3) once per
// token pair, which is what a router gating one decode token per request paid per token: ~0.75 ms at DeepSeek-V3
// on the H200 host, with the reference threads beside it (bench/results/logs/h200-e2e-dsv3-2328-prof/router-top.txt). The router
// now gates a whole flush in one call (router.ts gateAtFlush). Tokens go two at a time.
template <typename X>
void Logits(const X* x, int tokens, int d, const float* wt, int E, float* out, int p0, int p1) {
  const auto xt = [&](int t) { return x + static_cast<std::size_t>(t) * d; };
  const auto ot = [&](int t) { return out + static_cast<std::size_t>(t) * E; };
  for (int e0 = p0 * kGatePanel; e0 < E && e0 < p1 * kGatePanel; e0 += kGatePanel) {
    const int width = E - e0 < kGatePanel ? E - e0 : kGatePanel;
    const float* panel = wt + static_cast<std::size_t>(e0) * d;
    if (width == kGatePanel) {
      int t = 0;
      for (; t + 2 <= tokens; t += 2) Block<2, kGatePanel>(xt(t), d, panel, width, ot(t) + e0, E);
      for (; t < tokens; t++) Block<1, kGatePanel>(xt(t), d, panel, width, ot(t) + e0, E);
      continue;
    }
    int e = 0;
    for (; e + 8 <= width; e += 8) {
      int t = 0;
      for (; t + 2 <= tokens; t += 2) Block<2, 8>(xt(t), d, panel + e, width, ot(t) + e0 + e, E);
      for (; t < tokens; t++) Block<1, 8>(xt(t), d, panel + e, width, ot(t) + e0 + e, E);
    }
    for (; e < width; e++)
      for (int t = 0; t < tokens; t++) Single(xt(t), d, panel + e, width, ot(t) + e0 + e);
  }
}

}  // namespace

void RouterLogits(const float* x, int tokens, int d, const float* wt, int experts, float* out, int p0, int p1) {
  Logits(x, tokens, d, wt, experts, out, p0, p1);
}

void RouterLogitsBf16(const uint16_t* x, int tokens, int d, const float* wt, int experts, float* out, int p0,
                      int p1) {
  Logits(x, tokens, d, wt, experts, out, p0, p1);
}

}  // namespace switchyard
