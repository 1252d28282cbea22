// A servable's queue: admission under its bound, priorities and deadlines, batching, the executor
// threads that start with work and leave when idle, draining, and the statistics.
#include <algorithm>
#include <thread>

#include "lepton/common/errors.h"
#include "servable_impl.h"

namespace lepton {
namespace {

// Requests batch together when they agree on everything but the number of rows.
bool SameBatchShape(const Tensors& a, const Tensors& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].scalar_type() != b[i].scalar_type() || a[i].dim() != b[i].dim()) return false;
    if (!a[i].sizes().slice(1).equals(b[i].sizes().slice(1))) return false;
  }
  return true;
}

}  // namespace

std::shared_ptr<Servable::Ticket> Servable::Impl::MakeTicket(const Tensors& inputs,
                                                             const RunOptions& o) {
  auto t = std::make_shared<Ticket>();
  t->own_inputs = inputs;
  FillTicket(*t, inputs, o);
  return t;
}

void Servable::Impl::FillTicket(Ticket& ticket, const Tensors& inputs, const RunOptions& o) const {
  Ticket* t = &ticket;
  t->strings = o.strings && !o.strings->empty() ? o.strings : nullptr;
  if (t->strings && t->strings->count(0)) {
    t->rows = t->strings->at(0).shape.at(0);
  } else {
    t->rows = inputs.empty() ? 0 : inputs[0].size(0);
  }
  t->priority = o.priority.value_or(options_.priority);
  t->deadline = o.deadline;
}

void Servable::Impl::RequireServing() const {
  if (health_ == Health::kUnloaded || health_ == Health::kFailed) {
    throw Unavailable(Who() + " is " + HealthName(health_));
  }
}

void Servable::Impl::Admit(std::unique_lock<std::mutex>& lk, const std::shared_ptr<Ticket>& t) {
  (void)lk;
  if (static_cast<int>(queue_.size()) >= options_.max_queue) {
    if (queue_.empty() || std::prev(queue_.end())->second->priority >= t->priority) {
      ++rejected_;
      throw Overloaded(Who() + ": queue full (" + std::to_string(queue_.size()) +
                       " waiting, max_queue=" + std::to_string(options_.max_queue) + ")");
    }
    auto lowest = std::prev(queue_.end());
    std::shared_ptr<Ticket> evicted = lowest->second;
    queue_.erase(lowest);
    ++rejected_;
    evicted->error = std::make_exception_ptr(
        Overloaded(Who() + ": queue full; request evicted by one of higher priority"));
    evicted->state = Ticket::State::kDone;
    evicted->done.notify_all();
  }
  t->seq = next_seq_++;
  t->enqueued = Clock::now();
  queue_.emplace(Key{-t->priority, t->seq}, t);
  ++requests_;
  if (QueuedRows() >= options_.max_batch_size) changed_.notify_all();
  StartExecutors(lk);  // executors exist only while there is queued work (and shortly after)
}

int64_t Servable::Impl::QueuedRows() const {
  int64_t rows = 0;
  for (const auto& [k, t] : queue_) {
    rows += t->rows;
    if (rows >= options_.max_batch_size) break;
  }
  return rows;
}

void Servable::Impl::MaybeDispatch(std::unique_lock<std::mutex>& lk) {
  (void)lk;
  if (queue_.empty() || !SlotFree()) return;
  // A caller that must wake for its answer anyway runs the head of the queue itself: one
  // wake-up instead of an executor's and then the caller's.
  const auto& first = queue_.begin()->second;
  if (first->caller_collects) {
    first->done.notify_all();
  } else {
    work_.notify_one();
  }
}

bool Servable::Impl::CallerCollects(const RunOptions& o) const {
  return options_.max_batch_size == 1 && !o.deadline && !o.force_async;
}

void Servable::Impl::StartExecutors(std::unique_lock<std::mutex>& lk) {
  (void)lk;
  if (stopping_) return;
  auto self = shared_from_this();
  while (executors_ < threads_) {
    const int index = executors_++;
    std::thread([self, index] { self->ExecutorLoop(index); }).detach();
  }
}

void Servable::Impl::ExecutorLoop(int index) {
  std::unique_lock<std::mutex> lk(mu_);
  const auto linger = DeadlineIn(options_.idle_thread_s);
  while (!stopping_ && index < threads_) {
    if (queue_.empty() || !SlotFree()) {
      if (work_.wait_for(lk, linger) == std::cv_status::timeout && queue_.empty()) break;
      continue;
    }
    collecting_ = true;
    auto arena = arena_;
    lk.unlock();
    arena->execute([this] { Collect(); });
    lk.lock();
  }
  --executors_;
  changed_.notify_all();
}

void Servable::Impl::Stop() {
  std::lock_guard<std::mutex> lk(mu_);
  stopping_ = true;
  work_.notify_all();
}

