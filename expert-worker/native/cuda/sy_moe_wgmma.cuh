// Hopper (sm_90a) grouped GEMM for the compute-bound and middle regimes: TMA loads into 128B-swizzled shared
// memory completing on mbarriers, one producer warpgroup, one or two consumer warpgroups issuing wgmma
// m64n256k16 (fp32 accumulators in registers), 4-stage ring. The CTA tile is (64 * consumer warpgroups) token rows
// x 256 weight rows; for GEMM1 the 256 weight rows are 128 gate rows + the matching 128 up rows, so SwiGLU is done
// in registers (column c pairs with c + 128 in the same thread). Included by sy_moe.cu only.
#pragma once
#include <cuda.h>

#include "wgmma_gen.cuh"

namespace wg {

constexpr int kBK = 64;      // one 128-byte swizzle atom of bf16
constexpr int kBN = 256;     // weight rows per CTA
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
template <int R>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R));
}
template <int R>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R));
}

template <int WGS>
struct Cfg {
  static constexpr int kBM = 64 * WGS;
  static constexpr int kThreads = (WGS + 1) * 128;
  static constexpr int kABytes = kBM * kBK * 2, kBBytes = kBN * kBK * 2;
  static constexpr int kStageBytes = kABytes + kBBytes;
  static constexpr int kSmem = kStages * kStageBytes + 1024 /*align*/ + 256 /*barriers*/;
};

// Dense tile index -> (token tile, weight tile), grouped raster: kGroupM consecutive token tiles (mostly of one
// expert) sweep the weight tiles together, so a weight tile read from HBM is reused from L2.
__device__ __forceinline__ void tile_coords(int t, int num_m, int n_tiles, int& m_idx, int& n_idx) {
  const int width = kGroupM * n_tiles;
  const int first_m = (t / width) * kGroupM;
  const int gsize = min(num_m - first_m, kGroupM);
  const int r = t - (t / width) * width;
  m_idx = first_m + r % gsize;
  n_idx = r / gsize;
}

