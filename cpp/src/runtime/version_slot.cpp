#include "lepton/runtime/version_slot.h"

#include <cmath>

#include "lepton/common/errors.h"
#include "lepton/observe/events.h"

namespace lepton {
namespace {

// A time point as nanoseconds of the steady clock, the unit the budget's uses are kept in.
int64_t Ns(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

// Adds what `from` counted (requests and their outcomes, batches, busy time) to `into`.
void AddCounters(ServableStats& into, const ServableStats& from) {
  into.requests += from.requests;
  into.succeeded += from.succeeded;
  into.failed += from.failed;
  into.timed_out += from.timed_out;
  into.rejected += from.rejected;
  into.borrowed += from.borrowed;
  into.batches += from.batches;
  into.batched_rows += from.batched_rows;
  into.busy_s += from.busy_s;
}

}  // namespace

const char* ResidencyName(Residency r) {
  switch (r) {
    case Residency::kRegistered:
      return "registered";
    case Residency::kLoading:
      return "loading";
    case Residency::kLoaded:
      return "loaded";
    case Residency::kDraining:
      return "draining";
    case Residency::kEvicted:
      return "evicted";
    case Residency::kFailed:
      return "failed";
  }
  return "unknown";
}

// --- LoadPool ---

LoadPool::LoadPool(int threads, double idle_s) : max_threads_(threads), idle_s_(idle_s) {
  if (threads < 1) throw InvalidArgument("load_threads must be >= 1");
}

LoadPool::~LoadPool() { Stop(); }

void LoadPool::Submit(std::function<void()> job) {
  std::lock_guard<std::mutex> lk(mu_);
  if (stopping_) throw Unavailable("the deployment is closing; no more versions load");
  jobs_.push_back(std::move(job));
  if (idle_ > 0) {
    cv_.notify_one();
  } else if (alive_ < max_threads_) {
    ++alive_;
    threads_.Start([this] { Work(); });
  }
}

void LoadPool::Work() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    if (jobs_.empty()) {
      if (stopping_) break;
      ++idle_;
      const bool woke =
          cv_.wait_for(lk, DeadlineIn(idle_s_), [&] { return stopping_ || !jobs_.empty(); });
      --idle_;
      if (!woke) break;  // idle too long: this thread leaves
      continue;
    }
    auto job = std::move(jobs_.front());
    jobs_.pop_front();
    lk.unlock();
    job();
    lk.lock();
  }
  --alive_;
  threads_.Left();
}

void LoadPool::Stop() {
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
    threads = threads_.TakeAll();
  }
  cv_.notify_all();
  for (auto& t : threads) {
    if (t.joinable()) t.join();
  }
}

int LoadPool::threads_alive() const {
  std::lock_guard<std::mutex> lk(mu_);
  return alive_;
}

// --- VersionSlot ---

VersionSlot::VersionSlot(Config config, Loader loader)
    : config_(std::move(config)), loader_(std::move(loader)) {
  retired_.version = config_.version;
  if (config_.budget) config_.budget->Attach(this);
}

VersionSlot::~VersionSlot() {
  if (config_.budget) {
    config_.budget->Detach(this);
    if (bytes_ > 0) config_.budget->Release(bytes_);
  }
}

VersionSlot::Lease& VersionSlot::Lease::operator=(Lease&& o) noexcept {
  if (this != &o) {
    Reset();
    slot_ = std::move(o.slot_);
    servable_ = std::move(o.servable_);
    waited_ = o.waited_;
  }
  return *this;
}

void VersionSlot::Lease::Reset() {
  servable_.reset();
  if (slot_) {
    slot_->Release();
    slot_.reset();
  }
}

namespace {

double Decayed(double uses, int64_t since_ns, int64_t now_ns, double half_life_s) {
  if (now_ns <= since_ns) return uses;
  return uses * std::exp2(-static_cast<double>(now_ns - since_ns) / 1e9 / half_life_s);
}

}  // namespace