void Servable::Impl::Collect(bool borrowed) {
  // Declared before the lock so that tickets (and the caller's tensors, whose destructor may
  // need Python's GIL) are released only after the mutex is.
  std::vector<std::shared_ptr<Ticket>> batch;
  std::unique_lock<std::mutex> lk(mu_);
  const bool batching = options_.max_batch_size > 1 && rows_independent_;
  const size_t coalesce =
      target_ && !batching ? static_cast<size_t>(std::max(1, target_->max_coalesced())) : 1;
  if (batching && options_.max_queue_delay_s > 0) {
    const auto delay = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(options_.max_queue_delay_s));
    while (!queue_.empty() && QueuedRows() < options_.max_batch_size) {
      Clock::time_point oldest = Clock::time_point::max();
      for (const auto& [k, t] : queue_) oldest = std::min(oldest, t->enqueued);
      if (Clock::now() >= oldest + delay) break;
      changed_.wait_until(lk, oldest + delay);
    }
  }
  if (!queue_.empty()) {
    auto first = queue_.begin();
    batch.push_back(first->second);
    int64_t rows = first->second->rows;
    queue_.erase(first);
    if (batching) {
      for (auto it = queue_.begin(); it != queue_.end() && rows < options_.max_batch_size;) {
        const auto& t = it->second;
        if (rows + t->rows <= options_.max_batch_size && !t->strings && !batch[0]->strings &&
            SameBatchShape(t->inputs(), batch[0]->inputs())) {
          rows += t->rows;
          batch.push_back(t);
          it = queue_.erase(it);
        } else {
          ++it;
        }
      }
    }
    // Requests that waited together go to the target in one exchange; each stays its own
    // forward there.
    while (coalesce > 1 && batch.size() < coalesce && !queue_.empty()) {
      batch.push_back(queue_.begin()->second);
      queue_.erase(queue_.begin());
    }
    for (const auto& t : batch) t->state = Ticket::State::kRunning;
    ++in_flight_;
    if (borrowed) {
      ++lent_;
      borrowed_ += static_cast<int64_t>(batch.size());
    }
  }
  collecting_ = false;
  MaybeDispatch(lk);
  if (batch.empty()) {
    changed_.notify_all();
    return;
  }
  lk.unlock();
  const bool coalesced = coalesce > 1;
  if (coalesced) {
    ExecuteCoalesced(batch);
  } else {
    Execute(batch);
  }
  lk.lock();
  --in_flight_;
  if (borrowed) --lent_;
  Finish(batch, coalesced);
  MaybeDispatch(lk);
  lk.unlock();
  Wake(batch);
}

void Servable::Impl::Finish(TicketSpan batch, bool coalesced) {
  batches_ += coalesced ? static_cast<int64_t>(batch.size()) : 1;
  for (const auto& t : batch) {
    batched_rows_ += t->rows;
    t->state = Ticket::State::kDone;
    if (t->error) {
      ++failed_;
    } else {
      ++succeeded_;
    }
  }
  busy_s_ += batch.front()->result.compute_s;
  changed_.notify_all();
}

void Servable::Impl::Wake(TicketSpan batch) {
  for (const auto& t : batch) t->done.notify_all();
}

RunResult Servable::Impl::Take(const std::shared_ptr<Ticket>& t) {
  if (t->error) std::rethrow_exception(t->error);
  return std::move(t->result);
}

RunResult Servable::Impl::Run(const Tensors& inputs, const RunOptions& o) {
  if (!o.inputs_checked) CheckInputs(inputs, nullptr, o.strings.get());
  std::unique_lock<std::mutex> lk(mu_);
  RequireServing();
  if (target_ && target_->direct() && options_.max_batch_size == 1 && !o.force_async) {
    // The target queues and orders requests itself: the caller sends its own at once. It takes
    // none of the budget's slots, which stay for the requests this queue holds.
    Ticket ticket;
    ticket.caller_inputs = &inputs;
    FillTicket(ticket, inputs, o);
    return RunOnCaller(
        lk, Borrowed(ticket), [&](const std::shared_ptr<Ticket>& t) { ExecuteCoalesced(t); },
        &Impl::direct_);
  }
  if (!CallerCollects(o)) {
    auto t = MakeTicket(inputs, o);
    Admit(lk, t);
    MaybeDispatch(lk);
    return Queued(WaitLocked(lk, t));
  }
  if (!target_ && queue_.empty() && SlotFree()) {
    // A free slot and nobody waiting: the caller runs the request itself, inside the arena.
    auto arena = arena_;
    Ticket ticket;
    ticket.caller_inputs = &inputs;
    FillTicket(ticket, inputs, o);
    return RunOnCaller(lk, Borrowed(ticket), [&](const std::shared_ptr<Ticket>& t) {
      arena->execute([&] { Execute(t); });
    });
  }
  // Others wait, or the target takes several requests at once: the caller queues its request
  // and, now if a slot is free, else when woken for one, takes the head of the queue (a worker's
  // exchange of up to 8, its own among them) to the servable itself, rather than waking an
  // executor and then being woken by it.
  auto t = MakeTicket(inputs, o);
  t->caller_collects = true;
  Admit(lk, t);
  return Queued(WaitLocked(lk, t));
}

