// See combine.h. The loops are written for GCC's vectoriser (-O3 -march=native): unaligned element types because
// grpc-js hands the router rows at odd addresses, and a branch-free bf16 rounding so the narrowing vectorises too.
#include "combine.h"

#include <cstring>
#include <vector>

namespace switchyard {
namespace {

typedef uint16_t u16u __attribute__((aligned(1), may_alias));
typedef uint32_t u32u __attribute__((aligned(1), may_alias));
typedef float f32u __attribute__((aligned(1), may_alias));

inline float Widen(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t Narrow(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t rne = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = (u >> 16) | 0x0040u;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rne);
}

// acc = 0 + w * row. A product of two fp32 values is exact in double, so rounding it once to fp32 (what the
// TypeScript sum does after its double multiply) equals the fp32 multiply: this step runs in fp32, 16 lanes wide.
// (The `0 +` turns -0 into +0, as the zero-initialised TypeScript sum does.)
template <RowType T>
void First(const uint8_t* row, float w, float* __restrict acc, int n) {
  if constexpr (T == RowType::BF16) {
    const u16u* h = reinterpret_cast<const u16u*>(row);
    for (int j = 0; j < n; j++) acc[j] = 0.0f + w * Widen(h[j]);
  } else {
    const f32u* x = reinterpret_cast<const f32u*>(row);
    for (int j = 0; j < n; j++) acc[j] = 0.0f + w * x[j];
  }
}

// Whether a stored element is Inf or NaN, as a flag the loops OR together without a branch (bit 31 of the OR), on the
// fp32 value in its 32-bit lane (so the test runs as wide as the arithmetic):
// - stored as fp32: an exponent field of all ones plus its lowest bit carries into bit 31 (0x7f800000 + 0x00800000);
// - narrowed to bf16: the magnitude rounds to Inf or is NaN from 0x7f7f8000 up (halfway above bf16's largest finite
//   0x7f7f, a tie that rounds to even 0x7f80), and 0x7f7f8000 + 0x00808000 carries into bit 31.
inline uint32_t NonFiniteF32(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return (u & 0x7f800000u) + 0x00800000u;
}
inline uint32_t NonFiniteAsBf16(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return (u & 0x7fffffffu) + 0x00808000u;
}
constexpr uint32_t kNonFinite = 0x80000000u;

// A token with one contribution and no base: the first step narrowed straight into the reply, no accumulator.
// Returns whether it stored an Inf or NaN.
template <RowType T>
bool Only(const uint8_t* row, float w, uint8_t* out, int n) {
  uint32_t flags = 0;
  if constexpr (T == RowType::BF16) {
    const u16u* h = reinterpret_cast<const u16u*>(row);
    u16u* o = reinterpret_cast<u16u*>(out);
    for (int j = 0; j < n; j++) {
      const float v = 0.0f + w * Widen(h[j]);
      o[j] = Narrow(v);
      flags |= NonFiniteAsBf16(v);
    }
  } else {
    const f32u* x = reinterpret_cast<const f32u*>(row);
    f32u* o = reinterpret_cast<f32u*>(out);
    for (int j = 0; j < n; j++) {
      const float v = 0.0f + w * x[j];
      o[j] = v;
      flags |= NonFiniteF32(v);
    }
  }
  return (flags & kNonFinite) != 0;
}

// acc += w * row
template <RowType T>
void Add(const uint8_t* row, double w, float* __restrict acc, int n) {
  if constexpr (T == RowType::BF16) {
    const u16u* h = reinterpret_cast<const u16u*>(row);
    for (int j = 0; j < n; j++)
      acc[j] = static_cast<float>(static_cast<double>(acc[j]) + w * static_cast<double>(Widen(h[j])));
  } else {
    const f32u* x = reinterpret_cast<const f32u*>(row);
    for (int j = 0; j < n; j++)
      acc[j] = static_cast<float>(static_cast<double>(acc[j]) + w * static_cast<double>(x[j]));
  }
}

// Narrows (bf16) or copies (fp32) the sum into the reply; returns whether it stored an Inf or NaN. The test rides
// on the store's own pass over the row, so it costs the router next to nothing (the check in TypeScript read every
// answer again: ~30-60% of the combine's time).
template <RowType T>
bool Store(const float* __restrict acc, uint8_t* out, int n) {
  uint32_t flags = 0;
  if constexpr (T == RowType::BF16) {
    u16u* o = reinterpret_cast<u16u*>(out);
    for (int j = 0; j < n; j++) {
      o[j] = Narrow(acc[j]);
      flags |= NonFiniteAsBf16(acc[j]);
    }
  } else {
    f32u* o = reinterpret_cast<f32u*>(out);
    for (int j = 0; j < n; j++) {
      o[j] = acc[j];
      flags |= NonFiniteF32(acc[j]);
    }
  }
  return (flags & kNonFinite) != 0;
}

template <RowType T>
bool CombineAs(const CombineArgs& a) {
  bool nonFinite = false;
  constexpr int kEl = T == RowType::BF16 ? 2 : 4;
  const int d = a.d;
  thread_local std::vector<float> scratch;
  if (static_cast<int>(scratch.size()) < d) scratch.resize(d);
  float* acc = scratch.data();
  for (int t = 0; t < a.tokens; t++) {
    uint8_t* out = a.dst + static_cast<size_t>(t) * d * kEl;
    bool first = true;
    if (a.base) {
      std::memcpy(acc, reinterpret_cast<const uint8_t*>(a.base) + static_cast<size_t>(t) * d * 4,
                  static_cast<size_t>(d) * 4);
      first = false;
    }
    // The one slot that contributes, when there is exactly one and no base (top-1, or top-k with empty slots).
    int only = -1;
    if (!a.base) {
      for (int s = 0; s < a.slots; s++) {
        if (a.locations[(static_cast<size_t>(t) * a.slots + s) * 2] < 0) continue;
        if (only >= 0) {
          only = -1;
          break;
        }
        only = s;
      }
    }
    if (only >= 0) {
      const int32_t* loc = a.locations + (static_cast<size_t>(t) * a.slots + only) * 2;
      const uint8_t* row = a.results[loc[0]] + static_cast<size_t>(loc[1]) * d * kEl;
      nonFinite |= Only<T>(row, a.weights[static_cast<size_t>(t) * a.slots + only], out, d);
      continue;
    }
    for (int s = 0; s < a.slots; s++) {
      const int32_t* loc = a.locations + (static_cast<size_t>(t) * a.slots + s) * 2;
      if (loc[0] < 0) continue;
      const uint8_t* row = a.results[loc[0]] + static_cast<size_t>(loc[1]) * d * kEl;
      const float w = a.weights[static_cast<size_t>(t) * a.slots + s];
      if (first) First<T>(row, w, acc, d);
      else Add<T>(row, w, acc, d);
      first = false;
    }
    if (first) std::memset(out, 0, static_cast<size_t>(d) * kEl);  // no base, no contribution: zeros
    else nonFinite |= Store<T>(acc, out, d);
  }
  return nonFinite;
}

}  // namespace

bool Combine(const CombineArgs& a) {
  if (a.type == RowType::BF16) return CombineAs<RowType::BF16>(a);
  return CombineAs<RowType::F32>(a);
}

}  // namespace switchyard