// Under mu_.
void VersionSlot::Touch(Clock::time_point at) {
  const int64_t now = Ns(at);
  last_used_.store(now, std::memory_order_relaxed);
  uses_ = Decayed(uses_, uses_at_, now, MemoryBudget::kHalfLifeS) + 1;
  uses_at_ = now;
}

double VersionSlot::frequency(int64_t now_ns, double half_life_s) const {
  std::lock_guard<std::mutex> lk(mu_);
  return Decayed(uses_, uses_at_, now_ns, half_life_s);
}

void VersionSlot::Release() {
  bool idle;
  {
    std::lock_guard<std::mutex> lk(mu_);
    idle = --active_ == 0;
  }
  if (idle) {
    changed_.notify_all();  // a retiring slot waits for its last lease
    if (config_.budget && config_.budget->has_waiters()) config_.budget->NotifyIdle();
  }
}

void VersionSlot::ThrowFailedLocked() const {
  try {
    std::rethrow_exception(error_);
  } catch (const Overloaded&) {
    throw;  // no room under the budget now: the request may be retried as it is
  } catch (const std::exception& e) {
    throw LoadError(budget_name() + " could not be loaded: " + e.what());
  }
}

VersionSlot::Lease VersionSlot::Acquire(std::optional<Clock::time_point> deadline,
                                        Clock::time_point now) {
  std::unique_lock<std::mutex> lk(mu_);
  bool missed = false;
  for (;;) {
    switch (residency_) {
      case Residency::kLoaded: {
        ++active_;
        fresh_ = false;
        missed ? ++stats_.misses : ++stats_.hits;
        // Its uses order evictions under a memory budget; without one nothing reads them.
        if (config_.budget) Touch(missed ? Clock::now() : now);
        return Lease(shared_from_this(), servable_, missed);
      }
      case Residency::kDraining:
        throw Unavailable(budget_name() + " has left the deployment");
      case Residency::kFailed:
        if (!transient_ && Clock::now() - failed_at_ < DeadlineIn(config_.retry_s)) {
          ThrowFailedLocked();
        }
        [[fallthrough]];
      case Residency::kRegistered:
      case Residency::kEvicted:
        if (MayLoadHereLocked(deadline)) {
          // Runs the load on this request's thread: no hand-off to a loader thread and back.
          LoadHereLocked(lk, deadline);
          if (residency_ == Residency::kLoaded) ++stats_.inline_loads;
          missed = true;
          if (residency_ == Residency::kFailed) {
            ++stats_.misses;
            ThrowFailedLocked();
          }
          continue;
        }
        StartLoadLocked();
        break;
      case Residency::kLoading:
        break;
    }
    missed = true;
    // Waits for the load in progress; a failure it ends with is this request's answer.
    auto done = [&] { return residency_ != Residency::kLoading; };
    if (deadline) {
      if (!changed_.wait_until(lk, *deadline, done)) {
        ++stats_.misses;
        throw Timeout(budget_name() +
                      " was still loading at the request's deadline; the load "
                      "goes on and later requests will find it loaded");
      }
    } else {
      changed_.wait(lk, done);
    }
    if (residency_ == Residency::kFailed) {
      ++stats_.misses;
      ThrowFailedLocked();
    }
  }
}

bool VersionSlot::MayLoadHereLocked(std::optional<Clock::time_point> deadline) const {
  // Only a version that loaded before, known to load fast enough: its last load took at most a
  // quarter of the time the request has left, so that the request is not held past its deadline
  // (a first load may compile, and takes a loader thread).
  if (stats_.loads == 0) return false;
  if (!deadline) return true;
  return stats_.last_load_s * 4 < Seconds(*deadline - Clock::now());
}

void VersionSlot::LoadHereLocked(std::unique_lock<std::mutex>& lk,
                                 std::optional<Clock::time_point> deadline) {
  residency_ = Residency::kLoading;
  lk.unlock();
  RunLoad(deadline);
  lk.lock();
}

