#include "logits.h"

#include <cstddef>
#include <vector>

namespace switchyard {

namespace {

// TB tokens per pass over the weight: each weight row is loaded once for all of them (the gate of DeepSeek-V3 is
// 7 MB, past the L2), and the TB * 2 * E sums are independent chains. Every (token, expert) pair still adds its
// products in the scalar order, so blocking does not change a bit.
template <int TB>
void Block(const float* x, int d, const float* wt, int E, double* acc, float* out) {
  for (int k = 0; k < 2 * TB * E; k++) acc[k] = 0.0;
  int i = 0;
  for (; i + 1 < d; i += 2) {
    const float* w0 = wt + static_cast<std::size_t>(i) * E;
    const float* w1 = w0 + E;
    for (int b = 0; b < TB; b++) {
      const float* xt = x + static_cast<std::size_t>(b) * d;
      const double a = xt[i], c = xt[i + 1];
      double* s0 = acc + static_cast<std::size_t>(2 * b) * E;
      double* s1 = s0 + E;
      for (int e = 0; e < E; e++) {
        s0[e] += a * static_cast<double>(w0[e]);
        s1[e] += c * static_cast<double>(w1[e]);
      }
    }
  }
  if (i < d) {
    const float* w0 = wt + static_cast<std::size_t>(i) * E;
    for (int b = 0; b < TB; b++) {
      const double a = x[static_cast<std::size_t>(b) * d + i];
      double* s0 = acc + static_cast<std::size_t>(2 * b) * E;
      for (int e = 0; e < E; e++) s0[e] += a * static_cast<double>(w0[e]);
    }
  }
  for (int b = 0; b < TB; b++) {
    const double* s0 = acc + static_cast<std::size_t>(2 * b) * E;
    const double* s1 = s0 + E;
    float* o = out + static_cast<std::size_t>(b) * E;
    for (int e = 0; e < E; e++) o[e] = static_cast<float>(s0[e] + s1[e]);
  }
}

}  // namespace

void RouterLogits(const float* x, int tokens, int d, const float* wt, int experts, float* out) {
  constexpr int kBlock = 4;
  std::vector<double> acc(2 * static_cast<std::size_t>(kBlock) * experts);
  int t = 0;
  for (; t + kBlock <= tokens; t += kBlock)
    Block<kBlock>(x + static_cast<std::size_t>(t) * d, d, wt, experts, acc.data(),
                  out + static_cast<std::size_t>(t) * experts);
  for (; t < tokens; t++)
    Block<1>(x + static_cast<std::size_t>(t) * d, d, wt, experts, acc.data(), out + static_cast<std::size_t>(t) * experts);
}

}  // namespace switchyard
