// Hopper (sm_90a) grouped GEMM for the compute-bound and middle regimes: TMA loads into 128B-swizzled shared
// memory completing on mbarriers, one producer warpgroup, one or two consumer warpgroups issuing wgmma
// (fp32 accumulators in registers), 4-stage ring. Two CTA tile shapes (Cfg):
//   wide (default): (64 * consumer warpgroups) token rows x 256 weight rows, m64n256k16 per warpgroup;
//   TALL: 256 token rows x 128 weight rows, each consumer warpgroup 128 rows as two m64n128k16 halves.
// Both hold 128 fp32 accumulators per consumer thread and 48 KB per stage. For GEMM1 the weight rows are half gate
// rows + the matching up rows, so SwiGLU is done in registers (column c pairs with c + kBN/2 in the same thread).
// Included by sy_moe.cu only.
#pragma once
#include <cuda.h>

#include "swiglu.cuh"
#include "wgmma_gen.cuh"

namespace wg {

constexpr int kBK = 64;      // one 128-byte swizzle atom of bf16
constexpr int kStages = 4;
// Absorbed tails (TL, Params::absorb): up to kTailRows rows past an expert's last full 128-row tile ride along with
// it, in a stage region of their own, instead of costing a tile of their own.
constexpr int kTailRows = 32;
constexpr int kTileQ = 4;  // slots of the persistent kernel's tile queue (below, before wgmma_gemm_kernel)

struct Params {
  const int4* tiles;
  const int* num_tiles;
  const int* expert_slot;
  int n_tiles;
  int N;              // output columns (GEMM1: d_ff; GEMM2: d_model)
  int K;
  int up_offset;      // GEMM1: d_ff
  int rows_per_slot;  // GEMM1: 2*d_ff; GEMM2: d_model
  bf16* C;            // [rows, N]
  const float* row_w; // GEMM2: routing weight per permuted row
  int group_m;        // raster: token tiles per group (tile_coords); kGroupM unless SY_MOE_GROUP_M says otherwise
  int k_splits;       // GEMM2: 1, or 2 = K in two halves, partial products to C and C2 (one-tile kernel: blockIdx.y;
                      // persistent kernel: the two halves of a tile are consecutive work items)
  bf16* C2;           // second half's output (same shape as C), summed with C by the combine
  int epi_tma;        // persistent kernel: 1 = staged epilogue (store_warp_staged, tmC / tmC2), 0 = direct stores
  const bf16* gather_x;   // GEMM1 gathering its activations (producer_gather): the hidden states [T, K] and the
  const int* row_token;   // token of each permuted row; n_rows permuted rows
  int n_rows;
  int* tile_counter;  // persistent kernel: null = static round robin; else dynamic scheduling (wgmma_gemm_kernel),
                      // a device counter that the scan of the same call zeroes (scan_block)
  int trim_a;         // persistent kernel: load no activation rows past the tile's expert's last row (gather:
                      // zero-filled; kClusterN: a 64-row half with no tokens is not loaded); 0: load them
  int epi64;          // TL kernels' staged epilogue: 1 = one 64-column 2 KB buffer per warp (C maps with 16 x 64
                      // boxes), 0 = two 32-column 1 KB buffers (Cfg::kEpiCols; 16 x 32 boxes)
  int absorb;         // 0, or up to kTailRows: the tile list was built with expert_tiles(c, 128, absorb), so an
                      // expert's last tile may hold 128 + r rows (tail_rows), r <= absorb (the TL kernels only)
  int pair_singles;   // kClusterM: two singles (expert_single) run side by side on a cluster (resolve_tile): the
                      // list's row (-1, q, 0, 0) stands for singles 2q and 2q + 1 of tiles[singles_at + i],
                      // num_tiles[3] of them (scan_block)
  int singles_at;
  bf16* combine_out;  // GEMM2 with the combine fused (reduce_warp_staged): each row is added into this [T, N] output
                      // (the layer's out) at its token (row_token); null: rows are stored to C / C2 and the combine
                      // kernel sums them
  const CUtensorMap* emaps;  // persistent kernel, TMA activations: per expert e, copies of the activation maps whose
                             // row bound is e's last row (expert_maps_kernel): emaps[4 e + emap_at] (the tile's box),
                             // [+ 1] (the tail's box). Rows past the expert are then zero-filled by the TMA unit
                             // instead of loaded from the next expert; null: tmA / tmT
  int emap_at;               // 0: GEMM1's maps, 2: GEMM2's
};

// Rows past the first 128 of a tile of the list built with `absorb` (expert_tiles): 1..absorb for an expert's last
// tile that absorbed its tail, else 0. Only that tile can have 128 < rows <= 128 + absorb: a tile before it has
// 128 + (the last tile's rows) >= 128 + absorb + 1 (the last one absorbed, or holds more than absorb rows) rows.
__device__ __forceinline__ int tail_rows(int row0, int row_end, int absorb) {
  const int r = row_end - row0 - 128;
  return r > 0 && r <= absorb ? r : 0;
}

__device__ __forceinline__ uint64_t desc_sw128(uint32_t saddr) {
  return (uint64_t)((saddr & 0x3FFFF) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Spin on the barrier's phase `parity`. CLUSTER_ACQUIRE: with cluster-scope acquire, for a phase completed by a
// remote arrive that published a remote store (mbar_wait_cluster).
template <bool CLUSTER_ACQUIRE = false>
__device__ __forceinline__ void mbar_wait(uint32_t bar, int parity) {
  uint32_t ok = 0;
  do {
    if constexpr (CLUSTER_ACQUIRE)
      asm volatile(
          "{\n.reg .pred p;\nmbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, "
          "0, p;\n}\n"
          : "=r"(ok)
          : "r"(bar), "r"(parity)
          : "memory");
    else
      asm volatile(
          "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
          : "=r"(ok)
          : "r"(bar), "r"(parity)
          : "memory");
  } while (!ok);
}
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1)
      : "memory");
}
// A tensor map written in global memory by an earlier kernel (expert_maps_kernel), before the TMA unit reads it.
__device__ __forceinline__ void tensormap_acquire(const CUtensorMap* map) {
  asm volatile("fence.proxy.tensormap::generic.acquire.gpu [%0], 128;\n" ::"l"(reinterpret_cast<uint64_t>(map))
               : "memory");
}
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void named_bar_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Output row segment smem -> global through the bulk-copy engine (no tensor map: rows past the expert's last
// token must not be written, and a 1-D copy per row stops exactly there).
__device__ __forceinline__ void bulk_store(void* gdst, uint32_t ssrc, uint32_t bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(gdst), "r"(ssrc), "r"(bytes)
               : "memory");
}
// 16-byte cp.async, zero-filled when !valid (src must still be a valid address)
__device__ __forceinline__ void cp_async16_zfill(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
}
// The mbarrier's arrival for this thread's earlier cp.async copies, once they have landed; not counted at issue
// (.noinc), so the barrier's expected count includes the copying threads.
__device__ __forceinline__ void cp_async_arrive_noinc(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void stmatrix_x4(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0), "r"(r1),
               "r"(r2), "r"(r3)
               : "memory");
}
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* map, uint32_t src, int c0, int c1) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(src), "r"(c0), "r"(c1)
               : "memory");
}
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }
__device__ __forceinline__ void bulk_commit_wait_read() {
  asm volatile("cp.async.bulk.commit_group;\ncp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
__device__ __forceinline__ void st_shared_b32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ void st_shared_v4(uint32_t addr, int4 v) {
  asm volatile("st.shared.v4.s32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}
__device__ __forceinline__ int4 ld_shared_v4(uint32_t addr) {
  int4 v;
  asm volatile("ld.shared.v4.s32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr)
               : "memory");
  return v;
}
__device__ __forceinline__ int ld_shared_s32(uint32_t addr) {
  int v;
  asm volatile("ld.shared.s32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
  return v;
}
__device__ __forceinline__ int atomic_add_relaxed(int* p, int v) {
  int old;
  asm volatile("atom.relaxed.gpu.global.add.s32 %0, [%1], %2;\n" : "=r"(old) : "l"(p), "r"(v) : "memory");
  return old;
}
__device__ __forceinline__ uint32_t pack_bf16x2(float a, float b) {
  __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&v);
}
// Thread-block clusters (the 2-CTA variant of the persistent kernel, CL below).
__device__ __forceinline__ uint32_t cluster_ctarank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
// The shared::cluster address of the same shared variable in CTA `rank` of the cluster.
__device__ __forceinline__ uint32_t mapa_shared(uint32_t addr, uint32_t rank) {
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(addr), "r"(rank));
  return r;
}
// Stage release to the peer CTA: default semantics (.release at CTA scope), as CUTLASS's ClusterBarrier::arrive.
// The consumer only read the stage through wgmma (complete at wg_wait) and publishes no data with this arrive; a
// .release.cluster arrive adds a cluster-scope fence to every consumer warp's every k-step, in the path of its next
// wgmma issue.
__device__ __forceinline__ void mbar_arrive_remote_stage(uint32_t cluster_bar) {
  asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];\n" ::"r"(cluster_bar) : "memory");
}
// Arrive that publishes a preceding remote store (the item hand-over): release at cluster scope.
__device__ __forceinline__ void mbar_arrive_remote(uint32_t cluster_bar) {
  asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(cluster_bar) : "memory");
}
// Wait with cluster-scope acquire: for a phase completed by a remote arrive that published a remote store.
__device__ __forceinline__ void mbar_wait_cluster(uint32_t bar, int parity) { mbar_wait<true>(bar, parity); }
__device__ __forceinline__ void st_cluster_b32(uint32_t cluster_addr, uint32_t v) {
  asm volatile("st.shared::cluster.b32 [%0], %1;\n" ::"r"(cluster_addr), "r"(v) : "memory");
}
__device__ __forceinline__ void cluster_sync_all() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
// The work-item hand-over ring of a 2-CTA cluster (CL), in the barrier block (wgmma_gemm_kernel's layout): full[q]
// at +32+8q (rank 1's), empty[q] at +96+8q (rank 0's), the claimed item at +208+4q (rank 1's).
__device__ __forceinline__ uint32_t cq_full_bar(uint32_t bars, int q) { return bars + 32 + 8 * q; }
__device__ __forceinline__ uint32_t cq_empty_bar(uint32_t bars, int q) { return bars + 96 + 8 * q; }
__device__ __forceinline__ uint32_t cq_val_addr(uint32_t bars, int q) { return bars + 208 + 4 * q; }
// Rank 1 of a cluster: the item rank 0 claimed during its item h (claim_next_item), and the slot handed back.
__device__ __forceinline__ int receive_item(uint32_t bars, int h) {
  const int hq = h % kTileQ;
  mbar_wait_cluster(cq_full_bar(bars, hq), (h / kTileQ) & 1);
  const int w = ld_shared_s32(cq_val_addr(bars, hq));
  mbar_arrive_remote(mapa_shared(cq_empty_bar(bars, hq), 0));
  return w;
}
// The producer's next work item, claimed while it starts loading item h (w): from the device counter (dynamic
// scheduling) or w + step. CL: rank 0 claims for the cluster and hands the item to rank 1 (which reads it with
// receive_item at the top of its next item); rank 1's own value is not used.
template <int CL>
__device__ __forceinline__ int claim_next_item(int* counter, uint32_t bars, int h, int w, int step, int units,
                                               uint32_t rank) {
  int w_next = w + step;
  if (counter && (!CL || rank == 0)) w_next = units + atomic_add_relaxed(counter, 1);
  if (CL && rank == 0) {
    const int hq = h % kTileQ;
    if (h >= kTileQ) mbar_wait_cluster(cq_empty_bar(bars, hq), ((h / kTileQ) - 1) & 1);
    st_cluster_b32(mapa_shared(cq_val_addr(bars, hq), 1), (uint32_t)w_next);
    mbar_arrive_remote(mapa_shared(cq_full_bar(bars, hq), 1));
  }
  return w_next;
}
// TMA load multicast to the CTAs in `mask`: the box lands at the same offset of each one's shared memory and
// completes bytes on the mbarrier at the same offset in each.
__device__ __forceinline__ void tma_load_2d_mc(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1,
                                               uint16_t mask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%3, "
      "%4}], [%2], %5;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "h"(mask)
      : "memory");
}

