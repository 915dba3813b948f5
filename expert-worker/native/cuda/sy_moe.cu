// Switchyard grouped MoE kernels (bf16 in, fp32 accumulate). See sy_moe.h for the API and docs/ in this folder's
// README.md for the design and the measurements behind the choices.
//
// Pipeline for one layer (all on one stream, no host synchronisation, graph-capturable):
//   memset(counts) -> route (warp per token: softmax/sigmoid top-k, group-limited top-k; per-expert rank by atomic)
//   -> scan (one block: offsets + device list of (expert, row range) token tiles) -> scatter (row maps)
//   -> GEMM1 (A rows gathered straight from x by token index, [gate|up] tile, SwiGLU in the epilogue -> h)
//   -> GEMM2 (h * Wd, routing weight in the epilogue) -> combine (deterministic, fixed order per token)
//      or, for split-K decode, fp32 atomics straight into the output accumulator + convert.
//
// Why our own kernels rather than cuBLAS(Lt) or CUTLASS grouped GEMM: cublasGemmGroupedBatchedEx takes per-group
// sizes on the host (a device->host sync per layer, not graph friendly with dynamic routing); cuBLASLt has no grouped
// matmul (cublasLt.h of cuBLAS 13.1) and its epilogues cannot fuse SwiGLU, the gather or the routing weight.
// CUTLASS's sm_90 grouped GEMM (device-side sizes, as torch._grouped_mm runs it: 128x256x64, 2x1 clusters) was timed
// on the routing's real, uneven loads beside ours: at DeepSeek-V3 T=8192 13.69 ms for the two GEMMs against ours'
// 11.03 (bench/h200_anchor.py --skew; bench/results/h200-moe.md, session of 2026-11-30 10:46 UTC).
// The GEMMs here: wgmma kernels fed by TMA (sy_moe_wgmma.cuh) at every size by default, with the token tile (64 or
// 128 rows) picked per call from the expected tokens per expert, so that in the memory-bound (decode) regime each
// weight byte is read from HBM once; tensor-core mma.sync kernels with a cp.async pipeline and split-K stay as the
// portable fallback (see sy_moe_forward).
#include "sy_moe.h"
#include "swiglu.cuh"

#include <cuda_bf16.h>
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

typedef __nv_bfloat16 bf16;

