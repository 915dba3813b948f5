// Measures this machine's fp32 FMA throughput: one thread per core runs independent 16-lane FMA chains.
#pragma once

#include <cstddef>
#include <vector>

namespace switchyard {

struct PeakResult {
  double gflops;                    // all threads together
  std::vector<double> per_thread;   // each thread's own rate (flops / its wall time)
  // flops / the thread's CPU time: the rate while it actually held a core, unaffected by time-slicing when other
  // processes share the cores.
  std::vector<double> per_thread_cpu;
  int threads;
  double seconds;
};

PeakResult measure_fma_peak(int threads, double seconds);

// Streaming-read bandwidth (GB/s) over a buffer of `bytes` (touched first), all threads reading disjoint shares,
// `reps` back-to-back passes; returns the best pass. The roofline of a weight-streaming kernel.
double measure_read_bandwidth(size_t bytes, int threads, int reps);

}  // namespace switchyard