void VersionSlot::StartLoadLocked() {
  if (!config_.pool) throw Unavailable(budget_name() + " is not loaded");
  residency_ = Residency::kLoading;
  std::weak_ptr<VersionSlot> self = weak_from_this();
  try {
    config_.pool->Submit([self] {
      if (auto s = self.lock()) s->RunLoad();
    });
  } catch (...) {
    residency_ = Residency::kRegistered;
    throw;
  }
}

void VersionSlot::Load() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    switch (residency_) {
      case Residency::kLoaded:
        return;
      case Residency::kDraining:
        throw Unavailable(budget_name() + " has left the deployment");
      case Residency::kLoading:
        changed_.wait(lk, [&] { return residency_ != Residency::kLoading; });
        if (residency_ == Residency::kFailed) std::rethrow_exception(error_);
        continue;
      default:
        LoadHereLocked(lk, std::nullopt);
        if (residency_ == Residency::kFailed) std::rethrow_exception(error_);
        return;
    }
  }
}

void VersionSlot::RunLoad(std::optional<Clock::time_point> deadline) {
  const auto t0 = Clock::now();
  int64_t reserved = 0;
  std::shared_ptr<Servable> s;
  std::exception_ptr error;
  try {
    if (config_.budget) {
      reserved = estimate_bytes();
      auto wait_until = t0 + DeadlineIn(config_.load_wait_s);
      if (deadline && *deadline < wait_until) wait_until = *deadline;
      config_.budget->Reserve(*this, reserved, wait_until);
    }
    s = loader_();
  } catch (...) {
    error = std::current_exception();
  }
  const double seconds = Seconds(Clock::now() - t0);
  int64_t measured = 0;
  if (s) {
    measured = s->stats().weight_bytes;
    if (config_.budget) config_.budget->Settle(*this, reserved, measured);
  } else if (reserved) {
    config_.budget->Release(reserved);
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (s) {
      servable_ = std::move(s);
      bytes_ = config_.budget ? measured : 0;
      measured_ = measured;
      residency_ = Residency::kLoaded;
      ++stats_.loads;
      stats_.bytes_loaded += measured;
      stats_.last_load_s = seconds;
      last_used_.store(Ns(Clock::now()), std::memory_order_relaxed);
      fresh_ = true;
      loaded_at_ = Clock::now();
    } else {
      error_ = error;
      failed_at_ = Clock::now();
      residency_ = Residency::kFailed;
      transient_ = false;
      ++stats_.load_failures;
      try {
        std::rethrow_exception(error);
      } catch (const Overloaded& e) {
        transient_ = true;
        stats_.last_error = e.what();
      } catch (const std::exception& e) {
        stats_.last_error = e.what();
      } catch (...) {
        stats_.last_error = "unknown error";
      }
    }
  }
  if (!error && config_.load_seconds) config_.load_seconds->Observe(seconds);
  changed_.notify_all();
}

std::shared_ptr<Servable> VersionSlot::loaded() const {
  std::lock_guard<std::mutex> lk(mu_);
  return residency_ == Residency::kLoaded ? servable_ : nullptr;
}

void VersionSlot::SetPinned(bool pinned) {
  std::lock_guard<std::mutex> lk(mu_);
  pinned_ = pinned;
}

void VersionSlot::SetRequired(bool required) {
  std::lock_guard<std::mutex> lk(mu_);
  required_ = required;
}

bool VersionSlot::pinned() const {
  std::lock_guard<std::mutex> lk(mu_);
  return pinned_;
}

// How long a version just loaded is kept for the requests that waited for it.
constexpr auto kFreshFor = std::chrono::seconds(1);

bool VersionSlot::EvictableLocked() const {
  return residency_ == Residency::kLoaded && active_ == 0 && !pinned_ && !required_ &&
         config_.budget != nullptr && !(fresh_ && Clock::now() - loaded_at_ < kFreshFor);
}