namespace {

thread_local std::string g_last_error;
int g_tune_bm = 0, g_tune_split = 0, g_tune_wgmma = 0, g_skip_gemm = 0, g_last_combine = 0;

int fail(int code, const std::string& msg) {
  g_last_error = msg;
  return code;
}

#define SY_CUDA(call)                                                                                   \
  do {                                                                                                  \
    cudaError_t err_ = (call);                                                                          \
    if (err_ != cudaSuccess) return fail(SY_MOE_ERR_CUDA, std::string(#call) + ": " + cudaGetErrorString(err_)); \
  } while (0)

// A kernel's dynamic shared memory limit is an attribute of the function on each device, so it is set once per device
// this process launches on (a worker over several GPUs: backend/multi-device.ts), not once per process: a kernel
// first launched on device 0 failed on device 1 with "invalid argument". `done` holds a bit per device (ids < 64).
template <typename K>
static cudaError_t smem_attr_once(K kern, int bytes, std::atomic<uint64_t>& done) {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  const uint64_t bit = 1ull << (dev & 63);
  if (done.load(std::memory_order_acquire) & bit) return cudaSuccess;
  e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e == cudaSuccess) done.fetch_or(bit, std::memory_order_acq_rel);
  return e;
}

constexpr int kMaxExperts = 1024;
constexpr int kMaxTopK = 16;
// Largest T routed by the one-block route_small_kernel (measured: bench/results/h200-moe.md).
constexpr int kFusedRouteMaxT = 64;
// 128-row GEMM epilogue through shared memory + bulk copies (1) or direct fragment stores (0).
constexpr int kSmemEpilogueDefault = 0;
// 128-row tiles use the persistent GEMM while experts average at most this many tokens (see sy_moe_forward).
constexpr int kPersistMaxAvg = 128;
// Largest bound on token tiles ((T*k)/128 + active experts) at which the library CHOOSES the 128-row persistent
// kernel (see sy_moe_forward; forcing it has no limit). It was a stall guard; the stall is fixed
// (wg::kConsumerWarps), but the default choice stays what the committed benchmark measured until a run says more.
constexpr int kPersist128MaxTokenTiles = 192;
// 128-row token tiles (two consumer warpgroups) once experts average more than this many tokens, else 64 (see
// sy_moe_forward).
constexpr int kWide128MinAvg = 24;
// 256-row token tiles (wgmma, TALL) once experts average at least this many tokens; 0 = never (measured slower
// than the 128-row tile at every compute-side cell, see sy_moe_forward; SY_MOE_TALL_AVG sets it per call).
constexpr int kTallMinAvg = 0;
// Persistent wgmma kernels scheduled dynamically (a device counter hands out the raster's next work item), and then
// the 128-row persistent kernel at every size (1), or statically round robin with the older size choice (0). See
// wg::wgmma_gemm_kernel and sy_moe_forward; SY_MOE_DYN sets it per call. Measured on H200 (bench/results/
// h200-moe.run8-23h55.md, same run, default / default again vs 0): Qwen3 T=8192 1.380 / 1.329 vs 1.596 ms, T=1024 0.373 /
// 0.371 vs 0.381; the other compute-side and all memory-bound cells within noise.
constexpr int kDynamicSchedule = 1;
// 2-CTA clusters for the dynamically scheduled 128-row persistent GEMMs (wg::wgmma_gemm_kernel CL; SY_MOE_CLUSTER
// sets it per call: 0 off, 1 wg::kClusterN, 2 wg::kClusterM). Default 1: pairs of weight tiles sharing their
// activation tile by multicast, for GEMM2, and for GEMM1 where it does not gather (kGatherMaxWeightTiles). Measured
// on H200 in 5 interleaved rounds (bench/results/logs/h200-variants-cluster-gather.log, medians, with vs without):
// Qwen3 T=8192 1.188 vs 1.344 ms, Mixtral T=1024 1.494 vs 1.572, T=8192 9.60 vs 9.84, DeepSeek-V3 T=1024 4.42 vs
// 4.52, T=8192 12.37 vs 12.48, Qwen3 T=1024 0.347 vs 0.352. The first version lost 15-45% to a cluster-scope
// release on every consumer warp's stage release (bench/results/logs/h200-cluster-multicast.patch; see
// wg::mbar_arrive_remote_stage).
// kClusterM measured slower wherever an expert's last 256-row tile leaves the second CTA idle (DeepSeek-V3, Qwen3
// T=1024: bench/results/logs/h200-cluster-m-bench.log).
constexpr int kClusterDefault = 1;
// ... except kClusterM (with paired singles, kPairSinglesDefault, and the TL kernels' 64-column staging) where GEMM1
// does not gather (it has >= kGatherMaxWeightTiles weight tiles) and experts average >= kClusterMMinAvg rows:
// Mixtral T=1024 / 8192. Measured on H200, same rounds, variants rotated (SY_MOE_CLUSTER=2 SY_MOE_TL_EPI64=1
// against the defaults, medians): long windows, 5 rounds (bench/results/logs/h200-anchor-clusterm-ab-0657.log)
// Mixtral T=1024 1.334 vs 1.430 ms, 4 of 5 rounds faster, T=8192 level; 6 rounds each in
// bench/results/logs/h200-variants-clusterm-gather-0722.log and h200-variants-pair-singles-0727.log: T=1024 1.327 vs
// 1.379 and 1.339 vs 1.351 (the same setting under another name 1.326 / 1.319), T=8192 8.95 vs 8.92 and 8.79 vs 8.80.
// Where GEMM1 gathers (Qwen3, DeepSeek-V3) kClusterM stays slower even with paired singles: Qwen3 T=8192 1.326 vs
// 1.179, DeepSeek-V3 T=8192 12.63 vs 11.64 (h200-variants-pair-singles-0727.log).
constexpr int kClusterMMinAvg = 256;
// ... and kClusterM with the permute kernel also where GEMM1 would gather, if d_ff >= kClusterMPermuteMinDff
// (DeepSeek-V3 at T >= 8192): by default GEMM1 never gathers inside the kClusterM pairs, where each CTA's gather waits
// for both CTAs' consumers and loses more than the pair saves (bench/results/h200-moe.md, "Session of 12:14 UTC").
// At DeepSeek-V3 T=8192 the pairs take 14% off GEMM1 under even expert loads and 5% under the benchmark's skewed
// routing, against the permute kernel's cost, which grows with T * k * d where GEMM1's FLOPs grow with T * k * d *
// d_ff: at Qwen3's d_ff 768 the pairs with the permute were 2-4% slower (h200-variants-clusterm-no-multicast-1235.log,
// h200-variants-clusterm-gather-local-release-1241.log).
constexpr int kClusterMPermuteMinDff = 2048;
// Under kClusterM, singles (an expert's last 256-row tile with <= 128 rows) run two per cluster, one per CTA with its
// own weight tile (wg::resolve_tile), on. Measured on H200 against SY_MOE_PAIR_SINGLES=0 (both with SY_MOE_CLUSTER=2
// SY_MOE_TL_EPI64=1, 6 rotated rounds, medians, bench/results/logs/h200-variants-pair-singles-0727.log): Qwen3
// T=1024 0.347 vs 0.450 ms, DeepSeek-V3 T=1024 4.53 vs 5.69, T=8192 12.63 vs 13.82, Qwen3 T=8192 1.326 vs 1.340,
// Mixtral level. SY_MOE_PAIR_SINGLES=0 leaves rank 1 of a single idle (the behaviour before).
constexpr int kPairSinglesDefault = 1;
// Staged epilogue of the persistent wgmma kernels (wg::store_warp_staged: stmatrix + TMA store per warp), on:
// measured on H200 against direct stores, first one measurement each (bench/results/logs/h200-variants-epi.log):
// Qwen3 T=8192 1.231 vs 1.436 ms, DeepSeek-V3 T=8192 11.97 vs 12.46, Mixtral T=1024 1.338 vs 1.491, no compute-side
// cell slower; then in the 01:27 run's 3 interleaved rounds (bench/results/h200-moe.run9-01h27.md), 4-30% at every
// compute-side cell. SY_MOE_EPI_TMA=0 turns it off.
constexpr int kStagedEpilogueDefault = 1;
// GEMM1 gathering its activations instead of the permute kernel (wg::producer_gather), on: measured on H200 in 5
// interleaved rounds against the permute kernel (bench/results/logs/h200-variants-gather.log, medians): Qwen3
// T=8192 1.204 vs 1.429 ms, T=1024 0.349 vs 0.382, Mixtral T=1024 1.508 vs 1.599, T=8192 9.66 vs 10.24, DeepSeek-V3
// T=1024 4.64 vs 4.93; DeepSeek-V3 T=8192 13.24 vs 12.84 within that cell's round-to-round spread (12.6-14.7).
// SY_MOE_GATHER=0 turns it off, SY_MOE_GATHER=1 forces it past kGatherMaxWeightTiles.
constexpr int kGatherDefault = 1;
// ... while GEMM1 has fewer than this many weight tiles (2 * d_ff / 256). From there the permute kernel and
// kClusterN for GEMM1 win: each token tile's activations are read once per weight tile, and the cluster multicasts
// them (half the activation bytes per CTA from L2), which outweighs the permute's x_perm written and read back once
// the weight tiles are many. Measured on H200 with the variants' order rotated each round (bench/results/logs/
// h200-knobs-rotated-ab-bench.log, 10 rounds, and h200-gather0-rotated-mixtral-bench.log, 8 rounds; medians against
// two no-op controls timed the same way): Mixtral (112 weight tiles) T=1024 1.553 vs 1.619 / 1.582 ms and 1.516 /
// 1.524 vs 1.567 / 1.543, T=8192 9.41 vs 9.77 / 9.91 and 9.38 / 9.45 vs 9.63 / 9.65, T=128 within 0.3%; the gather
// stays ahead at DeepSeek-V3 (16 weight tiles: T=8192 12.51 vs 12.27 / 12.44, T=1024 4.72 vs 4.59 / 4.62) and Qwen3
// (6: T=8192 1.386 vs 1.356 / 1.353, T=1024 0.375 vs 0.362 / 0.357). The limit sits between 16 and 112.
constexpr int kGatherMaxWeightTiles = 64;
// The persistent GEMMs skip loading activation rows past a tile's expert's last row (wg::Params::trim_a): the GEMMs
// are bound by their bytes through L2 (Nsight Compute, bench/results/h200-moe.md), and an expert's last tile mostly
// holds a few rows. Measured on H200 in 3 interleaved rounds against SY_MOE_TRIM=0 (bench/results/logs/
// h200-trim-bench.log, medians): Mixtral T=1024 1.457 vs 1.576 ms, Qwen3 T=8192 1.309 vs 1.363, DeepSeek-V3 T=8192
// 11.94 vs 12.15, T=1024 4.44 vs 4.52; Mixtral T=8192 and Qwen3 T=1024 within noise. SY_MOE_TRIM=0 turns it off.
constexpr int kTrimDefault = 1;
// The persistent GEMMs' TMA activation tiles through per-expert maps (expert_maps_kernel, wg::Params::emaps): the
// rows of a tile past its expert's last row arrive as zeros (out-of-bounds fill), neither read from L2 nor holding
// the next expert's rows. Those rows' products are never stored; zeros cost the tensor cores less energy, and the
// compute-side cells run at the power limit (with all-zero hidden states the layer ran 1.17-1.20x faster:
// bench/h200_data_power.py, logs/h200-data-power-1408.log). Padding rows are ~11% of the MMA rows at DeepSeek-V3
// T=8192 (bench/results/moe-tile-model.txt). On by default under kClusterM, where GEMM1 loads its activations by
// TMA (the gathering GEMM1 zero-fills those rows already). Measured on H200, 6 rotated rounds, medians against two
// no-op controls (logs/h200-variants-zpad-1413.log): DeepSeek-V3 T=8192 11.63 vs 11.91 / 11.93 ms (kClusterM),
// Mixtral T=1024 1.339 vs 1.346 / 1.327 and T=8192 9.05 vs 9.01 / 9.13 (kClusterM, level); elsewhere it only adds
// a launch: Qwen3 T=1024 0.334 vs 0.328 / 0.329, DeepSeek-V3 T=1024 level. SY_MOE_ZPAD=0/1 overrides.
constexpr int kZeroPadUnderClusterM = 1;
// Absorbed tails (wg::Params::absorb, wgmma_gemm_kernel TL): an expert with 128 q + r tokens, q >= 1 and
// r <= kAbsorbDefault, gets q token tiles, the last holding 128 + r rows, instead of q + 1 tiles, the last one with
// r rows that loaded a whole weight tile through L2 for them. For the 128-row persistent GEMMs with dynamic scheduling
// (both, or neither: the tile list is shared), where d_ff >= kAbsorbMinDff; with kClusterM (SY_MOE_CLUSTER=2) over
// its 256-row list, rank 1 of a 256 + r row tile holding 128 + r rows. SY_MOE_ABSORB=N sets r's limit (at most
// wg::kTailRows) at any d_ff; 0 turns it off.
// The TL kernels pay for the tail's stage region with a staged epilogue of 32-column chunks (wg::Cfg::kEpiCols),
// twice the TMA stores, which costs where work items are short. Measured on H200 against SY_MOE_ABSORB=0 (6
// rotated rounds, medians, bench/results/logs/h200-absorb-bench.log): Mixtral T=1024 (5 of 21 token tiles absorbed)
// 1.439 vs 1.499 ms, T=8192 9.28 vs 9.35, DeepSeek-V3 T=1024 4.39 vs 4.48, T=8192 12.01 vs 11.99; but Qwen3 (d_ff
// 768: GEMM2 items of 12 k-tiles) T=1024 0.368 vs 0.358 (no expert reaches 129 rows there) and T=8192 1.332 vs 1.309.
// With GEMM2's epilogue the fused combine (which the TL kernels' 32-column staging does not touch) it is further
// behind at Qwen3 T=8192: 1.394 ms, 1.338 with SY_MOE_TL_EPI64=1, against the default's 1.193 / 1.231 (6 rotated
// rounds, medians, bench/results/logs/h200-variants-absorb-qwen3-0931.log). So the tail's swap-AB MMAs and element
// adds cost more than the tiles they save (1.121x -> 1.016x of rows / 128, bench/moe_tile_model.py) at d_ff 768.
constexpr int kAbsorbDefault = 32;  // = wg::kTailRows (static_assert in sy_moe_forward)
constexpr int kAbsorbMinDff = 2048;
// Combine fused into GEMM2's epilogue (wg::reduce_warp_staged, wg::Params::combine_out) for the persistent wgmma
// GEMM2 with the staged epilogue: 0 = the combine kernel (fixed order per token, repeats bit for bit), 1 = bf16
// vector reductions into out (zeroed first). With 1 the order of a token's k adds varies between runs, so the output
// may differ in its last bits from run to run (not with top_k = 1, the expert worker's calls: one add onto zero is
// exact, the combine kernel's result bit for bit). Default 1 with 128-row tiles where d_ff < kCombineFuseMaxDff,
// else 0; SY_MOE_COMBINE overrides.
// The combine moves T * k * d_model * 2 bytes each way (GEMM2 writes the rows, the combine reads them back) against
// GEMM2's 2 T k d_model d_ff flops, so it weighs most where d_ff is short: at Qwen3 (d_ff 768) T=8192 it took 76 of
// 1.27 ms (bench/results/logs/h200-profile-clusterm-0537.log). Measured on H200 against the combine kernel (medians of
// 4 and 6 rotated rounds, logs/h200-variants-combine-0826.log, h200-variants-two-ended-combine-0830.log):
//   Qwen3 T=8192: 1.245 vs 1.306 ms, 1.239 vs 1.302; T=1024: 0.345 vs 0.359, 0.345 vs 0.351.
//   At d_ff >= 2048 level or slower: Mixtral T=1024 1.449 vs 1.375, 1.433 vs 1.344 (and 1.436 vs 1.401 in
//   logs/h200-variants-combine-diag-0835.log, where turning the GEMM2 split or the absorbed tails off did not change
//   that), T=8192 9.01 vs 8.99, 8.81 vs 8.90; DeepSeek-V3 T=8192 12.50 vs 12.35, 12.28 vs 12.10, 12.19 vs 12.31.
// fp32 reductions into out_acc plus a convert kernel (SY_MOE_COMBINE=2 until ae4b6d8) were slower than the combine
// kernel at Qwen3 T=8192 (1.406 ms): they zero and convert an fp32 output of T * d_model * 4 bytes and send twice
// the bytes to L2; removed. bf16 (1) rounds each add: the layer's relative error against
// float64 rose from ~2.9e-3 to ~3.5-4.4e-3 in test_moe's cases (k = 4..8), still under the torch._grouped_mm
// pipeline's 4.9e-3 (bench/results/h200-moe.json, torch_relerr).
constexpr int kCombineFuseMaxDff = 2048;

// ------------------------------------------------------------------------------------------------------------------
// Routing
// ------------------------------------------------------------------------------------------------------------------
struct RouteParams {
  const float* logits;
  const float* bias;
  const int* expert_slot;
  int T, E, k;
  int score, renormalize, n_group, topk_group;
  float scale;
  int* ids;         // [T*k]
  float* w;         // [T*k]
  int* rank;        // [T*k] rank inside its expert, -1 = not resident (may be null: route only)
  int* counts;      // [E]
  int* ids_out;     // optional copies
  float* w_out;
  int4* zero_out;   // route_reg_kernel: zero these T rows of zero_units 16-byte units (the layer's output, for the
  int zero_units;   // fused combine; null: nothing)
};

// Warp-wide (max v, lowest i among the lanes holding it), in every lane. Two redux.sync reductions on an
// order-preserving integer key of v (NaN below every number, -0 as +0) instead of a five-step shuffle tree with
// two shuffles and a compare-select per step: the routing kernels are bound by instruction issue (Nsight Compute,
// bench/results/logs/h200-route-profile.log) and run this k times per token. DeepSeek-V3 T=8192's routing kernel
// took 28.3-28.6 us with it against 31.1-35.3 (torch.profiler, bench/results/logs/h200-profile-timeline-0934.log,
// -0942.log).
__device__ __forceinline__ void warp_argmax(float& v, int& i) {
  unsigned u = __float_as_uint(v);
  if (v == 0.f) u = 0u;
  const unsigned key = v != v ? 0u : (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  const unsigned best = __reduce_max_sync(0xffffffffu, key);
  i = __reduce_min_sync(0xffffffffu, key == best ? i : INT_MAX);
  v = __uint_as_float((best & 0x80000000u) ? (best & 0x7fffffffu) : ~best);
}

constexpr int kRouteWarps = 4;

// Programmatic dependent launch (PDL). Every kernel after the first of a forward call is launched with the
// programmatic-serialization attribute, so it is scheduled while the kernel before it is still running and its
// prologue (block scheduling, barrier init, tensor-map fetch, and for the GEMMs the first weight tiles) overlaps that
// kernel's tail. Rules that keep this correct, followed by every kernel launched that way:
//   - each CTA executes pdl_wait() (returns once the previous kernel has completed and its writes are visible)
//     before it reads anything the previous kernel wrote, writes anything, or exits;
//   - pdl_trigger() (lets the next kernel be scheduled) comes only after that wait.
// Hence, when kernel i starts running, kernels <= i-2 of the call have completed: kernel i may read their outputs
// (the tile list, row maps) and the weights before its own wait, nothing else. The first kernel of a call is
// launched without the attribute, so calls never overlap each other.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Scores of expert e from its logit l: raw (what the weight is made of) and sel (what top-k compares: sigmoid +
// correction bias, or the logit); mx keeps the softmax maximum. Shared by route_token and route_token_reg.
__device__ __forceinline__ void score_expert(const RouteParams& p, int e, float l, float& raw, float& sel, float& mx) {
  if (p.score == SY_MOE_SCORE_SIGMOID) {
    const float s = 1.f / (1.f + __expf(-l));
    raw = s;
    sel = s + (p.bias ? p.bias[e] : 0.f);
  } else {
    raw = l;
    sel = l;
    mx = fmaxf(mx, l);
  }
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Routes token t with one warp; lanes 0..k-1 return their chosen expert and final weight. Scores live in shared
// memory (E <= 1024; sel/raw: E floats each, private to the warp), so any E works without register arrays indexed
// at run time. Ties go to the lower expert id, as torch.topk does on CUDA for distinct values.
__device__ __forceinline__ void route_token(const RouteParams& p, int t, float* sel, float* raw, int lane, int& out_id,
                                            float& out_w) {
  const float* lg = p.logits + (size_t)t * p.E;
  const float NEG = -INFINITY;
  float mx = NEG;
  for (int e = lane; e < p.E; e += 32) score_expert(p, e, lg[e], raw[e], sel[e], mx);
  float denom = 1.f;
  if (p.score == SY_MOE_SCORE_SOFTMAX) {
    mx = warp_max(mx);
    float s = 0.f;
    for (int e = lane; e < p.E; e += 32) s += __expf(raw[e] - mx);
    denom = warp_sum(s);
  }
  __syncwarp();
  if (p.n_group > 1) {
    // Group score = sum of the two best selection scores in the group (DeepSeek-V3); keep topk_group groups.
    const int G = p.E / p.n_group;
    float gs = NEG;
    if (lane < p.n_group) {
      float b1 = NEG, b2 = NEG;
      for (int e = lane * G; e < (lane + 1) * G; ++e) {
        float v = sel[e];
        if (v > b1) {
          b2 = b1;
          b1 = v;
        } else if (v > b2) {
          b2 = v;
        }
      }
      gs = b1 + (G > 1 ? b2 : 0.f);
    }
    unsigned keep = 0;
    for (int r = 0; r < p.topk_group; ++r) {
      float v = gs;
      int i = lane < p.n_group ? lane : 1 << 30;
      warp_argmax(v, i);
      if (i < 32) keep |= 1u << i;
      if (lane == i) gs = NEG;
    }
    for (int e = lane; e < p.E; e += 32)
      if (!((keep >> (e / G)) & 1u)) sel[e] = NEG;
    __syncwarp();
  }
  int my_id = -1;
  float my_w = 0.f;
  float wsum = 0.f;
  for (int j = 0; j < p.k; ++j) {
    float v = NEG;
    int i = 1 << 30;
    for (int e = lane; e < p.E; e += 32) {
      float s = sel[e];
      if (s > v || (s == v && e < i)) {
        v = s;
        i = e;
      }
    }
    warp_argmax(v, i);
    if (i >= p.E) i = 0;  // fewer finite candidates than k (all masked): fall back deterministically
    float wj = p.score == SY_MOE_SCORE_SOFTMAX ? __expf(raw[i] - mx) / denom : raw[i];
    wsum += wj;
    if (lane == j) {
      my_id = i;
      my_w = wj;
    }
    __syncwarp();
    if (lane == (i & 31)) sel[i] = NEG;
    __syncwarp();
  }
  float w = my_w;
  if (p.renormalize) w = w / wsum;
  out_w = w * p.scale;
  out_id = my_id;
}

// Lane j < k of token t's warp stores choice j at a = t * k + j: the expert and its weight, and their optional
// copies. Returns whether the expert is resident (has a slot), i.e. whether the choice gets a rank in its expert.
__device__ __forceinline__ bool store_choice(const RouteParams& p, size_t a, int id, float w) {
  p.ids[a] = id;
  p.w[a] = w;
  if (p.ids_out) p.ids_out[a] = id;
  if (p.w_out) p.w_out[a] = w;
  return (p.expert_slot ? p.expert_slot[id] : id) >= 0;
}

// One warp per token (the general path). The next kernel (scan) may be scheduled at once: it waits for this one.
__global__ void __launch_bounds__(kRouteWarps * 32) route_kernel(RouteParams p) {
  extern __shared__ float sm_route[];
  pdl_trigger();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int t = blockIdx.x * kRouteWarps + warp;
  if (t >= p.T) return;
  float* sel = sm_route + warp * 2 * p.E;  // selection score (with bias), -inf once chosen or masked
  int my_id;
  float w;
  route_token(p, t, sel, sel + p.E, lane, my_id, w);
  if (lane < p.k) {
    const size_t a = (size_t)t * p.k + lane;
    const bool resident = store_choice(p, a, my_id, w);
    if (p.rank) p.rank[a] = resident ? atomicAdd(&p.counts[my_id], 1) : -1;
  }
}

// Register routing (route_reg_kernel): the same decisions as route_token, for E <= 32 * NPL, with lane l holding
// experts l * NPL .. l * NPL + NPL - 1 in registers. route_token keeps its scores in shared memory and scans E / 32
// of them per lane and selection round, with a __syncwarp around each shared store. Both are bound by instruction
// issue (Nsight Compute: ~0.5 warp instructions per scheduler and cycle, bench/results/logs/h200-route-profile.log).
// At T = 8192 on H200 (per-kernel times, PDL off, same log) this one takes 15 us against 25 at Qwen3 (E 128) and
// 34 against 42 at DeepSeek-V3 (E 256 in groups), with 2 tokens per warp; 4 per warp were slower (19 / 42 us).
// Group-limited routing needs each group to be whole lanes, a power of two of them (route_reg_ok); otherwise the
// caller uses route_kernel.
template <int NPL>
__device__ __forceinline__ void route_token_reg(const RouteParams& p, int t, int lane, int& out_id, float& out_w) {
  const float NEG = -INFINITY;
  const float* lg = p.logits + (size_t)t * p.E;
  const int e0 = lane * NPL;
  float sel[NPL], raw[NPL];
  float mx = NEG;
#pragma unroll
  for (int j = 0; j < NPL; ++j) {
    const int e = e0 + j;
    raw[j] = 0.f;
    sel[j] = NEG;
    if (e < p.E) score_expert(p, e, lg[e], raw[j], sel[j], mx);
  }
  float denom = 1.f;
  if (p.score == SY_MOE_SCORE_SOFTMAX) {
    mx = warp_max(mx);
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < NPL; ++j)
      if (e0 + j < p.E) s += __expf(raw[j] - mx);
    denom = warp_sum(s);
  }
  if (p.n_group > 1) {
    // Group score = sum of the two best selection scores in the group (DeepSeek-V3); keep topk_group groups. A
    // group is lpg = G / NPL consecutive lanes: each lane's best two, then merged across the group's lanes.
    const int lpg = p.E / p.n_group / NPL;
    float b1 = NEG, b2 = NEG;
#pragma unroll
    for (int j = 0; j < NPL; ++j) {
      const float v = sel[j];
      if (v > b1) {
        b2 = b1;
        b1 = v;
      } else if (v > b2) {
        b2 = v;
      }
    }
    for (int o = 1; o < lpg; o <<= 1) {
      const float c1 = __shfl_xor_sync(0xffffffffu, b1, o), c2 = __shfl_xor_sync(0xffffffffu, b2, o);
      const float hi = fmaxf(b1, c1), lo = fmaxf(fminf(b1, c1), fmaxf(b2, c2));
      b1 = hi;
      b2 = lo;
    }
    const int grp = lane / lpg;
    const bool rep = lane % lpg == 0 && grp < p.n_group;  // the lane that offers its group's score
    float gs = rep ? b1 + (p.E / p.n_group > 1 ? b2 : 0.f) : NEG;
    unsigned keep = 0;
    for (int r = 0; r < p.topk_group; ++r) {
      float v = gs;
      int i = rep ? grp : 1 << 30;
      warp_argmax(v, i);
      if (i < 32) keep |= 1u << i;
      if (rep && i == grp) gs = NEG;
    }
    if (!((keep >> grp) & 1u))
#pragma unroll
      for (int j = 0; j < NPL; ++j) sel[j] = NEG;
  }
  int my_id = -1;
  float my_w = 0.f, wsum = 0.f;
  for (int j = 0; j < p.k; ++j) {
    // this lane's best (lowest expert on ties), then the warp's; the owner lane knows the chosen expert's raw score
    // (route_token's scan: the first expert that is >, or == while none is chosen, so an all -inf lane offers its
    // lowest expert)
    float v = NEG, rv = 0.f;
    int i = 1 << 30;
#pragma unroll
    for (int q = 0; q < NPL; ++q)
      if (e0 + q < p.E && (sel[q] > v || (sel[q] == v && i == 1 << 30))) {
        v = sel[q];
        i = e0 + q;
        rv = raw[q];
      }
    warp_argmax(v, i);
    const bool fallback = i >= p.E;  // no candidate compared (NaN scores): expert 0, as route_token
    if (fallback) i = 0;
    const int owner = i / NPL;
    const float r = __shfl_sync(0xffffffffu, rv, owner), r0 = __shfl_sync(0xffffffffu, raw[0], 0);
    const float raw_i = fallback ? r0 : r;
    const float wj = p.score == SY_MOE_SCORE_SOFTMAX ? __expf(raw_i - mx) / denom : raw_i;
    wsum += wj;
    if (lane == j) {
      my_id = i;
      my_w = wj;
    }
    if (lane == owner)
#pragma unroll
      for (int q = 0; q < NPL; ++q)
        if (e0 + q == i) sel[q] = NEG;
  }
  float w = my_w;
  if (p.renormalize) w = w / wsum;
  out_w = w * p.scale;
  out_id = my_id;
}

// Whether route_token_reg<NPL> takes this config: E <= 32 NPL, and groups (if any) of a power-of-two number of
// whole lanes.
static bool route_reg_ok(const sy_moe_config* c, int npl) {
  if (c->num_experts > 32 * npl) return false;
  if (c->n_group <= 1) return true;
  const int G = c->num_experts / c->n_group;
  if (G % npl) return false;
  const int lpg = G / npl;
  return (lpg & (lpg - 1)) == 0;
}

// Register routing, kRouteRegWarps warps per block, each routing tpw tokens of the block's chunk. With rank (the
// forward call), the per-expert counts are gathered in shared memory first: one global atomic per expert and
// block instead of one per (token, choice), k * T of them onto E counters in a few cache lines.
constexpr int kRouteRegWarps = 16;
constexpr int kRouteRegMaxTpw = 2;
template <int NPL>
__global__ void __launch_bounds__(kRouteRegWarps * 32) route_reg_kernel(RouteParams p, int tpw) {
  extern __shared__ int sm_counts[];  // [E] this block's counts, then [E] the block's base rank per expert
  pdl_trigger();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const bool ranked = p.rank != nullptr;
  if (ranked) {
    for (int e = threadIdx.x; e < p.E; e += blockDim.x) sm_counts[e] = 0;
    __syncthreads();
  }
  const int t0 = blockIdx.x * kRouteRegWarps * tpw;
  if (p.zero_out) {
    // the output rows of this block's tokens, for the fused combine's adds. The stores go out first and drain while
    // the routing below (bound by instruction issue) runs. At Qwen3 T=8192 on H200 (torch.profiler timelines, PDL
    // on) a memset before the routing took 9 us, and the call's first 40 us went to memsets, routing, scan and
    // scatter (bench/results/logs/h200-profile-timeline-0934.log); with the zeroing here 30 us, the routing kernel
    // 21 us against 20 (h200-profile-timeline-0942.log). The benchmark's rounds do not resolve 1%: 1.239 ms against
    // 1.222 with the memset (SY_MOE_ZERO_IN_ROUTE=0), rounds spread over 1.15-1.31 (h200-variants-zero-in-route-0942).
    const int rows = min(kRouteRegWarps * tpw, p.T - t0);
    int4* z = p.zero_out + (size_t)t0 * p.zero_units;
    for (int i = threadIdx.x; i < rows * p.zero_units; i += blockDim.x) z[i] = make_int4(0, 0, 0, 0);
  }
  int ids[kRouteRegMaxTpw], local[kRouteRegMaxTpw];
#pragma unroll
  for (int j = 0; j < kRouteRegMaxTpw; ++j) {
    ids[j] = -1;
    local[j] = -1;
    const int t = t0 + j * kRouteRegWarps + warp;
    if (j >= tpw || t >= p.T) continue;
    int my_id;
    float w;
    route_token_reg<NPL>(p, t, lane, my_id, w);
    if (lane < p.k) {
      const bool resident = store_choice(p, (size_t)t * p.k + lane, my_id, w);
      if (ranked) {
        ids[j] = my_id;
        local[j] = resident ? atomicAdd(&sm_counts[my_id], 1) : -1;
      }
    }
  }
  if (!ranked) return;
  __syncthreads();
  int* base = sm_counts + p.E;
  for (int e = threadIdx.x; e < p.E; e += blockDim.x) base[e] = sm_counts[e] ? atomicAdd(&p.counts[e], sm_counts[e]) : 0;
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kRouteRegMaxTpw; ++j) {
    const int t = t0 + j * kRouteRegWarps + warp;
    if (j >= tpw || t >= p.T || lane >= p.k) continue;
    p.rank[(size_t)t * p.k + lane] = local[j] >= 0 ? base[ids[j]] + local[j] : -1;
  }
}

// Pre-routed input: ids/weights come from the caller (the router already chose). Out-of-range ids are ignored.
__global__ void preroute_kernel(const int* ids_in, const float* w_in, const int* expert_slot, int n, int E, int* ids,
                                float* w, int* rank, int* counts) {
  pdl_trigger();
  int a = blockIdx.x * blockDim.x + threadIdx.x;
  if (a >= n) return;
  int e = ids_in[a];
  ids[a] = e;
  w[a] = w_in[a];
  int slot = (e >= 0 && e < E) ? (expert_slot ? expert_slot[e] : e) : -1;
  rank[a] = slot >= 0 ? atomicAdd(&counts[e], 1) : -1;
}

// Token tiles of an expert with c rows: ceil(c / bm), one fewer where an earlier full tile absorbs the last r = c %
// bm <= absorb rows (kAbsorbDefault; wg::tile_coords recomputes it from the tile list, so both must agree).
__host__ __device__ __forceinline__ int expert_tiles(int c, int bm, int absorb) {
  const int r = c % bm;
  return (c + bm - 1) / bm - (c > bm && r > 0 && r <= absorb ? 1 : 0);
}

// kClusterM with paired singles (wg::Params::pair_singles): 1 where the expert's last tile of the list (BM = 256
// rows) holds <= 128 rows, i.e. only rank 0 of a cluster would have tokens in it. Such a tile is a single: two
// singles run side by side on one cluster (scan_block, wg::resolve_tile).
__host__ __device__ __forceinline__ int expert_single(int c, int bm, int absorb) {
  const int mt = expert_tiles(c, bm, absorb);
  return mt > 0 && c - (mt - 1) * bm <= bm / 2 ? 1 : 0;
}

// Block of 1024 threads, thread e holding expert e's count c: exclusive scans of counts and of token tiles per
// expert, then the tile list. Returns the expert's first row (its offset). absorb: expert_tiles.
// singles_at >= 0 (kClusterM with paired singles): an expert's single (expert_single) is not among its tiles; the
// singles, numbered in expert order, go to tiles[singles_at + i], and the list gets a row (-1, p, 0, 0) for each
// pair p of them (singles 2p and 2p + 1; the last one alone when their count is odd), right after the pair tiles of
// the expert whose single completes it. So a single runs soon after its expert's other tiles, while their weight
// tiles may still be in L2. With all singles at the end of the list instead, kClusterM's GEMM1 at Qwen3 T=8192 had
// a 52% L2 hit rate against the default's 70% (bench/results/logs/h200-ncu-clusterm-qwen3-0747.log); interleaved,
// its layer time did not change (1.324 vs 1.326 ms, DeepSeek-V3 T=8192 12.56 vs 12.63: logs/h200-variants-
// singles-interleaved-0752.log against h200-variants-pair-singles-0727.log), so that hit rate is not what costs
// kClusterM there. num_tiles[3] = the singles.
__device__ __forceinline__ int scan_block(int c, int E, int BM, int* offsets, int4* tiles, int* num_tiles,
                                          int absorb = 0, int singles_at = -1) {
  const bool singles = singles_at >= 0;
  __shared__ int s_c[32], s_m[32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int mt = expert_tiles(c, BM, absorb);
  const int se = singles ? expert_single(c, BM, absorb) : 0;
  // one scan for both counts: the pair tiles in bits 0..19 (a million 256-row tiles is far past any workspace),
  // the singles (<= E <= kMaxExperts) above
  constexpr int kSingleShift = 20;
  const int mt_packed = singles ? (mt - se) + (se << kSingleShift) : mt;
  int ic = c, im = mt_packed;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    int a = __shfl_up_sync(0xffffffffu, ic, o), b = __shfl_up_sync(0xffffffffu, im, o);
    if (lane >= o) {
      ic += a;
      im += b;
    }
  }
  if (lane == 31) {
    s_c[warp] = ic;
    s_m[warp] = im;
  }
  __syncthreads();
  if (warp == 0) {
    int a = s_c[lane], b = s_m[lane];
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      int x = __shfl_up_sync(0xffffffffu, a, o), y = __shfl_up_sync(0xffffffffu, b, o);
      if (lane >= o) {
        a += x;
        b += y;
      }
    }
    s_c[lane] = a;  // inclusive over warps
    s_m[lane] = b;
  }
  __syncthreads();
  const int base_c = warp ? s_c[warp - 1] : 0, base_m = warp ? s_m[warp - 1] : 0;
  const int ex_c = base_c + ic - c, ex_m = base_m + im - mt_packed;
  // singles: the totals (the last thread's inclusive sums), this expert's pair tiles and singles before it
  __shared__ int s_tot;
  if (tid == 1023) s_tot = ex_m + mt_packed;
  __syncthreads();
  constexpr int kLow = (1 << kSingleShift) - 1;
  const int n_pairs = singles ? s_tot & kLow : s_tot, n_singles = singles ? s_tot >> kSingleShift : 0;
  const int ex_p = singles ? ex_m & kLow : ex_m, ex_s = singles ? ex_m >> kSingleShift : 0;
  // this expert's first row: the pair tiles and pair-of-singles rows before it (after the last single, an odd
  // count's last row too)
  const int row0 = ex_p + (ex_s == n_singles ? ex_s + 1 : ex_s) / 2;
  if (tid < E) {
    offsets[tid] = ex_c;
    // (expert, first row, expert's row end, index of the tile inside its expert: the wgmma raster finds the
    // expert's first tile and tile count from it)
    for (int i = 0; i < mt - se; ++i) tiles[row0 + i] = make_int4(tid, ex_c + i * BM, ex_c + c, i);
    if (se) {
      tiles[singles_at + ex_s] = make_int4(tid, ex_c + (mt - 1) * BM, ex_c + c, mt - 1);
      if (ex_s % 2 == 1 || ex_s == n_singles - 1) tiles[row0 + mt - 1] = make_int4(-1, ex_s / 2, 0, 0);
    }
  }
  if (tid == 1023) {
    num_tiles[0] = n_pairs + (n_singles + 1) / 2;
    num_tiles[3] = n_singles;
    // the dynamic schedulers' tile counters of GEMM1 and GEMM2 (wg::Params::tile_counter): zeroed here, in the
    // call's own stream order, >= 1 launch before the GEMMs, whose atomics come after their PDL wait (so no host
    // work between calls, and a captured graph resets them on every replay)
    num_tiles[1] = 0;
    num_tiles[2] = 0;
  }
  return ex_c;
}

__global__ void __launch_bounds__(1024) scan_kernel(const int* counts, int E, int BM, int* offsets, int4* tiles,
                                                    int* num_tiles, int absorb, int singles_at) {
  pdl_wait();
  pdl_trigger();
  scan_block(threadIdx.x < E ? counts[threadIdx.x] : 0, E, BM, offsets, tiles, num_tiles, absorb, singles_at);
}

// Small-T routing in one block (T <= kFusedRouteMaxT): routing (or pre-routed ids), per-expert counts in shared
// memory, the scan + tile list, and the row maps: one launch instead of memset + route + scan + scatter. At T = 16
// these are launch-latency bound (a few microseconds of work each), so the separate kernels cost ~4 launch gaps
// (bench/results/h200-moe.md, "routing share"). A rank inside an expert comes from a shared-memory atomic, so the
// row order inside an expert can differ between runs, as on the general path; the output cannot (rows are
// independent in both GEMMs and the combine sums each token's k rows in a fixed order).
struct SmallRouteParams {
  const int* ids_in;    // pre-routed (when p.logits is null)
  const float* w_in;
  int n, BM, route_warps;
  int* offsets;
  int4* tiles;
  int* num_tiles;
  int* row_token;
  float* row_w;
  int* assign_row;
};

constexpr int kFusedRouteScoreBytes = 96 * 1024;  // per-warp score buffers (2 E floats each)
constexpr int kFusedRouteMaxN = 2048;             // assignments (T * k) held in shared memory

__global__ void __launch_bounds__(1024) route_small_kernel(RouteParams p, SmallRouteParams q) {
  extern __shared__ float sm_small[];
  pdl_trigger();  // first kernel of the call (launched without PDL): the next may be scheduled, it waits for us
  int* s_cnt = reinterpret_cast<int*>(sm_small);  // [E] counts, later the offsets
  int* s_rank = s_cnt + p.E;                      // [n]
  int* s_id = s_rank + q.n;                       // [n]
  float* s_sc = reinterpret_cast<float*>(s_id + q.n);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  for (int e = tid; e < p.E; e += blockDim.x) s_cnt[e] = 0;
  __syncthreads();
  if (p.logits) {
    if (warp < q.route_warps) {
      float* sel = s_sc + warp * 2 * p.E;
      for (int t = warp; t < p.T; t += q.route_warps) {
        int my_id;
        float w;
        route_token(p, t, sel, sel + p.E, lane, my_id, w);
        if (lane < p.k) {
          const int a = t * p.k + lane;
          const bool resident = store_choice(p, a, my_id, w);
          s_id[a] = my_id;
          s_rank[a] = resident ? atomicAdd(&s_cnt[my_id], 1) : -1;
        }
        __syncwarp();
      }
    }
  } else {
    for (int a = tid; a < q.n; a += blockDim.x) {
      const int e = q.ids_in[a];
      p.ids[a] = e;
      p.w[a] = q.w_in[a];
      const int slot = (e >= 0 && e < p.E) ? (p.expert_slot ? p.expert_slot[e] : e) : -1;
      s_id[a] = e;
      s_rank[a] = slot >= 0 ? atomicAdd(&s_cnt[e], 1) : -1;
    }
  }
  __syncthreads();
  const int c = tid < p.E ? s_cnt[tid] : 0;
  __syncthreads();  // every count read before s_cnt is reused for the offsets
  const int off = scan_block(c, p.E, q.BM, q.offsets, q.tiles, q.num_tiles);
  if (tid < p.E) s_cnt[tid] = off;
  __syncthreads();
  for (int a = tid; a < q.n; a += blockDim.x) {
    const int r = s_rank[a];
    if (r < 0) {
      q.assign_row[a] = -1;
      continue;
    }
    const int row = s_cnt[s_id[a]] + r;
    q.row_token[row] = a / p.k;
    q.row_w[row] = p.w[a];
    q.assign_row[a] = row;
  }
}

__global__ void scatter_kernel(const int* ids, const float* w, const int* rank, const int* offsets, int n, int k,
                               int* row_token, float* row_w, int* assign_row) {
  pdl_wait();
  pdl_trigger();
  int a = blockIdx.x * blockDim.x + threadIdx.x;
  if (a >= n) return;
  int r = rank[a];
  if (r < 0) {
    assign_row[a] = -1;
    return;
  }
  int row = offsets[ids[a]] + r;
  row_token[row] = a / k;
  row_w[row] = w[a];
  assign_row[a] = row;
}

// out[t] = sum_j y[assign_row[t, j]] (+ y2[...], the second K half of a split GEMM2, when y2 is not null) in a
// fixed order (deterministic), fp32 accumulation, 16-byte accesses.
__global__ void combine_kernel(const bf16* __restrict__ y, const bf16* __restrict__ y2,
                               const int* __restrict__ assign_row, int k, int D, bf16* __restrict__ out) {
  pdl_wait();
  pdl_trigger();
  const int t = blockIdx.x;
  __shared__ int rows[kMaxTopK];
  if (threadIdx.x < k) rows[threadIdx.x] = assign_row[(size_t)t * k + threadIdx.x];
  __syncthreads();
  for (int c = threadIdx.x * 8; c < D; c += blockDim.x * 8) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int j = 0; j < k; ++j) {
      int r = rows[j];
      if (r < 0) continue;
      uint4 v = *reinterpret_cast<const uint4*>(y + (size_t)r * D + c);
      const bf16* pv = reinterpret_cast<const bf16*>(&v);
#pragma unroll
      for (int q = 0; q < 8; ++q) acc[q] += __bfloat162float(pv[q]);
      if (y2) {
        v = *reinterpret_cast<const uint4*>(y2 + (size_t)r * D + c);
#pragma unroll
        for (int q = 0; q < 8; ++q) acc[q] += __bfloat162float(pv[q]);
      }
    }
    uint4 o;
    bf16* po = reinterpret_cast<bf16*>(&o);
#pragma unroll
    for (int q = 0; q < 8; ++q) po[q] = __float2bfloat16(acc[q]);
    *reinterpret_cast<uint4*>(out + (size_t)t * D + c) = o;
  }
}

