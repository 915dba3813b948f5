// Grouped expert FFN, CPU kernels.
//
// Phase 1 (gate+up, fused SwiGLU): H[r, :] = silu(x_r·Wg^T) * (x_r·Wu^T) for every row r of every slice.
//   Micro-kernel MR1 rows x 16 columns of both Wg and Wu (2*MR1 zmm accumulators), K = d streamed once.
// Phase 2 (down, row weights in the epilogue): y_r = w_r * H[r, :]·Wd^T.
//   Micro-kernel MR2 rows x 32 output columns (2*MR2 accumulators), K = fp.
// Written with GCC vector extensions (16 x fp32 = one zmm with AVX-512, two ymm with AVX2), FMA contraction on.
// Work is cut into tiles (one expert's row block x a run of column panels); the cancel flag is read before each
// tile, so a deadline or client cancel stops the run within one tile (about a millisecond at Mixtral sizes).
#include "expert_ffn.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include <sys/mman.h>

#include "thread_pool.h"

namespace switchyard {

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
typedef int32_t i16v __attribute__((vector_size(64)));

static inline v16 splat(float x) { return v16{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
static inline v16 load_a(const float* p) { return *reinterpret_cast<const v16*>(p); }
static inline v16 load_u(const float* p) { return *reinterpret_cast<const v16u*>(p); }
static inline void store_u(float* p, v16 v) { *reinterpret_cast<v16u*>(p) = v; }

AlignedFloats::AlignedFloats(size_t count, bool zero) : n(count) {
  // Large buffers (prepared experts, scratch) go on 2 MiB transparent huge pages: the kernels stream hundreds of
  // MiB of weights per batch, and with 4 KiB pages every 4 KiB of weights costs a TLB walk.
  constexpr size_t kHuge = size_t{2} << 20;
  size_t bytes = ((count * sizeof(float)) + 63) / 64 * 64;
  if (bytes >= kHuge) {
    bytes = (bytes + kHuge - 1) / kHuge * kHuge;
    ptr = static_cast<float*>(std::aligned_alloc(kHuge, bytes));
    if (ptr) madvise(ptr, bytes, MADV_HUGEPAGE);
  } else {
    ptr = static_cast<float*>(std::aligned_alloc(64, bytes > 0 ? bytes : 64));
  }
  if (!ptr) throw std::bad_alloc();
  if (zero) std::memset(ptr, 0, bytes);
}
AlignedFloats::~AlignedFloats() { std::free(ptr); }

KernelCounters& kernel_counters() {
  static KernelCounters c;
  return c;
}

const char* kernel_isa() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__)
  return "avx2";
#else
  return "generic";
#endif
}

// exp(x) for 16 lanes: Cephes expf (range reduction by ln2, degree-6 polynomial), ~1 ulp on [-87, 88].
static inline v16 vexp(v16 x) {
  x = x < splat(88.3762626647949f) ? x : splat(88.3762626647949f);
  x = x > splat(-87.3365447504f) ? x : splat(-87.3365447504f);
  v16 fx = x * splat(1.44269504088896341f) + splat(0.5f);
  v16 t = __builtin_convertvector(__builtin_convertvector(fx, i16v), v16);
  t = t - __builtin_convertvector((i16v)(t > fx) & 1, v16);  // floor
  v16 r = x - t * splat(0.693359375f) - t * splat(-2.12194440e-4f);
  v16 y = splat(1.9875691500e-4f);
  y = y * r + splat(1.3981999507e-3f);
  y = y * r + splat(8.3334519073e-3f);
  y = y * r + splat(4.1665795894e-2f);
  y = y * r + splat(1.6666665459e-1f);
  y = y * r + splat(5.0000001201e-1f);
  y = y * (r * r) + r + splat(1.f);
  i16v e = (__builtin_convertvector(t, i16v) + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return y * scale;
}

static inline v16 silu_mul(v16 g, v16 u) { return g / (splat(1.f) + vexp(-g)) * u; }

constexpr int MR1 = 12;  // rows per phase-1 micro-kernel (24 accumulators + 2 B + 1 broadcast of 32 zmm)
constexpr int MR2 = 14;
constexpr int64_t kKChunk = 512;  // phase-2 K chunk: 512 x 32 fp32 (64 KiB) of a panel, 512 x 14 of an H block  // rows per phase-2 micro-kernel (28 accumulators + 2 B + 1 broadcast)

// Software prefetch of the weight panel the thread computes next: the current panel is re-read from L2 for every
// row block, the next one streams in from memory meanwhile (up to one 64-byte line per k-step), so the kernel does
// not stall on DRAM at the start of each panel.
struct Prefetch {
  const char* p = nullptr;
  int64_t lines = 0;
  int32_t every = 1;  // k-steps between two prefetches: spread evenly over the call, not bursted at its start
  int32_t count = 1;
};

static inline void prefetch_step(Prefetch& pf) {
  if (--pf.count == 0) {
    pf.count = pf.every;
    if (pf.lines > 0) {
      __builtin_prefetch(pf.p, 0, 2);
      pf.p += 64;
      --pf.lines;
    }
  }
}

// 32 weights of step k of a panel as two 16-lane fp32 vectors (lo: gate or columns 0-15, hi: up or columns 16-31).
// fp32 panels hold them as 32 floats; bf16 panels as 16 words (hi << 16 | lo): widening a bf16 is a shift, so
// one 64-byte load, a shift and a mask replace two loads and halve the bytes streamed from memory.
template <bool BF>
static inline void load_pair(const float* B, int64_t k, v16& lo, v16& hi) {
  if constexpr (BF) {
    i16v w = *reinterpret_cast<const i16v*>(B + k * 16);
    lo = reinterpret_cast<v16>(w << 16);
    hi = reinterpret_cast<v16>(w & static_cast<int32_t>(0xffff0000u));
  } else {
    lo = load_a(B + k * 32);
    hi = load_a(B + k * 32 + 16);
  }
}

// Packed A blocks: MR rows of the left operand stored k-major, [K][MR], so the micro-kernel broadcasts from one
// pointer walking forward (no per-row pointers to keep in registers, one cache line feeds 16/MR k-steps).
//
// Phase 1 writes H straight into the packed layout phase 2 reads: a unit's rows are cut into blocks of MR2, block b
// at hp + b*MR2*fp holding [fp][m] with m = rows in that block.
struct HPacked {
  float* base;     // the unit's packed H
  int64_t fp;      // K of phase 2
  int64_t rows;    // rows of the unit
  int64_t row0;    // unit-relative first row of this micro-kernel call
  int64_t col0;    // first column (panel * 16)
};

// H[i, col0..col0+16) = silu(A_i·G) * (A_i·U) for MR rows; B is one gu panel ([K][32] fp32 or [K][16] bf16 pairs).
template <int MR, bool BF>
static void gu_kernel(const float* Ap, const float* B, int64_t K, const HPacked& H, Prefetch pf) {
  v16 g[MR], u[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) g[i] = u[i] = splat(0.f);
  for (int64_t k = 0; k < K; ++k) {
    v16 bg, bu;
    load_pair<BF>(B, k, bg, bu);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      v16 a = splat(Ap[k * MR + i]);
      g[i] += a * bg;
      u[i] += a * bu;
    }
    prefetch_step(pf);
  }
  for (int i = 0; i < MR; ++i) {
    alignas(64) float h[16];
    v16 v = silu_mul(g[i], u[i]);
    std::memcpy(h, &v, 64);
    const int64_t r = H.row0 + i, blk = r / MR2, lane = r % MR2;
    const int64_t m = std::min<int64_t>(MR2, H.rows - blk * MR2);
    float* dst = H.base + blk * MR2 * H.fp + H.col0 * m + lane;
    for (int c = 0; c < 16; ++c) dst[c * m] = h[c];
  }
}

// Y[i, 0..ncols) += w_i * A_i·B for MR rows; Ap packed [K][MR] (one K chunk); B the matching chunk of a down
// panel; ncols <= 32 (clipped at d).
template <int MR, bool BF>
static void down_kernel(const float* Ap, const float* B, int64_t K, float* Y, int64_t ldy, int ncols, const float* w,
                        Prefetch pf) {
  v16 c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = splat(0.f);
  for (int64_t k = 0; k < K; ++k) {
    v16 b0, b1;
    load_pair<BF>(B, k, b0, b1);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      v16 a = splat(Ap[k * MR + i]);
      c0[i] += a * b0;
      c1[i] += a * b1;
    }
    prefetch_step(pf);
  }
  for (int i = 0; i < MR; ++i) {
    v16 s = splat(w ? w[i] : 1.f);
    v16 y0 = c0[i] * s, y1 = c1[i] * s;
    float* out = Y + i * ldy;
    // Accumulate: K is split into chunks (the output starts zeroed), w * sum_c = sum_c w * partial_c.
    if (ncols == 32) {
      store_u(out, load_u(out) + y0);
      store_u(out + 16, load_u(out + 16) + y1);
    } else {
      alignas(64) float tmp[32];
      std::memcpy(tmp, out, ncols * sizeof(float));
      v16 t0 = load_a(tmp) + y0, t1 = load_a(tmp + 16) + y1;
      std::memcpy(tmp, &t0, 64);
      std::memcpy(tmp + 16, &t1, 64);
      std::memcpy(out, tmp, ncols * sizeof(float));
    }
  }
}

