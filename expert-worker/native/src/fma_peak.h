// Measures this machine's fp32 FMA throughput: one thread per core runs independent 16-lane FMA chains.
#pragma once

#include <vector>

namespace switchyard {

struct PeakResult {
  double gflops;                    // all threads together
  std::vector<double> per_thread;   // each thread's own rate
  int threads;
  double seconds;
};

PeakResult measure_fma_peak(int threads, double seconds);

}  // namespace switchyard