__global__ void convert_kernel(const float* __restrict__ in, bf16* __restrict__ out, size_t n8) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  for (; i < n8; i += (size_t)gridDim.x * blockDim.x) {
    float4 a = reinterpret_cast<const float4*>(in)[2 * i], b = reinterpret_cast<const float4*>(in)[2 * i + 1];
    uint4 o;
    __nv_bfloat162* po = reinterpret_cast<__nv_bfloat162*>(&o);
    po[0] = __floats2bfloat162_rn(a.x, a.y);
    po[1] = __floats2bfloat162_rn(a.z, a.w);
    po[2] = __floats2bfloat162_rn(b.x, b.y);
    po[3] = __floats2bfloat162_rn(b.z, b.w);
    reinterpret_cast<uint4*>(out)[i] = o;
  }
}

// ------------------------------------------------------------------------------------------------------------------
// Grouped GEMM (mma.sync m16n8k16 bf16, cp.async pipeline)
// ------------------------------------------------------------------------------------------------------------------
struct GemmParams {
  const bf16* A;           // GEMM1: x [T, K] gathered through row_token; GEMM2: h [rows, K]
  const int* row_token;    // permuted row -> token (GEMM1 gather; GEMM2 atomic epilogue)
  const bf16* W;           // expert weights, slot-major
  long long w_slot_stride; // elements per slot
  const int* expert_slot;
  const int4* tiles;       // (expert, row0, row_end, -)
  const int* num_tiles;
  int N;                   // output columns (GEMM1: d_ff, GEMM2: d_model)
  int K;
  int up_offset;           // GEMM1: row offset of up_proj inside w13 (= d_ff)
  int n_tiles;
  int split_k;
  int k_per_split;         // multiple of BK
  bf16* C;                 // store epilogue: [rows, N]
  const float* row_w;      // GEMM2: routing weight per permuted row
  float* out_acc;          // GEMM2 atomic epilogue: [T, N] fp32
};

