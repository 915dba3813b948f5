// Could the router's DeepSeek-V3 gate be screened in fp32 and stay exact? The router's native gate product
// (router-service/native/src/logits.cc) sums each (token, expert) in double, in the TypeScript oracle's order, so
// that the same experts and weights come out. That costs ~130 us a token on the H200 host
// (bench/results/h200-moe.md, "Session of 2026-11-30 06:06 UTC"), where at 256 sequences and more it bounds the
// end to end. The idea measured here, not built into the router:
//   1. fp32 products over the same panels (16 lanes a vector, no widening), summed in blocks of 64 rows, the
//      blocks' sums added in double; with each logit a rigorous bound on its distance from the oracle's double sum
//      (gamma_64 * sum over blocks of |x_b| |w_b|, by Cauchy-Schwarz per block, plus the double sum's own bound);
//   2. DeepSeek-V3's selection (sigmoid + correction bias, top-2 sum per group, top-4 groups, top-8 experts) on the
//      lower and upper ends of every logit's interval (every step is monotone in each logit): where the chosen
//      groups and experts are the same for every value in the intervals, the screen has decided the token, and only
//      its 8 experts' exact logits are needed (their weights); else the token takes the exact product.
// Prints and writes: the exact product's time a token, the screen product's, the share of tokens the screen decides
// (with a check that every decided token's experts are the exact selection's), the rest of a screened gate timed a
// token at a time (the bounds: a 112-term sum an expert; the two selections; the 8 chosen experts' exact logits, checked
// bit for bit against the exact product's), and the whole, undecided tokens at the exact product's cost. The inputs
// are random (x ~ N(0, 1), the gate ~ N(0, 1/d), the bias ~ 0.1 N(0, 1)); real hidden states may decide fewer
// tokens. Usage: run.sh (compiles with the router addon's flags). Exits 2 on any mismatch.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace {

constexpr int kPanel = 32;
constexpr int kBlock = 64;
// Tokens a screen block takes at once: each weight vector loaded serves that many (fp32 vectors hold twice the
// weights of double ones, so with two tokens the loads, not the multiply-adds, were the bound).
constexpr int kScreenTB = 8;

// The exact product, logits.cc's loop over one panel (two tokens at a time, the even and odd rows' chains).
template <int TB>
void ExactBlock(const float* x, int d, const float* w, float* out, int E) {
  double s0[TB][kPanel] = {}, s1[TB][kPanel] = {};
  for (int i = 0; i + 1 < d; i += 2) {
    const float* w0 = w + static_cast<size_t>(i) * kPanel;
    const float* w1 = w0 + kPanel;
    for (int b = 0; b < TB; b++) {
      const double a = x[static_cast<size_t>(b) * d + i], c = x[static_cast<size_t>(b) * d + i + 1];
      for (int e = 0; e < kPanel; e++) {
        s0[b][e] = std::fma(a, static_cast<double>(w0[e]), s0[b][e]);
        s1[b][e] = std::fma(c, static_cast<double>(w1[e]), s1[b][e]);
      }
    }
  }
  for (int b = 0; b < TB; b++)
    for (int e = 0; e < kPanel; e++) out[static_cast<size_t>(b) * E + e] = static_cast<float>(s0[b][e] + s1[b][e]);
}

