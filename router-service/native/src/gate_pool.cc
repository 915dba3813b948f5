#include "gate_pool.h"

#include <system_error>

namespace switchyard {

GatePool& GatePool::Shared(int workers) {
  // Leaked on purpose: its threads must not be joined during static destruction at process exit.
  static GatePool* pool = new GatePool(workers);
  return *pool;
}

GatePool::GatePool(int workers) {
  for (int i = 0; i < workers; i++) {
    try {
      threads_.emplace_back([this] { Loop(); });
    } catch (const std::system_error&) {
      break;  // no more threads to be had: the callers run the panels themselves
    }
  }
}

bool GatePool::Take(Job** job, int* panel) {
  if (queue_.empty()) return false;
  Job* j = queue_.front();
  *job = j;
  *panel = j->next++;
  if (j->next == j->panels) queue_.pop_front();
  return true;
}

void GatePool::Finish(Job* job) {
  // The caller may return (and the job go) once done reaches panels: nothing touches the job after this lock.
  std::lock_guard<std::mutex> lock(job->mu);
  if (++job->done == job->panels) job->finished.notify_one();
}

void GatePool::Loop() {
  for (;;) {
    Job* job;
    int panel;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_.wait(lock, [&] { return Take(&job, &panel); });
    }
    (*job->run)(panel);
    Finish(job);
  }
}

void GatePool::Run(int panels, const std::function<void(int)>& run) {
  if (panels <= 0) return;
  Job job;
  job.run = &run;
  job.panels = panels;
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(&job);
  }
  work_.notify_all();
  // Take panels from the queue, the oldest call's first, until this call's are all handed out (the panels of calls
  // queued earlier go first, so helping them is this call's wait anyway); then wait for its last ones to finish.
  for (;;) {
    Job* j;
    int panel;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (job.next == job.panels || !Take(&j, &panel)) break;
    }
    (*j->run)(panel);
    Finish(j);
  }
  std::unique_lock<std::mutex> lock(job.mu);
  job.finished.wait(lock, [&] { return job.done == job.panels; });
}

}  // namespace switchyard
