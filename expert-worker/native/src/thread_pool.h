// A small fork-join thread pool for the CPU kernels.
//
// parallel_for(n, fn) runs fn(task) for task in [0, n) on the pool's workers plus the calling thread, handing out
// tasks dynamically through one atomic counter, and returns when all tasks finished. One parallel_for runs at a
// time (callers serialize on run_mutex()); the worker keeps one kernel run in flight, so this costs nothing.
// A task that throws (a scratch allocation, say) stops the handing out of further tasks; parallel_for rethrows the
// first exception on the calling thread once every thread has left the tasks (before, a worker's exception ended the
// process and the caller's returned while the workers still ran fn, a reference to the caller's frame).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace switchyard {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }
  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);
  std::mutex& run_mutex() { return run_mutex_; }

  // Process-wide pool sized from SWITCHYARD_CPU_THREADS or the hardware concurrency.
  static ThreadPool& shared();

 private:
  void worker_loop();
  void drain();
  void run_task(int64_t task);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::condition_variable done_;
  uint64_t generation_ = 0;
  int active_ = 0;
  bool stop_ = false;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};
  std::exception_ptr error_;  // the first task exception of the current parallel_for (under mu_)
  std::mutex run_mutex_;
};

}  // namespace switchyard
