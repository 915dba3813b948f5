// The threads of the router's asynchronous gate products (routerLogitsAsync), shared by every call of the process.
//
// Each call used to split its gate's panels over `threads` ranges and start threads - 1 std::threads of its own. With
// two flushes in flight per layer, four gates ran at once on four threads each: sixteen threads on the cores the
// router has, each call's work interleaved with the others', so every call finished late. Here a fixed set of
// workers takes the calls' panels in arrival order (a FIFO of calls, a call's panels one at a time), so the first
// call finishes first, and at most workers + callers threads run gate products at once. The calling thread (a libuv
// pool thread, which would otherwise only wait) takes panels from the queue too, so one call alone still runs on
// `workers + 1` threads, as before.
#pragma once
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace switchyard {

class GatePool {
 public:
  /** The process's pool, made at the first call with `workers` threads (later calls' counts are ignored). */
  static GatePool& Shared(int workers);

  /** Runs run(p) for every p in [0, panels), on the pool and the calling thread; returns when all have run. */
  void Run(int panels, const std::function<void(int)>& run);

  int workers() const { return static_cast<int>(threads_.size()); }

 private:
  struct Job {
    const std::function<void(int)>* run;
    int panels;
    int next = 0;  // the next panel to hand out (under the pool's lock)
    int done = 0;  // panels finished (under mu)
    std::mutex mu;
    std::condition_variable finished;
  };

  explicit GatePool(int workers);
  void Loop();
  /** Takes the oldest queued panel; false when the queue is empty. */
  bool Take(Job** job, int* panel);
  static void Finish(Job* job);

  std::mutex mu_;
  std::condition_variable work_;
  std::deque<Job*> queue_;
  std::vector<std::thread> threads_;
};

}  // namespace switchyard