template <int R>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R));
}
template <int R>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R));
}

// TALL exists for the compute-side regime where experts hold ~200-600 tokens (Mixtral T=1024, DeepSeek-V3 and Qwen3
// at T=8192): a 128-row tile streams each expert's weight tile from memory once per 128 tokens and relies on L2 to
// share it between an expert's 2-4 token tiles; the 256-row tile requests each weight tile half as often per
// token (an expert of <= 256 tokens reads each weight byte once), and in the same 48 KB stage the weights, the
// operand that comes from HBM, are 16 KB instead of 32 (the activations are re-read from L2).
template <int WGS, bool TALL = false, bool TL = false>
struct Cfg {
  static_assert(!TALL || WGS == 2, "the 256-row tile has two consumer warpgroups");
  static constexpr int kWgRows = TALL ? 128 : 64;  // token rows per consumer warpgroup
  static constexpr int kBM = kWgRows * WGS;
  static constexpr int kBN = TALL ? 128 : 256;     // weight rows per CTA
  static constexpr int kThreads = (WGS + 1) * 128;
  static constexpr int kABytes = kBM * kBK * 2, kBBytes = kBN * kBK * 2;
  // TL: the absorbed tail rows' k-slice after the weights (4 KB): 4 stages of 52 KB + barriers + the staged
  // epilogue's buffers still fit the 227 KB a block can have
  static constexpr int kTBytes = TL ? kTailRows * kBK * 2 : 0;
  static constexpr int kStageBytes = kABytes + kBBytes + kTBytes;
  static constexpr int kSmem = kStages * kStageBytes + 1024 /*align*/ + 512 /*barriers, tile queue*/;
  // persistent kernel: + the staged epilogue's buffers (store_warp_staged), 1 KB-aligned after the barriers: two per
  // consumer warp of 16 rows x kEpiCols columns. TL: 32-column chunks (1 KB buffers), so that 4 stages of 52 KB
  // still fit (with 2 KB buffers they would need 242 KB)
  static constexpr int kEpiCols = TL ? 32 : 64;
  static constexpr int kStagingBuf = 16 * kEpiCols * 2;
  static constexpr int kStagingBytes = WGS * 4 /*warps*/ * 2 * kStagingBuf;
  static constexpr int kSmemPersist = kStages * kStageBytes + 1024 + 1024 + kStagingBytes;
  static_assert(kSmemPersist <= 232448, "over the 227 KB of dynamic shared memory a block can have on sm_90");
};

// Stage release: every consumer WARP arrives on empty[s] (count kConsumerWarps), not one thread per warpgroup, so a
// stage is refilled only after each warp that waits on full[s] has seen that phase. mbarrier waits are by phase
// parity, so a warp that has not looked at full[s] by the time the stage has been refilled and has landed again
// waits for the wrong phase. With one arrival per warpgroup that happened in the persistent kernel: a consumer
// warpgroup's warps leave a tile's epilogue (direct global stores) at different times, and when its next tile is
// one it skips (skip_tile: no wgmma ties its warps together) its lane-0 warp released the stages alone, the
// producer refilled them, and a warp still storing the previous tile then waited on full[s] for a phase one ring
// revolution later, which could only complete after that same warp joined the next wgmma: a deadlock. It needed a
// lag of one ring revolution (~4 k-tiles, about a microsecond) between two warps of one warpgroup at a live ->
// skipped tile transition, so it hit only where those are many and the memory system is busy (Qwen3 T=8192 forced
// persistent: the first call completed, a few repeats later one CTA stalled), never the 64-row persistent kernel
// (one consumer warpgroup, which never skips) nor the one-tile kernel (its warps enter skip_tile together, right
// after __syncthreads, and nothing follows).
constexpr int kConsumerWarps = 4;  // per consumer warpgroup; empty[s] expects kConsumerWarps * WGS arrivals

// A consumer warp releases stage s: in the 2-CTA cluster variant (CL) on both CTAs' empty[s], since the peer's
// producer multicasts its half of the next A tile into this CTA's stage too (empty[s] then expects both CTAs'
// consumer warps). `peer`: the other CTA's rank.
template <int CL>
__device__ __forceinline__ void release_stage(uint32_t bars, int s, uint32_t peer) {
  mbar_arrive(bars + 64 + 8 * s);
  if constexpr (CL) mbar_arrive_remote_stage(mapa_shared(bars + 64 + 8 * s, peer));
}

// One consumer warpgroup's mainloop over one tile (k-tiles g0 .. g0+ktiles-1 of the CTA's barrier sequence). The
// first MMA of the tile runs with scale-d = 0 instead of zeroing the accumulators first: non-wgmma writes to the
// accumulator registers, and wgmma inside a branch that differs between tiles, made ptxas serialize the wgmma
// pipeline (warnings C7515/C7518 in the persistent kernel; nvcc -Xptxas -v shows them).
// TALL: HALVES (1 or 2) of the warpgroup's two 64-row halves hold tokens; a half past the expert's last token
// issues no MMAs (d[64..127] are then left unwritten). The half count is a template argument, not a run-time test
// inside the loop, for the same ptxas reason as above.
// GA: the stage's activations were written by cp.async (producer_gather), i.e. through the generic proxy, and
// wgmma reads shared memory through the async proxy: a proxy fence after the wait orders the two.
// TL: the stages have the absorbed tail region (Cfg). TAIL: this tile has absorbed tail rows; besides its m64n256
// the warpgroup issues them swap-AB per k16 step: two m64n32k16 with 64 weight rows as A (rows cw*64 and
// 128 + cw*64 of the weight tile: for GEMM1 a gate block and its up block, so silu(g)*u stays in one thread) and
// the 32 tail rows as B, into dt[0..15] and dt[16..31] (weight rows x tail tokens). The weight tile's bytes come
// through L2 once for 128 + r token rows, where a tile of its own for the r rows loaded them again.
template <int WGS, bool TALL, int HALVES, int CL = 0, bool GA = false, bool TL = false, bool TAIL = false>
__device__ __forceinline__ void mma_tile(float* d, uint32_t base, uint32_t bars, int cw, int ktiles, int g0,
                                         bool warp_leader, uint32_t peer = 0, float* dt = nullptr) {
  static_assert(!TAIL || (TL && !TALL), "the absorbed tail is the wide 128-row tile's");
  using C = Cfg<WGS, TALL, TL>;
  static_assert(HALVES == 1 || (TALL && HALVES == 2), "two halves only in the 256-row tile");
  for (int kt = 0; kt < ktiles; ++kt) {
    const int g = g0 + kt, s = g % kStages;
    mbar_wait(bars + 8 * s, (g / kStages) & 1);
    if constexpr (GA) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    const uint32_t a_s = base + s * C::kStageBytes + cw * C::kWgRows * kBK * 2;
    const uint32_t b_s = base + s * C::kStageBytes + C::kABytes;
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      if constexpr (TALL) {
#pragma unroll
        for (int h = 0; h < HALVES; ++h)
          wgmma_m64n128k16(d + 64 * h, desc_sw128(a_s + h * 64 * kBK * 2 + kk * 32), desc_sw128(b_s + kk * 32),
                           (kt | kk) != 0);
      } else {
        wgmma_m64n256k16(d, desc_sw128(a_s + kk * 32), desc_sw128(b_s + kk * 32), (kt | kk) != 0);
        if constexpr (TAIL) {
          const uint32_t t_s = b_s + C::kBBytes;
#pragma unroll
          for (int j = 0; j < 2; ++j)
            wgmma_m64n32k16(dt + 16 * j, desc_sw128(b_s + (j * 128 + cw * 64) * kBK * 2 + kk * 32),
                            desc_sw128(t_s + kk * 32), (kt | kk) != 0);
        }
      }
    }
    wg_commit();
    wg_wait<1>();
    if (kt > 0 && warp_leader) release_stage<CL>(bars, (g - 1) % kStages, peer);
  }
  wg_wait<0>();
  if (warp_leader) release_stage<CL>(bars, (g0 + ktiles - 1) % kStages, peer);
