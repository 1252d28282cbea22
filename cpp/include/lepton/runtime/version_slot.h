// A version's place in a deployment, whether or not it is loaded now. A slot loads its version
// when a request needs it (once, however many requests wait: single flight), hands out leases
// that keep the loaded servable while a request uses it, and, under a memory budget, unloads it
// when the budget needs room and nothing uses or requires it. A version's first load, started by a
// request, runs on the deployment's loader threads, so that a request whose deadline passes
// returns while the load goes on for the next one; a reload that is known to take far less than
// the request's time left runs on the request's own thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "lepton/common/signature.h"
#include "lepton/common/thread_set.h"
#include "lepton/control/memory_budget.h"
#include "lepton/observe/metrics.h"
#include "lepton/runtime/servable.h"

namespace lepton {

// Where a version is: registered (never loaded), loading, loaded, draining (leaving the
// deployment), evicted (unloaded to make room; loads again on demand), failed (its last load).
enum class Residency { kRegistered, kLoading, kLoaded, kDraining, kEvicted, kFailed };
const char* ResidencyName(Residency r);

// A few threads that run loads; they start when a load is queued and leave when idle.
class LoadPool {
 public:
  explicit LoadPool(int threads, double idle_s = 2.0);
  ~LoadPool();  // Stop()
  LoadPool(const LoadPool&) = delete;
  LoadPool& operator=(const LoadPool&) = delete;
  // Queues `job`; Unavailable once stopped.
  void Submit(std::function<void()> job);
  // Runs the queued jobs, then joins the threads.
  void Stop();
  int threads_alive() const;

 private:
  void Work();
  const int max_threads_;
  const double idle_s_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  ThreadSet threads_;
  int alive_ = 0, idle_ = 0;
  bool stopping_ = false;
};

// What the slot keeps of its loads, for status and metrics.
struct SlotStats {
  Residency residency = Residency::kRegistered;
  bool pinned = false;
  bool required = false;     // a policy routes to it, or it is the followed alias's target
  int64_t memory_bytes = 0;  // measured while loaded: its weights and buffers
  int64_t loads = 0;
  int64_t inline_loads = 0;  // of those, run on the thread of the request that needed it
  int64_t load_failures = 0;
  int64_t evictions = 0;
  int64_t hits = 0;    // requests that found it loaded
  int64_t misses = 0;  // requests that waited for a load
  int64_t bytes_loaded = 0;
  double last_load_s = 0;
  std::string last_error;  // of the latest failed load
};

class VersionSlot final : public BudgetItem, public std::enable_shared_from_this<VersionSlot> {
 public:
  // Loads the version: fetch, check, load and warm. Thrown errors go to the waiting requests.
  using Loader = std::function<std::shared_ptr<Servable>()>;

  struct Config {
    std::string model, version;
    std::optional<Signature> signature;
    int64_t estimate_bytes = 0;            // the artifact's size until a load has measured it
    std::shared_ptr<MemoryBudget> budget;  // null: loaded once, never evicted
    std::shared_ptr<LoadPool> pool;        // for loads that requests start
    double load_wait_s = 30;               // how long a load may wait for room under the budget
    double retry_s = 5;  // after a failed load, requests fail at once for this long
    std::shared_ptr<Histogram> load_seconds;  // the deployment's cold-start histogram
  };

  explicit VersionSlot(Config config, Loader loader);
  ~VersionSlot() override;
  VersionSlot(const VersionSlot&) = delete;
  VersionSlot& operator=(const VersionSlot&) = delete;

  // Holds the loaded servable for one request; the slot cannot be evicted while a lease lives.
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& o) noexcept
        : slot_(std::move(o.slot_)), servable_(std::move(o.servable_)), waited_(o.waited_) {}
    Lease& operator=(Lease&& o) noexcept;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { Reset(); }
    const std::shared_ptr<Servable>& servable() const { return servable_; }
    Servable* operator->() const { return servable_.get(); }
    // Whether the request waited for its version to load (a cold start).
    bool waited() const { return waited_; }
    void Reset();

