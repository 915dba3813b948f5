#include "gate.h"

#include <cmath>
#include <limits>
#include <vector>

namespace switchyard {

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// The k largest of v[0 .. n) into idx / score, descending; an equal score stays behind the one before it (the lower
// index wins). gating.ts selectTopK, step for step.
template <typename V>
int SelectTopK(const V* v, int n, int k, int32_t* idx, double* score) {
  int count = 0;
  for (int i = 0; i < n; i++) {
    const double x = static_cast<double>(v[i]);
    if (count == k && !(x > score[k - 1])) continue;
    int j = count < k ? count : k - 1;
    while (j > 0 && x > score[j - 1]) {
      score[j] = score[j - 1];
      idx[j] = idx[j - 1];
      j--;
    }
    score[j] = x;
    idx[j] = i;
    if (count < k) count++;
  }
  return count;
}

// gating.ts softmaxRows for one row, then softmaxTopK's weights.
void SoftmaxRow(const GateArgs& a, const float* l, float* p, int32_t* ids, float* weights, int32_t* idx,
                double* sc) {
  const int E = a.experts;
  double m = kNegInf;
  for (int e = 0; e < E; e++)
    if (static_cast<double>(l[e]) > m) m = l[e];
  if (m == kNegInf) {
    const float u = static_cast<float>(1.0 / E);  // every expert masked: a uniform row, as gating.ts
    for (int e = 0; e < E; e++) p[e] = u;
  } else {
    double sum = 0;
    for (int e = 0; e < E; e++) {
      p[e] = static_cast<float>(std::exp(static_cast<double>(l[e]) - m));
      sum += static_cast<double>(p[e]);
    }
    for (int e = 0; e < E; e++) p[e] = static_cast<float>(static_cast<double>(p[e]) / sum);
  }
  SelectTopK(p, E, a.k, idx, sc);
  double sum = 0;
  for (int j = 0; j < a.k; j++) sum += sc[j];
  for (int j = 0; j < a.k; j++) {
    ids[j] = idx[j];
    const double w = a.normTopK ? sc[j] / sum : sc[j];
    weights[j] = static_cast<float>(w * a.scale);
  }
}

// Per-call scratch, sized to the call (thread_local: no allocation once a thread has seen the model's sizes).
struct Scratch {
  std::vector<float> p, choice;
  std::vector<int32_t> idx, gIdx;
  std::vector<double> sc, groupScore, gSc;
  std::vector<char> keep;
};

// gating.ts sigmoidGroupTopK for one row.
void SigmoidRow(const GateArgs& a, const float* l, Scratch& x, int32_t* ids, float* weights) {
  float* s = x.p.data();
  float* choice = x.choice.data();
  int32_t* idx = x.idx.data();
  double* sc = x.sc.data();
  const int E = a.experts, G = a.nGroup, TG = a.topkGroup;
  for (int e = 0; e < E; e++) {
    s[e] = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(l[e]))));
    choice[e] = a.bias ? static_cast<float>(static_cast<double>(s[e]) + static_cast<double>(a.bias[e])) : s[e];
  }
  if (G > 1 && TG < G) {
    const int per = E / G;
    double* groupScore = x.groupScore.data();
    int32_t top2[2];
    double top2s[2];
    for (int g = 0; g < G; g++) {
      SelectTopK(choice + g * per, per, 2, top2, top2s);
      groupScore[g] = static_cast<float>(static_cast<double>(static_cast<float>(top2s[0])) +
                                         static_cast<double>(static_cast<float>(top2s[1])));
    }
    SelectTopK(groupScore, G, TG, x.gIdx.data(), x.gSc.data());
    char* keep = x.keep.data();
    for (int g = 0; g < G; g++) keep[g] = 0;
    for (int j = 0; j < TG; j++) keep[x.gIdx[j]] = 1;
    for (int e = 0; e < E; e++)
      if (!keep[e / per]) choice[e] = -std::numeric_limits<float>::infinity();
  }
  SelectTopK(choice, E, a.k, idx, sc);
  double sum = 0;
  for (int j = 0; j < a.k; j++) sum += static_cast<double>(s[idx[j]]);
  sum = static_cast<float>(sum);
  for (int j = 0; j < a.k; j++) {
    ids[j] = idx[j];
    double w = s[idx[j]];
    if (a.normTopK) w = static_cast<float>(w / (sum + 1e-20));
    weights[j] = static_cast<float>(w * a.scale);
  }
}

}  // namespace

int64_t Gate(const GateArgs& a) {
  const int E = a.experts, k = a.k;
  thread_local Scratch x;
  const auto fit = [](auto& v, size_t n) {
    if (v.size() < n) v.resize(n);
  };
  fit(x.p, E);
  fit(x.choice, E);
  fit(x.idx, k);
  fit(x.sc, k);
  fit(x.groupScore, a.nGroup);
  fit(x.gIdx, a.topkGroup);
  fit(x.gSc, a.topkGroup);
  fit(x.keep, a.nGroup);
  for (int t = 0; t < a.tokens; t++) {
    const float* l = a.logits + static_cast<int64_t>(t) * E;
    // NaN and +Infinity make softmax / sigmoid undefined; -Infinity masks an expert out.
    for (int e = 0; e < E; e++)
      if (std::isnan(l[e]) || l[e] == std::numeric_limits<float>::infinity()) return static_cast<int64_t>(t) * E + e;
    int32_t* ids = a.ids + static_cast<int64_t>(t) * k;
    float* w = a.weights + static_cast<int64_t>(t) * k;
    if (a.sigmoid)
      SigmoidRow(a, l, x, ids, w);
    else
      SoftmaxRow(a, l, x.p.data(), ids, w, x.idx.data(), x.sc.data());
  }
  return -1;
}

}  // namespace switchyard