#pragma unroll
  for (int i = 0; i < (TALL ? 64 * HALVES : 128); ++i) asm volatile("" : "+f"(d[i])::"memory");
  if constexpr (TAIL) {
#pragma unroll
    for (int i = 0; i < 32; ++i) asm volatile("" : "+f"(dt[i])::"memory");
  }
}

// A consumer whose 64 rows are all past the expert's last token (the tail tile of an expert) skips the MMAs but
// keeps the barrier protocol, so the other warpgroup gets the tensor cores to itself. Each warp releases each stage
// itself after its own wait (see kConsumerWarps: nothing else keeps the warps of a skipping warpgroup in step).
template <int CL = 0>
__device__ __forceinline__ void skip_tile(uint32_t bars, int ktiles, int g0, bool warp_leader, uint32_t peer = 0) {
  for (int kt = 0; kt < ktiles; ++kt) {
    const int g = g0 + kt, s = g % kStages;
    mbar_wait(bars + 8 * s, (g / kStages) & 1);
    __syncwarp();
    if (warp_leader) release_stage<CL>(bars, s, peer);
  }
}

// Dense tile index t in [0, num_m * n_tiles) -> (token tile, weight tile), grouped raster.
// group_m > 0 (default kGroupM): groups aligned to experts. Expert e's token tiles [first, first + m_e) own the
// indices [first * n_tiles, (first + m_e) * n_tiles), so tile t / n_tiles is one of e's and its .w (index inside
// the expert) gives first and m_e. Its tiles, in chunks of up to group_m, sweep the weight tiles together: the
// CTAs that share a weight tile are consecutive, so they run at the same time and the tile comes from HBM once,
// and the chunk's activation rows stay in L2 during the sweep.
// group_m < 0: groups of -group_m consecutive token tiles whatever their experts (the raster before). An expert
// whose tiles straddle a group boundary has its weight tiles' sharers a whole group (about a wave) apart, so they
// are read from HBM again (DeepSeek-V3 T=8192: ~2.5 token tiles per expert, 8 per group).
// bm: the token tile rows the tile list was built with (the kernel's kBM); absorb: its Params::absorb.
__device__ __forceinline__ void tile_coords(int t, int num_m, int n_tiles, int group_m, const int4* tiles, int bm,
                                            int& m_idx, int& n_idx, int absorb = 0, bool singles = false) {
  if (group_m > 0) {
    const int q = t / n_tiles;
    const int4 tq = tiles[q];
    if (singles && tq.x < 0) {  // a pair of singles: a row of its own
      m_idx = q;
      n_idx = t - q * n_tiles;
      return;
    }
    const int first = q - tq.w;
    const int ex_row0 = tq.y - tq.w * bm;
    // singles: the expert's single tile is not among its tiles here (the list's singles come after all pairs)
    const int c = tq.z - ex_row0;
    const int m_e = expert_tiles(c, bm, absorb) - (singles ? expert_single(c, bm, absorb) : 0);
    const int width = group_m * n_tiles;
    const int local = t - first * n_tiles;
    const int j = local / width;
    const int gsize = min(group_m, m_e - j * group_m);
    const int r = local - j * width;
    m_idx = first + j * group_m + r % gsize;
    n_idx = r / gsize;
    return;
  }
  const int g = -group_m;
  const int width = g * n_tiles;
  const int first_m = (t / width) * g;
  const int gsize = min(num_m - first_m, g);
  const int r = t - (t / width) * width;
  m_idx = first_m + r % gsize;
  n_idx = r / gsize;
}

// The tile of work item t (its raster index) for this CTA, and its weight tile n_idx (of n_cols per item row).
// kClusterM: this CTA's 128 rows (rank) of a 256-row pair tile, or, with p.pair_singles, on a pair-of-singles row
// (-1, q, 0, 0), single 2 q + rank, which this CTA runs with its own weight tile (the other CTA's single is another
// expert's). A single holds <= 128 rows, so the 256-row tile's rank 1 half would have been idle: this keeps the
// CTA count of the 128-row tile list while the pair tiles share their weight tile. An odd last single leaves rank 1
// an empty tile (first row = row end) of the same expert. Returns true for a single (no weight multicast).
template <bool CLM>
__device__ __forceinline__ bool resolve_tile(int t, int num_m, int n_cols, const Params& p, int list_bm,
                                             uint32_t rank, int4& tile, int& n_idx) {
  int m_idx;
  tile_coords(t, num_m, n_cols, p.group_m, p.tiles, list_bm, m_idx, n_idx, p.absorb, CLM && p.pair_singles);
  tile = p.tiles[m_idx];
  if (CLM && p.pair_singles && tile.x < 0) {
    const int sgl = 2 * tile.y + (int)rank;
    const bool none = sgl >= p.num_tiles[3];  // the odd last single's partner
    tile = p.tiles[p.singles_at + (none ? sgl - 1 : sgl)];
    if (none) tile.y = tile.z;
    return true;
  }
  // this CTA's 128 rows of the 256-row tile; rank 0's end at its 128th row, so that a tile of 129..160 rows does
  // not look to rank 0 like 128 rows plus an absorbed tail (tail_rows): those rows are rank 1's. (Before, rank 0
  // computed them a second time; with stores to y that was only wasted work, with the fused combine it added them
  // twice: test_moe absorb-clusterm-160-rows, relerr 0.47.)
  if (CLM) {
    tile.y += (int)rank * (list_bm / 2);
    if (rank == 0) tile.z = min(tile.z, tile.y + list_bm / 2);
  }
  return false;
}

// Epilogue with direct global stores, shared by both GEMM kernels: 64 token rows (from `row0`) of an m64nBN
// accumulator fragment `d` -> C. MODE 0: silu(gate) * up over the tile's BN/2 output columns; MODE 1: times the
// row's routing weight over BN columns. Rows past `row_end` and columns past N are skipped.
// The routing weights of the two rows a thread stores in MODE 1 (zero past row_end). The persistent kernel loads
// them before the tile's mainloop: loaded in the epilogue, Nsight Compute put ~42% of GEMM2's warp stall samples on
// this load (bench/results/logs/h200-ncu-*.log), a global-memory round trip between the last MMA and the stores.
__device__ __forceinline__ void load_row_w(const Params& p, int row0, int row_end, int warp, int lane, float (&w)[2]) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int prow = row0 + warp * 16 + (lane >> 2) + hh * 8;
    w[hh] = prow < row_end ? p.row_w[prow] : 0.f;
  }
}

template <int MODE, int BN>
__device__ __forceinline__ void store_tile_direct(const float* d, const Params& p, bf16* Cout, int row0, int row_end,
                                                  int n_idx, int warp, int lane, const float (&row_w)[2]) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int prow = row0 + warp * 16 + (lane >> 2) + hh * 8;
    if (prow >= row_end) continue;
    if (MODE == 0) {
#pragma unroll
      for (int j = 0; j < BN / 16; ++j) {
        const int col = n_idx * (BN / 2) + j * 8 + 2 * (lane & 3);
        if (col >= p.N) continue;
        const float g0 = d[j * 4 + hh * 2], g1 = d[j * 4 + hh * 2 + 1];
        const float u0 = d[(j + BN / 16) * 4 + hh * 2], u1 = d[(j + BN / 16) * 4 + hh * 2 + 1];
        const float h0 = sy_silu_mul(g0, u0), h1 = sy_silu_mul(g1, u1);
        *reinterpret_cast<__nv_bfloat162*>(Cout + (size_t)prow * p.N + col) = __floats2bfloat162_rn(h0, h1);
      }
    } else {
      const float wr = row_w[hh];
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
        const int col = n_idx * BN + j * 8 + 2 * (lane & 3);
        if (col >= p.N) continue;
        *reinterpret_cast<__nv_bfloat162*>(Cout + (size_t)prow * p.N + col) =
            __floats2bfloat162_rn(d[j * 4 + hh * 2] * wr, d[j * 4 + hh * 2 + 1] * wr);
      }
    }
  }
}