RunResult Servable::Impl::RunHere(const Tensors& inputs, int intra_op_threads,
                                  std::shared_ptr<const StringTensors> strings) {
  CheckInputs(inputs, nullptr, strings.get());
  std::unique_lock<std::mutex> lk(mu_);
  RequireServing();
  RunOptions o;
  o.strings = std::move(strings);
  Ticket ticket;
  ticket.caller_inputs = &inputs;
  FillTicket(ticket, inputs, o);
  return RunOnCaller(lk, Borrowed(ticket),
                     [&](const std::shared_ptr<Ticket>& t) { Execute(t, intra_op_threads); });
}

std::shared_ptr<Servable::Ticket> Servable::Impl::Submit(const Tensors& inputs,
                                                         const RunOptions& o) {
  CheckInputs(inputs, nullptr, o.strings.get());
  std::unique_lock<std::mutex> lk(mu_);
  RequireServing();
  auto t = MakeTicket(inputs, o);
  Admit(lk, t);
  MaybeDispatch(lk);
  return t;
}

RunResult Servable::Impl::WaitLocked(std::unique_lock<std::mutex>& lk,
                                     const std::shared_ptr<Ticket>& t) {
  while (t->state != Ticket::State::kDone) {
    if (t->state == Ticket::State::kQueued && !stopping_) {
      // Its caller runs the head of the queue itself: in a free slot of the budget (a caller
      // that collects), or on a core that no version of the deployment uses (any waiter).
      // Never with a deadline: a request run on its waiter's thread could not be given up on.
      const bool slot = t->caller_collects && SlotFree();
      if (slot || (!t->deadline && !SlotFree() && MayBorrow())) {
        collecting_ = true;
        auto arena = arena_;
        lk.unlock();
        if (slot) {
          arena->execute([this] { Collect(); });
        } else {
          Collect(/*borrowed=*/true);  // beyond the arena's slots, which the budget fills
        }
        lk.lock();
        continue;
      }
    }
    if (!t->deadline) {
      t->done.wait(lk);
      continue;
    }
    if (t->done.wait_until(lk, *t->deadline) == std::cv_status::timeout &&
        t->state != Ticket::State::kDone) {
      const bool queued = t->state == Ticket::State::kQueued;
      if (queued) {
        // A running one cannot be stopped: it finishes and its result is dropped.
        queue_.erase(Key{-t->priority, t->seq});
        changed_.notify_all();
      }
      ++timed_out_;
      throw Timeout(Who() + ": no answer by the deadline (" +
                    std::string(queued ? "still queued" : "still running") + ")");
    }
  }
  lk.unlock();
  return Take(t);
}

bool Servable::Impl::Drain(double timeout_s) {
  std::unique_lock<std::mutex> lk(mu_);
  if (health_ == Health::kUnloaded) return true;
  health_ = Health::kDraining;
  const auto deadline = Clock::now() + ClampedDuration<Clock::duration>(timeout_s);
  const bool finished = changed_.wait_until(lk, deadline, [&] {
    return queue_.empty() && in_flight_ == 0 && direct_ == 0 && !collecting_;
  });
  for (auto& [k, t] : queue_) {
    t->error = std::make_exception_ptr(Unavailable(Who() + " was unloaded before this ran"));
    t->state = Ticket::State::kDone;
    t->done.notify_all();
  }
  std::map<Key, std::shared_ptr<Ticket>> dropped;
  dropped.swap(queue_);
  health_ = Health::kUnloaded;
  lk.unlock();
  return finished;
}

void Servable::Impl::SetThreads(int threads) {
  if (threads < 1) throw InvalidArgument("threads must be >= 1, got " + std::to_string(threads));
  std::unique_lock<std::mutex> lk(mu_);
  if (threads == threads_) return;
  threads_ = threads;
  arena_ = NewArena(threads);
  if (!queue_.empty()) StartExecutors(lk);
  work_.notify_all();  // executors beyond the new budget exit
  MaybeDispatch(lk);
}

ServableStats Servable::Impl::Stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  ServableStats s;
  s.version = version_;
  s.health = health_;
  s.threads = threads_;
  s.executors = executors_;
  s.requests = requests_;
  s.succeeded = succeeded_;
  s.failed = failed_;
  s.timed_out = timed_out_;
  s.rejected = rejected_;
  s.batches = batches_;
  s.batched_rows = batched_rows_;
  s.in_flight = in_flight_ + direct_;
  s.borrowed = borrowed_;
  s.queued = static_cast<int64_t>(queue_.size());
  s.busy_s = busy_s_;
  s.weight_bytes = weight_bytes_;
  s.shared_code = shared_code_;
  s.mapped = mapped_;
  s.pooled = pooled_;
  if (target_) target_->Describe(s);
  return s;
}

}  // namespace lepton
