// Grouped expert FFN on the CPU: y = (silu(x·Wg^T) * (x·Wu^T))·Wd^T per expert over contiguous row slices.
//
// Layouts (row-major, HF Linear [out, in]):  Wg, Wu: [f, d]   Wd: [d, f]   x, y: [N, d].
// Inputs in fp32 / bf16 / fp16; all products accumulate in fp32; output is converted back to the token dtype.
// Weights are prepared once (converted to fp32 and packed into column panels, see PreparedExpert) and that
// prepared form is what the worker's residency cache holds.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "half.h"

namespace switchyard {

struct AlignedFloats {
  float* ptr = nullptr;
  size_t n = 0;
  AlignedFloats() = default;
  explicit AlignedFloats(size_t count, bool zero = true);
  ~AlignedFloats();
  AlignedFloats(const AlignedFloats&) = delete;
  AlignedFloats& operator=(const AlignedFloats&) = delete;
  AlignedFloats(AlignedFloats&& o) noexcept : ptr(o.ptr), n(o.n) { o.ptr = nullptr, o.n = 0; }
  AlignedFloats& operator=(AlignedFloats&& o) noexcept {
    std::swap(ptr, o.ptr);
    std::swap(n, o.n);
    return *this;
  }
};

// One expert's weights, packed for the micro-kernels:
//   gu:   f padded to fp (multiple of 16) in panels of 16 columns; panel p is [d][32] floats: for each k the 16
//         gate weights Wg[p*16 + j][k] then the 16 up weights Wu[p*16 + j][k]. Padding columns are zero.
//   down: d padded to dp (multiple of 32) in panels of 32 output columns; panel q is [fp][32] floats,
//         Wd[q*32 + j][k] for k < f, zero beyond.
//   bf16 = true (all three matrices bf16 in the checkpoint): the same panels with each pair of 16-lane halves
//         stored as one 32-bit word per lane, hi << 16 | lo (lo = gate / columns 0-15, hi = up / columns 16-31):
//         exact, half the memory, and widening is a shift.
struct PreparedExpert {
  int d = 0, f = 0, fp = 0, dp = 0;
  bool bf16 = false;
  AlignedFloats gu, down;
  size_t bytes() const { return (gu.n + down.n) * sizeof(float); }
};

struct WeightView {
  DType dtype;
  int64_t rows, cols;
  const uint8_t* data;
};

// gate, up: [f, d]; down: [d, f]. Shapes must already be checked by the caller.
std::unique_ptr<PreparedExpert> prepare_expert(const WeightView& gate, const WeightView& up, const WeightView& down);

struct ExpertSliceRef {
  uint32_t expert;  // index into RunRequest::experts
  uint32_t offset;
  uint32_t count;
};

struct RunRequest {
  DType dtype;
  const uint8_t* tokens;  // [rows, cols] in dtype
  int64_t rows, cols;
  std::vector<ExpertSliceRef> slices;  // non-overlapping, within [0, rows)
  std::vector<const PreparedExpert*> experts;
  const float* row_weights = nullptr;      // optional [rows]
  const int32_t* cancel_flag = nullptr;    // optional; nonzero = stop at the next tile
};

struct RunOutcome {
  bool cancelled = false;
  int64_t tiles_total = 0;
  int64_t tiles_done = 0;
};

// Process-wide counters (exposed to JS: tests show that cancelled work really stopped).
struct KernelCounters {
  std::atomic<int64_t> tiles_done{0};
  std::atomic<int64_t> runs_started{0};
  std::atomic<int64_t> runs_completed{0};
  std::atomic<int64_t> runs_cancelled{0};
};
KernelCounters& kernel_counters();

// Computes the batch into out_f32 ([rows, cols], must be zero-filled; rows outside every slice stay zero).
// Runs on the shared thread pool; one run at a time.
void run_experts(const RunRequest& req, float* out_f32, RunOutcome* outcome);

// out[i] = src[i] rounded to `dtype` (bf16/fp16 round to nearest even), in parallel on the shared pool.
void convert_output(DType dtype, const float* src, uint8_t* out, int64_t n);

const char* kernel_isa();

}  // namespace switchyard