__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, bool valid) {
  int sz = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(sz));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

__device__ __forceinline__ void mma16816(float* c, const unsigned* a, const unsigned* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Shared-memory tile layout: rows of BK bf16, 16-byte chunks XOR-swizzled so ldmatrix rows hit distinct banks.
template <int BK>
__device__ __forceinline__ int swz(int r, int ch) {
  constexpr int C = BK / 8;
  constexpr int SH = C == 8 ? 0 : 1;
  return r * BK + ((ch ^ ((r >> SH) & (C - 1))) << 3);
}

constexpr int kGroupM = 8;  // raster: up to 8 token tiles share each weight tile while it is in L2 (wg::tile_coords)

template <int BM, int NB, int BK, int WARPS_M, int WARPS_N, int STAGES>
struct GemmCfg {
  static constexpr int kThreads = WARPS_M * WARPS_N * 32;
  static constexpr int kWM = BM / WARPS_M, kWN = NB / WARPS_N;
  static constexpr int kMI = kWM / 16, kNI = kWN / 8;
  static constexpr int kStageElems = (BM + NB) * BK;
  static constexpr int kSmem = STAGES * kStageElems * 2 + BM * 8;
  static_assert(kNI % 4 == 0, "gate/up halves need pairs of n8 blocks");
};

// MODE 0: GEMM1 (gather A by token, [gate|up] tile, SwiGLU epilogue, store h)
// MODE 1: GEMM2 store (y = w_row * acc, bf16)
// MODE 2: GEMM2 atomic (out_acc[token] += w_row * acc, fp32; used with split-K)
template <int BM, int NB, int BK, int WARPS_M, int WARPS_N, int STAGES, int MODE>
__global__ void __launch_bounds__(WARPS_M* WARPS_N * 32)
    grouped_gemm_kernel(const GemmParams p) {
  using Cfg = GemmCfg<BM, NB, BK, WARPS_M, WARPS_N, STAGES>;
  constexpr int THREADS = Cfg::kThreads, MI = Cfg::kMI, NI = Cfg::kNI, WM = Cfg::kWM, WN = Cfg::kWN;
  constexpr int CH = BK / 8;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* smem = reinterpret_cast<bf16*>(smem_raw);
  const bf16** arow = reinterpret_cast<const bf16**>(smem_raw + STAGES * Cfg::kStageElems * 2);

  // ---- tile coordinates (grouped raster over the device-side tile list) ----
  const int num_m = *p.num_tiles;
  int pid = blockIdx.x;
  const int ks = pid % p.split_k;
  pid /= p.split_k;
  const int width = kGroupM * p.n_tiles;
  const int group = pid / width;
  const int first_m = group * kGroupM;
  if (first_m >= num_m) return;
  const int gsize = min(num_m - first_m, kGroupM);
  const int in_group = pid % width;
  if (in_group >= gsize * p.n_tiles) return;
  const int m_idx = first_m + in_group % gsize;
  const int n_idx = in_group / gsize;
  const int4 tile = p.tiles[m_idx];
  const int expert = tile.x, row0 = tile.y, row_end = tile.z;
  const int slot = p.expert_slot ? p.expert_slot[expert] : expert;
  const bf16* Wslot = p.W + (long long)slot * p.w_slot_stride;
  const int K = p.K;
  const int kbeg = ks * p.k_per_split;
  const int kend = min(K, kbeg + p.k_per_split);
  if (kbeg >= kend) return;
  const int ktiles = (kend - kbeg + BK - 1) / BK;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WARPS_N, wn = warp % WARPS_N;

  for (int r = tid; r < BM; r += THREADS) {
    const int prow = row0 + r;
    const bf16* src = nullptr;
    if (prow < row_end) src = MODE == 0 ? p.A + (size_t)p.row_token[prow] * K : p.A + (size_t)prow * K;
    arow[r] = src;
  }
  __syncthreads();

  // weight row for tile row r (nullptr when past N)
  auto brow_ptr = [&](int r) -> const bf16* {
    if (MODE == 0) {
      const int half = NB / 2;
      const int n = n_idx * half + (r < half ? r : r - half);
      if (n >= p.N) return nullptr;
      return Wslot + (size_t)(r < half ? n : p.up_offset + n) * K;
    } else {
      const int n = n_idx * NB + r;
      if (n >= p.N) return nullptr;
      return Wslot + (size_t)n * K;
    }
  };

  auto load_stage = [&](int stage, int kt) {
    bf16* As = smem + stage * Cfg::kStageElems;
    bf16* Bs = As + BM * BK;
    const int k0 = kbeg + kt * BK;
    for (int c = tid; c < BM * CH; c += THREADS) {
      const int r = c / CH, ch = c % CH;
      const int k = k0 + ch * 8;
      const bf16* src = arow[r];
      const bool ok = src != nullptr && k < kend;
      cp_async16(smem_u32(As + swz<BK>(r, ch)), ok ? src + k : p.A, ok);
    }
    for (int c = tid; c < NB * CH; c += THREADS) {
      const int r = c / CH, ch = c % CH;
      const int k = k0 + ch * 8;
      const bf16* src = brow_ptr(r);
      const bool ok = src != nullptr && k < kend;
      cp_async16(smem_u32(Bs + swz<BK>(r, ch)), ok ? src + k : p.W, ok);
    }
  };

  float acc[MI][NI][4];
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.f;

  // smem row of the first B row of n8 block j for this warp
  auto brow_base = [&](int j) -> int {
    if (MODE == 0) {
      return j < NI / 2 ? wn * (WN / 2) + j * 8 : NB / 2 + wn * (WN / 2) + (j - NI / 2) * 8;
    }
    return wn * WN + j * 8;
  };

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < ktiles) load_stage(s, s);
    cp_async_commit();
  }

  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    {
      const int nk = kt + STAGES - 1;
      if (nk < ktiles) load_stage(nk % STAGES, nk);
      cp_async_commit();
    }
    const bf16* As = smem + (kt % STAGES) * Cfg::kStageElems;
    const bf16* Bs = As + BM * BK;
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      unsigned af[MI][4], bfr[NI][2];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        const int r = wm * WM + mi * 16 + (lane & 15);
        const int ch = kk * 2 + (lane >> 4);
        ldmatrix_x4(smem_u32(As + swz<BK>(r, ch)), af[mi][0], af[mi][1], af[mi][2], af[mi][3]);
      }