// The screen's product over one panel: fp32 fused multiply-adds, 64 rows a block in two chains (even and odd rows,
// enough independent sums to hide the multiply-adds' latency), the blocks' sums added in double.
template <int TB>
void ScreenBlock(const float* x, int d, const float* w, double* out, int E) {
  double acc[TB][kPanel] = {};
  for (int i0 = 0; i0 < d; i0 += kBlock) {
    float s0[TB][kPanel] = {}, s1[TB][kPanel] = {};
    const int i1 = i0 + kBlock < d ? i0 + kBlock : d;
    int i = i0;
    for (; i + 1 < i1; i += 2) {
      const float* w0 = w + static_cast<size_t>(i) * kPanel;
      const float* w1 = w0 + kPanel;
      for (int b = 0; b < TB; b++) {
        const float a = x[static_cast<size_t>(b) * d + i], c = x[static_cast<size_t>(b) * d + i + 1];
        for (int e = 0; e < kPanel; e++) {
          s0[b][e] = std::fma(a, w0[e], s0[b][e]);
          s1[b][e] = std::fma(c, w1[e], s1[b][e]);
        }
      }
    }
    for (; i < i1; i++)
      for (int b = 0; b < TB; b++)
        for (int e = 0; e < kPanel; e++)
          s0[b][e] = std::fma(x[static_cast<size_t>(b) * d + i], w[static_cast<size_t>(i) * kPanel + e], s0[b][e]);
    for (int b = 0; b < TB; b++)
      for (int e = 0; e < kPanel; e++) acc[b][e] += static_cast<double>(s0[b][e]) + static_cast<double>(s1[b][e]);
  }
  for (int b = 0; b < TB; b++)
    for (int e = 0; e < kPanel; e++) out[static_cast<size_t>(b) * E + e] = acc[b][e];
}

// A decided token's 8 chosen experts' exact logits (their weights need them): the oracle's two chains each, the 8
// experts interleaved (16 independent sums), from an expert-major copy of the gate (each expert's row contiguous;
// down a panel's column every load would be a cache line of its own).
void ExactChosen(const float* x, int d, const float* rows, const int* experts, float* out) {
  double s0[8] = {}, s1[8] = {};
  const float* r[8];
  for (int j = 0; j < 8; j++) r[j] = rows + static_cast<size_t>(experts[j]) * d;
  for (int i = 0; i + 1 < d; i += 2) {
    const double a = x[i], c = x[i + 1];
    for (int j = 0; j < 8; j++) {
      s0[j] += a * static_cast<double>(r[j][i]);
      s1[j] += c * static_cast<double>(r[j][i + 1]);
    }
  }
  for (int j = 0; j < 8; j++) out[j] = static_cast<float>(s0[j] + s1[j]);
}

struct Gate {
  int E, G, TG, K;
  std::vector<float> bias;
};

// DeepSeek-V3's selection (packages/moe gating.ts sigmoidGroupTopK) on one row of logits; the chosen experts as a
// 0/1 mask, and the chosen groups. Every step is non-decreasing in each logit.
void Select(const Gate& g, const float* l, std::vector<uint8_t>& chosen, std::vector<uint8_t>& groups,
            std::vector<float>* choiceOut = nullptr) {
  const int per = g.E / g.G;
  std::vector<float> choice(g.E);
  for (int e = 0; e < g.E; e++) {
    const float s = static_cast<float>(1 / (1 + std::exp(-static_cast<double>(l[e]))));
    choice[e] = static_cast<float>(static_cast<double>(s) + g.bias[e]);
  }
  std::vector<double> gs(g.G);
  for (int q = 0; q < g.G; q++) {
    double a = -INFINITY, b = -INFINITY;
    for (int e = q * per; e < (q + 1) * per; e++) {
      const double v = choice[e];
      if (v > a) { b = a; a = v; } else if (v > b) b = v;
    }
    gs[q] = static_cast<float>(static_cast<float>(a) + static_cast<float>(b));
  }
  groups.assign(g.G, 0);
  for (int n = 0; n < g.TG; n++) {
    int best = -1;
    for (int q = 0; q < g.G; q++)
      if (!groups[q] && (best < 0 || gs[q] > gs[best])) best = q;
    groups[best] = 1;
  }
  chosen.assign(g.E, 0);
  for (int n = 0; n < g.K; n++) {
    int best = -1;
    for (int e = 0; e < g.E; e++)
      if (groups[e / per] && !chosen[e] && (best < 0 || choice[e] > choice[best])) best = e;
    chosen[best] = 1;
  }
  if (choiceOut) *choiceOut = choice;
}