// The part of the next panel ([next, next + next_bytes)) that row block `blk` of `nblk` prefetches while it runs
// K k-steps.
static inline Prefetch share(const float* next, int64_t next_bytes, int64_t blk, int64_t nblk, int64_t K) {
  Prefetch pf;
  if (!next) return pf;
  int64_t lines = (next_bytes + 63) / 64;
  int64_t a = lines * blk / nblk, b = lines * (blk + 1) / nblk;
  pf.p = reinterpret_cast<const char*>(next) + a * 64;
  pf.lines = b - a;
  pf.every = pf.count = static_cast<int32_t>(std::max<int64_t>(1, K / std::max<int64_t>(pf.lines, 1)));
  return pf;
}

// A bf16 panel widened once into fp32 (a thread's L2-resident scratch) when several row blocks will reuse it:
// the micro-kernel then runs its fp32 form (no shift/mask per step), while memory still streams bf16.
static void widen_panel(const float* bf, int64_t K, float* out) {
  for (int64_t k = 0; k < K; ++k) {
    v16 lo, hi;
    load_pair<true>(bf, k, lo, hi);
    *reinterpret_cast<v16*>(out + k * 32) = lo;
    *reinterpret_cast<v16*>(out + k * 32 + 16) = hi;
  }
}

// Grow-only scratch, reused across runs (no page faults or zeroing per batch).
static float* scratch(AlignedFloats& buf, size_t n) {
  if (buf.n < n) buf = AlignedFloats(n + n / 4, /*zero=*/false);
  return buf.ptr;
}

