#include "lepton/control/scheduler.h"

#include <algorithm>

#include "lepton/common/errors.h"
#include "lepton/common/process.h"

namespace lepton {
namespace {

// How long a thread beyond the minimum waits for work before it leaves.
constexpr auto kIdleFor = std::chrono::seconds(2);

}  // namespace

Scheduler::Scheduler(int threads, int max_threads)
    : min_threads_(threads), max_threads_(std::max(threads, max_threads)) {
  if (threads < 1) throw InvalidArgument("a scheduler needs at least one thread");
}

Scheduler::~Scheduler() {
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
    threads = threads_.TakeAll();
  }
  work_.notify_all();
  for (auto& t : threads) {
    if (t.joinable()) t.join();
  }
}

Scheduler& Scheduler::Shared() {
  // One per fork generation; a parent's scheduler is left as it is in a child, whose copy of its
  // threads does not exist.
  static std::mutex mu;
  static Scheduler* current = nullptr;
  static uint64_t generation = 0;
  std::lock_guard<std::mutex> lk(mu);
  if (!current || generation != ForkGeneration()) {
    current = new Scheduler(2, 32);
    generation = ForkGeneration();
  }
  return *current;
}

void Scheduler::ScheduleLocked(uint64_t id, Clock::time_point due) {
  Entry& e = entries_.at(id);
  queue_.erase({e.due, id});
  e.due = due;
  if (!e.running) queue_.insert({due, id});
}

void Scheduler::MaybeAddThreadLocked() {
  if (stopping_ || idle_ > 0 || alive_ >= max_threads_) return;
  ++alive_;
  threads_.Start([this] { Work(); });
}

uint64_t Scheduler::Add(Task task) {
  std::lock_guard<std::mutex> lk(mu_);
  const uint64_t id = next_id_++;
  const auto now = Clock::now();
  entries_.emplace(id, Entry{std::move(task), now, false, false});
  queue_.insert({now, id});
  if (alive_ < min_threads_) MaybeAddThreadLocked();
  work_.notify_one();
  return id;
}

void Scheduler::Wake(uint64_t id) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  if (it->second.running) {
    it->second.woken = true;  // runs again as soon as this run returns
    return;
  }
  const auto now = Clock::now();
  if (it->second.due > now) ScheduleLocked(id, now);
  work_.notify_one();
}

void Scheduler::Remove(uint64_t id) {
  std::unique_lock<std::mutex> lk(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  queue_.erase({it->second.due, id});
  // A run in progress finishes first (unless it is this thread's own).
  done_.wait(lk, [&] {
    auto e = entries_.find(id);
    return e == entries_.end() || !e->second.running;
  });
  it = entries_.find(id);
  if (it == entries_.end()) return;
  queue_.erase({it->second.due, id});  // the run that ended may have queued it again
  entries_.erase(it);
}

int Scheduler::threads_alive() const {
  std::lock_guard<std::mutex> lk(mu_);
  return alive_;
}

void Scheduler::Work() {
  std::unique_lock<std::mutex> lk(mu_);
  auto idle_since = Clock::now();
  while (!stopping_) {
    const auto now = Clock::now();
    if (queue_.empty() || queue_.begin()->first > now) {
      if ((alive_ > min_threads_ || entries_.empty()) && now - idle_since >= kIdleFor) break;
      ++idle_;
      const auto until =
          queue_.empty() ? now + kIdleFor : std::min(queue_.begin()->first, now + kIdleFor);
      work_.wait_until(lk, until);
      --idle_;
      continue;
    }
    const uint64_t id = queue_.begin()->second;
    queue_.erase(queue_.begin());
    Entry& e = entries_.at(id);
    e.running = true;
    Task task = e.task;
    // One thread stays free for what falls due while this task runs: a chore that blocks (a
    // model loading) holds up only itself.
    MaybeAddThreadLocked();
    lk.unlock();
    Clock::time_point next;
    try {
      next = task();
    } catch (...) {
      next = Clock::now() + std::chrono::seconds(1);  // a task reports its own failures
    }
    lk.lock();
    auto it = entries_.find(id);
    if (it != entries_.end()) {
      Entry& done = it->second;
      done.running = false;
      done.due = done.woken ? Clock::now() : next;
      done.woken = false;
      queue_.insert({done.due, id});
      if (done.due <= Clock::now()) work_.notify_one();
    }
    done_.notify_all();
    idle_since = Clock::now();
  }
  --alive_;
  threads_.Left();
}

}  // namespace lepton