// Whether the selection is the same for every row of logits between lo and hi (element-wise): the groups chosen on
// the lower ends must beat every other group's upper end, and the experts chosen likewise within those groups.
bool Decided(const Gate& g, const float* lo, const float* hi, std::vector<uint8_t>& chosen) {
  std::vector<uint8_t> groupsLo, chosenLo, groupsHi, chosenHi;
  std::vector<float> cLo, cHi;
  Select(g, lo, chosenLo, groupsLo, &cLo);
  Select(g, hi, chosenHi, groupsHi, &cHi);
  const int per = g.E / g.G;
  auto top2 = [&](const std::vector<float>& c, int q) {
    double a = -INFINITY, b = -INFINITY;
    for (int e = q * per; e < (q + 1) * per; e++) {
      const double v = c[e];
      if (v > a) { b = a; a = v; } else if (v > b) b = v;
    }
    return static_cast<double>(static_cast<float>(static_cast<float>(a) + static_cast<float>(b)));
  };
  double minIn = INFINITY, maxOut = -INFINITY;
  for (int q = 0; q < g.G; q++) {
    if (groupsLo[q]) minIn = std::fmin(minIn, top2(cLo, q));
    else maxOut = std::fmax(maxOut, top2(cHi, q));
  }
  if (!(minIn > maxOut)) return false;
  double minE = INFINITY, maxE = -INFINITY;
  for (int e = 0; e < g.E; e++) {
    if (!groupsLo[e / per]) continue;
    if (chosenLo[e]) minE = std::fmin(minE, cLo[e]);
    else maxE = std::fmax(maxE, cHi[e]);
  }
  if (!(minE > maxE)) return false;
  chosen = chosenLo;
  return true;
}

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) {
  const char* out = argc > 1 ? argv[1] : "gate-screen.json";
  const int d = 7168, E = 256, T = 64;
  Gate g{E, 8, 4, 8, std::vector<float>(E)};
  std::mt19937_64 rng(20261130);
  std::normal_distribution<float> n01(0, 1);
  // The gate's panels (logits.h layout: kPanel experts a panel, [d, kPanel] each) and each expert's block norms.
  std::vector<float> wt(static_cast<size_t>(E) * d), wnorm(static_cast<size_t>(E) * (d / kBlock));
  const float ws = 1 / std::sqrt(static_cast<float>(d));
  for (int e = 0; e < E; e++) {
    g.bias[e] = 0.1f * n01(rng);  // the benchmark's bias scale (bench/h200_moe.py --bias-scale)
    for (int i = 0; i < d; i++) wt[static_cast<size_t>(e / kPanel) * d * kPanel + static_cast<size_t>(i) * kPanel + e % kPanel] = ws * n01(rng);
  }
  for (int e = 0; e < E; e++)
    for (int b = 0; b < d / kBlock; b++) {
      double s = 0;
      for (int i = b * kBlock; i < (b + 1) * kBlock; i++) {
        const double v = wt[static_cast<size_t>(e / kPanel) * d * kPanel + static_cast<size_t>(i) * kPanel + e % kPanel];
        s += v * v;
      }
      wnorm[static_cast<size_t>(e) * (d / kBlock) + b] = static_cast<float>(std::sqrt(s) * (1 + 1e-6));
    }
  const int calls = 40;
  std::vector<std::vector<float>> xs(calls, std::vector<float>(static_cast<size_t>(T) * d));
  for (auto& x : xs)
    for (auto& v : x) v = n01(rng);
  std::vector<float> exact(static_cast<size_t>(T) * E);
  std::vector<double> approx(static_cast<size_t>(T) * E);
  // timing: each product over all panels for the call's tokens, two tokens at a time
  auto exactCall = [&](const float* x) {
    for (int p = 0; p < E / kPanel; p++)
      for (int t = 0; t < T; t += 2) ExactBlock<2>(x + static_cast<size_t>(t) * d, d, wt.data() + static_cast<size_t>(p) * d * kPanel, exact.data() + static_cast<size_t>(t) * E + p * kPanel, E);
  };
  auto screenCall = [&](const float* x) {
    for (int p = 0; p < E / kPanel; p++)
      for (int t = 0; t < T; t += kScreenTB) ScreenBlock<kScreenTB>(x + static_cast<size_t>(t) * d, d, wt.data() + static_cast<size_t>(p) * d * kPanel, approx.data() + static_cast<size_t>(t) * E + p * kPanel, E);
  };
  double best[2] = {1e9, 1e9};
  for (int round = 0; round < 5; round++)
    for (int which = 0; which < 2; which++) {
      const double t0 = Now();
      for (int c = 0; c < calls; c++) {
        if (which) screenCall(xs[c].data());
        else exactCall(xs[c].data());
      }
      const double us = (Now() - t0) * 1e6 / (calls * T);
      if (us < best[which]) best[which] = us;
    }
  // decisions, and the check against the exact selection
  const double gamma64 = 64 * std::ldexp(1.0, -24) / (1 - 64 * std::ldexp(1.0, -24));
  const double gammaD = d * std::ldexp(1.0, -53) / (1 - d * std::ldexp(1.0, -53));
  long decided = 0, tokens = 0, wrong = 0;
  double widest = 0;
  std::vector<float> lo(E), hi(E);
  std::vector<uint8_t> chosen, exactChosen, exactGroups;
  for (int c = 0; c < calls; c++) {
    exactCall(xs[c].data());
    screenCall(xs[c].data());
    for (int t = 0; t < T; t++) {
      const float* x = xs[c].data() + static_cast<size_t>(t) * d;
      std::vector<double> xn(d / kBlock);
      double xabs = 0;
      for (int b = 0; b < d / kBlock; b++) {
        double s = 0;
        for (int i = b * kBlock; i < (b + 1) * kBlock; i++) s += static_cast<double>(x[i]) * x[i];
        xn[b] = std::sqrt(s) * (1 + 1e-6);
        xabs += xn[b];
      }
      for (int e = 0; e < E; e++) {
        double cs = 0;  // sum over blocks of |x_b| |w_b| >= sum |x_i w_i|
        for (int b = 0; b < d / kBlock; b++) cs += xn[b] * wnorm[static_cast<size_t>(e) * (d / kBlock) + b];
        const double a = approx[static_cast<size_t>(t) * E + e];
        // fp32 blocks, the blocks' double sum (112 additions), and the oracle's own double chains
        const double bound = (gamma64 + gammaD) * cs * (1 + 1e-9) + std::fabs(a) * 128 * std::ldexp(1.0, -53);
        widest = std::fmax(widest, bound);
        // the oracle's fp32 logit rounds a double within [a - bound, a + bound]: rounding is monotone
        lo[e] = std::nextafter(static_cast<float>(a - bound), -INFINITY);
        hi[e] = std::nextafter(static_cast<float>(a + bound), INFINITY);
      }
      tokens++;
      Select(g, exact.data() + static_cast<size_t>(t) * E, exactChosen, exactGroups);
      if (Decided(g, lo.data(), hi.data(), chosen)) {
        decided++;
        if (chosen != exactChosen) wrong++;
      }
    }
  }
  // The rest of a screened gate, timed over the same tokens: the bounds, the two selections and the 8 chosen
  // experts' exact logits (checked against the exact product's), a token at a time.
  std::vector<std::vector<float>> exactAll(calls), xnAll;
  for (int c = 0; c < calls; c++) {
    exactCall(xs[c].data());
    exactAll[c] = exact;
  }
  std::vector<float> rows(static_cast<size_t>(E) * d);
  for (int e = 0; e < E; e++)
    for (int i = 0; i < d; i++)
      rows[static_cast<size_t>(e) * d + i] =
          wt[static_cast<size_t>(e / kPanel) * d * kPanel + static_cast<size_t>(i) * kPanel + e % kPanel];
  double restUs = 1e9, exact8Us = 1e9;
  long exactMismatch = 0;
  for (int round = 0; round < 3; round++) {
    double total = 0, total8 = 0;
    for (int c = 0; c < calls; c++) {
      screenCall(xs[c].data());
      const double t0 = Now();
      for (int t = 0; t < T; t++) {
        const float* x = xs[c].data() + static_cast<size_t>(t) * d;
        std::vector<double> xn(d / kBlock);
        for (int b = 0; b < d / kBlock; b++) {
          double q = 0;
          for (int i = b * kBlock; i < (b + 1) * kBlock; i++) q += static_cast<double>(x[i]) * x[i];
          xn[b] = std::sqrt(q) * (1 + 1e-6);
        }
        for (int e = 0; e < E; e++) {
          double cs = 0;
          for (int b = 0; b < d / kBlock; b++) cs += xn[b] * wnorm[static_cast<size_t>(e) * (d / kBlock) + b];
          const double a = approx[static_cast<size_t>(t) * E + e];
          const double bound = (gamma64 + gammaD) * cs * (1 + 1e-9) + std::fabs(a) * 128 * std::ldexp(1.0, -53);
          lo[e] = std::nextafter(static_cast<float>(a - bound), -INFINITY);
          hi[e] = std::nextafter(static_cast<float>(a + bound), INFINITY);
        }
        if (!Decided(g, lo.data(), hi.data(), chosen)) continue;
        int ids[8], n = 0;
        for (int e = 0; e < E && n < 8; e++)
          if (chosen[e]) ids[n++] = e;
        float l8[8];
        const double e0 = Now();
        ExactChosen(x, d, rows.data(), ids, l8);
        total8 += Now() - e0;
        if (round == 0)
          for (int j = 0; j < 8; j++)
            if (std::memcmp(&l8[j], &exactAll[c][static_cast<size_t>(t) * E + ids[j]], 4) != 0) exactMismatch++;
      }
      total += Now() - t0;
    }
    restUs = std::fmin(restUs, total * 1e6 / (calls * T));
    exact8Us = std::fmin(exact8Us, total8 * 1e6 / (calls * T));
  }
  const double share = static_cast<double>(decided) / tokens;
  std::printf("DeepSeek-V3 gate (d %d, %d experts, top-8 of 4 groups), %d tokens a call, best of 5 rounds:\n", d, E, T);
  std::printf("  exact double product   %8.2f us a token\n", best[0]);
  std::printf("  fp32 screen product    %8.2f us a token (%.2fx)\n", best[1], best[0] / best[1]);
  std::printf("  tokens the screen decides: %ld of %ld (%.2f%%), of them with other experts than the exact: %ld\n",
              decided, tokens, 100 * share, wrong);
  std::printf("  widest bound on a logit: %.3g\n", widest);
  // undecided tokens take the exact product whole
  const double whole = best[1] + restUs + (1 - share) * best[0];
  std::printf("  the rest (bounds, selections, 8 exact logits): %.2f us a token, of it the 8 exact logits %.2f"
              " (differing from the exact product's: %ld)\n",
              restUs, exact8Us, exactMismatch);
  std::printf("  a screened gate, all told: %.2f us a token (%.2fx the exact product)\n", whole, best[0] / whole);
  FILE* f = std::fopen(out, "w");
  if (!f) return 1;
  std::fprintf(f,
               "{\n \"d\": %d,\n \"experts\": %d,\n \"tokens_per_call\": %d,\n \"exact_us_per_token\": %.3f,\n"
               " \"screen_us_per_token\": %.3f,\n \"tokens\": %ld,\n \"decided\": %ld,\n \"decided_wrong\": %ld,\n"
               " \"widest_bound\": %.4g,\n \"rest_us_per_token\": %.3f,\n \"exact8_us_per_token\": %.3f,\n"
               " \"exact_chosen_mismatches\": %ld,\n"
               " \"screened_gate_us_per_token\": %.3f\n}\n",
               d, E, T, best[0], best[1], tokens, decided, wrong, widest, restUs, exact8Us, exactMismatch, whole);
  std::fclose(f);
  return wrong == 0 && exactMismatch == 0 ? 0 : 2;
}