// The routing weights of the absorbed tail tokens a thread stores (store_tail_direct; 0 past row_end): token
// 8 nb + 2 (lane % 4) + e of the tail at tw[2 nb + e]. Loaded before the mainloop, as load_row_w.
__device__ __forceinline__ void load_tail_w(const Params& p, int trow0, int row_end, int lane, float (&tw)[8]) {
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int prow = trow0 + 8 * (i >> 1) + 2 * (lane & 3) + (i & 1);
    tw[i] = prow < row_end ? p.row_w[prow] : 0.f;
  }
}

// Epilogue of the absorbed tail rows (mma_tile TAIL), direct stores: dt holds weight rows x tail tokens, the
// m64n32 fragment of warp `warp`: weight row warp*16 + lane/4 + 8 hh of block j (weight rows j*128 + cw*64 ..),
// tail token 8 nb + 2 (lane % 4) + e, at dt[16 j + 4 nb + 2 hh + e]. For one token the 8 lanes with the same
// lane % 4 hold 8 consecutive output columns, so each warp store covers 16 contiguous bytes of 4 rows.
// MODE 0: h[row, n_idx*128 + cw*64 + m] = silu(gate) * up (block 0 gate, block 1 up); MODE 1: y[row, n_idx*256 +
// j*128 + cw*64 + m] = acc * the row's routing weight, or with the combine fused (p.combine_out) that added into the
// output at the row's token. Rows past row_end and columns past N are skipped.
template <int MODE>
__device__ __forceinline__ void store_tail_direct(const float* dt, const Params& p, bf16* Cout, int trow0,
                                                  int row_end, int n_idx, int cw, int warp, int lane,
                                                  const float (&tw)[8]) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int m = warp * 16 + (lane >> 2) + 8 * hh;
#pragma unroll
    for (int i2 = 0; i2 < 8; ++i2) {
      const int nb = i2 >> 1, e = i2 & 1;
      const int prow = trow0 + 8 * nb + 2 * (lane & 3) + e;
      if (prow >= row_end) continue;
      const int i = 4 * nb + 2 * hh + e;
      if (MODE == 0) {
        const int col = n_idx * 128 + cw * 64 + m;
        if (col >= p.N) continue;
        const float g = dt[i], u = dt[16 + i];
        Cout[(size_t)prow * p.N + col] = __float2bfloat16_rn(sy_silu_mul(g, u));
      } else {
        const int tok = p.combine_out ? p.row_token[prow] : 0;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int col = n_idx * 256 + j * 128 + cw * 64 + m;
          if (col >= p.N) continue;
          const float v = dt[16 * j + i] * tw[i2];
          if (!p.combine_out)
            Cout[(size_t)prow * p.N + col] = __float2bfloat16_rn(v);
          else  // fused combine (reduce_warp_staged), one element at a time: the tail is short
            atomicAdd(p.combine_out + (size_t)tok * p.N + col, __float2bfloat16_rn(v));
        }
      }
    }
  }
}

// One warp's 16 output rows, columns c * CW .. c * CW + CW - 1 of the tile, to a shared buffer in bf16 (MODE 0:
// SwiGLU of gate and up; MODE 1: times the row's routing weight), by stmatrix (4 per 64 columns, the MMA fragment
// layout is stmatrix's): row r at r * 2 CW bytes, its 16-byte unit u at u ^ (r % 8) (CW = 64: the C maps'
// SWIZZLE_128B) or u ^ ((r / 2) % 4) (CW = 32: SWIZZLE_64B). The swizzle also keeps the stmatrix rows off each
// other's banks.
template <int MODE, int BN, int CW>
__device__ __forceinline__ void stage_chunk(const float* d, uint32_t buf, int lane, const float (&row_w)[2], int c) {
  constexpr int PITCH = CW * 2;
  // stmatrix x4 address of this lane: matrix mi = lane / 8 (rows +8 for odd mi, 8 columns +8 for mi >= 2), row
  // lane % 8 of it
  const int mi = lane >> 3, r = (lane & 7) + 8 * (mi & 1), cb = mi >> 1;
  const int swz = CW == 64 ? (r & 7) : ((r >> 1) & 3);
#pragma unroll
    for (int q = 0; q < CW / 16; ++q) {
      const int jo = c * (CW / 8) + 2 * q;  // first 8-column output block of this x4
      uint32_t v[4];
#pragma unroll
      for (int b = 0; b < 2; ++b) {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int j = jo + b;
          float x0, x1;
          if (MODE == 0) {
            const float g0 = d[j * 4 + hh * 2], g1 = d[j * 4 + hh * 2 + 1];
            const float u0 = d[(j + BN / 16) * 4 + hh * 2], u1 = d[(j + BN / 16) * 4 + hh * 2 + 1];
            x0 = sy_silu_mul(g0, u0);
            x1 = sy_silu_mul(g1, u1);
          } else {
            x0 = d[j * 4 + hh * 2] * row_w[hh];
            x1 = d[j * 4 + hh * 2 + 1] * row_w[hh];
          }
          v[b * 2 + hh] = pack_bf16x2(x0, x1);
        }
      }
      const int chunk16 = 2 * q + cb;
      stmatrix_x4(buf + r * PITCH + ((chunk16 ^ swz) << 4), v[0], v[1], v[2], v[3]);
    }
}

// Staged epilogue of one consumer warp (persistent kernel, p.epi_tma): its 16 rows of the warpgroup's 64 leave in
// 64-column chunks, each written to a 2 KB shared buffer by stmatrix (4 per chunk, the MMA fragment layout is
// stmatrix's) in the 128-byte swizzle of the C maps, then stored by one TMA store (box 16 rows x 64 columns) that
// runs on while the warp goes on: two buffers per warp, a buffer rewritten once its store from two chunks back has
// been read. CW = 32 (the TL kernels, Cfg::kEpiCols): 32-column chunks in 1 KB buffers, 64-byte swizzle (16-byte
// unit u of row r at u ^ ((r / 2) % 4)), C maps with 16 x 32 boxes. Replaces 64 (GEMM2) or 32 (GEMM1) 4-byte global stores per thread, each a warp-wide store touching 8
// rows, during which the warpgroup issues no MMA (GEMM2's short K made that ~20% of its time at Qwen3 T=8192).
// Only for warps whose 16 rows all hold tokens (a TMA box cannot stop at the expert's last row, and the rows past
// it belong to the next expert's tile): the caller sends the warp holding an expert's last row to store_tile_direct.
// `chunk`: the warp's running chunk count (buffer parity and when to wait).
// NBUF = 1 (the TL kernels with p.epi64): one 2 KB buffer per warp in the same 2 KB, 64-column chunks, each chunk's
// stmatrix waiting until the store before it has read the buffer.
template <int MODE, int BN, int CW = 64, int NBUF = 2>
__device__ __forceinline__ void store_warp_staged(const float* d, const CUtensorMap* map, uint32_t bufs, int row0w,
                                                  int n_idx, int lane, const float (&row_w)[2], int& chunk) {
  static_assert(CW == 64 || CW == 32, "64- or 32-column chunks");
  constexpr int OUTC = MODE == 0 ? BN / 2 : BN;  // output columns of the tile
  constexpr int BUF = 16 * CW * 2;
#pragma unroll
  for (int c = 0; c < OUTC / CW; ++c) {
    const uint32_t buf = bufs + (chunk % NBUF) * BUF;
    if (chunk >= NBUF) {
      if (lane == 0) bulk_wait_read<NBUF - 1>();
      __syncwarp();
    }
    stage_chunk<MODE, BN, CW>(d, buf, lane, row_w, c);
    // generic-proxy shared writes -> visible to the TMA (async proxy) read, then one lane stores
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncwarp();
    if (lane == 0) {
      tma_store_2d(map, buf, n_idx * OUTC + c * CW, row0w);
      bulk_commit();
    }
    ++chunk;
  }
}

__device__ __forceinline__ void red_add_bf16x8(bf16* dst, int4 v) {
  asm volatile("red.global.add.noftz.v4.bf16x2 [%0], {%1, %2, %3, %4};\n" ::"l"(dst), "r"(v.x), "r"(v.y), "r"(v.z),
               "r"(v.w)
               : "memory");
}

// GEMM2's epilogue with the combine fused (p.combine_out): one consumer warp adds its 16 rows (times their routing
// weights) into the layer's output at their tokens, out[token] += y[row], by vector reductions that L2 performs
// (red.global.add, 16 bytes a lane). The combine kernel used to read back the T * k rows that GEMM2 had written
// (Qwen3 T=8192: 268 MB each way, 76 us of 1.27 ms; bench/results/logs/h200-profile-clusterm-0537.log); here the
// rows never reach memory, and the output (T rows) stays in L2 while the adds land. The order of the k adds of a
// token varies from run to run, and each bf16 add rounds.
// Through the warp's 2 KB staging buffer, 64 columns at a time (stage_chunk, stmatrix), 128 bytes a row with 16-byte
// unit u at u ^ (row % 8); then lane l adds unit l % 8 of rows l / 8 + 4 i, so each instruction covers 4 rows of 128
// contiguous bytes. tok_l: lane l < 16 holds the token of the warp's row l (-1 past the expert's last row: not added).
template <int BN>
__device__ __forceinline__ void reduce_warp_staged(const float* d, const Params& p, uint32_t buf, int n_idx,
                                                   int lane, const float (&row_w)[2], int tok_l) {
  constexpr int CW = 64;  // columns per chunk: 128 bytes a row
  int tok[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) tok[i] = __shfl_sync(0xffffffffu, tok_l, (lane >> 3) + 4 * i);
  const int u = lane & 7;
#pragma unroll
  for (int c = 0; c < BN / CW; ++c) {
    stage_chunk<1, BN, CW>(d, buf, lane, row_w, c);
    __syncwarp();
    const int col = n_idx * BN + c * CW + u * 8;  // N is a multiple of 8: a unit is all in or all out
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = (lane >> 3) + 4 * i;
      const int4 v = ld_shared_v4(buf + r * 128 + ((u ^ (r & 7)) << 4));
      if (tok[i] >= 0 && col < p.N) red_add_bf16x8(p.combine_out + (size_t)tok[i] * p.N + col, v);
    }
    __syncwarp();  // the next chunk rewrites the buffer
  }
}