#pragma unroll
      for (int jp = 0; jp < NI / 2; ++jp) {
        const int r = brow_base(2 * jp) + (lane & 7) + ((lane >> 4) << 3);
        const int ch = kk * 2 + ((lane >> 3) & 1);
        ldmatrix_x4(smem_u32(Bs + swz<BK>(r, ch)), bfr[2 * jp][0], bfr[2 * jp][1], bfr[2 * jp + 1][0],
                    bfr[2 * jp + 1][1]);
      }
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int j = 0; j < NI; ++j) mma16816(acc[mi][j], af[mi], bfr[j]);
    }
  }
  cp_async_wait<0>();

  // ---- epilogue ----
#pragma unroll
  for (int mi = 0; mi < MI; ++mi) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int rl = wm * WM + mi * 16 + (lane >> 2) + hh * 8;
      const int prow = row0 + rl;
      if (prow >= row_end) continue;
      if (MODE == 0) {
#pragma unroll
        for (int j = 0; j < NI / 2; ++j) {
          const int col = n_idx * (NB / 2) + wn * (WN / 2) + j * 8 + 2 * (lane & 3);
          if (col >= p.N) continue;
          const float g0 = acc[mi][j][hh * 2], g1 = acc[mi][j][hh * 2 + 1];
          const float u0 = acc[mi][j + NI / 2][hh * 2], u1 = acc[mi][j + NI / 2][hh * 2 + 1];
          const float h0 = sy_silu_mul(g0, u0), h1 = sy_silu_mul(g1, u1);
          *reinterpret_cast<__nv_bfloat162*>(p.C + (size_t)prow * p.N + col) = __floats2bfloat162_rn(h0, h1);
        }
      } else {
        const float wr = p.row_w[prow];
        const int tok = MODE == 2 ? p.row_token[prow] : 0;
#pragma unroll
        for (int j = 0; j < NI; ++j) {
          const int col = n_idx * NB + wn * WN + j * 8 + 2 * (lane & 3);
          if (col >= p.N) continue;
          const float v0 = acc[mi][j][hh * 2] * wr, v1 = acc[mi][j][hh * 2 + 1] * wr;
          if (MODE == 1) {
            *reinterpret_cast<__nv_bfloat162*>(p.C + (size_t)prow * p.N + col) = __floats2bfloat162_rn(v0, v1);
          } else {
            float* dst = p.out_acc + (size_t)tok * p.N + col;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            atomicAdd(reinterpret_cast<float2*>(dst), make_float2(v0, v1));
#else
            atomicAdd(dst, v0);
            atomicAdd(dst + 1, v1);
#endif
          }
        }
      }
    }
  }
}

}  // namespace
#include "sy_moe_wgmma.cuh"
namespace {

// x_perm[row] = x[token of row] (wgmma path only: TMA loads tiles of contiguous rows, it cannot gather). A capped
// grid strides over the tokens; each 16-byte piece of a token's row is read once and stored to its k rows. (One
// block per assignment read each row k times, with one load in flight per thread between its stores: 311 us at
// DeepSeek-V3 T=8192, 940 MB written, bench/results/logs/h200-profile-dsv3-clusterm-bias-1229.log.)
__global__ void permute_kernel(const bf16* __restrict__ x, const int* __restrict__ assign_row, int T, int k, int D,
                               bf16* __restrict__ xp) {
  pdl_wait();
  pdl_trigger();
  for (int t = blockIdx.x; t < T; t += gridDim.x) {
    const uint4* src = reinterpret_cast<const uint4*>(x + (size_t)t * D);
    const int* rows = assign_row + (size_t)t * k;
    for (int c = threadIdx.x; c < D / 8; c += blockDim.x) {
      const uint4 v = src[c];
      for (int j = 0; j < k; ++j) {
        const int row = rows[j];
        if (row >= 0) reinterpret_cast<uint4*>(xp + (size_t)row * D)[c] = v;
      }
    }
  }
}

// Per expert e, copies of the four activation maps (GEMM1's tile and tail boxes over x_perm, GEMM2's over h) whose
// row bound is e's last row, for the persistent GEMMs (wg::Params::emaps): rows past the expert come back as zeros
// from the TMA unit (out-of-bounds fill), not as the next expert's rows. Those padding rows' products are never
// stored; what zeros save is energy, and the compute-side cells run at the power limit (kZeroPadUnderClusterM).
__device__ __forceinline__ void expert_map(const CUtensorMap* tmpl, CUtensorMap* dst, int rows) {
  const int4* src = reinterpret_cast<const int4*>(tmpl);
  int4* d = reinterpret_cast<int4*>(dst);
#pragma unroll
  for (int i = 0; i < (int)(sizeof(CUtensorMap) / 16); ++i) d[i] = src[i];
  asm volatile("tensormap.replace.tile.global_dim.global.b1024.b32 [%0], 1, %1;\n" ::"l"(
                   reinterpret_cast<uint64_t>(dst)),
               "r"(rows)
               : "memory");
}
__global__ void expert_maps_kernel(const __grid_constant__ CUtensorMap a1, const __grid_constant__ CUtensorMap t1,
                                   const __grid_constant__ CUtensorMap a2, const __grid_constant__ CUtensorMap t2,
                                   const int* offsets, const int* counts, int E, CUtensorMap* maps) {
  pdl_wait();
  pdl_trigger();
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= E) return;
  const int rows = max(offsets[e] + counts[e], 1);  // an expert with no rows has no tiles; the bound must be >= 1
  expert_map(&a1, maps + 4 * e, rows);
  expert_map(&t1, maps + 4 * e + 1, rows);
  expert_map(&a2, maps + 4 * e + 2, rows);
  expert_map(&t2, maps + 4 * e + 3, rows);
  asm volatile("fence.proxy.tensormap::generic.release.gpu;\n" ::: "memory");
}

// ------------------------------------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------------------------------------
struct Layout {
  size_t ids, w, rank, counts, offsets, num_tiles, tiles, row_token, row_w, assign_row, x_perm, h, y, out_acc, emaps,
      total;
};

size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

int max_m_tiles(int T, int k, int E, int BM) {
  long long n = (long long)T * k;
  return (int)((n + BM - 1) / BM + (n < E ? n : E));
}

Layout make_layout(const sy_moe_config& c, int T) {
  Layout L{};
  const size_t n = (size_t)T * c.top_k;
  size_t o = 0;
  auto take = [&](size_t bytes) {
    size_t at = o;
    o = align_up(o + bytes, 256);
    return at;
  };
  L.ids = take(n * 4);
  L.w = take(n * 4);
  L.rank = take(n * 4);
  L.counts = take((size_t)c.num_experts * 4);
  L.offsets = take((size_t)c.num_experts * 4);
  L.num_tiles = take(16);
  // (+ E: the singles of the paired kClusterM list, past its rows, scan_block)
  L.tiles = take(((size_t)max_m_tiles(T, c.top_k, c.num_experts, 16) + c.num_experts) * 16);
  L.row_token = take(n * 4);
  L.row_w = take(n * 4);
  L.assign_row = take(n * 4);
  L.x_perm = take(n * (size_t)c.d_model * 2);
  L.h = take(n * (size_t)c.d_ff * 2);
  L.y = take(n * (size_t)c.d_model * 2);
  L.out_acc = take((size_t)T * c.d_model * 4);
  L.emaps = take((size_t)c.num_experts * 4 * sizeof(CUtensorMap));  // expert_maps_kernel (256-byte aligned)
  L.total = o;
  return L;
}

int validate(const sy_moe_config* c) {
  if (!c) return fail(SY_MOE_ERR_INVALID, "config: null");
  if (c->num_experts < 1 || c->num_experts > kMaxExperts)
    return fail(SY_MOE_ERR_INVALID, "config.num_experts: must be 1..1024, got " + std::to_string(c->num_experts));
  if (c->top_k < 1 || c->top_k > kMaxTopK || c->top_k > c->num_experts)
    return fail(SY_MOE_ERR_INVALID, "config.top_k: must be 1..min(16, num_experts), got " + std::to_string(c->top_k));
  if (c->d_model < 8 || c->d_model % 8)
    return fail(SY_MOE_ERR_INVALID, "config.d_model: must be a positive multiple of 8, got " + std::to_string(c->d_model));
  if (c->d_ff < 8 || c->d_ff % 8)
    return fail(SY_MOE_ERR_INVALID, "config.d_ff: must be a positive multiple of 8, got " + std::to_string(c->d_ff));
  if (c->score != SY_MOE_SCORE_SOFTMAX && c->score != SY_MOE_SCORE_SIGMOID)
    return fail(SY_MOE_ERR_INVALID, "config.score: must be 0 (softmax) or 1 (sigmoid)");
  if (c->n_group > 1) {
    if (c->n_group > 32 || c->num_experts % c->n_group)
      return fail(SY_MOE_ERR_INVALID, "config.n_group: must be <= 32 and divide num_experts");
    if (c->topk_group < 1 || c->topk_group > c->n_group)
      return fail(SY_MOE_ERR_INVALID, "config.topk_group: must be 1..n_group");
    if (c->topk_group * (c->num_experts / c->n_group) < c->top_k)
      return fail(SY_MOE_ERR_INVALID, "config.topk_group: kept groups hold fewer experts than top_k");
  }
  return SY_MOE_OK;
}

template <int BM, int NB, int BK, int WM_, int WN_, int ST, int MODE>
int launch_gemm(const GemmParams& p, int grid, cudaStream_t s) {
  using Cfg = GemmCfg<BM, NB, BK, WM_, WN_, ST>;
  auto kern = grouped_gemm_kernel<BM, NB, BK, WM_, WN_, ST, MODE>;
  static std::atomic<uint64_t> attr_set{0};  // once per instantiation and device, before any graph capture
  SY_CUDA(smem_attr_once(kern, Cfg::kSmem, attr_set));
  if (grid > 0) kern<<<grid, Cfg::kThreads, Cfg::kSmem, s>>>(p);
  SY_CUDA(cudaGetLastError());
  return SY_MOE_OK;
}

// Tile configurations, by token tile BM. NB = weight rows per CTA (GEMM1: half gate, half up).
//   BM 16/32/64: decode and middle; 4 warps, BK 64, deep pipeline (>= 64 KB of weights in flight per SM).
//   BM 128: prefill; 8 warps, 128 x 256 CTA tile.
template <int MODE>
int run_gemm(int BM, const GemmParams& p0, int max_m, cudaStream_t s) {
  GemmParams p = p0;
  auto grid_for = [&](int nb) {
    const int out_cols_per_tile = MODE == 0 ? nb / 2 : nb;
    p.n_tiles = (p.N + out_cols_per_tile - 1) / out_cols_per_tile;
    const int groups = (max_m + kGroupM - 1) / kGroupM;
    return groups * kGroupM * p.n_tiles * p.split_k;
  };
  switch (BM) {
    case 16: return launch_gemm<16, 128, 64, 1, 4, 5, MODE>(p, grid_for(128), s);
    case 32: return launch_gemm<32, 128, 64, 1, 4, 4, MODE>(p, grid_for(128), s);
    case 64: return launch_gemm<64, 128, 64, 2, 2, 4, MODE>(p, grid_for(128), s);
    default: return launch_gemm<128, 256, 32, 2, 4, 4, MODE>(p, grid_for(256), s);
  }
}

