// fp32 FMA peak: each thread runs 12 independent accumulator chains of vector a = a*m + c (one FMA each;
// 12 chains cover 2 FMA ports x 4-cycle latency with room to spare) with no memory traffic.
#include "fma_peak.h"

#include <chrono>
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <thread>
#include <time.h>

namespace switchyard {

typedef float v16 __attribute__((vector_size(64)));

static inline v16 splat(float x) { return v16{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }

// The FMA loop uses the widest vector register: 16 lanes (zmm) with AVX-512, else 8 (ymm), so the asm barrier
// below can name one register per chain.
#if defined(__AVX512F__)
typedef float vreg __attribute__((vector_size(64)));
constexpr int kLanes = 16;
#else
typedef float vreg __attribute__((vector_size(32)));
constexpr int kLanes = 8;
#endif

static inline vreg vsplat(float x) {
  vreg v;
  for (int i = 0; i < kLanes; ++i) v[i] = x;
  return v;
}

// Twelve named accumulators (an array gets spilled to the stack); the empty asm makes each chain opaque to the
// optimizer without adding instructions.
static double fma_loop(int64_t iters, float* sink) {
  vreg a0 = vsplat(1.00f), a1 = vsplat(1.01f), a2 = vsplat(1.02f), a3 = vsplat(1.03f), a4 = vsplat(1.04f),
       a5 = vsplat(1.05f), a6 = vsplat(1.06f), a7 = vsplat(1.07f), a8 = vsplat(1.08f), a9 = vsplat(1.09f),
       a10 = vsplat(1.10f), a11 = vsplat(1.11f);
  const vreg m = vsplat(0.999999f), c = vsplat(1e-6f);
  for (int64_t it = 0; it < iters; ++it) {
    a0 = a0 * m + c; a1 = a1 * m + c; a2 = a2 * m + c; a3 = a3 * m + c;
    a4 = a4 * m + c; a5 = a5 * m + c; a6 = a6 * m + c; a7 = a7 * m + c;
    a8 = a8 * m + c; a9 = a9 * m + c; a10 = a10 * m + c; a11 = a11 * m + c;
    __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5));
    __asm__ volatile("" : "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9), "+x"(a10), "+x"(a11));
  }
  vreg s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
  *sink = s[0];
  return static_cast<double>(iters) * 12 * kLanes * 2;
}

// Runs body(t) on `threads` std::threads and joins them. A thread that cannot be started throws (std::system_error)
// after the ones already running are joined: destroying a joinable std::thread calls std::terminate.
template <typename F>
static void run_threads(int threads, F body) {
  std::vector<std::thread> pool;
  pool.reserve(threads);
  try {
    for (int t = 0; t < threads; ++t) pool.emplace_back(body, t);
  } catch (...) {
    for (auto& th : pool) th.join();
    throw;
  }
  for (auto& th : pool) th.join();
}

PeakResult measure_fma_peak(int threads, double seconds) {
  if (threads < 1) threads = 1;
  // Calibrate on one thread so each thread's fixed iteration count runs about `seconds`.
  float sink = 0;
  int64_t iters = 1 << 20;
  for (;;) {
    auto t0 = std::chrono::steady_clock::now();
    fma_loop(iters, &sink);
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dt > 0.05) {
      iters = static_cast<int64_t>(iters * (seconds / dt));
      break;
    }
    iters *= 4;
  }
  std::vector<double> rate(threads), cpu_rate(threads);
  std::vector<float> sinks(threads);
  auto t0 = std::chrono::steady_clock::now();
  run_threads(threads, [&](int t) {
    auto s0 = std::chrono::steady_clock::now();
    timespec c0, c1;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
    double flops = fma_loop(iters, &sinks[t]);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
    rate[t] = flops / std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count() / 1e9;
    double cpu = (c1.tv_sec - c0.tv_sec) + (c1.tv_nsec - c0.tv_nsec) * 1e-9;
    cpu_rate[t] = cpu > 0 ? flops / cpu / 1e9 : 0;
  });
  double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  PeakResult r;
  r.threads = threads;
  r.per_thread = rate;
  r.per_thread_cpu = cpu_rate;
  r.seconds = wall;
  // Sum of the per-thread rates: the stricter figure (wall-clock based would count thread start-up as idle).
  r.gflops = 0;
  for (double x : rate) r.gflops += x;
  return r;
}

static float read_sum(const float* p, size_t n) {
  v16 s0 = splat(0.f), s1 = s0, s2 = s0, s3 = s0;
  for (size_t i = 0; i + 64 <= n; i += 64) {
    s0 += *reinterpret_cast<const v16*>(p + i);
    s1 += *reinterpret_cast<const v16*>(p + i + 16);
    s2 += *reinterpret_cast<const v16*>(p + i + 32);
    s3 += *reinterpret_cast<const v16*>(p + i + 48);
  }
  v16 s = s0 + s1 + s2 + s3;
  return s[0];
}

double measure_read_bandwidth(size_t bytes, int threads, int reps) {
  if (threads < 1) threads = 1;
  const size_t n = bytes / sizeof(float) / 64 * 64;
  float* buf = static_cast<float*>(std::aligned_alloc(64, std::max<size_t>(n, 64) * sizeof(float)));
  if (!buf) throw std::bad_alloc();
  std::unique_ptr<float, decltype(&std::free)> own(buf, &std::free);
  for (size_t i = 0; i < n; ++i) buf[i] = 1.f;
  double best = 0;
  std::vector<float> sinks(threads);
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    run_threads(threads, [&](int t) {
      size_t a = n / threads / 64 * 64 * t, b = t + 1 == threads ? n : n / threads / 64 * 64 * (t + 1);
      sinks[t] = read_sum(buf + a, b - a);
    });
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, n * sizeof(float) / s / 1e9);
  }
  return best;
}

}  // namespace switchyard
