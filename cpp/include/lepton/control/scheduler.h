// The periodic work of many owners (each deployment's control chores: policy ticks, alias polls,
// rebalancing, anomaly checks, state saves) on a few shared threads, so that a process serving a
// thousand models does not hold a thousand control threads. A task runs what is due and says when
// it is next due; it never runs on two threads at once. When every thread is busy with work that
// takes long (a chore that loads a model), the others still run: one thread is kept free while
// tasks run, up to a maximum; threads beyond the minimum leave when idle.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "lepton/common/thread_set.h"

namespace lepton {

class Scheduler {
 public:
  using Clock = std::chrono::steady_clock;
  // Runs what is due and returns when the task is next due.
  using Task = std::function<Clock::time_point()>;

  // `threads`: kept while there is work; `max_threads`: with helpers, at most.
  Scheduler(int threads, int max_threads);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // The process's scheduler (a new one in a forked child: the parent's threads are not there).
  static Scheduler& Shared();

  // Adds a task, first due now; returns its id.
  uint64_t Add(Task task);
  // Makes the task due now (once, however often it is woken before it runs).
  void Wake(uint64_t id);
  // Removes the task; when it is running on another thread, waits until that run returns.
  void Remove(uint64_t id);

  int threads_alive() const;

 private:
  struct Entry {
    Task task;
    Clock::time_point due;
    bool running = false;
    bool woken = false;  // woken while running
  };
  void Work();
  void ScheduleLocked(uint64_t id, Clock::time_point due);
  void MaybeAddThreadLocked();

  const int min_threads_, max_threads_;
  mutable std::mutex mu_;
  std::condition_variable work_;  // a task became due sooner, or the scheduler stops
  std::condition_variable done_;  // a run returned
  std::map<uint64_t, Entry> entries_;
  std::set<std::pair<Clock::time_point, uint64_t>> queue_;  // (due, id) of tasks not running
  uint64_t next_id_ = 1;
  ThreadSet threads_;
  int alive_ = 0, idle_ = 0;
  bool stopping_ = false;
};

}  // namespace lepton
