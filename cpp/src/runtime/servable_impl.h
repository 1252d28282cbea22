// A servable's insides, shared by the files that define it: servable.cpp (loading, warm-up, the
// forward and the public face) and servable_queue.cpp (admission, the priority queue, batching,
// executor threads, draining and statistics). Private to the runtime layer.
#pragma once

#include <tbb/task_arena.h>
#include <torch/script.h>

#include <atomic>
#include <condition_variable>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lepton/runtime/input_check.h"
#include "lepton/runtime/servable.h"

namespace lepton {

class Servable::Ticket {
 public:
  enum class State { kQueued, kRunning, kDone };
  Tensors own_inputs;                      // a queued request's own copy of its inputs
  const Tensors* caller_inputs = nullptr;  // or its caller's, for one its caller runs at once
  const Tensors& inputs() const { return caller_inputs ? *caller_inputs : own_inputs; }
  std::shared_ptr<const StringTensors> strings;  // never batched with others
  int64_t rows = 0;
  int priority = 0;
  std::optional<Clock::time_point> deadline;
  Clock::time_point enqueued;  // when it joined the queue; unset for one its caller runs at once
  uint64_t seq = 0;
  State state = State::kQueued;
  RunResult result;
  std::exception_ptr error;
  std::condition_variable done;
  // Its caller waits in Run and, woken when a slot frees, runs the head of the queue itself
  // (see MaybeDispatch).
  bool caller_collects = false;
};

// How long a ticket waited before its run started at `start`.
inline double QueuedFor(const Servable::Ticket& t, Clock::time_point start) {
  return t.enqueued == Clock::time_point{} ? 0.0 : Seconds(start - t.enqueued);
}

// Tickets borrowed for one run: a batch taken from the queue, or the single ticket its caller
// runs (without building a vector for it).
class TicketSpan {
 public:
  using Ptr = std::shared_ptr<Servable::Ticket>;
  TicketSpan(const std::vector<Ptr>& v) : data_(v.data()), size_(v.size()) {}  // NOLINT
  TicketSpan(const Ptr& one) : data_(&one), size_(1) {}                        // NOLINT
  const Ptr* begin() const { return data_; }
  const Ptr* end() const { return data_ + size_; }
  size_t size() const { return size_; }
  const Ptr& operator[](size_t i) const { return data_[i]; }
  const Ptr& front() const { return data_[0]; }

 private:
  const Ptr* data_;
  size_t size_;
};

class Servable::Impl : public std::enable_shared_from_this<Servable::Impl> {
 public:
  using Key = std::pair<int, uint64_t>;  // (-priority, arrival): best first

  Impl(std::string model, std::string version, std::string sha, std::optional<Signature> sig,
       ServableOptions options);

  // Every slot is reserved for external threads: the servable's own executors and callers that
  // run their request inline. No TBB worker is needed, so no process-wide setting is touched and
  // a hung forward can only hold its own version's threads.
  static std::shared_ptr<tbb::task_arena> NewArena(int threads);

  const std::string& Who() const { return who_; }

  void LoadModule(std::string_view bytes, std::shared_ptr<void> owner, bool pooled);

  // What the module's tensors hold: its parameters, buffers and other tensor attributes, each
  // storage counted once (tied weights and views share one).
  int64_t MeasureTensors() const;

  // Zeros (empty strings) of the signature's shapes, with 1 for every free dimension.
  Tensors WarmupInputs(StringTensors& strings) const;

  // Code shared with an earlier load was optimized there (the executors belong to the code): one
  // run checks that this version's weights answer, instead of `warmup_runs`.
  void Warmup();

  // What requests must give: the signature's inputs, else the forward's parameters.
  void ResolveInputNames();

  void CheckInputs(const Tensors& inputs, const std::vector<std::string>* names,
                   const StringTensors* strings) const;

  RunResult Forward(const Tensors& inputs, const StringTensors* strings = nullptr,
                    int intra_op_threads = 0,
                    std::optional<Clock::time_point> deadline = std::nullopt);

  // Runs one batch and fills in each ticket's outputs or error. Never throws.
  void Execute(TicketSpan batch, int intra_op_threads = 0);
  // Runs queued requests taken together for a target that runs them elsewhere: each is its own
  // forward there, with its own answer or error. Never throws.
  void ExecuteCoalesced(TicketSpan group);

  std::shared_ptr<Ticket> MakeTicket(const Tensors& inputs, const RunOptions& o);
  void FillTicket(Ticket& t, const Tensors& inputs, const RunOptions& o) const;
  // A ticket that its caller runs at once, never queued, lives on the caller's stack and reads
  // the caller's inputs: this pointer to it owns nothing and must not outlive the run.
  static std::shared_ptr<Ticket> Borrowed(Ticket& t) {
    return std::shared_ptr<Ticket>(std::shared_ptr<Ticket>(), &t);
  }

  void RequireServing() const;

  // Puts a ticket in the queue, evicting a lower-priority one when the queue is full.
  void Admit(std::unique_lock<std::mutex>& lk, const std::shared_ptr<Ticket>& t);

  int64_t QueuedRows() const;