// Work item w of the persistent kernel -> tile index t (tile_coords) and K half: the two K halves of a tile
// (k_splits = 2, GEMM2) are consecutive items, so both run at about the same time and share the A rows in L2.
// kt0 / ktiles: the item's k-tiles. The producer and the consumers compute the same values (same barrier sequence).
__device__ __forceinline__ void work_item(int w, int splits, int kt_all, int& t, int& half, int& kt0, int& ktiles) {
  t = w / splits;
  half = w - t * splits;
  const int kper = (kt_all + splits - 1) / splits;
  kt0 = half * kper;
  ktiles = min(kper, kt_all - kt0);
}

// Tile queue of the persistent kernel: the producer thread publishes each work item it will load (or -1: no more)
// to the consumers through a small shared-memory ring guarded by its own full/empty mbarriers (arrive: release,
// wait: acquire, so the value written before the arrive is what the consumers read). Every consumer warp releases
// a slot (count WGS * kConsumerWarps), for the same parity reason as the stages (kConsumerWarps). A slot holds the
// item resolved: {w, weight tile, first row, row end}. The consumers used to resolve w themselves (tile_coords and
// the tile list: two dependent global loads) between their wait on the slot and their first MMA, every item; the
// producer resolves it a few k-steps ahead.

// MODE 0: GEMM1 (x_perm * [gate|up], SwiGLU -> h). MODE 1: GEMM2 (h * down, * routing weight -> y).
// PERSIST: one CTA per SM loops over work items; the producer runs ahead into the next item while the consumers
// do the epilogue, and the barrier phases carry over (g counts k-tiles across items). Otherwise one tile per CTA.
// Scheduling: with p.tile_counter null, static round robin (CTA b takes items b, b + grid, ...); the CTAs drift
// apart, so the token tiles that share a weight tile in the expert-aligned raster (tile_coords) run at different
// times and read it from HBM again (h200-persist.md: DeepSeek-V3 T=8192 +36% against one tile per CTA). With a
// counter, dynamic: CTA b starts with item b and then claims the next unclaimed item of the raster order by an
// atomic add, so the ~grid items in flight stay consecutive (what the one-tile grid gets from the hardware's
// in-order CTA launch) while the prologue and fill of each item overlap the previous one. The producer claims the
// next item when it starts loading the current one, so the atomic's latency is hidden behind a whole item.
// The 128-row variant used to stall at Qwen3 T=8192 (bench/results/logs/h200-engine-variants.log, and the removed
// runs-of-tiles variant in h200-iter3-tpc-stall.log): a consumer warp lagging a skipped tile's stage releases by a
// ring revolution waited for the wrong barrier phase (kConsumerWarps above); every consumer warp now releases.
// Producer of GEMM1 gathering its activations (GA): x_perm is never written. The permute kernel used to copy each
// token's hidden state to its k permuted rows (T*k*d*2 bytes written, then read back by GEMM1: ~90 us of 1.4 ms at
// Qwen3 T=8192, ~0.3 ms at DeepSeek-V3 T=8192); here GEMM1 reads hidden-state rows by the row -> token map. TMA
// cannot gather rows on sm_90, so all 128 producer threads load the 128 x 64 activation tile of each stage with
// 16-byte cp.async (thread t: chunk t % 8 of rows t / 8 + 16 i), into the 128-byte swizzle TMA would have used, and
// arrive on the stage's full barrier when their copies land (init count 1 + 128); thread 0 also loads the weights by
// TMA (expected bytes: the weight tile), resolves and publishes the work items, and claims the next one. Every
// producer thread follows the tile queue as the consumers do (its warps release the slots too).
// TL: an item with absorbed tail rows also gathers them (thread t: rows 128 + t / 8 + 16 i, i < 2) into the stage's
// tail region.
// CL = kClusterM: the two CTAs of a cluster take the two 128-row halves of one 256-row tile (the tile list's) on the
// same weight tile: each gathers its own rows and loads one of the weight tile's two 128-row boxes, multicast to
// both; rank 0 claims the items and hands them to rank 1 (cq_*), as the TMA producer does.
template <int WGS, bool TL = false, int CL = 0>
__device__ __forceinline__ void producer_gather(const CUtensorMap* tmB, const Params& p, uint32_t base, uint32_t bars,
                                                int unit, int units, int total, int num_m, int kt_all,
                                                uint32_t rank = 0) {
  static_assert(CL == 0 || CL == 2, "the gathering producer: no cluster, or kClusterM");
  constexpr bool CLM = CL == 2;
  using C = Cfg<WGS, false, TL>;
  const int list_bm = CLM ? 2 * C::kBM : C::kBM;  // rows per tile of the tile list
  const int pt = threadIdx.x;                   // 0..127: the producer warpgroup
  const int cc = pt & 7, rs = pt >> 3;          // 16-byte chunk of the row's 128-byte k-slice; first row
  const uint32_t a_off = rs * 128 + ((cc ^ (rs & 7)) << 4);  // row rs + 16 i: + 2048 i (same row % 8)
  auto full = [&](int s) { return bars + 8 * s; };
  auto empty = [&](int s) { return bars + 64 + 8 * s; };
  auto tq_full = [&](int q) { return bars + 128 + 8 * q; };
  auto tq_empty = [&](int q) { return bars + 160 + 8 * q; };
  auto tq_val = [&](int q) { return bars + 256 + 16 * q; };
  int g = 0, w = unit, b0 = 0, b1 = 0;
  bool first = true, single = false;
  for (int j = 0;; ++j) {
    const int q = j % kTileQ;
    if (pt == 0) {
      if (CLM && rank == 1 && j > 0) w = receive_item(bars, j - 1);  // rank 0's claim during item j - 1
      int n_idx = 0;
      int4 tile = make_int4(0, 0, 0, 0);
      if (w < total) {
        int t, half, kt0, ktiles;
        work_item(w, 1, kt_all, t, half, kt0, ktiles);
        single = resolve_tile<CLM>(t, num_m, p.n_tiles, p, list_bm, rank, tile, n_idx);
        const int slot = p.expert_slot ? p.expert_slot[tile.x] : tile.x;
        const int wrow = slot * p.rows_per_slot;
        b0 = wrow + n_idx * (C::kBN / 2);
        b1 = wrow + p.up_offset + n_idx * (C::kBN / 2);
      }
      if (j >= kTileQ) mbar_wait(tq_empty(q), ((j / kTileQ) - 1) & 1);
      st_shared_v4(tq_val(q), make_int4(w < total ? w : -1, n_idx, tile.y, tile.z));
      mbar_arrive(tq_full(q));
    }
    mbar_wait(tq_full(q), (j / kTileQ) & 1);
    const int4 item = ld_shared_v4(tq_val(q));
    __syncwarp();
    if ((pt & 31) == 0) mbar_arrive(tq_empty(q));
    if (item.x < 0) break;
    int t, half, kt0, ktiles;
    work_item(item.x, 1, kt_all, t, half, kt0, ktiles);
    // the weight tile: both 128-row boxes, or (CLM, a pair tile) this CTA's box, multicast to both CTAs at the same
    // offset
    auto load_b = [&](uint32_t b_dst, uint32_t bar, int kcol) {
      if (CLM && !single) {
        tma_load_2d_mc(b_dst + rank * (C::kBN / 2) * kBK * 2, tmB, bar, kcol, rank ? b1 : b0, (uint16_t)3);
      } else {
        tma_load_2d(b_dst, tmB, bar, kcol, b0);
        tma_load_2d(b_dst + (C::kBN / 2) * kBK * 2, tmB, bar, kcol, b1);
      }
    };
    int b_done = 0;  // k-tiles whose weights are already loaded (the first item's, before the PDL wait)
    if (first) {
      b_done = ktiles < kStages ? ktiles : kStages;
      if (pt == 0)
        for (int i = 0; i < b_done; ++i) {
          const uint32_t b_dst = base + i * C::kStageBytes + C::kABytes;
          mbar_expect_tx(full(i), C::kBBytes);  // CLM: both boxes land here, one from each CTA
          load_b(b_dst, full(i), (kt0 + i) * kBK);
        }
      pdl_wait();  // every thread: the row -> token map is the previous kernel's output
      if (pt == 0) pdl_trigger();
      first = false;
    }
    // tokens of this thread's 8 rows; -1 (zero-filled, nothing read) past the last permuted row, or with p.trim_a
    // past the expert's last row: those rows of a tail tile belong to the next expert and their products are never
    // stored, and a tile is bound by its bytes through L2 (the tail tiles are ~20% of the tiles at Mixtral T=1024)
    int tok[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int row = item.z + rs + 16 * i;
      tok[i] = row < (p.trim_a ? item.w : p.n_rows) ? p.row_token[row] : -1;
    }
    const bool tail = TL && tail_rows(item.z, item.w, p.absorb) > 0;
    int tok_t[2] = {-1, -1};  // the absorbed tail rows' tokens (zero-filled past the expert's last row)
    if (tail)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int row = item.z + 128 + rs + 16 * i;
        tok_t[i] = row < item.w ? p.row_token[row] : -1;
      }
    // the next item: claimed now, its latency hidden behind this item's loads; CLM: rank 0 claims for the cluster
    // and hands it to rank 1 (which reads it at the top of its next iteration)
    const int w_next = pt == 0 ? claim_next_item<CL>(p.tile_counter, bars, j, w, units, units, rank) : 0;
    for (int kt = 0; kt < ktiles; ++kt, ++g) {
      const int s = g % kStages;
      if (g >= kStages) mbar_wait(empty(s), ((g / kStages) - 1) & 1);
      const uint32_t a_dst = base + s * C::kStageBytes;
      if (pt == 0 && kt >= b_done) {
        mbar_expect_tx(full(s), C::kBBytes);
        load_b(a_dst + C::kABytes, full(s), (kt0 + kt) * kBK);
      }
      const int kcol = (kt0 + kt) * kBK + cc * 8;
      const bool kin = kcol < p.K;  // K is a multiple of 8: a chunk is all in or all out
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const bool ok = kin && tok[i] >= 0;
        cp_async16_zfill(a_dst + a_off + i * 2048, ok ? p.gather_x + (size_t)tok[i] * p.K + kcol : p.gather_x, ok);
      }
      if (tail)
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const bool ok = kin && tok_t[i] >= 0;
          cp_async16_zfill(a_dst + C::kABytes + C::kBBytes + a_off + i * 2048,
                           ok ? p.gather_x + (size_t)tok_t[i] * p.K + kcol : p.gather_x, ok);
        }
      cp_async_arrive_noinc(full(s));
    }
    w = w_next;
  }
}