bool VersionSlot::Evictable() const {
  std::lock_guard<std::mutex> lk(mu_);
  return EvictableLocked();
}

bool VersionSlot::Required() const {
  std::lock_guard<std::mutex> lk(mu_);
  return (pinned_ || required_) && residency_ != Residency::kDraining;
}

int64_t VersionSlot::estimate_bytes() const {
  // What a load measured is what the next one takes; before any, the artifact's size.
  const int64_t m = measured_.load();
  return m > 0 ? m : config_.estimate_bytes;
}

int64_t VersionSlot::held_bytes() const {
  std::lock_guard<std::mutex> lk(mu_);
  return bytes_;
}

int64_t VersionSlot::Evict() {
  std::shared_ptr<Servable> gone;
  int64_t freed;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!EvictableLocked()) return 0;
    gone = std::move(servable_);
    freed = bytes_;
    bytes_ = 0;
    residency_ = Residency::kEvicted;
    ++stats_.evictions;
    AddCounters(retired_, gone->stats());
  }
  gone->Drain(0);
  gone.reset();
  EmitEvent("info", "evict", config_.model, config_.version,
            "unloaded " + budget_name() + " to make room under the memory budget",
            "{\"bytes\":" + std::to_string(freed) + "}");
  return freed;
}

bool VersionSlot::Retire(double timeout_s) {
  std::unique_lock<std::mutex> lk(mu_);
  // A load in progress finishes first: its servable is then drained like any other.
  changed_.wait(lk, [&] { return residency_ != Residency::kLoading; });
  residency_ = Residency::kDraining;
  const auto deadline = Clock::now() + DeadlineIn(timeout_s);
  bool finished = changed_.wait_until(lk, deadline, [&] { return active_ == 0; });
  std::shared_ptr<Servable> s = std::move(servable_);
  const int64_t freed = bytes_;
  bytes_ = 0;
  lk.unlock();
  if (s) {
    const double left = std::max(0.0, Seconds(deadline - Clock::now()));
    finished = s->Drain(left) && finished;
  }
  if (freed > 0 && config_.budget) config_.budget->Release(freed);
  return finished;
}

SlotStats VersionSlot::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  SlotStats s = stats_;
  s.residency = residency_;
  s.pinned = pinned_;
  s.required = required_;
  s.memory_bytes = residency_ == Residency::kLoaded ? measured_.load() : 0;
  return s;
}

VersionGauges VersionSlot::gauges() const {
  const ServableStats s = servable_stats();
  const SlotStats r = stats();
  VersionGauges g;
  g.model = config_.model;
  g.version = config_.version;
  g.health = HealthName(s.health);
  g.threads = s.threads;
  g.in_flight = s.in_flight;
  g.queued = s.queued;
  g.weight_bytes = s.weight_bytes;
  g.residency = ResidencyName(r.residency);
  g.memory_bytes = r.memory_bytes;
  g.loads = r.loads;
  g.load_failures = r.load_failures;
  g.evictions = r.evictions;
  g.hits = r.hits;
  g.misses = r.misses;
  g.bytes_loaded = r.bytes_loaded;
  return g;
}

ServableStats VersionSlot::servable_stats() const {
  std::shared_ptr<Servable> s;
  ServableStats out;
  {
    std::lock_guard<std::mutex> lk(mu_);
    s = servable_;
    out = retired_;
  }
  if (!s) {
    out.health = Health::kUnloaded;
    return out;
  }
  const ServableStats now = s->stats();
  AddCounters(out, now);
  out.health = now.health;
  out.threads = now.threads;
  out.executors = now.executors;
  out.in_flight = now.in_flight;
  out.queued = now.queued;
  out.weight_bytes = now.weight_bytes;
  out.shared_code = now.shared_code;
  out.mapped = now.mapped;
  out.pooled = now.pooled;
  out.placement = now.placement;
  out.worker = now.worker;
  return out;
}

}  // namespace lepton