// MODE 0: GEMM1 (x_perm * [gate|up], SwiGLU -> h). MODE 1: GEMM2 (h * down, * routing weight -> y).
// PERSIST: one CTA per SM loops over tiles; the producer runs ahead into the next tile while the consumers do the
// epilogue, and the barrier phases carry over (g counts k-tiles across tiles). Otherwise one tile per CTA.
template <int WGS, int MODE, bool PERSIST>
__global__ void __launch_bounds__((WGS + 1) * 128, 1)
    wgmma_gemm_kernel(const __grid_constant__ CUtensorMap tmA, const __grid_constant__ CUtensorMap tmB,
                      const Params p) {
  using C = Cfg<WGS>;
  extern __shared__ __align__(1024) unsigned char wg_smem_raw[];
  const uint32_t raw = smem_u32(wg_smem_raw);
  const uint32_t base = (raw + 1023) & ~1023u;
  const uint32_t bars = base + kStages * C::kStageBytes;  // full[s] at bars + 8s, empty[s] at bars + 64 + 8s
  auto full = [&](int s) { return bars + 8 * s; };
  auto empty = [&](int s) { return bars + 64 + 8 * s; };

  const int num_m = *p.num_tiles;
  const int total = num_m * p.n_tiles;
  if ((int)blockIdx.x >= total) return;
  const int step = PERSIST ? (int)gridDim.x : total;
  const int ktiles = (p.K + kBK - 1) / kBK;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full(s), 1);
      mbar_init(empty(s), WGS);
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
      for (int t = blockIdx.x; t < total; t += step) {
        int m_idx, n_idx;
        tile_coords(t, num_m, p.n_tiles, m_idx, n_idx);
        const int4 tile = p.tiles[m_idx];
        const int slot = p.expert_slot ? p.expert_slot[tile.x] : tile.x;
        const int wrow = slot * p.rows_per_slot;
        const int b0 = MODE == 0 ? wrow + n_idx * (kBN / 2) : wrow + n_idx * kBN;
        const int b1 = MODE == 0 ? wrow + p.up_offset + n_idx * (kBN / 2) : b0 + kBN / 2;
        for (int kt = 0; kt < ktiles; ++kt, ++g) {
          const int s = g % kStages;
          if (g >= kStages) mbar_wait(empty(s), ((g / kStages) - 1) & 1);
          const uint32_t a_dst = base + s * C::kStageBytes;
          const uint32_t b_dst = a_dst + C::kABytes;
          mbar_expect_tx(full(s), C::kStageBytes);
          tma_load_2d(a_dst, &tmA, full(s), kt * kBK, tile.y);
          tma_load_2d(b_dst, &tmB, full(s), kt * kBK, b0);
          tma_load_2d(b_dst + (kBN / 2) * kBK * 2, &tmB, full(s), kt * kBK, b1);
        }
      }
    }
  } else {
    // ---------------- consumers ----------------
    if (WGS == 2) setmaxnreg_inc<232>();
    const int cw = wgi - 1;  // consumer index: token rows cw*64 .. cw*64+63
    const bool leader = (threadIdx.x & 127) == 0;
    int g = 0;
    for (int t = blockIdx.x; t < total; t += step) {
      int m_idx, n_idx;
      tile_coords(t, num_m, p.n_tiles, m_idx, n_idx);
      const int4 tile = p.tiles[m_idx];
      const int row0 = tile.y, row_end = tile.z;
      // A consumer whose 64 rows are all past the expert's last token (the tail tile of an expert) skips the
      // MMAs but keeps the barrier protocol, so the other warpgroup gets the tensor cores to itself.
      const bool live = row0 + cw * 64 < row_end;
      float d[128];
#pragma unroll
      for (int i = 0; i < 128; ++i) d[i] = 0.f;
      for (int kt = 0; kt < ktiles; ++kt, ++g) {
        const int s = g % kStages;
        mbar_wait(full(s), (g / kStages) & 1);
        if (!live) {
          if (leader) mbar_arrive(empty(s));
          continue;
        }
        const uint32_t a_s = base + s * C::kStageBytes + cw * 64 * kBK * 2;
        const uint32_t b_s = base + s * C::kStageBytes + C::kABytes;
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk)
          wgmma_m64n256k16(d, desc_sw128(a_s + kk * 32), desc_sw128(b_s + kk * 32), 1);
        wg_commit();
        wg_wait<1>();
        if (kt > 0 && leader) mbar_arrive(empty((g - 1) % kStages));
      }
      if (!live) continue;
      wg_wait<0>();
      if (leader) mbar_arrive(empty((g - 1) % kStages));
#pragma unroll
      for (int i = 0; i < 128; ++i) asm volatile("" : "+f"(d[i])::"memory");

      const int tt = threadIdx.x & 127, warp = tt >> 5, lane = tt & 31;
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int prow = row0 + cw * 64 + warp * 16 + (lane >> 2) + hh * 8;
        if (prow >= row_end) continue;
        if (MODE == 0) {
#pragma unroll
          for (int j = 0; j < 16; ++j) {
            const int col = n_idx * (kBN / 2) + j * 8 + 2 * (lane & 3);
            if (col >= p.N) continue;
            const float g0 = d[j * 4 + hh * 2], g1 = d[j * 4 + hh * 2 + 1];
            const float u0 = d[(j + 16) * 4 + hh * 2], u1 = d[(j + 16) * 4 + hh * 2 + 1];
            const float h0 = g0 / (1.f + __expf(-g0)) * u0, h1 = g1 / (1.f + __expf(-g1)) * u1;
            *reinterpret_cast<__nv_bfloat162*>(p.C + (size_t)prow * p.N + col) = __floats2bfloat162_rn(h0, h1);
          }
        } else {
          const float wr = p.row_w[prow];
#pragma unroll
          for (int j = 0; j < 32; ++j) {
            const int col = n_idx * kBN + j * 8 + 2 * (lane & 3);
            if (col >= p.N) continue;
            *reinterpret_cast<__nv_bfloat162*>(p.C + (size_t)prow * p.N + col) =
                __floats2bfloat162_rn(d[j * 4 + hh * 2] * wr, d[j * 4 + hh * 2 + 1] * wr);
          }
        }
      }
    }
  }
}