// Phase 1 over all rows of a unit for one panel: full MR1 blocks, then the matching smaller instantiation.
// Xp: the unit's packed tokens, block b at Xp + b*MR1*K.
template <bool BF>
static void gu_rows(const float* Xp, int64_t rows, const float* B, int64_t K, HPacked H, const float* next,
                    int64_t next_bytes) {
  const int64_t nblk = (rows + MR1 - 1) / MR1;
  int64_t r = 0, blk = 0;
  for (; r + MR1 <= rows; r += MR1, ++blk) {
    H.row0 = r;
    gu_kernel<MR1, BF>(Xp + r * K, B, K, H, share(next, next_bytes, blk, nblk, K));
  }
  H.row0 = r;
  Prefetch pf = share(next, next_bytes, blk, nblk, K);
  switch (rows - r) {
#define CASE(n) \
  case n:       \
    gu_kernel<n, BF>(Xp + r * K, B, K, H, pf); \
    break;
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8) CASE(9) CASE(10) CASE(11)
#undef CASE
    default:
      break;
  }
}

// Phase 2 over all rows of a unit for one panel and one K chunk [k0, k0 + K). Hp: the unit's packed H, block b at
// Hp + b*MR2*fp holding [fp][m]; the chunk of a block starts at + k0*m.
template <bool BF>
static void down_rows(const float* Hp, int64_t fp, int64_t k0, int64_t rows, const float* B, int64_t K, float* Y,
                      int64_t ldy, int ncols, const float* w, const float* next, int64_t next_bytes) {
  const int64_t nblk = (rows + MR2 - 1) / MR2;
  int64_t r = 0, blk = 0;
  for (; r + MR2 <= rows; r += MR2, ++blk)
    down_kernel<MR2, BF>(Hp + r * fp + k0 * MR2, B, K, Y + r * ldy, ldy, ncols, w ? w + r : nullptr,
                         share(next, next_bytes, blk, nblk, K));
  Prefetch pf = share(next, next_bytes, blk, nblk, K);
  const float* a = Hp + r * fp + k0 * (rows - r);
  switch (rows - r) {
#define CASE(n) \
  case n:       \
    down_kernel<n, BF>(a, B, K, Y + r * ldy, ldy, ncols, w ? w + r : nullptr, pf); \
    break;
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8) CASE(9) CASE(10) CASE(11) CASE(12) CASE(13)
#undef CASE
    default:
      break;
  }
}