   private:
    friend class VersionSlot;
    Lease(std::shared_ptr<VersionSlot> slot, std::shared_ptr<Servable> s, bool waited)
        : slot_(std::move(slot)), servable_(std::move(s)), waited_(waited) {}
    std::shared_ptr<VersionSlot> slot_;
    std::shared_ptr<Servable> servable_;
    bool waited_ = false;
  };

  // The loaded version for one request, loading it first when it is not: on a loader thread, the
  // request waiting until `deadline`, then getting Timeout while the load goes on; or, for a
  // version whose last load took at most a quarter of the time left, on this thread. LoadError
  // when the load failed (and, for retry_s after, at once); Overloaded when no room could be made
  // in time; Unavailable once the slot drains. `now`: when the request arrived (its use, unless
  // it waited for a load).
  Lease Acquire(std::optional<Clock::time_point> deadline, Clock::time_point now = Clock::now());
  // Loads now on the calling thread unless loaded (waits for a load in progress); throws what
  // the load threw.
  void Load();
  // The servable while loaded, else null; for reading its statistics and input names.
  std::shared_ptr<Servable> loaded() const;

  void SetPinned(bool pinned);
  void SetRequired(bool required);
  bool pinned() const;

  // Leaves the deployment: refuses new requests, waits for those with leases until `timeout_s`,
  // then drains and unloads. Returns whether every request finished.
  bool Retire(double timeout_s);

  const std::string& model() const { return config_.model; }
  const std::string& version() const { return config_.version; }
  const std::optional<Signature>& signature() const { return config_.signature; }
  SlotStats stats() const;
  // The servable's statistics while loaded, with the slot's state; counters from earlier loads
  // are added in.
  ServableStats servable_stats() const;
  // What /metrics shows of it: the servable's gauges and the slot's loads (not the anomaly flag,
  // which the deployment's watch keeps).
  VersionGauges gauges() const;

  // BudgetItem
  std::string budget_name() const override { return config_.model + ":" + config_.version; }
  int64_t last_used_ns() const override { return last_used_.load(std::memory_order_relaxed); }
  double frequency(int64_t now_ns, double half_life_s) const override;
  bool Evictable() const override;
  bool Required() const override;
  int64_t estimate_bytes() const override;
  int64_t held_bytes() const override;
  int64_t Evict() override;

 private:
  void Release();
  // Whether a request with this deadline runs the load itself rather than on a loader thread.
  bool MayLoadHereLocked(std::optional<Clock::time_point> deadline) const;
  // Runs the load on this thread, with mu_ (held by `lk`) released meanwhile.
  void LoadHereLocked(std::unique_lock<std::mutex>& lk, std::optional<Clock::time_point> deadline);
  void StartLoadLocked();  // queues a load on the pool; state becomes kLoading
  // The load itself, on whichever thread runs it; waits for room under the budget until
  // load_wait_s has passed or `deadline`, whichever comes first.
  void RunLoad(std::optional<Clock::time_point> deadline = std::nullopt);
  void Touch(Clock::time_point now);
  [[noreturn]] void ThrowFailedLocked() const;
  bool EvictableLocked() const;

  const Config config_;
  const Loader loader_;
  mutable std::mutex mu_;
  std::condition_variable changed_;
  Residency residency_ = Residency::kRegistered;
  std::shared_ptr<Servable> servable_;
  int active_ = 0;  // leases out
  bool pinned_ = false, required_ = false;
  int64_t bytes_ = 0;                 // counted against the budget while loaded
  std::atomic<int64_t> measured_{0};  // the size the last load measured
  std::exception_ptr error_;
  Clock::time_point failed_at_{};
  bool transient_ = false;  // the last load found no room: the next request tries again
  // Loaded and not yet used: not evictable for a moment, so that the requests that waited for
  // the load get it before another load's eviction can take it.
  bool fresh_ = false;
  Clock::time_point loaded_at_{};
  std::atomic<int64_t> last_used_{0};
  double uses_ = 0;  // decayed use count as of uses_at_ (under mu_)
  int64_t uses_at_ = 0;
  SlotStats stats_;
  ServableStats retired_;  // counters of earlier loads
};

}  // namespace lepton
