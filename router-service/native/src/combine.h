// The router's weighted combine (router-service/src/core/combine.ts is the TypeScript twin and the oracle):
//
//   out[t] = narrow( base[t] + sum over the token's slots s, in slot order, of weight[t,s] * rows[t,s] )
//
// Every product and sum is evaluated in double and rounded to fp32 after each step, which is exactly what
// JavaScript does for `acc[j] += w * x[j]` on Float32Arrays (an fp32 x fp32 product is exact in double), so both
// give the same bits. Narrowing to bf16 rounds to nearest even and keeps NaN quiet. x86-64, little-endian.
#pragma once
#include <cstdint>

namespace switchyard {

enum class RowType : int { F32 = 1, BF16 = 2 };

struct CombineArgs {
  RowType type;
  int tokens;
  int d;
  int slots;
  const float* weights;    // [tokens * slots]
  const int32_t* locations; // [tokens * slots * 2]: (result index or -1, row)
  const uint8_t* const* results; // per result index: row data (any alignment), [rows, d] of `type`
  const float* base;       // [tokens * d] or null (any alignment)
  uint8_t* dst;            // [tokens * d] of `type` (any alignment)
};

// Returns whether any element it wrote is an Inf or NaN (finite weights and rows can still sum past the range).
bool Combine(const CombineArgs& a);

}  // namespace switchyard
