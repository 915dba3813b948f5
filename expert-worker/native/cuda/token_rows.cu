// Device side of deduplicated batches: the gather of distinct tokens into rows, and the per-token weighted sum.
// Both move a few MB at most per batch: simple bandwidth kernels, no tuning needed next to the expert GEMMs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "token_rows.h"

namespace {

thread_local std::string g_err;

int fail(const std::string& m) {
  g_err = m;
  return 1;
}

int launched(const char* what) {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? 0 : fail(std::string(what) + ": " + cudaGetErrorString(e));
}

// One block row per output row, 16-byte vectors across it.
__global__ void gather_rows_kernel(const uint4* __restrict__ src, const int32_t* __restrict__ rows, int32_t vecs,
                                   uint4* __restrict__ dst) {
  const int32_t r = blockIdx.x;
  const uint4* s = src + (size_t)rows[r] * vecs;
  uint4* o = dst + (size_t)r * vecs;
  for (int32_t v = threadIdx.x; v < vecs; v += blockDim.x) o[v] = s[v];
}

// blockIdx.x: the token; blockIdx.y and the threads across d. The adds go in `order`'s order (ascending rows): the host's order.
__global__ void sum_rows_kernel(const __nv_bfloat16* __restrict__ x, int32_t d, const int32_t* __restrict__ offsets,
                                const int32_t* __restrict__ order, const float* __restrict__ weights, int32_t as_f16,
                                float* __restrict__ out) {
  const int32_t t = blockIdx.x;
  const int32_t j = blockIdx.y * blockDim.x + threadIdx.x;
  if (j >= d) return;
  const int32_t b = offsets[t], e = offsets[t + 1];
  float acc = 0.f;
  for (int32_t i = b; i < e; ++i) {
    const int32_t r = order[i];
    float v = __bfloat162float(x[(size_t)r * d + j]);
    if (as_f16) v = __half2float(__float2half_rn(v));
    const double w = weights ? (double)weights[r] : 1.0;
    // double step, rounded to fp32: (float)(acc + w * v) as the host computes it
    acc = (float)((double)acc + w * (double)v);
  }
  out[(size_t)t * d + j] = acc;
}

}  // namespace

extern "C" int sy_gather_rows(const void* src, const int32_t* rows, int32_t n, int32_t row_bytes, void* dst,
                              void* stream) {
  if (n < 0) return fail("sy_gather_rows: n must be >= 0");
  if (row_bytes <= 0 || row_bytes % 16) return fail("sy_gather_rows: row_bytes must be a positive multiple of 16");
  if (n == 0) return 0;
  const int32_t vecs = row_bytes / 16;
  const int threads = vecs < 256 ? ((vecs + 31) / 32) * 32 : 256;
  gather_rows_kernel<<<n, threads, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<const uint4*>(src), rows, vecs,
                                                                          static_cast<uint4*>(dst));
  return launched("sy_gather_rows");
}

extern "C" int sy_sum_rows_by_token(const uint16_t* x, int32_t d, const int32_t* offsets, const int32_t* order,
                                    const float* weights, int32_t u, int32_t as_f16, float* out, void* stream) {
  if (d <= 0 || u < 0) return fail("sy_sum_rows_by_token: d must be > 0 and u >= 0");
  if (d > 65535 * 256) return fail("sy_sum_rows_by_token: d too large");
  if (u == 0) return 0;
  const int threads = 256;
  dim3 grid(u, (d + threads - 1) / threads);
  sum_rows_kernel<<<grid, threads, 0, static_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const __nv_bfloat16*>(x), d, offsets, order, weights, as_f16, out);
  return launched("sy_sum_rows_by_token");
}

extern "C" const char* sy_token_rows_last_error(void) { return g_err.c_str(); }

namespace {
__global__ void fault_kernel(int* p) { *p = 1; }  // p is a bad address: the write faults
}  // namespace

extern "C" int sy_fault_for_tests(void* stream) {
  // An address no allocation can hold (the first page is never mapped on the device).
  fault_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(reinterpret_cast<int*>(16));
  return launched("sy_fault_for_tests");
}