// Kernel launch, with the programmatic-serialization attribute when pdl (see the PDL rules above: only kernels
// that follow them may be launched that way).
// cluster > 1: thread-block clusters of that many CTAs along x (the grid must be a multiple).
template <typename... KArgs, typename... Args>
int launch_kc(bool pdl, int cluster, void (*kern)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
              const Args&... args) {
  cudaLaunchConfig_t lc{};
  lc.gridDim = grid;
  lc.blockDim = block;
  lc.dynamicSmemBytes = smem;
  lc.stream = s;
  cudaLaunchAttribute at[2];
  int n = 0;
  if (pdl) {
    at[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  if (cluster > 1) {
    at[n].id = cudaLaunchAttributeClusterDimension;
    at[n].val.clusterDim.x = (unsigned)cluster;
    at[n].val.clusterDim.y = 1;
    at[n].val.clusterDim.z = 1;
    ++n;
  }
  lc.attrs = at;
  lc.numAttrs = n;
  SY_CUDA(cudaLaunchKernelEx(&lc, kern, args...));
  return SY_MOE_OK;
}
template <typename... KArgs, typename... Args>
int launch_k(bool pdl, void (*kern)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
             const Args&... args) {
  return launch_kc(pdl, 1, kern, grid, block, smem, s, args...);
}

// PDL only after a kernel of fewer CTAs than this. The one stall of the default configuration seen on H200 came
// from a PDL launch after a 65536-CTA grid (the permute at T=8192, top-8, before its grid was capped); the
// benchmarked default paths stay below this, so the guard only turns PDL off (plain stream order, always
// correct) for very large calls.
constexpr long long kPdlMaxPrimaryGrid = 65535;

// Integer knob from the environment, read on every call (benchmarks flip them between calls; ~100 ns).
int env_int(const char* name, int dflt) {
  const char* v = getenv(name);
  return v && *v ? atoi(v) : dflt;
}

int g_num_sms = 0;

PFN_cuTensorMapEncodeTiled_v12000 g_encode = nullptr;

int get_encoder() {
  if (g_encode) return SY_MOE_OK;
  cudaDriverEntryPointQueryResult q;
  void* fn = nullptr;
  SY_CUDA(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q));
  if (q != cudaDriverEntryPointSuccess || !fn) return fail(SY_MOE_ERR_CUDA, "cuTensorMapEncodeTiled: not available");
  g_encode = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  return SY_MOE_OK;
}

// 2-D bf16 row-major [rows, cols] map with a (box_rows x box_cols) box: 64 columns with the 128-byte swizzle, 32
// (the TL kernels' staged epilogue, wg::Cfg::kEpiCols) with the 64-byte one.
int make_map(CUtensorMap* m, const void* ptr, uint64_t rows, uint64_t cols, uint32_t box_rows,
             uint32_t box_cols = 64) {
  cuuint64_t dims[2] = {cols, rows};
  cuuint64_t strides[1] = {cols * 2};
  cuuint32_t box[2] = {box_cols, box_rows};
  cuuint32_t es[2] = {1, 1};
  CUresult r = g_encode(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(ptr), dims, strides, box, es,
                        CU_TENSOR_MAP_INTERLEAVE_NONE,
                        box_cols == 64 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B,
                        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) return fail(SY_MOE_ERR_CUDA, "cuTensorMapEncodeTiled failed: " + std::to_string((int)r));
  return SY_MOE_OK;
}

// CL: the 2-CTA cluster variants of the persistent kernel (wg::wgmma_gemm_kernel). wg::kClusterN: `a` has 64-row
// boxes and the weight tile count must be even; wg::kClusterM: max_m counts 256-row tiles (the tile list's).
// TL: absorbed tails (wg::Params::absorb; `t` the 32-row map of the activations, unused with GA).
template <int WGS, int MODE, bool PERSIST, bool EPI, bool TALL = false, int CL = 0, bool GA = false, bool TL = false>
int launch_wgmma(const CUtensorMap& a, const CUtensorMap& b, const CUtensorMap& c, const CUtensorMap& c2,
                 const CUtensorMap& t, wg::Params p, int max_m, bool pdl, cudaStream_t s, long long* grid_out) {
  static_assert(!(PERSIST && TALL), "the 256-row tile runs one tile per CTA");
  static_assert(!CL || PERSIST, "clusters only in the persistent kernel");
  static_assert(!TL || PERSIST, "absorbed tails only in the persistent kernel");
  using C = wg::Cfg<WGS, TALL, TL>;
  if (!TL) p.absorb = 0;
  // PERSIST: wgmma_gemm_kernel looping over tiles; else wgmma_tile_kernel, one tile per CTA.
  auto kern = PERSIST ? wg::wgmma_gemm_kernel<WGS, MODE, true, CL, GA, TL>
                      : wg::wgmma_tile_kernel<WGS, MODE, EPI, TALL>;
  const int smem = PERSIST ? C::kSmemPersist : C::kSmem;
  static std::atomic<uint64_t> attr_set{0};
  SY_CUDA(smem_attr_once(kern, smem, attr_set));
  const int out_cols = MODE == 0 ? C::kBN / 2 : C::kBN;
  p.n_tiles = (p.N + out_cols - 1) / out_cols;
  // upper bound; the real tile count is read on the device
  long long grid = (long long)max_m * p.n_tiles;  // tile_coords maps a dense index: no holes
  const int splits = MODE == 1 ? std::max(1, p.k_splits) : 1;
  // persistent: the K halves are work items of its loop (wg::work_item); one tile per CTA: blockIdx.y
  if (PERSIST) grid = std::min<long long>(grid * splits, g_num_sms);
  // CL: one cluster of 2 CTAs per item; kClusterN: items are pairs of weight tiles
  if (CL == wg::kClusterN) {
    if (p.n_tiles % 2) return fail(SY_MOE_ERR_INVALID, "cluster GEMM: odd weight tile count");
    grid = 2 * std::min<long long>((long long)max_m * (p.n_tiles / 2) * splits, g_num_sms / 2);
  } else if (CL == wg::kClusterM) {
    grid = 2 * std::min<long long>((long long)max_m * p.n_tiles * splits, g_num_sms / 2);
  }
  const int grid_y = PERSIST ? 1 : splits;
  *grid_out = grid * grid_y;
  if (grid > 0)
    return launch_kc(pdl, CL ? 2 : 1, kern, dim3((unsigned)grid, (unsigned)grid_y), dim3(C::kThreads), smem, s, a, b, c,
                     c2, t, p);
  return SY_MOE_OK;
}

template <int MODE>
int run_wgmma(int BM, bool persist, bool epi, const CUtensorMap& a, const CUtensorMap& b, const CUtensorMap& c,
              const CUtensorMap& c2, const CUtensorMap& t, const wg::Params& p, int max_m, bool pdl, cudaStream_t s,
              long long* grid, int cluster = 0, bool gather = false, bool tl = false) {
  // tl: the TL kernels (absorbed tails when p.absorb > 0); the caller asks for them only where this picks one
  // (128-row persistent)
  if constexpr (MODE == 0) {
    if (gather && persist && cluster == 0 && BM == 128)
      return tl ? launch_wgmma<2, 0, true, false, false, 0, true, true>(a, b, c, c2, t, p, max_m, pdl, s, grid)
                : launch_wgmma<2, 0, true, false, false, 0, true>(a, b, c, c2, t, p, max_m, pdl, s, grid);
    if (gather && persist && cluster == wg::kClusterM && BM == 128)
      return tl ? launch_wgmma<2, 0, true, false, false, wg::kClusterM, true, true>(a, b, c, c2, t, p, max_m, pdl, s,
                                                                                     grid)
                : launch_wgmma<2, 0, true, false, false, wg::kClusterM, true>(a, b, c, c2, t, p, max_m, pdl, s, grid);
  }
  if (BM == 256) return launch_wgmma<2, MODE, false, false, true>(a, b, c, c2, t, p, max_m, pdl, s, grid);
  if (persist && cluster == wg::kClusterN && BM == 128)
    return tl ? launch_wgmma<2, MODE, true, false, false, wg::kClusterN, false, true>(a, b, c, c2, t, p, max_m, pdl,
                                                                                      s, grid)
              : launch_wgmma<2, MODE, true, false, false, wg::kClusterN>(a, b, c, c2, t, p, max_m, pdl, s, grid);
  if (persist && cluster == wg::kClusterM && BM == 128)
    return tl ? launch_wgmma<2, MODE, true, false, false, wg::kClusterM, false, true>(a, b, c, c2, t, p, max_m, pdl,
                                                                                      s, grid)
              : launch_wgmma<2, MODE, true, false, false, wg::kClusterM>(a, b, c, c2, t, p, max_m, pdl, s, grid);
  if (persist && BM == 128 && tl)
    return launch_wgmma<2, MODE, true, false, false, 0, false, true>(a, b, c, c2, t, p, max_m, pdl, s, grid);
  if (persist)
    return BM == 64 ? launch_wgmma<1, MODE, true, false>(a, b, c, c2, t, p, max_m, pdl, s, grid)
                    : launch_wgmma<2, MODE, true, false>(a, b, c, c2, t, p, max_m, pdl, s, grid);
  if (BM == 64)
    return epi ? launch_wgmma<1, MODE, false, true>(a, b, c, c2, t, p, max_m, pdl, s, grid)
               : launch_wgmma<1, MODE, false, false>(a, b, c, c2, t, p, max_m, pdl, s, grid);
  return epi ? launch_wgmma<2, MODE, false, true>(a, b, c, c2, t, p, max_m, pdl, s, grid)
             : launch_wgmma<2, MODE, false, false>(a, b, c, c2, t, p, max_m, pdl, s, grid);
}

}  // namespace