// One tile per CTA (the variant measured fastest for 128-row tiles in the compute-bound regime: the next CTA's
// prologue overlaps this one's epilogue, which the persistent kernel's single CTA per SM cannot do).
// MODE 0: GEMM1 (x_perm * [gate|up], SwiGLU -> h). MODE 1: GEMM2 (h * down, * routing weight -> y).
template <int WGS, int MODE>
__global__ void __launch_bounds__((WGS + 1) * 128, 1)
    wgmma_tile_kernel(const __grid_constant__ CUtensorMap tmA, const __grid_constant__ CUtensorMap tmB,
                      const Params p) {
  using C = Cfg<WGS>;
  extern __shared__ __align__(1024) unsigned char wg_smem_raw[];
  const uint32_t raw = smem_u32(wg_smem_raw);
  const uint32_t base = (raw + 1023) & ~1023u;
  const uint32_t bars = base + kStages * C::kStageBytes;  // full[s] at bars + 8s, empty[s] at bars + 64 + 8s
  auto full = [&](int s) { return bars + 8 * s; };
  auto empty = [&](int s) { return bars + 64 + 8 * s; };

  // ---- tile coordinates: grouped raster over the device-side tile list (same as the mma.sync kernel) ----
  const int num_m = *p.num_tiles;
  const int pid = blockIdx.x;
  const int width = kGroupM * p.n_tiles;
  const int first_m = (pid / width) * kGroupM;
  if (first_m >= num_m) return;
  const int gsize = min(num_m - first_m, kGroupM);
  const int in_group = pid % width;
  if (in_group >= gsize * p.n_tiles) return;
  const int m_idx = first_m + in_group % gsize;
  const int n_idx = in_group / gsize;
  const int4 tile = p.tiles[m_idx];
  const int row0 = tile.y, row_end = tile.z;
  const int slot = p.expert_slot ? p.expert_slot[tile.x] : tile.x;
  const int ktiles = (p.K + kBK - 1) / kBK;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full(s), 1);
      mbar_init(empty(s), WGS);
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
      const int b0 = MODE == 0 ? wrow + n_idx * (kBN / 2) : wrow + n_idx * kBN;
      const int b1 = MODE == 0 ? wrow + p.up_offset + n_idx * (kBN / 2) : b0 + kBN / 2;
      for (int kt = 0; kt < ktiles; ++kt) {
        const int s = kt % kStages;
        if (kt >= kStages) mbar_wait(empty(s), ((kt / kStages) - 1) & 1);
        const uint32_t a_dst = base + s * C::kStageBytes;
        const uint32_t b_dst = a_dst + C::kABytes;
        mbar_expect_tx(full(s), C::kStageBytes);
        tma_load_2d(a_dst, &tmA, full(s), kt * kBK, row0);
        tma_load_2d(b_dst, &tmB, full(s), kt * kBK, b0);
        tma_load_2d(b_dst + (kBN / 2) * kBK * 2, &tmB, full(s), kt * kBK, b1);
      }
    }
  } else {
    // ---------------- consumers ----------------
    if (WGS == 2) setmaxnreg_inc<232>();
    const int cw = wgi - 1;  // consumer index: token rows cw*64 .. cw*64+63
    float d[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) d[i] = 0.f;
    // A consumer whose 64 rows are all past the expert's last token (the tail tile of an expert) skips the MMAs
    // but keeps the barrier protocol, so the other warpgroup gets the tensor cores to itself.
    const bool live = row0 + cw * 64 < row_end;
    for (int kt = 0; kt < ktiles; ++kt) {
      const int s = kt % kStages;
      mbar_wait(full(s), (kt / kStages) & 1);
      if (!live) {
        if ((threadIdx.x & 127) == 0) mbar_arrive(empty(s));
        continue;
      }
      const uint32_t a_s = base + s * C::kStageBytes + cw * 64 * kBK * 2;
      const uint32_t b_s = base + s * C::kStageBytes + C::kABytes;
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) wgmma_m64n256k16(d, desc_sw128(a_s + kk * 32), desc_sw128(b_s + kk * 32), 1);
      wg_commit();
      wg_wait<1>();
      if (kt > 0 && (threadIdx.x & 127) == 0) mbar_arrive(empty((kt - 1) % kStages));
    }
    wg_wait<0>();
#pragma unroll
    for (int i = 0; i < 128; ++i) asm volatile("" : "+f"(d[i])::"memory");
    if (!live) return;

    const int t = threadIdx.x & 127, warp = t >> 5, lane = t & 31;
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int prow = row0 + cw * 64 + warp * 16 + (lane >> 2) + hh * 8;
      if (prow >= row_end) continue;
      if (MODE == 0) {
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          const int col = n_idx * (kBN / 2) + j * 8 + 2 * (lane & 3);
          if (col >= p.N) continue;
          const float g0 = d[j * 4 + hh * 2], g1 = d[j * 4 + hh * 2 + 1];
          const float u0 = d[(j + 16) * 4 + hh * 2], u1 = d[(j + 16) * 4 + hh * 2 + 1];
          const float h0 = g0 / (1.f + __expf(-g0)) * u0, h1 = g1 / (1.f + __expf(-g1)) * u1;
          *reinterpret_cast<__nv_bfloat162*>(p.C + (size_t)prow * p.N + col) = __floats2bfloat162_rn(h0, h1);
        }
      } else {
        const float wr = p.row_w[prow];
#pragma unroll
        for (int j = 0; j < 32; ++j) {
          const int col = n_idx * kBN + j * 8 + 2 * (lane & 3);
          if (col >= p.N) continue;
          *reinterpret_cast<__nv_bfloat162*>(p.C + (size_t)prow * p.N + col) =
              __floats2bfloat162_rn(d[j * 4 + hh * 2] * wr, d[j * 4 + hh * 2 + 1] * wr);
        }
      }
    }
  }
}

}  // namespace wg