  void MaybeDispatch(std::unique_lock<std::mutex>& lk);

  void StartExecutors(std::unique_lock<std::mutex>& lk);

  // One of the servable's `threads_` executors: takes a batch whenever there is work and a free
  // slot, and runs it inside the arena. Holds the servable alive until it exits: when stopped,
  // beyond a smaller budget, or idle for `idle_thread_s` (the next queued request starts it
  // again), so that an idle version holds no thread.
  void ExecutorLoop(int index);

  void Stop();

  // Takes the head of the queue (a batch, or an exchange for a target) and runs it on this thread;
  // `borrowed`: beyond the budget, on a core no version uses.
  void Collect(bool borrowed = false);

  // Marks the tickets done and counts them, under the lock; `coalesced`: they were separate
  // forwards sent together, not one batch.
  void Finish(TicketSpan batch, bool coalesced = false);

  // Wakes the tickets' waiters, after the lock is released: woken under it, each would wake
  // only to sleep again on the mutex.
  void Wake(TicketSpan batch);

  RunResult Take(const std::shared_ptr<Ticket>& t);
  // A queued request's answer reaches its caller when the caller wakes, not when its run ended:
  // the caller reads the clock itself.
  static RunResult Queued(RunResult r) {
    r.finished = {};
    return r;
  }

  RunResult Run(const Tensors& inputs, const RunOptions& o);

  RunResult RunHere(const Tensors& inputs, int intra_op_threads,
                    std::shared_ptr<const StringTensors> strings);

  // Runs a ticket on the calling thread, counted like every other request; `run` executes it
  // with the lock released. It runs in one of the budget's slots (`in_flight_`), or (`direct_`)
  // outside them, sent to a target that orders requests itself.
  template <typename RunFn>
  RunResult RunOnCaller(std::unique_lock<std::mutex>& lk, std::shared_ptr<Ticket> t, RunFn&& run,
                        int Impl::*running = &Impl::in_flight_) {
    ++requests_;
    ++(this->*running);
    t->state = Ticket::State::kRunning;
    lk.unlock();
    run(t);
    lk.lock();
    --(this->*running);
    Finish(t);
    MaybeDispatch(lk);
    lk.unlock();
    return Take(t);
  }

  // Whether a thread may start on the queue now: no one is taking from it and a slot is free.
  bool SlotFree() const { return !collecting_ && in_flight_ - lent_ < threads_; }

  // Whether a thread waiting for a queued request may run the head of the queue now although the
  // budget is full: a core of the deployment's is idle (work-conserving budgets).
  bool MayBorrow() const {
    return options_.borrow && options_.cores && !target_ && options_.max_batch_size == 1 &&
           !collecting_ && !queue_.empty() && options_.cores->Idle();
  }

  // Whether a request run with `o` is run by its own caller, with whatever waits ahead of it,
  // rather than by an executor (no deadline, no batching).
  bool CallerCollects(const RunOptions& o) const;

  std::shared_ptr<Ticket> Submit(const Tensors& inputs, const RunOptions& o);

  RunResult WaitLocked(std::unique_lock<std::mutex>& lk, const std::shared_ptr<Ticket>& t);

  bool Drain(double timeout_s);

  void SetThreads(int threads);

  ServableStats Stats() const;

  const std::string model_, version_;
  const std::string who_;  // "model:version", for messages (built once, not per request)
  const std::string sha256_;
  const std::optional<Signature> signature_;
  const ServableOptions options_;
  InputCheck inputs_;  // what a request must give
  torch::jit::Module module_;
  std::optional<torch::jit::Method> forward_;
  // How many tensors `forward` takes when every parameter is a plain Tensor (no defaults to fill,
  // nothing to convert): such a call goes straight to the function with a stack of its inputs,
  // without the schema's per-call type check. -1 otherwise.
  int plain_tensor_args_ = -1;
  int64_t weight_bytes_ = 0;
  bool shared_code_ = false, mapped_ = false, pooled_ = false;
  // Set for a version whose forwards run elsewhere (a worker process); the module is then empty.
  std::shared_ptr<ForwardTarget> target_;

  mutable std::mutex mu_;
  std::condition_variable changed_;
  Health health_ = Health::kLoading;
  int threads_;
  std::shared_ptr<tbb::task_arena> arena_;
  std::condition_variable work_;  // wakes executors
  int executors_ = 0;             // executor threads started and not yet exited
  bool stopping_ = false;
  std::map<Key, std::shared_ptr<Ticket>> queue_;
  uint64_t next_seq_ = 0;
  bool collecting_ = false;
  int in_flight_ = 0;  // running now, `lent_` of them beyond the budget (borrowed cores)
  int lent_ = 0;
  int direct_ = 0;  // sent by their callers to a target that orders them itself (direct())
  // Cleared by whichever thread ran the batch or the split that showed otherwise.
  std::atomic<bool> rows_independent_{true};
  int64_t requests_ = 0, succeeded_ = 0, failed_ = 0, timed_out_ = 0, rejected_ = 0;
  int64_t borrowed_ = 0;
  int64_t batches_ = 0, batched_rows_ = 0;
  double busy_s_ = 0;
};

}  // namespace lepton