// CL (2-CTA clusters, dynamic scheduling only): the two CTAs of a cluster share one operand tile by TMA multicast.
// Nsight Compute put the GEMMs at 93-97% of L2 throughput at Mixtral T=1024 (bench/results/logs/h200-ncu-*.log):
// each CTA pulled its whole 48 KB stage (16 KB of activations + 32 KB of weights) from L2 per k-step.
//   kClusterN (1): the same token tile and two adjacent weight tiles (n = 2 * pair + rank); each CTA loads one
//     64-row half of the activation tile and multicasts it to both: 40 KB per CTA per k-step. Needs an even n_tiles.
//   kClusterM (2): the same weight tile and the two 128-row halves of a 256-row token tile of one expert (the tile
//     list is built with 256-row tiles); each CTA loads one of the weight tile's two 128-row boxes and multicasts
//     it to both: 32 KB per CTA per k-step. Where an expert's last 256-row tile has <= 128 rows, rank 1 has no
//     tokens: it still loads and multicasts its weight box, and its consumers only release the stages.
// Consequences: a stage is refilled only when both CTAs' consumers released it (release_stage); work items are
// claimed by rank 0 and handed to rank 1 through a one-slot-per-item ring in rank 1's shared memory (cq_*: remote
// store + remote arrive); the two CTAs leave together (cluster barrier), since either may still write into the
// other's shared memory.
constexpr int kClusterN = 1, kClusterM = 2;
// GA: GEMM1 gathers its activations (producer_gather; 128-row tiles, no cluster or kClusterM, dynamic scheduling).
// TL: absorbed tails (Params::absorb, over a tile list built with it): an expert's last tile may hold 128 + r rows,
// r <= kTailRows. The producer loads the r rows' k-slices into the stage's tail region (tmT: 32-row boxes; GA:
// gathered), the consumers multiply them swap-AB (mma_tile TAIL) and store them directly (store_tail_direct).
// Where an expert's count is 128 q + r, the r rows used to be a tile of their own, which loaded the whole weight tile
// through L2 again for a handful of rows (5 of 21 token tiles at Mixtral T=1024, 57 of 576 at Qwen3 T=8192).
template <int WGS, int MODE, bool PERSIST, int CL = 0, bool GA = false, bool TL = false>
__global__ void __launch_bounds__((WGS + 1) * 128, 1)
    wgmma_gemm_kernel(const __grid_constant__ CUtensorMap tmA, const __grid_constant__ CUtensorMap tmB,
                      const __grid_constant__ CUtensorMap tmC, const __grid_constant__ CUtensorMap tmC2,
                      const __grid_constant__ CUtensorMap tmT, const Params p) {
  static_assert(!CL || (PERSIST && WGS == 2), "the cluster variant is the 128-row persistent kernel");
  constexpr bool CLN = CL == kClusterN, CLM = CL == kClusterM;
  static_assert(!GA || (MODE == 0 && WGS == 2 && CL != kClusterN),
                "the gathering producer is GEMM1's, 128-row, without clusters or in kClusterM pairs");
  static_assert(!TL || (PERSIST && WGS == 2), "absorbed tails: the 128-row persistent kernel");
  using C = Cfg<WGS, false, TL>;
  extern __shared__ __align__(1024) unsigned char wg_smem_raw[];
  const uint32_t raw = smem_u32(wg_smem_raw);
  const uint32_t base = (raw + 1023) & ~1023u;
  // barriers (512 bytes, Cfg::kSmem): full[s] at +8s, empty[s] at +64+8s, tile queue full[q] at +128+8q, empty[q]
  // at +160+8q, its int4 values at +256+16q; CL: the item hand-over ring, full[q] at +32+8q (rank 1's), empty[q] at
  // +96+8q (rank 0's), values at +208+4q (rank 1's)
  const uint32_t bars = base + kStages * C::kStageBytes;
  auto full = [&](int s) { return bars + 8 * s; };
  auto empty = [&](int s) { return bars + 64 + 8 * s; };
  auto tq_full = [&](int q) { return bars + 128 + 8 * q; };
  auto tq_empty = [&](int q) { return bars + 160 + 8 * q; };
  auto tq_val = [&](int q) { return bars + 256 + 16 * q; };

  const uint32_t rank = CL ? cluster_ctarank() : 0;
  const uint32_t peer = rank ^ 1;
  const int num_m = *p.num_tiles;  // written >= 2 launches back: complete when this kernel runs (PDL rules)
  const int splits = MODE == 1 ? p.k_splits : 1;
  const int n_cols = CLN ? p.n_tiles / 2 : p.n_tiles;  // weight tiles per item row: pairs with kClusterN
  const int list_bm = CLM ? 2 * C::kBM : C::kBM;        // rows per tile of the tile list
  const int total = num_m * n_cols * splits;          // work items
  const int unit = CL ? (int)blockIdx.x / 2 : (int)blockIdx.x;  // this CTA's (CL: cluster's) first item
  const int units = CL ? (int)gridDim.x / 2 : (int)gridDim.x;
  if (unit >= total) {  // both CTAs of a cluster leave here together (same unit)
    pdl_wait();
    return;
  }
  const int step = PERSIST ? units : total;
  const int kt_all = (p.K + kBK - 1) / kBK;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full(s), GA ? 1 + 128 : 1);
      mbar_init(empty(s), (CL ? 2 : 1) * WGS * kConsumerWarps);
    }
    for (int q = 0; q < kTileQ; ++q) {
      mbar_init(tq_full(q), 1);
      mbar_init(tq_empty(q), (GA ? WGS + 1 : WGS) * kConsumerWarps);
      if (CL) {
        mbar_init(cq_full_bar(bars, q), 1);
        mbar_init(cq_empty_bar(bars, q), 1);
      }
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  // CL: the peer's barriers must be initialised before anything arrives on them or lands in its stages.
  if constexpr (CL)
    cluster_sync_all();
  else
    __syncthreads();

  const int wgi = threadIdx.x / 128;
  if (wgi == 0) {
    // ---------------- producer ----------------
    // GA: the gathering producer holds 8 row tokens and addresses per thread; 40 registers made ptxas spill them
    // (with TL 2 tail tokens more: 56 spilled 16 bytes)
    if (WGS == 2) {
      if constexpr (GA && TL)
        setmaxnreg_dec<64>();
      else if constexpr (GA)
        setmaxnreg_dec<56>();
      else
        setmaxnreg_dec<40>();
    }
    if constexpr (GA) {
      producer_gather<WGS, TL, CL>(&tmB, p, base, bars, unit, units, total, num_m, kt_all, rank);
    } else if (threadIdx.x == 0) {
      int g = 0;
      bool first = true;
      int w = unit;
      int fenced = -1;  // the expert whose maps (Params::emaps) this thread last acquired
      for (int j = 0;; ++j) {
        if (CL && rank == 1 && j > 0) w = receive_item(bars, j - 1);  // rank 0's claim during item j - 1
        // resolve the item and publish it (or the end) to the consumers
        int t = 0, half, kt0 = 0, ktiles = 0, n_idx = 0;
        int4 tile = make_int4(0, 0, 0, 0);
        bool single = false;  // kClusterM: a single (resolve_tile), this CTA loads its own weight tile
        if (w < total) {
          work_item(w, splits, kt_all, t, half, kt0, ktiles);
          single = resolve_tile<CLM>(t, num_m, n_cols, p, list_bm, rank, tile, n_idx);
          if (CLN) n_idx = 2 * n_idx + (int)rank;
        }
        const int q = j % kTileQ;
        if (j >= kTileQ) mbar_wait(tq_empty(q), ((j / kTileQ) - 1) & 1);
        st_shared_v4(tq_val(q), make_int4(w < total ? w : -1, n_idx, tile.y, tile.z));
        mbar_arrive(tq_full(q));
        if (w >= total) break;
        const int slot = p.expert_slot ? p.expert_slot[tile.x] : tile.x;
        const int wrow = slot * p.rows_per_slot;
        const int b0 = MODE == 0 ? wrow + n_idx * (C::kBN / 2) : wrow + n_idx * C::kBN;
        const int b1 = MODE == 0 ? wrow + p.up_offset + n_idx * (C::kBN / 2) : b0 + C::kBN / 2;
        // kClusterM: rank 1 of an expert's last 256-row tile may hold no tokens (no activation load)
        const bool a_live = !CLM || tile.y < tile.z;
        // kClusterN with p.trim_a: the second 64-row half of a tile with <= 64 rows holds no tokens (the next
        // expert's rows; its consumer warpgroup skips the tile), so its CTA does not load it and both CTAs expect
        // one half's bytes
        const bool half1_live = !CLN || !p.trim_a || tile.y + 64 < tile.z;
        // TL: the absorbed tail rows, one 32-row box per CTA (kClusterN: each CTA its own, not multicast; kClusterM:
        // the list's 256 + r row tile, i.e. rank 1's 128 + r rows, tile.y being this CTA's first row)
        const bool tail = TL && tail_rows(tile.y, tile.z, p.absorb) > 0;
        // Params::emaps: this expert's maps, whose row bound makes the TMA unit zero-fill the rows past the
        // expert's end (its padding rows: another expert's rows otherwise). The products of padding rows are never
        // stored, but the tensor cores' energy depends on the operands' bits, and the GEMMs run at the power
        // limit: with zero hidden states the layer ran 1.18x faster (bench/h200_data_power.py).
        const CUtensorMap* mA = &tmA;
        const CUtensorMap* mT = &tmT;
        if (p.emaps != nullptr) {
          mA = p.emaps + 4 * tile.x + p.emap_at;
          mT = mA + 1;
        }
        auto acquire_maps = [&]() {  // after the PDL wait: the maps are the previous kernels' output
          if (p.emaps != nullptr && tile.x != fenced) {
            tensormap_acquire(mA);
            tensormap_acquire(mT);
            fenced = tile.x;
          }
        };
        const uint32_t stage_tx = (!a_live                ? (uint32_t)C::kBBytes
                                   : CLN && !half1_live ? (uint32_t)(C::kABytes / 2 + C::kBBytes)
                                                        : (uint32_t)(C::kABytes + C::kBBytes)) +
                                  (tail ? (uint32_t)C::kTBytes : 0u);
        // A: the whole tile, or (kClusterN) this CTA's 64-row half, multicast to both CTAs at the same offset
        auto load_a = [&](uint32_t stage, uint32_t bar, int kcol) {
          if constexpr (CLN) {
            if (rank == 0 || half1_live)
              tma_load_2d_mc(stage + rank * 64 * kBK * 2, mA, bar, kcol, tile.y + (int)rank * 64, (uint16_t)3);
          } else if (a_live)
            tma_load_2d(stage, mA, bar, kcol, tile.y);
          if (tail) tma_load_2d(stage + C::kABytes + C::kBBytes, mT, bar, kcol, tile.y + 128);
        };
        // B: both 128-row boxes, or (kClusterM, a pair tile) this CTA's box, multicast to both CTAs at the same
        // offset
        auto load_b = [&](uint32_t b_dst, uint32_t bar, int kcol) {
          if (CLM && !single) {
            tma_load_2d_mc(b_dst + rank * (C::kBN / 2) * kBK * 2, &tmB, bar, kcol, rank ? b1 : b0, (uint16_t)3);
          } else {
            tma_load_2d(b_dst, &tmB, bar, kcol, b0);
            tma_load_2d(b_dst + (C::kBN / 2) * kBK * 2, &tmB, bar, kcol, b1);
          }
        };
        int kt = 0;
        if (first) {
          // The first stages' weight tiles do not depend on the previous kernel: fetch them before the PDL wait,
          // so weight streaming starts while the previous kernel drains (decode: the GEMMs are weight-bound).
          const int pre = ktiles < kStages ? ktiles : kStages;
          for (int i = 0; i < pre; ++i) {
            mbar_expect_tx(full(i), stage_tx);
            load_b(base + i * C::kStageBytes + C::kABytes, full(i), (kt0 + i) * kBK);
          }
          pdl_wait();
          pdl_trigger();
          acquire_maps();
          for (int i = 0; i < pre; ++i) load_a(base + i * C::kStageBytes, full(i), (kt0 + i) * kBK);
          kt = pre;
          g = pre;
          first = false;
        } else {
          acquire_maps();
        }
        // Claim the next item now (after the PDL wait: the scan that zeroed the counter has completed); its value
        // is first needed after this item's loads are issued. CL: rank 0 claims for the cluster and hands it over.
        const int w_next = claim_next_item<CL>(p.tile_counter, bars, j, w, step, units, rank);
        for (; kt < ktiles; ++kt, ++g) {
          const int s = g % kStages;
          if (g >= kStages) mbar_wait(empty(s), ((g / kStages) - 1) & 1);
          const uint32_t a_dst = base + s * C::kStageBytes;
          mbar_expect_tx(full(s), stage_tx);
          load_a(a_dst, full(s), (kt0 + kt) * kBK);
          load_b(a_dst + C::kABytes, full(s), (kt0 + kt) * kBK);
        }
        w = w_next;
      }
    }
  } else {
    // ---------------- consumers ----------------
    if (WGS == 2) {
      // the pool is the launch's 168 per thread x 384: 128 x 56 + 256 x 224 = 128 x 64 + 256 x 216 = 64512
      if constexpr (GA && TL)
        setmaxnreg_inc<216>();
      else if constexpr (GA)
        setmaxnreg_inc<224>();
      else
        setmaxnreg_inc<232>();
    }
    const int cw = wgi - 1;  // consumer index: token rows cw*64 .. cw*64+63
    const bool leader = (threadIdx.x & 31) == 0;  // lane 0 of each warp: releases stages (kConsumerWarps)
    // staged epilogue: this warp's two 2 KB buffers (1 KB aligned after the 512 bytes of barriers)
    const uint32_t stg = bars + 1024 + (uint32_t)((cw * 4 + ((threadIdx.x & 127) >> 5)) * 2 * C::kStagingBuf);
    int chunk = 0;
    int g = 0;
    for (int j = 0;; ++j) {
      const int q = j % kTileQ;
      mbar_wait(tq_full(q), (j / kTileQ) & 1);
      const int4 item = ld_shared_v4(tq_val(q));
      __syncwarp();
      if (leader) mbar_arrive(tq_empty(q));
      const int w = item.x;
      if (w < 0) break;
      int t, half, kt0, ktiles;
      work_item(w, splits, kt_all, t, half, kt0, ktiles);
      const int n_idx = item.y, row0 = item.z, row_end = item.w;
      const bool live = row0 + cw * 64 < row_end;
      if (!live) {
        skip_tile<CL>(bars, ktiles, g, leader, peer);
        g += ktiles;
        continue;
      }
      const int tt = threadIdx.x & 127;
      float row_w[2] = {0.f, 0.f};
      if (MODE == 1) load_row_w(p, row0 + cw * 64, row_end, tt >> 5, tt & 31, row_w);
      const int row0w = row0 + cw * 64 + (tt >> 5) * 16;  // this warp's first row
      // fused combine: lane l < 16 holds the token of the warp's row l (loaded before the mainloop, as row_w)
      const bool fused = MODE == 1 && p.combine_out != nullptr;
      int tok_l = -1;
      if (fused && row0w + (tt & 15) < row_end) tok_l = p.row_token[row0w + (tt & 15)];
      float d[128];
      bool done = false;
      if constexpr (TL) {
        if (tail_rows(row0, row_end, p.absorb) > 0) {
          float dt[32], tw[8] = {};
          if (MODE == 1) load_tail_w(p, row0 + 128, row_end, tt & 31, tw);
          mma_tile<WGS, false, 1, CL, GA, TL, true>(d, base, bars, cw, ktiles, g, leader, peer, dt);
          store_tail_direct<MODE>(dt, p, half ? p.C2 : p.C, row0 + 128, row_end, n_idx, cw, tt >> 5, tt & 31, tw);
          done = true;
        }
      }
      if (!done) mma_tile<WGS, false, 1, CL, GA, TL>(d, base, bars, cw, ktiles, g, leader, peer);
      g += ktiles;

      if (fused)
        reduce_warp_staged<C::kBN>(d, p, stg, n_idx, tt & 31, row_w, tok_l);
      else if (TL && p.epi_tma && p.epi64 && row0w + 16 <= row_end)
        store_warp_staged<MODE, C::kBN, 64, 1>(d, half ? &tmC2 : &tmC, stg, row0w, n_idx, tt & 31, row_w, chunk);
      else if (p.epi_tma && row0w + 16 <= row_end)
        store_warp_staged<MODE, C::kBN, C::kEpiCols>(d, half ? &tmC2 : &tmC, stg, row0w, n_idx, tt & 31, row_w,
                                                     chunk);
      else
        store_tile_direct<MODE, C::kBN>(d, p, half ? p.C2 : p.C, row0 + cw * 64, row_end, n_idx, tt >> 5, tt & 31,
                                        row_w);
    }
    // the staged epilogue's last stores must have read their buffers before the CTA's shared memory goes
    if (chunk > 0 && leader) bulk_wait_all();
  }
  // CL: neither CTA may exit while the other can still multicast into its stages or arrive on its barriers.
  if constexpr (CL) {
    __syncwarp();  // the producer warp's lane 0 ran the loop alone: converge before the aligned barrier
    cluster_sync_all();
  }
}