std::unique_ptr<PreparedExpert> prepare_expert(const WeightView& gate, const WeightView& up, const WeightView& down) {
  auto e = std::make_unique<PreparedExpert>();
  const int64_t f = gate.rows, d = gate.cols;
  e->d = static_cast<int>(d);
  e->f = static_cast<int>(f);
  e->fp = static_cast<int>((f + 15) / 16 * 16);
  e->dp = static_cast<int>((d + 31) / 32 * 32);
  // bf16 checkpoints stay bf16 (exact, half the memory and bandwidth); fp16/fp32 become fp32 (exact).
  e->bf16 = gate.dtype == DType::BF16 && up.dtype == DType::BF16 && down.dtype == DType::BF16;
  const int64_t fp = e->fp, dp = e->dp;
  const int64_t per_k = e->bf16 ? 16 : 32;  // floats (or bf16 pair words) per k-step of a panel
  e->gu = AlignedFloats(static_cast<size_t>(fp / 16) * d * per_k);
  e->down = AlignedFloats(static_cast<size_t>(dp / 32) * fp * per_k);
  if (e->bf16) {
    auto bits = [](const WeightView& w, int64_t i) -> uint32_t {
      uint16_t h;
      std::memcpy(&h, w.data + i * 2, 2);
      return h;
    };
    uint32_t* gu = reinterpret_cast<uint32_t*>(e->gu.ptr);
    for (int64_t j = 0; j < f; ++j) {
      uint32_t* panel = gu + (j / 16) * d * 16 + (j % 16);
      for (int64_t k = 0; k < d; ++k) panel[k * 16] = bits(gate, j * d + k) | (bits(up, j * d + k) << 16);
    }
    uint32_t* dn = reinterpret_cast<uint32_t*>(e->down.ptr);
    for (int64_t j = 0; j < d; ++j) {
      uint32_t* panel = dn + (j / 32) * fp * 16 + (j % 16);
      const int shift = (j % 32) < 16 ? 0 : 16;
      for (int64_t k = 0; k < f; ++k) panel[k * 16] |= bits(down, j * f + k) << shift;
    }
    return e;
  }
  // Walk the source row-major (sequential reads) and scatter into the panels.
  for (int64_t j = 0; j < f; ++j) {
    float* panel = e->gu.ptr + (j / 16) * d * 32 + (j % 16);
    for (int64_t k = 0; k < d; ++k) {
      panel[k * 32] = load_elem(gate.dtype, gate.data, j * d + k);
      panel[k * 32 + 16] = load_elem(up.dtype, up.data, j * d + k);
    }
  }
  for (int64_t j = 0; j < d; ++j) {
    float* panel = e->down.ptr + (j / 32) * fp * 32 + (j % 32);
    for (int64_t k = 0; k < f; ++k) panel[k * 32] = load_elem(down.dtype, down.data, j * f + k);
  }
  return e;
}

