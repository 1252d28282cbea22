// A memory budget shared by loaded versions (of one deployment, or of every model a server
// serves): what is loaded stays under it, and a load makes room by evicting the least recently
// used version that is idle and that nothing requires (a pin, or a policy that routes to it).
//
// The budget counts bytes; the items (loaded versions) say what they hold and whether they may go.
// Lock order: the budget's lock, then an item's own lock; an item never calls the budget while it
// holds its own lock.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "lepton/common/buffer_pool.h"

namespace lepton {

// "512MB", "2 GiB", "100M", "1.5e9" or a plain number of bytes. Decimal units (KB, MB, GB, TB) are
// powers of 1000, binary ones (KiB, MiB, GiB, TiB; K, M, G, T) powers of 1024. InvalidArgument
// for anything else, zero, a negative size or one beyond 2^62.
int64_t ParseByteSize(const std::string& text);
// "4.2 MB", "100 MB", "512 B": for messages.
std::string FormatBytes(int64_t bytes);

// Something that holds memory under a budget: a version that can be loaded.
class BudgetItem {
 public:
  virtual ~BudgetItem() = default;
  // "model:version", for messages.
  virtual std::string budget_name() const = 0;
  // When it was last used (steady clock, nanoseconds): the least recent goes first.
  virtual int64_t last_used_ns() const = 0;
  // How often it is used: its uses, each weighing half as much per `half_life_s` since (for the
  // frequency-aware policy). Kept across unloads, so a version in demand comes back strong.
  virtual double frequency(int64_t now_ns, double half_life_s) const = 0;
  // Whether it holds memory that may be freed now: loaded, idle, not required.
  virtual bool Evictable() const = 0;
  // Whether it must stay loaded (pinned, or a policy routes to it), and what it takes.
  virtual bool Required() const = 0;
  virtual int64_t estimate_bytes() const = 0;
  // The bytes it holds under the budget now (0 unless loaded).
  virtual int64_t held_bytes() const = 0;
  // Unloads it if it is still evictable; returns the bytes it gave back (0: it stays). Called
  // with the budget's lock held.
  virtual int64_t Evict() = 0;
};

struct MemoryBudgetStats {
  int64_t limit = 0;
  int64_t used = 0;  // loaded and reserved for loads in progress
  int64_t peak = 0;
  int64_t evictions = 0;
  int64_t waits = 0;      // loads that had to wait for a version to go idle
  int64_t exhausted = 0;  // loads refused because no room could be made in time
  size_t items = 0;
  int64_t buffers_reused = 0;  // loads that read their artifact into a buffer an unload gave back
  int64_t buffers_kept_bytes =
      0;  // buffers given back and not yet taken again (not counted in used)
};

// Which idle version makes room. kLru: the least recently used. kLfu: the least frequently used,
// counting uses with a decay (half-life MemoryBudget::kHalfLifeS), ties to the least recent; it
// keeps a skewed workload's hot versions through bursts of rare ones, which LRU lets through.
enum class Eviction { kLru, kLfu };
// "lru" or "lfu"; InvalidArgument otherwise.
Eviction EvictionNamed(const std::string& name);
const char* EvictionName(Eviction e);

class MemoryBudget {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr double kHalfLifeS = 60;

  // InvalidArgument unless `limit_bytes` > 0.
  explicit MemoryBudget(int64_t limit_bytes, Eviction eviction = Eviction::kLru);
  // From its written forms, as configurations and Python give them: a size (ParseByteSize; a
  // number's text too) and an eviction's name (none: LRU).
  static std::shared_ptr<MemoryBudget> Make(const std::string& size,
                                            const std::optional<std::string>& eviction);
  MemoryBudget(const MemoryBudget&) = delete;
  MemoryBudget& operator=(const MemoryBudget&) = delete;

  int64_t limit() const { return limit_; }
  Eviction eviction() const { return eviction_; }
  MemoryBudgetStats stats() const;

  void Attach(BudgetItem* item);
  void Detach(BudgetItem* item);

  // Reserves `bytes` for loading `who`: evicts the least recently used evictable items until the
  // reservation fits; while what is loaded is in use, waits until `deadline` for items to go idle.
  // InvalidArgument naming `who` when `bytes` exceeds the whole budget; Overloaded when no room
  // could be made by the deadline.
  void Reserve(const BudgetItem& who, int64_t bytes, Clock::time_point deadline);
  // Replaces a reservation by the size measured once loaded; evicts others when that goes over.
  void Settle(const BudgetItem& who, int64_t reserved, int64_t actual);
  // Gives back bytes: an unloaded version, or a load that failed.
  void Release(int64_t bytes);
  // An item went idle: wakes reservations waiting for room.
  void NotifyIdle();
  bool has_waiters() const { return waiters_.load(std::memory_order_relaxed) > 0; }
  // Where versions under this budget read their artifacts: buffers an unload gives back are kept
  // (up to a quarter of the limit, at most 256 MiB, or the latest one alone) for the next load to
  // take with their pages in place, instead of mapping and unmapping the artifact at every load.
  const std::shared_ptr<BufferPool>& buffers() const { return buffers_; }

  // InvalidArgument when what must stay loaded (every Required() item) does not fit, naming the
  // items and their sizes. `what` says which change asked ("pinning m:v", "policy canary").
  void CheckRequired(const std::string& what) const;
  // InvalidArgument naming the item when one alone is larger than the budget.
  void CheckFits(const std::string& name, int64_t bytes) const;

 private:
  // Evicts least recently used items (never `keep`) until `need` more bytes fit. Returns whether
  // they fit. Called with the lock held.
  bool MakeRoomLocked(int64_t need, const BudgetItem* keep);

  const int64_t limit_;
  const Eviction eviction_;
  const std::shared_ptr<BufferPool> buffers_;
  mutable std::mutex mu_;
  std::condition_variable idle_;
  std::vector<BudgetItem*> items_;
  std::atomic<int> waiters_{0};
  int64_t used_ = 0;
  int64_t peak_ = 0;
  int64_t evictions_ = 0;
  int64_t waits_ = 0;
  int64_t exhausted_ = 0;
};

}  // namespace lepton