// One tile per CTA (the variant measured fastest for 128-row tiles in the compute-bound regime: the next CTA's
// prologue overlaps this one's epilogue, which the persistent kernel's single CTA per SM cannot do).
// MODE 0: GEMM1 (x_perm * [gate|up], SwiGLU -> h). MODE 1: GEMM2 (h * down, * routing weight -> y).
// SMEM_EPI: the epilogue goes through shared memory (the free stage buffers) and leaves by one bulk copy per
// output row, instead of 4-byte stores from the MMA fragment layout (8 rows x 16 bytes per warp store).
// TALL: the 256 x 128 tile (Cfg), direct-store epilogue only.
// GEMM2 with p.k_splits = 2: CTA (x, y) computes k-tiles of half y of K and writes its partial product (routing
// weight applied: it is linear) to C (y = 0) or C2 (y = 1); the combine sums both. The host asks for it when the
// grid is a few waves of long tiles (sy_moe_forward), where the last, partial wave leaves most SMs idle.
template <int WGS, int MODE, bool SMEM_EPI, bool TALL = false>
__global__ void __launch_bounds__((WGS + 1) * 128, 1)
    wgmma_tile_kernel(const __grid_constant__ CUtensorMap tmA, const __grid_constant__ CUtensorMap tmB,
                      const __grid_constant__ CUtensorMap, const __grid_constant__ CUtensorMap,
                      const __grid_constant__ CUtensorMap /*tmT: persistent TL only*/, const Params p) {
  using C = Cfg<WGS, TALL>;
  static_assert(!(SMEM_EPI && TALL), "the shared-memory epilogue is written for the 64-row warpgroup tile");
  extern __shared__ __align__(1024) unsigned char wg_smem_raw[];
  const uint32_t raw = smem_u32(wg_smem_raw);
  const uint32_t base = (raw + 1023) & ~1023u;
  const uint32_t bars = base + kStages * C::kStageBytes;  // full[s] at bars + 8s, empty[s] at bars + 64 + 8s
  auto full = [&](int s) { return bars + 8 * s; };
  auto empty = [&](int s) { return bars + 64 + 8 * s; };

  // ---- tile coordinates: grouped raster over the device-side tile list (tile_coords) ----
  const int num_m = *p.num_tiles;  // written >= 2 launches back: complete when this kernel runs (PDL rules)
  if ((int)blockIdx.x >= num_m * p.n_tiles) {
    pdl_wait();
    return;
  }
  int m_idx, n_idx;
  tile_coords(blockIdx.x, num_m, p.n_tiles, p.group_m, p.tiles, C::kBM, m_idx, n_idx);
  const int4 tile = p.tiles[m_idx];
  const int row0 = tile.y, row_end = tile.z;
  const int slot = p.expert_slot ? p.expert_slot[tile.x] : tile.x;
  const int kt_all = (p.K + kBK - 1) / kBK;
  const int splits = MODE == 1 ? p.k_splits : 1;
  const int kper = (kt_all + splits - 1) / splits;
  const int kt0 = (int)blockIdx.y * kper;  // first k-tile of this CTA's part of K
  const int ktiles = min(kper, kt_all - kt0);
  bf16* const Cout = blockIdx.y ? p.C2 : p.C;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full(s), 1);
      mbar_init(empty(s), WGS * kConsumerWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  const int wgi = threadIdx.x / 128;
  if (wgi == 0) {
    // ---------------- producer ----------------
    if (WGS == 2) setmaxnreg_dec<40>();
    if (threadIdx.x == 0) {
      const int wrow = slot * p.rows_per_slot;
      const int b0 = MODE == 0 ? wrow + n_idx * (C::kBN / 2) : wrow + n_idx * C::kBN;
      const int b1 = MODE == 0 ? wrow + p.up_offset + n_idx * (C::kBN / 2) : b0 + C::kBN / 2;
      // Weights first, before the PDL wait (they do not depend on the previous kernel), then the activations.
      const int pre = ktiles < kStages ? ktiles : kStages;
      for (int kt = 0; kt < pre; ++kt) {
        const uint32_t b_dst = base + kt * C::kStageBytes + C::kABytes;
        mbar_expect_tx(full(kt), C::kStageBytes);
        tma_load_2d(b_dst, &tmB, full(kt), (kt0 + kt) * kBK, b0);
        tma_load_2d(b_dst + (C::kBN / 2) * kBK * 2, &tmB, full(kt), (kt0 + kt) * kBK, b1);
      }
      pdl_wait();
      pdl_trigger();
      for (int kt = 0; kt < pre; ++kt)
        tma_load_2d(base + kt * C::kStageBytes, &tmA, full(kt), (kt0 + kt) * kBK, row0);
      for (int kt = pre; kt < ktiles; ++kt) {
        const int s = kt % kStages;
        if (kt >= kStages) mbar_wait(empty(s), ((kt / kStages) - 1) & 1);
        const uint32_t a_dst = base + s * C::kStageBytes;
        const uint32_t b_dst = a_dst + C::kABytes;
        mbar_expect_tx(full(s), C::kStageBytes);
        tma_load_2d(a_dst, &tmA, full(s), (kt0 + kt) * kBK, row0);
        tma_load_2d(b_dst, &tmB, full(s), (kt0 + kt) * kBK, b0);
        tma_load_2d(b_dst + (C::kBN / 2) * kBK * 2, &tmB, full(s), (kt0 + kt) * kBK, b1);
      }
    }
  } else {
    // ---------------- consumers ----------------
    if (WGS == 2) setmaxnreg_inc<232>();
    const int cw = wgi - 1;  // consumer index: token rows cw*kWgRows .. +kWgRows-1 of the tile
    const bool leader = (threadIdx.x & 31) == 0;  // lane 0 of each warp: releases stages (kConsumerWarps)
    const int wrow0 = row0 + cw * C::kWgRows;
    // 64-row halves of this warpgroup's rows that hold tokens: 0 (skip), 1, or (TALL) 2. With the 256-row tile an
    // expert's last tile keeps the 64-row MMA granularity of the 128-row one.
    const int halves = wrow0 >= row_end ? 0 : (TALL && wrow0 + 64 < row_end) ? 2 : 1;
    const bool live = halves > 0;
    float d[128];
    if (!live)
      skip_tile(bars, ktiles, 0, leader);
    else if (TALL && halves == 2)
      mma_tile<WGS, TALL, TALL ? 2 : 1>(d, base, bars, cw, ktiles, 0, leader);
    else
      mma_tile<WGS, TALL, 1>(d, base, bars, cw, ktiles, 0, leader);
    const int t = threadIdx.x & 127, warp = t >> 5, lane = t & 31;
    if (SMEM_EPI) {
      // Once both consumer warpgroups are past their last wgmma, every TMA load of this tile has landed and been
      // read: the stage buffers are free to hold the output tile.
      named_bar_sync(1, WGS * 128);
      if (!live) return;
      constexpr int OUTC = MODE == 0 ? C::kBN / 2 : C::kBN;  // output columns of the tile
      constexpr int PITCH = OUTC * 2 + 16;             // +16 B: the 8 rows of a fragment store hit distinct banks
      const uint32_t stg = base + cw * 64 * PITCH;
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int r = warp * 16 + (lane >> 2) + hh * 8;
        const int prow = row0 + cw * 64 + r;
        const uint32_t srow = stg + r * PITCH + 4 * (lane & 3);
        if (MODE == 0) {
#pragma unroll
          for (int j = 0; j < 16; ++j) {
            const float g0 = d[j * 4 + hh * 2], g1 = d[j * 4 + hh * 2 + 1];
            const float u0 = d[(j + 16) * 4 + hh * 2], u1 = d[(j + 16) * 4 + hh * 2 + 1];
            st_shared_b32(srow + j * 16, pack_bf16x2(sy_silu_mul(g0, u0), sy_silu_mul(g1, u1)));
          }
        } else {
          const float wr = prow < row_end ? p.row_w[prow] : 0.f;
#pragma unroll
          for (int j = 0; j < 32; ++j)
            st_shared_b32(srow + j * 16, pack_bf16x2(d[j * 4 + hh * 2] * wr, d[j * 4 + hh * 2 + 1] * wr));
        }
      }
      // generic-proxy smem writes -> visible to the bulk-copy (async proxy) reads, then the warpgroup barrier
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      named_bar_sync(2 + cw, 128);
      if (t < 64) {
        const int prow = row0 + cw * 64 + t;
        const int col0 = n_idx * OUTC;
        const int cols = min(OUTC, p.N - col0);
        if (prow < row_end && cols > 0) {
          bulk_store(Cout + (size_t)prow * p.N + col0, stg + t * PITCH, (uint32_t)cols * 2);
          bulk_commit_wait_read();  // the smem must outlive the copy's reads (the CTA exits next)
        }
      }
      return;
    }
    if (!live) return;

    float row_w[2] = {0.f, 0.f};
    if (MODE == 1) load_row_w(p, wrow0, row_end, warp, lane, row_w);
    store_tile_direct<MODE, C::kBN>(d, p, Cout, wrow0, row_end, n_idx, warp, lane, row_w);
    if (TALL && halves == 2) {
      if (MODE == 1) load_row_w(p, wrow0 + 64, row_end, warp, lane, row_w);
      store_tile_direct<MODE, C::kBN>(d + 64, p, Cout, wrow0 + 64, row_end, n_idx, warp, lane, row_w);
    }
  }
}

}  // namespace wg