extern "C" {

const char* sy_moe_last_error(void) { return g_last_error.c_str(); }

void sy_moe_debug_skip_gemm(int32_t skip) { g_skip_gemm = skip; }
int32_t sy_moe_debug_last_combine(void) { return g_last_combine; }

void sy_moe_set_tuning(int32_t block_m, int32_t split_k, int32_t use_wgmma) {
  g_tune_bm = block_m;
  g_tune_split = split_k;
  g_tune_wgmma = use_wgmma;
}

int sy_moe_workspace_size(const sy_moe_config* cfg, int32_t max_tokens, size_t* bytes) {
  int rc = validate(cfg);
  if (rc) return rc;
  if (max_tokens < 0) return fail(SY_MOE_ERR_INVALID, "max_tokens: must be >= 0");
  if (!bytes) return fail(SY_MOE_ERR_INVALID, "bytes: null");
  *bytes = make_layout(*cfg, max_tokens).total;
  return SY_MOE_OK;
}

static RouteParams make_route_params(const sy_moe_config* cfg, int T, const float* logits, const float* bias,
                                     int* ids, float* w, int* rank, int* counts, const int* slot, int* ids_out,
                                     float* w_out) {
  RouteParams rp{};
  rp.logits = logits;
  rp.bias = bias;
  rp.expert_slot = slot;
  rp.T = T;
  rp.E = cfg->num_experts;
  rp.k = cfg->top_k;
  rp.score = cfg->score;
  rp.renormalize = cfg->renormalize;
  rp.n_group = cfg->n_group > 1 ? cfg->n_group : 0;
  rp.topk_group = cfg->topk_group;
  rp.scale = cfg->routed_scale == 0.f ? 1.f : cfg->routed_scale;
  rp.ids = ids;
  rp.w = w;
  rp.rank = rank;
  rp.counts = counts;
  rp.ids_out = ids_out;
  rp.w_out = w_out;
  return rp;
}

// zero_out (may be null): T rows of D bf16 to zero before GEMM2 (the fused combine's output); route_reg_kernel zeroes
// them beside its routing unless SY_MOE_ZERO_IN_ROUTE=0 (benchmark knob), otherwise a memset does.
static int launch_route(const sy_moe_config* cfg, int T, const float* logits, const float* bias, int* ids, float* w,
                        int* rank, int* counts, const int* slot, int* ids_out, float* w_out, cudaStream_t s,
                        void* zero_out = nullptr, int D = 0) {
  RouteParams rp = make_route_params(cfg, T, logits, bias, ids, w, rank, counts, slot, ids_out, w_out);
  // route_reg_kernel where the experts fit in registers (NPL per lane); SY_MOE_ROUTE_REG=0 (tests, benchmarks)
  // keeps route_kernel
  const int E = cfg->num_experts;
  const int npl = E <= 32 ? 1 : E <= 64 ? 2 : E <= 128 ? 4 : 8;
  if (env_int("SY_MOE_ROUTE_REG", 1) != 0 && route_reg_ok(cfg, npl)) {
    if (zero_out && env_int("SY_MOE_ZERO_IN_ROUTE", 1) != 0) {
      rp.zero_out = static_cast<int4*>(zero_out);
      rp.zero_units = D / 8;
    } else if (zero_out) {
      SY_CUDA(cudaMemsetAsync(zero_out, 0, (size_t)T * D * 2, s));
    }
    if (!g_num_sms) {
      int dev = 0;
      SY_CUDA(cudaGetDevice(&dev));
      SY_CUDA(cudaDeviceGetAttribute(&g_num_sms, cudaDevAttrMultiProcessorCount, dev));
    }
    // tokens per warp: up to kRouteRegMaxTpw while the grid still fills every SM (more tokens per block, fewer
    // global atomics)
    const int tpw_env = env_int("SY_MOE_ROUTE_TPW", 0);  // benchmark knob: tokens per warp
    const int tpw = tpw_env > 0 ? std::min(kRouteRegMaxTpw, tpw_env)
                                : std::max(1, std::min(kRouteRegMaxTpw, T / (kRouteRegWarps * g_num_sms)));
    const int grid = (T + kRouteRegWarps * tpw - 1) / (kRouteRegWarps * tpw);
    const size_t rsmem = rank ? (size_t)2 * E * 4 : 0;
    switch (npl) {
      case 1: route_reg_kernel<1><<<grid, kRouteRegWarps * 32, rsmem, s>>>(rp, tpw); break;
      case 2: route_reg_kernel<2><<<grid, kRouteRegWarps * 32, rsmem, s>>>(rp, tpw); break;
      case 4: route_reg_kernel<4><<<grid, kRouteRegWarps * 32, rsmem, s>>>(rp, tpw); break;
      default: route_reg_kernel<8><<<grid, kRouteRegWarps * 32, rsmem, s>>>(rp, tpw); break;
    }
    SY_CUDA(cudaGetLastError());
    return SY_MOE_OK;
  }
  if (zero_out) SY_CUDA(cudaMemsetAsync(zero_out, 0, (size_t)T * D * 2, s));
  const size_t smem = (size_t)kRouteWarps * 2 * cfg->num_experts * 4;
  static std::atomic<uint64_t> attr{0};
  SY_CUDA(smem_attr_once(route_kernel, kRouteWarps * 2 * kMaxExperts * 4, attr));
  route_kernel<<<(T + kRouteWarps - 1) / kRouteWarps, kRouteWarps * 32, smem, s>>>(rp);
  SY_CUDA(cudaGetLastError());
  return SY_MOE_OK;
}

int sy_moe_route(const sy_moe_config* cfg, int32_t T, const float* logits, const float* bias, int32_t* ids,
                 float* weights, void* stream) {
  int rc = validate(cfg);
  if (rc) return rc;
  if (T < 0) return fail(SY_MOE_ERR_INVALID, "T: must be >= 0");
  if (T == 0) return SY_MOE_OK;
  if (!logits || !ids || !weights) return fail(SY_MOE_ERR_INVALID, "logits/ids/weights: null");
  return launch_route(cfg, T, logits, bias, ids, weights, nullptr, nullptr, nullptr, nullptr, nullptr,
                      (cudaStream_t)stream);
}

// fp32 accumulator -> bf16 output (n elements, a multiple of 8): the split-K mma.sync GEMM2.
static int launch_convert(const float* acc, bf16* out, size_t n, cudaStream_t s) {
  const size_t n8 = n / 8;
  const int blocks = (int)std::min<size_t>((n8 + 255) / 256, (size_t)4 * g_num_sms);
  convert_kernel<<<blocks, 256, 0, s>>>(acc, out, n8);
  SY_CUDA(cudaGetLastError());
  return SY_MOE_OK;
}

int sy_moe_forward(const sy_moe_config* cfg, int32_t T, const sy_moe_args* a, void* workspace,
                   size_t workspace_bytes, void* stream) {
  int rc = validate(cfg);
  if (rc) return rc;
  if (T < 0) return fail(SY_MOE_ERR_INVALID, "T: must be >= 0, got " + std::to_string(T));
  if (!a) return fail(SY_MOE_ERR_INVALID, "args: null");
  if (T == 0) return SY_MOE_OK;
  if (!a->x) return fail(SY_MOE_ERR_INVALID, "args.x: null");
  if (!a->out) return fail(SY_MOE_ERR_INVALID, "args.out: null");
  if (!a->w13 || !a->w2) return fail(SY_MOE_ERR_INVALID, "args.w13/args.w2: null");
  if (!a->logits && (!a->topk_ids || !a->topk_weights))
    return fail(SY_MOE_ERR_INVALID, "args.logits: null and no topk_ids/topk_weights given");
  if (!workspace) return fail(SY_MOE_ERR_INVALID, "workspace: null");
  const Layout L = make_layout(*cfg, T);
  if (workspace_bytes < L.total)
    return fail(SY_MOE_ERR_WORKSPACE, "workspace_bytes: need " + std::to_string(L.total) + " for T=" +
                                          std::to_string(T) + ", got " + std::to_string(workspace_bytes));
  if (((uintptr_t)a->x | (uintptr_t)a->out | (uintptr_t)a->w13 | (uintptr_t)a->w2) & 15)
    return fail(SY_MOE_ERR_INVALID, "args.x/out/w13/w2: must be 16-byte aligned");
  cudaStream_t s = (cudaStream_t)stream;
  if (!g_num_sms) {
    int dev = 0;
    SY_CUDA(cudaGetDevice(&dev));
    SY_CUDA(cudaDeviceGetAttribute(&g_num_sms, cudaDevAttrMultiProcessorCount, dev));
  }
  char* ws = static_cast<char*>(workspace);
  int* ids = (int*)(ws + L.ids);
  float* w = (float*)(ws + L.w);
  int* rank = (int*)(ws + L.rank);
  int* counts = (int*)(ws + L.counts);
  int* offsets = (int*)(ws + L.offsets);
  int* num_tiles = (int*)(ws + L.num_tiles);
  int4* tiles = (int4*)(ws + L.tiles);
  int* row_token = (int*)(ws + L.row_token);
  float* row_w = (float*)(ws + L.row_w);
  int* assign_row = (int*)(ws + L.assign_row);
  bf16* h = (bf16*)(ws + L.h);
  bf16* y = (bf16*)(ws + L.y);
  float* out_acc = (float*)(ws + L.out_acc);

  const int E = cfg->num_experts, k = cfg->top_k, D = cfg->d_model, F = cfg->d_ff;
  const int n = T * k;

  // Token tile: large enough that most experts fit in one tile (weights read once) in the memory-bound regime.
  const int active = n < E ? n : E;
  const int avg = (n + active - 1) / active;
  // Engine: mma.sync with small token tiles streams weights once when experts see few tokens; the wgmma/TMA
  // kernel (64 or 128 token rows per CTA) wins once the tile is mostly filled (measured: bench/results/).
  // Measured on H200 (bench/results/h200-moe.run5-final-raw.json, tune_ms): the wgmma/TMA kernel beats the mma.sync kernels at
  // every shape, decode included (TMA streams weights at ~3.9 TB/s vs ~3.1), so it is the default; 64-row tiles
  // while experts average <= kWide128MinAvg (24) tokens, 128-row tiles (two consumer warpgroups) above. mma.sync
  // (with split-K) stays as the portable fallback and for tuning. The limit was 36 until DeepSeek-V3 T=1024
  // (average 32, but routing with bias leaves ~200 experts active and many above 64 tokens, i.e. two 64-row
  // tiles) measured 4.73-4.84 ms with 128-row tiles vs 5.40-5.46 with 64 (bench/results/h200-moe-iter.json);
  // Mixtral T=128 (average 32, all within 64) loses ~1% (0.7014 vs 0.6943 ms, h200-moe.tune-incomplete.json).
  int BM = avg > env_int("SY_MOE_WIDE_AVG", kWide128MinAvg) ? 128 : 64;  // SY_MOE_WIDE_AVG: benchmark knob
  bool use_wg = true;
  if (g_tune_bm) BM = g_tune_bm;
  // Engine override: tuning call, else env SY_MOE_ENGINE (1: wgmma, 2: wgmma one tile per CTA, 3: wgmma
  // persistent, -1: mma.sync); an operator's escape hatch without a rebuild.
  const int env_engine = env_int("SY_MOE_ENGINE", 0);
  const int engine = g_tune_wgmma ? g_tune_wgmma : env_engine;
  if (engine) use_wg = engine > 0;
  // 256-row tiles (wgmma only) while experts average >= SY_MOE_TALL_AVG tokens (default kTallMinAvg = 0: never).
  // Built on the idea that 128-row tiles lose weight reuse between an expert's 2-4 token tiles; measured on H200 it
  // is slower at every compute-side cell (bench/results/h200-moe-iter.json, 256 vs 128 rows one tile per CTA:
  // Mixtral T=1024 1.654 vs 1.585 ms, T=8192 9.86 vs 9.48, Qwen3 T=8192 1.613 vs 1.485, DeepSeek-V3 T=8192 14.23
  // vs 13.10), so the grouped raster already shares the weight tiles through L2 and the two m64n128 MMAs per
  // k-step cost more than one m64n256 (more shared-memory operand reads per flop). Kept as a knob and tested.
  const int tall_avg = env_int("SY_MOE_TALL_AVG", kTallMinAvg);
  if (!g_tune_bm && BM == 128 && tall_avg > 0 && avg >= tall_avg) BM = 256;
  if (BM != 16 && BM != 32 && BM != 64 && BM != 128 && BM != 256)
    return fail(SY_MOE_ERR_INVALID, "tuning.block_m: 16/32/64/128/256");
  if (use_wg && BM < 64) BM = 64;
  if (!use_wg && BM == 256) BM = 128;  // the mma.sync kernels stop at 128 rows
  // Persistent wgmma grid (one CTA per SM looping over tiles) or one tile per CTA; tuning/SY_MOE_ENGINE force
  // either (3 / 2). 64-row tiles (decode): persistent, measured 1-5% faster (h200-moe.run5-final-raw.json tune_ms).
  // 128-row tiles: persistent while experts average <= kPersistMaxAvg tokens, i.e. each expert's weights are read
  // by one token tile: there is no weight reuse in L2 to lose, the GEMM streams weights, and the persistent
  // kernel's producer loading the next tile during the epilogue wins. With several token tiles per expert, one tile
  // per CTA wins: the hardware starts CTAs in tile order, so the token tiles sharing a weight tile (grouped raster)
  // run together and read it once from HBM, while the persistent CTAs drift apart over their tile sequences.
  // Measured on H200 (bench/results/h200-moe.tune-incomplete.json, tune_ms): Qwen3 T=1024 (64 tokens/expert)
  // 0.385 ms persistent vs 0.398 one tile; Mixtral T=1024 / 8192 (256 / 2048 tokens/expert) 1.80 vs 1.69 and
  // 10.24 vs 9.61.
  // SY_MOE_PERSIST_AVG overrides the threshold (0: never for 128-row tiles).
  const int persist_avg = env_int("SY_MOE_PERSIST_AVG", kPersistMaxAvg);
  // SY_MOE_DYN (default kDynamicSchedule): persistent kernels claim their next work item from a device counter
  // (wg::wgmma_gemm_kernel), which keeps the items in flight consecutive in the raster order; with it the 128-row
  // persistent kernel is chosen at every size (see kDynamicSchedule). SY_MOE_DYN=0: static round robin and the
  // choice below, i.e. the behaviour before.
  const bool dyn = env_int("SY_MOE_DYN", kDynamicSchedule) != 0;
  bool persist = engine == 2 ? false : engine == 3 ? true : (BM == 64 || avg <= persist_avg || dyn);
  // Default choice only: the 128-row persistent kernel up to kPersist128MaxTokenTiles token tiles (the sizes the
  // committed benchmark measured it at; Qwen3 T=1024 is 192). Forced (SY_MOE_ENGINE=3, SY_MOE_PERSIST_MASK) it runs
  // at any size: the stall it once had beyond (Qwen3 T=8192 forced, bench/results/logs/h200-engine-variants.log) was
  // the skipped-tile stage release fixed in wg::skip_tile / kConsumerWarps, not a size limit.
  const int token_tiles_bound = (n + BM - 1) / BM + active;
  if (persist && engine != 3 && !dyn && BM == 128 && token_tiles_bound > kPersist128MaxTokenTiles) persist = false;
  // SY_MOE_PERSIST_MASK (benchmark knob, unset = the choice above): which GEMMs run persistent, bit 0 GEMM1, bit 1
  // GEMM2 (2: only the short-K GEMM2, whose per-tile fill and epilogue the persistent kernel overlaps).
  bool persist1 = persist, persist2 = persist;
  const int persist_mask = env_int("SY_MOE_PERSIST_MASK", -1);
  if (persist_mask >= 0) {
    persist1 = (persist_mask & 1) != 0;
    persist2 = (persist_mask & 2) != 0;
  }
  if (BM == 256) persist1 = persist2 = false;  // one tile per CTA only (no persistent 256-row kernel)
  // SY_MOE_CLUSTER (default: kClusterM where experts average >= kClusterMMinAvg rows and GEMM1 does not gather or
  // d_ff >= kClusterMPermuteMinDff, else kClusterDefault): 2-CTA clusters for the dynamically scheduled 128-row
  // persistent GEMMs (wg::wgmma_gemm_kernel CL). 1 (wg::kClusterN): pairs of weight tiles share their activation
  // tile, per GEMM where its weight tile count is even. 2 (wg::kClusterM): pairs of 128-row token tiles of one expert
  // share their weight tile; both GEMMs, over a tile list of 256-row tiles (list_bm).
  const int w1_tiles = (F + 127) / 128;  // GEMM1's weight tiles: 128 gate + 128 up rows each
  const int cl_default = (w1_tiles >= kGatherMaxWeightTiles || F >= kClusterMPermuteMinDff) && avg >= kClusterMMinAvg
                             ? wg::kClusterM
                             : kClusterDefault;
  const int cl_mode = use_wg && dyn && BM == 128 ? env_int("SY_MOE_CLUSTER", cl_default) : 0;
  const bool clm = cl_mode == wg::kClusterM && persist1 && persist2;
  const int list_bm = clm ? 256 : BM;  // rows per tile of the tile list (scan, route_small)
  const int max_m = max_m_tiles(T, k, E, list_bm);
  // Absorbed tails (kAbsorbDefault): both GEMMs must run a TL kernel (the tile list is shared); not after the
  // one-block routing (T <= 64: no expert reaches 129 rows there).
  static_assert(kAbsorbDefault <= wg::kTailRows, "the tail region holds wg::kTailRows rows");
  const int absorb_env = env_int("SY_MOE_ABSORB", F >= kAbsorbMinDff ? kAbsorbDefault : 0);

  // Split-K for GEMM2 when too few CTAs would run (few active experts x d_model/128 tiles).
  int split = 1;
  if (BM <= 64) {
    const long long ctas = (long long)active * ((D + 127) / 128);
    const int target = 2 * g_num_sms;
    if (ctas < target) split = (int)((target + ctas - 1) / ctas);
    const int max_split = F / 512 > 0 ? F / 512 : 1;
    if (split > max_split) split = max_split;
    if (split > 8) split = 8;
  }
  if (g_tune_split) split = g_tune_split;
  if (split < 1) split = 1;

  // Knobs for benchmarks (read per call): SY_MOE_PDL=0 turns programmatic dependent launch off,
  // SY_MOE_FUSED_ROUTE_T sets the largest T routed by the one-block kernel (0: never), SY_MOE_EPI=0/1 picks the
  // 128-row GEMM epilogue (direct stores / smem + bulk copy).
  const bool pdl = env_int("SY_MOE_PDL", 1) != 0;
  const int fused_t = env_int("SY_MOE_FUSED_ROUTE_T", kFusedRouteMaxT);
  const bool epi = env_int("SY_MOE_EPI", kSmemEpilogueDefault) != 0;
  const int route_warps = std::min(32, kFusedRouteScoreBytes / (8 * E));
  const bool fused_route = T <= fused_t && n <= kFusedRouteMaxN && route_warps >= 1;
  const bool tl_ok = use_wg && dyn && BM == 128 && persist1 && persist2 && !fused_route;
  // SY_MOE_PAIR_SINGLES (default kPairSinglesDefault): under kClusterM, an expert's last 256-row tile with <= 128
  // rows runs beside another expert's on one cluster, each CTA with its own weight tile (wg::resolve_tile), instead
  // of leaving rank 1 idle. Not after the one-block routing (its tile list has no singles section).
  const bool pair_singles = clm && !fused_route && env_int("SY_MOE_PAIR_SINGLES", kPairSinglesDefault) != 0;
  // SY_MOE_COMBINE (default: kCombineFuseMaxDff): the combine fused into the persistent wgmma GEMM2's staged epilogue.
  // Not where out overlaps x: out is zeroed before routing, while GEMM1 still has to read x.
  const int epi_tma = env_int("SY_MOE_EPI_TMA", kStagedEpilogueDefault) != 0;
  const char *xb = (const char*)a->x, *ob = (const char*)a->out;
  const size_t xo_bytes = (size_t)T * D * 2;
  const bool out_overlaps_x = ob < xb + xo_bytes && xb < ob + xo_bytes;
  const int combine_env = env_int("SY_MOE_COMBINE", BM == 128 && F < kCombineFuseMaxDff ? 1 : 0);
  const int fused_combine =
      use_wg && persist2 && epi_tma && !out_overlaps_x && combine_env == 1 ? 1 : 0;
  g_last_combine = fused_combine;
  // out is zeroed for the fused combine's adds by the routing kernel (launch_route) or by a memset before it
  if (fused_combine && (fused_route || !a->logits)) SY_CUDA(cudaMemsetAsync(a->out, 0, (size_t)T * D * 2, s));
  const int absorb = tl_ok ? std::max(0, std::min(absorb_env, wg::kTailRows)) : 0;
  // benchmark knobs of the TL kernels: SY_MOE_TL_ONLY=1 runs them without absorbing (what their 32-column
  // epilogue costs by itself), SY_MOE_TL_EPI64=1 gives them one 64-column staging buffer per warp instead of two
  // 32-column ones
  const bool tl = absorb > 0 || (tl_ok && env_int("SY_MOE_TL_ONLY", 0) != 0);
  // (on by default under kClusterM: see kClusterMMinAvg)
  const int tl_epi64 = tl && env_int("SY_MOE_TL_EPI64", clm ? 1 : 0) != 0;
  if (fused_route) {
    // One block: routing + counts + scan + tile list + row maps (no memset, three launches fewer).
    RouteParams rp = make_route_params(cfg, T, a->logits, a->bias, ids, w, nullptr, nullptr, a->expert_slot,
                                       a->topk_ids_out, a->topk_weights_out);
    SmallRouteParams q{a->topk_ids, a->topk_weights, n, list_bm, route_warps, offsets, tiles, num_tiles,
                       row_token, row_w, assign_row};
    const size_t smem = (size_t)E * 4 + (size_t)n * 8 + (a->logits ? (size_t)route_warps * 8 * E : 0);
    static std::atomic<uint64_t> attr{0};
    SY_CUDA(smem_attr_once(route_small_kernel, kMaxExperts * 4 + kFusedRouteMaxN * 8 + kFusedRouteScoreBytes, attr));
    if ((rc = launch_k(false, route_small_kernel, dim3(1), dim3(1024), smem, s, rp, q))) return rc;
  } else {
    SY_CUDA(cudaMemsetAsync(counts, 0, (size_t)E * 4, s));
    if (a->logits) {
      rc = launch_route(cfg, T, a->logits, a->bias, ids, w, rank, counts, a->expert_slot, a->topk_ids_out,
                        a->topk_weights_out, s, fused_combine ? a->out : nullptr, D);
      if (rc) return rc;
    } else {
      preroute_kernel<<<(n + 255) / 256, 256, 0, s>>>(a->topk_ids, a->topk_weights, a->expert_slot, n, E, ids, w,
                                                      rank, counts);
      SY_CUDA(cudaGetLastError());
    }
    const long long route_grid = a->logits ? (T + kRouteWarps - 1) / kRouteWarps : (n + 255) / 256;
    if ((rc = launch_k(pdl && route_grid <= kPdlMaxPrimaryGrid, scan_kernel, dim3(1), dim3(1024), 0, s,
                       (const int*)counts, E, list_bm, offsets, tiles, num_tiles, absorb, pair_singles ? max_m : -1)))
      return rc;
    if ((rc = launch_k(pdl, scatter_kernel, dim3((n + 255) / 256), dim3(256), 0, s, (const int*)ids,
                       (const float*)w, (const int*)rank, (const int*)offsets, n, k, row_token, row_w, assign_row)))
      return rc;
  }

  if (use_wg) {
    rc = get_encoder();
    if (rc) return rc;
    const int slots = a->num_slots > 0 ? a->num_slots : E;
    bf16* xp = (bf16*)(ws + L.x_perm);
    // cluster kind per GEMM (cl_mode); with kClusterN the A maps load 64-row halves
    const bool cln = cl_mode == wg::kClusterN;
    // SY_MOE_GATHER (unset: kGatherDefault while GEMM1 has < kGatherMaxWeightTiles weight tiles, outside kClusterM;
    // 0 never, 1 always): the 128-row persistent GEMM1 gathers its activations by the row -> token map
    // (wg::producer_gather) and the permute kernel does not run; it takes precedence over kClusterN for GEMM1 (GEMM2
    // keeps it), and with SY_MOE_GATHER=1 runs inside the kClusterM pairs (wg::producer_gather CL: each CTA gathers
    // its own 128 rows; slower than the permute kernel there, kClusterMPermuteMinDff). Not after the
    // one-block routing: GEMM1 reads the tile count at its start, before its PDL wait, which needs that count
    // written >= 2 launches back.
    const int gather_env = env_int("SY_MOE_GATHER", -1);  // unset: see above
    const bool gather_pref =
        gather_env >= 0 ? gather_env != 0 : kGatherDefault != 0 && w1_tiles < kGatherMaxWeightTiles && !clm;
    const bool gather = gather_pref && persist1 && BM == 128 && !fused_route;
    const int cl1 = clm ? wg::kClusterM : cln && !gather && persist1 && w1_tiles % 2 == 0 ? wg::kClusterN : 0;
    const int cl2 = clm ? wg::kClusterM : cln && persist2 && ((D + 255) / 256) % 2 == 0 ? wg::kClusterN : 0;
    CUtensorMap mA1, mB1, mA2, mB2, mC1, mC2, mC2b, mT1, mT2;
    const uint32_t box_b = BM == 256 ? 64 : 128;  // weight rows per TMA load: half the CTA's kBN (Cfg)
    if ((rc = make_map(&mA1, xp, n, D, cl1 == wg::kClusterN ? 64 : BM)) ||
        (rc = make_map(&mB1, a->w13, (uint64_t)slots * 2 * F, D, box_b)) ||
        (rc = make_map(&mA2, h, n, F, cl2 == wg::kClusterN ? 64 : BM)) ||
        (rc = make_map(&mB2, a->w2, (uint64_t)slots * D, F, box_b)) ||
        // outputs, for the persistent kernels' staged epilogue (16-row boxes: one consumer warp's rows; 32 columns
        // for the TL kernels, which run wherever absorb > 0)
        (rc = make_map(&mC1, h, n, F, 16, tl && !tl_epi64 ? 32 : 64)) ||
        (rc = make_map(&mC2, y, n, D, 16, tl && !tl_epi64 ? 32 : 64)) ||
        (rc = make_map(&mC2b, xp, n, D, 16, tl && !tl_epi64 ? 32 : 64)))
      return rc;
    // the TL kernels' tail rows: 32-row boxes of the activations (wg::kTailRows); other kernels ignore the map
    if (tl && ((rc = make_map(&mT1, xp, n, D, wg::kTailRows)) || (rc = make_map(&mT2, h, n, F, wg::kTailRows))))
      return rc;
    if (!tl) mT1 = mA1, mT2 = mA2;
    // SY_MOE_ZPAD (default kZeroPadUnderClusterM under kClusterM, else 0): the persistent GEMMs load their TMA
    // activation tiles through per-expert maps (expert_maps_kernel), so that the rows past an expert's end are zeros
    // (not after the one-block routing: it keeps the counts in shared memory)
    const bool zpad = env_int("SY_MOE_ZPAD", clm ? kZeroPadUnderClusterM : 0) != 0 && (persist1 || persist2) &&
                      !fused_route;
    CUtensorMap* emaps = zpad ? (CUtensorMap*)(ws + L.emaps) : nullptr;
    if (zpad && (rc = launch_k(pdl, expert_maps_kernel, dim3((E + 127) / 128), dim3(128), 0, s, mA1, mT1, mA2, mT2,
                               (const int*)offsets, (const int*)counts, E, emaps)))
      return rc;
    if (!gather &&
        (rc = launch_k(pdl, permute_kernel, dim3(std::min(T, 16 * g_num_sms)), dim3(D / 8 < 256 ? D / 8 : 256), 0, s,
                       (const bf16*)a->x, (const int*)assign_row, T, k, D, xp)))
      return rc;
    // SY_MOE_GROUP_M: token tiles per raster group of the wgmma GEMMs (benchmark knob; default kGroupM; negative:
    // groups not aligned to experts, the raster before, see wg::tile_coords)
    int group_m = env_int("SY_MOE_GROUP_M", kGroupM);
    if (group_m == 0) group_m = kGroupM;
    // GEMM2 split-K in two for the one-tile 128-row kernel when its grid is a few waves of long tiles: the last
    // wave of a 2.4-wave grid (Mixtral T=1024: ~20 token tiles x 16 column tiles = 320 CTAs of 224 k-tiles on 132
    // SMs) leaves most SMs idle; halves of K double the CTAs and halve their length (5 waves of 112 k-tiles instead
    // of 3 of 224). The second half's partials go to x_perm, dead once GEMM1 is done (GEMM2 starts after GEMM1 has
    // completed: PDL wait), and the combine adds them. Chosen from the expected grid (about half the active experts
    // have a last, partial token tile), only where it shortens the schedule by >= 10% and each half keeps >= 32
    // k-tiles (per-CTA fill and epilogue stay small). SY_MOE_WG_SPLIT=0 turns it off.
    int wg_split = 1;
    const int kt2 = (F + wg::kBK - 1) / wg::kBK;
    // The persistent kernel splits too when dynamically scheduled (the halves are consecutive work items, and the
    // same wave arithmetic holds for items claimed one by one); the statically scheduled one never did.
    if ((!persist2 || dyn) && BM == 128 && kt2 >= 64 && env_int("SY_MOE_WG_SPLIT", 1) != 0) {
      const long long ctas = ((long long)(n + BM - 1) / BM + active / 2) * ((D + 255) / 256);
      auto span = [&](long long sp) { return (ctas * sp + g_num_sms - 1) / g_num_sms * ((kt2 + sp - 1) / sp); };
      if (span(2) * 10 <= span(1) * 9) wg_split = 2;
    }
    // dynamic scheduling: GEMM1 and GEMM2 count their claimed items in num_tiles[1] / [2] (zeroed by scan_block)
    int* ctr1 = dyn && persist1 ? num_tiles + 1 : nullptr;
    int* ctr2 = dyn && persist2 ? num_tiles + 2 : nullptr;
    // (epi_tma, above: SY_MOE_EPI_TMA, default kStagedEpilogueDefault: the persistent kernels' staged epilogue,
    // wg::store_warp_staged)
    wg::Params p1{tiles,   num_tiles, a->expert_slot, 0,         F,    D, F, 2 * F, h, nullptr, group_m, 1, nullptr,
                  epi_tma, (const bf16*)a->x, row_token, n, ctr1};
    wg::Params p2{tiles,   num_tiles, a->expert_slot, 0,       D,    F, 0, D, y, row_w, group_m, wg_split, xp,
                  epi_tma, nullptr,   nullptr,   0, ctr2};
    // SY_MOE_TRIM (default kTrimDefault): the persistent GEMMs load no activation rows past a tile's last token
    // (wg::Params::trim_a)
    p1.trim_a = p2.trim_a = env_int("SY_MOE_TRIM", kTrimDefault) != 0;
    p1.absorb = p2.absorb = absorb;
    p1.epi64 = p2.epi64 = tl_epi64;
    p1.pair_singles = p2.pair_singles = pair_singles;
    p1.singles_at = p2.singles_at = max_m;  // scan_block's singles_at
    p1.emaps = persist1 ? emaps : nullptr;
    p2.emaps = persist2 ? emaps : nullptr;
    p1.emap_at = 0;
    p2.emap_at = 2;
    if (fused_combine) {
      p2.row_token = row_token;
      p2.combine_out = (bf16*)a->out;
    }
    long long g1 = 0, g2 = 0;  // GEMM grids: PDL for the next kernel only below kPdlMaxPrimaryGrid
    if (!g_skip_gemm) {
      rc = run_wgmma<0>(BM, persist1, epi, mA1, mB1, mC1, mC1, mT1, p1, max_m, pdl, s, &g1, cl1, gather, tl);
      if (rc) return rc;
      rc = run_wgmma<1>(BM, persist2, epi, mA2, mB2, mC2, mC2b, mT2, p2, max_m, pdl && g1 <= kPdlMaxPrimaryGrid, s,
                        &g2, cl2, false, tl);
      if (rc) return rc;
    }
    if (fused_combine) return SY_MOE_OK;
    int threads = D / 8 < 256 ? ((D / 8 + 31) / 32) * 32 : 256;
    return launch_k(pdl && g2 <= kPdlMaxPrimaryGrid, combine_kernel, dim3(T), dim3(threads), 0, s, (const bf16*)y,
                    (const bf16*)(wg_split > 1 ? xp : nullptr), (const int*)assign_row, k, D, (bf16*)a->out);
  }

  GemmParams g1{};
  g1.A = (const bf16*)a->x;
  g1.row_token = row_token;
  g1.W = (const bf16*)a->w13;
  g1.w_slot_stride = (long long)2 * F * D;
  g1.expert_slot = a->expert_slot;
  g1.tiles = tiles;
  g1.num_tiles = num_tiles;
  g1.N = F;
  g1.K = D;
  g1.up_offset = F;
  g1.split_k = 1;
  g1.k_per_split = D;
  g1.C = h;
  rc = g_skip_gemm ? 0 : run_gemm<0>(BM, g1, max_m, s);
  if (rc) return rc;

  GemmParams g2{};
  g2.A = h;
  g2.row_token = row_token;
  g2.W = (const bf16*)a->w2;
  g2.w_slot_stride = (long long)D * F;
  g2.expert_slot = a->expert_slot;
  g2.tiles = tiles;
  g2.num_tiles = num_tiles;
  g2.N = D;
  g2.K = F;
  g2.split_k = split;
  {
    const int bk = 64;
    int per = (F + split - 1) / split;
    g2.k_per_split = (per + bk - 1) / bk * bk;
  }
  g2.C = y;
  g2.row_w = row_w;
  g2.out_acc = out_acc;
  if (split > 1) {
    SY_CUDA(cudaMemsetAsync(out_acc, 0, (size_t)T * D * 4, s));
    rc = g_skip_gemm ? 0 : run_gemm<2>(BM, g2, max_m, s);
    if (rc) return rc;
    if ((rc = launch_convert(out_acc, (bf16*)a->out, (size_t)T * D, s))) return rc;
  } else {
    rc = g_skip_gemm ? 0 : run_gemm<1>(BM, g2, max_m, s);
    if (rc) return rc;
    int threads = D / 8 < 256 ? ((D / 8 + 31) / 32) * 32 : 256;
    combine_kernel<<<T, threads, 0, s>>>(y, nullptr, assign_row, k, D, (bf16*)a->out);
    SY_CUDA(cudaGetLastError());
  }
  return SY_MOE_OK;
}

}  // extern "C"
