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

#include "wgmma_gen.cuh"

namespace wg {

constexpr int kBK = 64;      // one 128-byte swizzle atom of bf16
constexpr int kStages = 4;

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
  int* tile_counter;  // persistent kernel: null = static round robin; else dynamic scheduling (wgmma_gemm_kernel),
                      // a device counter that the scan of the same call zeroes (scan_block)
};

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
__device__ __forceinline__ void mbar_wait(uint32_t bar, int parity) {
  uint32_t ok = 0;
  do {
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
__device__ __forceinline__ void bulk_commit_wait_read() {
  asm volatile("cp.async.bulk.commit_group;\ncp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
__device__ __forceinline__ void st_shared_b32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
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
template <int WGS, bool TALL = false>
struct Cfg {
  static_assert(!TALL || WGS == 2, "the 256-row tile has two consumer warpgroups");
  static constexpr int kWgRows = TALL ? 128 : 64;  // token rows per consumer warpgroup
  static constexpr int kBM = kWgRows * WGS;
  static constexpr int kBN = TALL ? 128 : 256;     // weight rows per CTA
  static constexpr int kThreads = (WGS + 1) * 128;
  static constexpr int kABytes = kBM * kBK * 2, kBBytes = kBN * kBK * 2;
  static constexpr int kStageBytes = kABytes + kBBytes;
  static constexpr int kSmem = kStages * kStageBytes + 1024 /*align*/ + 256 /*barriers*/;
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

// One consumer warpgroup's mainloop over one tile (k-tiles g0 .. g0+ktiles-1 of the CTA's barrier sequence). The
// first MMA of the tile runs with scale-d = 0 instead of zeroing the accumulators first: non-wgmma writes to the
// accumulator registers, and wgmma inside a branch that differs between tiles, made ptxas serialize the wgmma
// pipeline (warnings C7515/C7518 in the persistent kernel; nvcc -Xptxas -v shows them).
// TALL: HALVES (1 or 2) of the warpgroup's two 64-row halves hold tokens; a half past the expert's last token
// issues no MMAs (d[64..127] are then left unwritten). The half count is a template argument, not a run-time test
// inside the loop, for the same ptxas reason as above.
template <int WGS, bool TALL, int HALVES>
__device__ __forceinline__ void mma_tile(float* d, uint32_t base, uint32_t bars, int cw, int ktiles, int g0,
                                         bool warp_leader) {
  using C = Cfg<WGS, TALL>;
  static_assert(HALVES == 1 || (TALL && HALVES == 2), "two halves only in the 256-row tile");
  for (int kt = 0; kt < ktiles; ++kt) {
    const int g = g0 + kt, s = g % kStages;
    mbar_wait(bars + 8 * s, (g / kStages) & 1);
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
      }
    }
    wg_commit();
    wg_wait<1>();
    if (kt > 0 && warp_leader) mbar_arrive(bars + 64 + 8 * ((g - 1) % kStages));
  }
  wg_wait<0>();
  if (warp_leader) mbar_arrive(bars + 64 + 8 * ((g0 + ktiles - 1) % kStages));
#pragma unroll
  for (int i = 0; i < (TALL ? 64 * HALVES : 128); ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// A consumer whose 64 rows are all past the expert's last token (the tail tile of an expert) skips the MMAs but
// keeps the barrier protocol, so the other warpgroup gets the tensor cores to itself. Each warp releases each stage
// itself after its own wait (see kConsumerWarps: nothing else keeps the warps of a skipping warpgroup in step).
__device__ __forceinline__ void skip_tile(uint32_t bars, int ktiles, int g0, bool warp_leader) {
  for (int kt = 0; kt < ktiles; ++kt) {
    const int g = g0 + kt, s = g % kStages;
    mbar_wait(bars + 8 * s, (g / kStages) & 1);
    __syncwarp();
    if (warp_leader) mbar_arrive(bars + 64 + 8 * s);
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
// bm: the token tile rows the tile list was built with (the kernel's kBM).
__device__ __forceinline__ void tile_coords(int t, int num_m, int n_tiles, int group_m, const int4* tiles, int bm,
                                            int& m_idx, int& n_idx) {
  if (group_m > 0) {
    const int q = t / n_tiles;
    const int4 tq = tiles[q];
    const int first = q - tq.w;
    const int ex_row0 = tq.y - tq.w * bm;
    const int m_e = (tq.z - ex_row0 + bm - 1) / bm;
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

// Epilogue with direct global stores, shared by both GEMM kernels: 64 token rows (from `row0`) of an m64nBN
// accumulator fragment `d` -> C. MODE 0: silu(gate) * up over the tile's BN/2 output columns; MODE 1: times the
// row's routing weight over BN columns. Rows past `row_end` and columns past N are skipped.
template <int MODE, int BN>
__device__ __forceinline__ void store_tile_direct(const float* d, const Params& p, bf16* Cout, int row0, int row_end,
                                                  int n_idx, int warp, int lane) {
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
        const float h0 = g0 / (1.f + __expf(-g0)) * u0, h1 = g1 / (1.f + __expf(-g1)) * u1;
        *reinterpret_cast<__nv_bfloat162*>(Cout + (size_t)prow * p.N + col) = __floats2bfloat162_rn(h0, h1);
      }
    } else {
      const float wr = p.row_w[prow];
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
// a slot (count WGS * kConsumerWarps), for the same parity reason as the stages (kConsumerWarps).
constexpr int kTileQ = 4;

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
template <int WGS, int MODE, bool PERSIST>
__global__ void __launch_bounds__((WGS + 1) * 128, 1)
    wgmma_gemm_kernel(const __grid_constant__ CUtensorMap tmA, const __grid_constant__ CUtensorMap tmB,
                      const Params p) {
  using C = Cfg<WGS>;
  extern __shared__ __align__(1024) unsigned char wg_smem_raw[];
  const uint32_t raw = smem_u32(wg_smem_raw);
  const uint32_t base = (raw + 1023) & ~1023u;
  // barriers (256 bytes, Cfg::kSmem): full[s] at +8s, empty[s] at +64+8s, tile queue full[q] at +128+8q, empty[q]
  // at +160+8q, its values at +192+4q
  const uint32_t bars = base + kStages * C::kStageBytes;
  auto full = [&](int s) { return bars + 8 * s; };
  auto empty = [&](int s) { return bars + 64 + 8 * s; };
  auto tq_full = [&](int q) { return bars + 128 + 8 * q; };
  auto tq_empty = [&](int q) { return bars + 160 + 8 * q; };
  auto tq_val = [&](int q) { return bars + 192 + 4 * q; };

  const int num_m = *p.num_tiles;  // written >= 2 launches back: complete when this kernel runs (PDL rules)
  const int splits = MODE == 1 ? p.k_splits : 1;
  const int total = num_m * p.n_tiles * splits;  // work items
  if ((int)blockIdx.x >= total) {
    pdl_wait();
    return;
  }
  const int step = PERSIST ? (int)gridDim.x : total;
  const int kt_all = (p.K + kBK - 1) / kBK;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full(s), 1);
      mbar_init(empty(s), WGS * kConsumerWarps);
    }
    for (int q = 0; q < kTileQ; ++q) {
      mbar_init(tq_full(q), 1);
      mbar_init(tq_empty(q), WGS * kConsumerWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  const int wgi = threadIdx.x / 128;
  if (wgi == 0) {
    // ---------------- producer ----------------
    if (WGS == 2) setmaxnreg_dec<40>();
    if (threadIdx.x == 0) {
      int g = 0;
      bool first = true;
      int w = blockIdx.x;
      for (int j = 0;; ++j) {
        // publish the item (or the end) to the consumers
        const int q = j % kTileQ;
        if (j >= kTileQ) mbar_wait(tq_empty(q), ((j / kTileQ) - 1) & 1);
        st_shared_b32(tq_val(q), (uint32_t)(w < total ? w : -1));
        mbar_arrive(tq_full(q));
        if (w >= total) break;
        int t, half, kt0, ktiles;
        work_item(w, splits, kt_all, t, half, kt0, ktiles);
        int m_idx, n_idx;
        tile_coords(t, num_m, p.n_tiles, p.group_m, p.tiles, C::kBM, m_idx, n_idx);
        const int4 tile = p.tiles[m_idx];
        const int slot = p.expert_slot ? p.expert_slot[tile.x] : tile.x;
        const int wrow = slot * p.rows_per_slot;
        const int b0 = MODE == 0 ? wrow + n_idx * (C::kBN / 2) : wrow + n_idx * C::kBN;
        const int b1 = MODE == 0 ? wrow + p.up_offset + n_idx * (C::kBN / 2) : b0 + C::kBN / 2;
        int kt = 0;
        if (first) {
          // The first stages' weight tiles do not depend on the previous kernel: fetch them before the PDL wait,
          // so weight streaming starts while the previous kernel drains (decode: the GEMMs are weight-bound).
          const int pre = ktiles < kStages ? ktiles : kStages;
          for (int i = 0; i < pre; ++i) {
            const uint32_t b_dst = base + i * C::kStageBytes + C::kABytes;
            mbar_expect_tx(full(i), C::kStageBytes);
            tma_load_2d(b_dst, &tmB, full(i), (kt0 + i) * kBK, b0);
            tma_load_2d(b_dst + (C::kBN / 2) * kBK * 2, &tmB, full(i), (kt0 + i) * kBK, b1);
          }
          pdl_wait();
          pdl_trigger();
          for (int i = 0; i < pre; ++i) tma_load_2d(base + i * C::kStageBytes, &tmA, full(i), (kt0 + i) * kBK, tile.y);
          kt = pre;
          g = pre;
          first = false;
        }
        // Claim the next item now (after the PDL wait: the scan that zeroed the counter has completed); its value
        // is first needed after this item's loads are issued.
        const int w_next = p.tile_counter ? (int)gridDim.x + atomic_add_relaxed(p.tile_counter, 1) : w + step;
        for (; kt < ktiles; ++kt, ++g) {
          const int s = g % kStages;
          if (g >= kStages) mbar_wait(empty(s), ((g / kStages) - 1) & 1);
          const uint32_t a_dst = base + s * C::kStageBytes;
          const uint32_t b_dst = a_dst + C::kABytes;
          mbar_expect_tx(full(s), C::kStageBytes);
          tma_load_2d(a_dst, &tmA, full(s), (kt0 + kt) * kBK, tile.y);
          tma_load_2d(b_dst, &tmB, full(s), (kt0 + kt) * kBK, b0);
          tma_load_2d(b_dst + (C::kBN / 2) * kBK * 2, &tmB, full(s), (kt0 + kt) * kBK, b1);
        }
        w = w_next;
      }
    }
  } else {
    // ---------------- consumers ----------------
    if (WGS == 2) setmaxnreg_inc<232>();
    const int cw = wgi - 1;  // consumer index: token rows cw*64 .. cw*64+63
    const bool leader = (threadIdx.x & 31) == 0;  // lane 0 of each warp: releases stages (kConsumerWarps)
    int g = 0;
    for (int j = 0;; ++j) {
      const int q = j % kTileQ;
      mbar_wait(tq_full(q), (j / kTileQ) & 1);
      const int w = ld_shared_s32(tq_val(q));
      __syncwarp();
      if (leader) mbar_arrive(tq_empty(q));
      if (w < 0) break;
      int t, half, kt0, ktiles;
      work_item(w, splits, kt_all, t, half, kt0, ktiles);
      int m_idx, n_idx;
      tile_coords(t, num_m, p.n_tiles, p.group_m, p.tiles, C::kBM, m_idx, n_idx);
      const int4 tile = p.tiles[m_idx];
      const int row0 = tile.y, row_end = tile.z;
      const bool live = row0 + cw * 64 < row_end;
      if (!live) {
        skip_tile(bars, ktiles, g, leader);
        g += ktiles;
        continue;
      }
      float d[128];
      mma_tile<WGS, false, 1>(d, base, bars, cw, ktiles, g, leader);
      g += ktiles;

      const int tt = threadIdx.x & 127;
      store_tile_direct<MODE, C::kBN>(d, p, half ? p.C2 : p.C, row0 + cw * 64, row_end, n_idx, tt >> 5, tt & 31);
    }
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
                      const Params p) {
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
            st_shared_b32(srow + j * 16, pack_bf16x2(g0 / (1.f + __expf(-g0)) * u0, g1 / (1.f + __expf(-g1)) * u1));
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

    store_tile_direct<MODE, C::kBN>(d, p, Cout, wrow0, row_end, n_idx, warp, lane);
    if (TALL && halves == 2)
      store_tile_direct<MODE, C::kBN>(d + 64, p, Cout, wrow0 + 64, row_end, n_idx, warp, lane);
  }
}

}  // namespace wg