namespace {

struct Unit {  // one expert over a run of rows (a slice, or part of a long one)
  const PreparedExpert* e;
  int64_t row0, rows;
  int64_t h0;  // first row of this unit in the H scratch (packed, see HPacked)
  int64_t x0;  // first row of this unit in the packed tokens
};

struct Tile {
  int32_t unit;
  int32_t p0, p1;  // panel range
};

}  // namespace

void convert_output(DType dtype, const float* src, uint8_t* out, int64_t n) {
  ThreadPool& pool = ThreadPool::shared();
  std::lock_guard<std::mutex> serial(pool.run_mutex());
  constexpr int64_t kChunk = int64_t{1} << 16;
  pool.parallel_for((n + kChunk - 1) / kChunk, [&](int64_t c) {
    const int64_t a = c * kChunk, b = std::min(n, a + kChunk);
    if (dtype == DType::F32) {
      std::memcpy(out + a * 4, src + a, static_cast<size_t>(b - a) * 4);
    } else {
      for (int64_t i = a; i < b; ++i) store_elem(dtype, out, i, src[i]);
    }
  });
}

void run_experts(const RunRequest& req, float* out, RunOutcome* outcome) {
  KernelCounters& counters = kernel_counters();
  counters.runs_started.fetch_add(1);
  ThreadPool& pool = ThreadPool::shared();
  std::lock_guard<std::mutex> serial(pool.run_mutex());

  const int64_t d = req.cols;
  auto cancelled = [&] { return req.cancel_flag && __atomic_load_n(req.cancel_flag, __ATOMIC_RELAXED) != 0; };

  // Units are computed in groups whose H scratch stays bounded (~64 MiB).
  int fp = 16;
  for (auto* e : req.experts) fp = std::max(fp, e->fp);
  // A unit's packed tokens are re-read for every weight panel, so they must stay in L2 (~768 KiB of it): long
  // slices are cut into units of at most that many rows (a multiple of MR1, at least 4 blocks). Each unit streams
  // the expert's weights once, so the cut only matters for batches that are compute-bound anyway.
  const int64_t max_rows = std::max<int64_t>(4 * MR1, (int64_t{768} << 10) / (d * 4) / MR1 * MR1);
  const int64_t h_budget_rows = std::max<int64_t>(max_rows, (int64_t{64} << 20) / (fp * 4));
  std::vector<Unit> units;
  int64_t xrows = 0;
  for (const auto& s : req.slices) {
    for (int64_t r = 0; r < s.count; r += max_rows) {
      units.push_back({req.experts[s.expert], s.offset + r, std::min<int64_t>(max_rows, s.count - r), 0, xrows});
      xrows += units.back().rows;
    }
  }
  // No rows to compute (no slices, or only empty ones): the output stays zero and no scratch is reserved (a run of
  // zero rows with a huge cols grew the grow-only scratch to cols floats for the life of the process).
  if (units.empty()) {
    counters.runs_completed.fetch_add(1);
    outcome->tiles_total = 0;
    outcome->tiles_done = 0;
    return;
  }
  // Tokens widened to fp32 and packed per unit into MR1-row blocks ([d][m] each), once per run (small next to
  // the weights), in parallel over units.
  static AlignedFloats xp_buf, h_buf;  // guarded by the pool's run mutex (one run at a time)
  float* const xp = scratch(xp_buf, static_cast<size_t>(xrows * d));
  pool.parallel_for(static_cast<int64_t>(units.size()), [&](int64_t ui) {
    const Unit& un = units[ui];
    for (int64_t b = 0; b < un.rows; b += MR1) {
      const int64_t m = std::min<int64_t>(MR1, un.rows - b);
      float* dst = xp + (un.x0 + b) * d;
      for (int64_t i = 0; i < m; ++i) {
        const int64_t src = (un.row0 + b + i) * d;
        for (int64_t k = 0; k < d; ++k) dst[k * m + i] = load_elem(req.dtype, req.tokens, src + k);
      }
    }
  });

  // Tiles: one unit's rows x a run of column panels, sized to ~8M multiply-adds (~0.1 ms on one core) so the cancel flag is seen promptly and the dynamic schedule balances uneven experts.
  constexpr int64_t kTileMacs = int64_t{8} << 20;
  auto make_tiles = [&](size_t u0, size_t u1, bool phase1, std::vector<Tile>& tiles) {
    for (size_t u = u0; u < u1; ++u) {
      const PreparedExpert* e = units[u].e;
      int panels = phase1 ? e->fp / 16 : e->dp / 32;
      int64_t macs_per_panel = phase1 ? units[u].rows * 32 * d : units[u].rows * 32 * e->fp;
      int per = static_cast<int>(std::clamp<int64_t>(kTileMacs / std::max<int64_t>(macs_per_panel, 1), 1, panels));
      for (int p = 0; p < panels; p += per)
        tiles.push_back({static_cast<int32_t>(u), p, std::min(panels, p + per)});
    }
  };

  int64_t tiles_total = 0, tiles_done = 0;
  bool stop = false;
  size_t u0 = 0;
  while (u0 < units.size() && !stop) {
    // A group of units whose H rows fit the budget.
    size_t u1 = u0;
    int64_t hrows = 0;
    while (u1 < units.size() && (u1 == u0 || hrows + units[u1].rows <= h_budget_rows)) {
      units[u1].h0 = hrows;
      hrows += units[u1].rows;
      ++u1;
    }
    float* const h = scratch(h_buf, static_cast<size_t>(hrows * fp));  // every element is written in phase 1
    std::vector<Tile> t1, t2;
    make_tiles(u0, u1, true, t1);
    make_tiles(u0, u1, false, t2);
    tiles_total += static_cast<int64_t>(t1.size() + t2.size());
    std::atomic<int64_t> done{0};
    // First weight panel of a tile (where a thread's prefetch should go before it starts that tile).
    auto first_panel = [&](const Tile& t, bool phase1) -> const float* {
      const PreparedExpert* e = units[t.unit].e;
      const int64_t per_k = e->bf16 ? 16 : 32;
      return phase1 ? e->gu.ptr + t.p0 * d * per_k : e->down.ptr + t.p0 * static_cast<int64_t>(e->fp) * per_k;
    };
    auto run_tile = [&](const Tile& t, const Tile* after, bool phase1) {
      const Unit& un = units[t.unit];
      const PreparedExpert* e = un.e;
      const int64_t per_k = e->bf16 ? 16 : 32;
      // The panel after the last one of this tile is the first of the tile this thread claimed next.
      const float* after_first = after ? first_panel(*after, phase1) : nullptr;
      if (phase1) {
        const int64_t panel = d * per_k;
        for (int p = t.p0; p < t.p1; ++p) {
          const float* next = p + 1 < t.p1 ? e->gu.ptr + (p + 1) * panel : after_first;
          HPacked hp{h + un.h0 * fp, e->fp, un.rows, 0, static_cast<int64_t>(p) * 16};
          const float* b = e->gu.ptr + p * panel;
          if (e->bf16 && un.rows > MR1) {
            thread_local AlignedFloats wide;
            widen_panel(b, d, scratch(wide, static_cast<size_t>(d) * 32));
            gu_rows<false>(xp + un.x0 * d, un.rows, wide.ptr, d, hp, next, panel * 4);
          } else if (e->bf16) {
            gu_rows<true>(xp + un.x0 * d, un.rows, b, d, hp, next, panel * 4);
          } else {
            gu_rows<false>(xp + un.x0 * d, un.rows, b, d, hp, next, panel * 4);
          }
        }
      } else {
        // K (= fp) in chunks so a chunk of the unit's H and of the panels stays in L2 across the tile's panels.
        const float* w = req.row_weights ? req.row_weights + un.row0 : nullptr;
        const int64_t panel = static_cast<int64_t>(e->fp) * per_k;
        const int64_t K = e->fp;
        for (int64_t k0 = 0; k0 < K; k0 += kKChunk) {
          const int64_t kc = std::min<int64_t>(kKChunk, K - k0);
          for (int q = t.p0; q < t.p1; ++q) {
            int ncols = static_cast<int>(std::min<int64_t>(32, d - q * 32));
            // Next: this chunk of the next panel, the next chunk of the first panel, or the next tile.
            const float* next = q + 1 < t.p1                 ? e->down.ptr + (q + 1) * panel + k0 * per_k
                                : k0 + kKChunk < K          ? e->down.ptr + t.p0 * panel + (k0 + kKChunk) * per_k
                                                            : after_first;
            const int64_t next_bytes = std::min<int64_t>(kKChunk, K) * per_k * 4;
            const float* b = e->down.ptr + q * panel + k0 * per_k;
            float* y = out + un.row0 * d + q * 32;
            const float* hp = h + un.h0 * fp;
            if (e->bf16 && un.rows > MR2) {
              thread_local AlignedFloats wide;
              widen_panel(b, kc, scratch(wide, static_cast<size_t>(kKChunk) * 32));
              down_rows<false>(hp, e->fp, k0, un.rows, wide.ptr, kc, y, d, ncols, w, next, next_bytes);
            } else if (e->bf16) {
              down_rows<true>(hp, e->fp, k0, un.rows, b, kc, y, d, ncols, w, next, next_bytes);
            } else {
              down_rows<false>(hp, e->fp, k0, un.rows, b, kc, y, d, ncols, w, next, next_bytes);
            }
          }
        }
      }
    };
    // Each thread claims its next tile before computing the current one, so it knows which weights to prefetch
    // (dynamic scheduling otherwise hides that; the bench shape is bound by weight streaming on small machines).
    auto run_phase = [&](const std::vector<Tile>& tiles, bool phase1) {
      const int64_t n = static_cast<int64_t>(tiles.size());
      std::atomic<int64_t> claim{0};
      pool.parallel_for(pool.threads(), [&](int64_t) {
        int64_t cur = claim.fetch_add(1);
        while (cur < n) {
          const int64_t nxt = claim.fetch_add(1);
          if (cancelled()) return;
          run_tile(tiles[cur], nxt < n ? &tiles[nxt] : nullptr, phase1);
          done.fetch_add(1, std::memory_order_relaxed);
          counters.tiles_done.fetch_add(1, std::memory_order_relaxed);
          cur = nxt;
        }
      });
    };
    run_phase(t1, true);
    if (!cancelled()) run_phase(t2, false);
    tiles_done += done.load();
    // Cancelled means work was skipped; a flag raised after the last tile leaves a complete result.
    stop = done.load() < static_cast<int64_t>(t1.size() + t2.size());
    u0 = u1;
  }
  if (stop) {
    outcome->cancelled = true;
    counters.runs_cancelled.fetch_add(1);
  } else {
    counters.runs_completed.fetch_add(1);
  }
  outcome->tiles_total = tiles_total;
  outcome->tiles_done = tiles_done;
}

}  // namespace switchyard
