#include "lepton/control/memory_budget.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "lepton/common/errors.h"

namespace lepton {

int64_t ParseByteSize(const std::string& text) {
  const auto bad = [&](const std::string& why) {
    return InvalidArgument("memory size '" + text + "' " + why +
                           " (a number of bytes, or one with a unit: 512MB, 2GiB, 100M)");
  };
  size_t i = 0;
  while (i < text.size() && text[i] == ' ') ++i;
  double value = 0;
  const char* begin = text.data() + i;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(begin, end, value);
  if (ec != std::errc() || ptr == begin) throw bad("does not start with a number");
  std::string unit(ptr, end);
  unit.erase(std::remove(unit.begin(), unit.end(), ' '), unit.end());
  std::string upper;
  for (char c : unit) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1},
      {"B", 1},
      {"KB", 1e3},
      {"MB", 1e6},
      {"GB", 1e9},
      {"TB", 1e12},
      {"K", 1024.0},
      {"M", 1024.0 * 1024},
      {"G", 1024.0 * 1024 * 1024},
      {"T", 1024.0 * 1024 * 1024 * 1024},
      {"KIB", 1024.0},
      {"MIB", 1024.0 * 1024},
      {"GIB", 1024.0 * 1024 * 1024},
      {"TIB", 1024.0 * 1024 * 1024 * 1024},
  };
  double scale = -1;
  for (const auto& [name, s] : kUnits) {
    if (upper == name) scale = s;
  }
  if (scale < 0) throw bad("has an unknown unit '" + unit + "'");
  const double bytes = value * scale;
  if (!std::isfinite(bytes) || bytes < 1) throw bad("must be at least one byte");
  if (bytes > 4.6e18) throw bad("is too large");
  return static_cast<int64_t>(std::llround(bytes));
}

std::string FormatBytes(int64_t bytes) {
  char buf[64];
  const double b = static_cast<double>(bytes);
  if (bytes < 1000) {
    std::snprintf(buf, sizeof buf, "%lld B", static_cast<long long>(bytes));
  } else if (b < 1e6) {
    std::snprintf(buf, sizeof buf, "%.1f kB", b / 1e3);
  } else if (b < 1e9) {
    std::snprintf(buf, sizeof buf, "%.1f MB", b / 1e6);
  } else {
    std::snprintf(buf, sizeof buf, "%.2f GB", b / 1e9);
  }
  return buf;
}

Eviction EvictionNamed(const std::string& name) {
  if (name == "lru") return Eviction::kLru;
  if (name == "lfu") return Eviction::kLfu;
  throw InvalidArgument("eviction must be \"lru\" or \"lfu\", got \"" + name + "\"");
}

const char* EvictionName(Eviction e) { return e == Eviction::kLfu ? "lfu" : "lru"; }

MemoryBudget::MemoryBudget(int64_t limit_bytes, Eviction eviction)
    : limit_(limit_bytes),
      eviction_(eviction),
      buffers_(BufferPool::Create(std::min<int64_t>(limit_bytes / 4, int64_t{256} << 20))) {
  if (limit_bytes <= 0) {
    throw InvalidArgument("a memory budget must be more than 0 bytes, got " +
                          std::to_string(limit_bytes));
  }
#ifdef __GLIBC__
  // Unloading must give memory back to the system. glibc serves large blocks with mmap and
  // unmaps them when freed, but by default it raises that threshold each time such a block is
  // freed, after which weights come from the heap, whose freed space stays with the process:
  // a fixed threshold keeps every tensor of an evicted version returnable.
  static const bool fixed = [] { return mallopt(M_MMAP_THRESHOLD, 256 * 1024) == 1; }();
  (void)fixed;
#endif
}

std::shared_ptr<MemoryBudget> MemoryBudget::Make(const std::string& size,
                                                 const std::optional<std::string>& eviction) {
  const int64_t bytes = ParseByteSize(size);
  return eviction ? std::make_shared<MemoryBudget>(bytes, EvictionNamed(*eviction))
                  : std::make_shared<MemoryBudget>(bytes);
}

MemoryBudgetStats MemoryBudget::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  MemoryBudgetStats s;
  s.limit = limit_;
  s.used = used_;
  s.peak = peak_;
  s.evictions = evictions_;
  s.waits = waits_;
  s.exhausted = exhausted_;
  s.items = items_.size();
  const BufferPool::Stats b = buffers_->stats();
  s.buffers_reused = b.reused;
  s.buffers_kept_bytes = b.kept_bytes;
  return s;
}

void MemoryBudget::Attach(BudgetItem* item) {
  std::lock_guard<std::mutex> lk(mu_);
  items_.push_back(item);
}

void MemoryBudget::Detach(BudgetItem* item) {
  std::lock_guard<std::mutex> lk(mu_);
  items_.erase(std::remove(items_.begin(), items_.end(), item), items_.end());
}

void MemoryBudget::CheckFits(const std::string& name, int64_t bytes) const {
  if (bytes > limit_) {
    throw InvalidArgument(name + " takes " + FormatBytes(bytes) + ", more than the whole memory " +
                          "budget of " + FormatBytes(limit_) + "; raise the budget to at least " +
                          FormatBytes(bytes));
  }
}

bool MemoryBudget::MakeRoomLocked(int64_t need, const BudgetItem* keep) {
  while (used_ + need > limit_) {
    // The least recently used item that may go. A scan, not a list kept in order: requests only
    // stamp their version's time, and evictions are rare next to requests.
    BudgetItem* victim = nullptr;
    int64_t oldest = 0;
    double rarest = 0;
    const int64_t now =
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
            .count();
    for (BudgetItem* item : items_) {
      if (item == keep || !item->Evictable()) continue;
      const int64_t t = item->last_used_ns();
      const double f = eviction_ == Eviction::kLfu ? item->frequency(now, kHalfLifeS) : 0;
      if (!victim || f < rarest || (f == rarest && t < oldest)) {
        victim = item;
        oldest = t;
        rarest = f;
      }
    }
    if (!victim) return false;
    const int64_t freed = victim->Evict();
    if (freed > 0) {
      used_ -= freed;
      ++evictions_;
    }
  }
  return true;
}

void MemoryBudget::Reserve(const BudgetItem& who, int64_t bytes, Clock::time_point deadline) {
  CheckFits(who.budget_name(), bytes);
  std::unique_lock<std::mutex> lk(mu_);
  bool waited = false;
  while (!MakeRoomLocked(bytes, &who)) {
    // Waiting helps only when versions in use will go idle; what is required stays.
    int64_t required = 0;
    for (const BudgetItem* item : items_) {
      if (item != &who && item->Required()) required += item->held_bytes();
    }
    if (required + bytes > limit_) {
      ++exhausted_;
      throw Overloaded("no room to load " + who.budget_name() + " (" + FormatBytes(bytes) +
                       "): the versions that must stay loaded (pinned, or routed to by a "
                       "policy) hold " +
                       FormatBytes(required) + " of the memory budget of " + FormatBytes(limit_));
    }
    if (!waited) {
      waited = true;
      ++waits_;
    }
    // In slices: an item can also become evictable with time (a fresh load's grace ends).
    ++waiters_;
    idle_.wait_until(lk, std::min(deadline, Clock::now() + std::chrono::milliseconds(50)));
    --waiters_;
    const bool timed_out = Clock::now() >= deadline;
    if (timed_out && !MakeRoomLocked(bytes, &who)) {
      ++exhausted_;
      throw Overloaded("no room to load " + who.budget_name() + " (" + FormatBytes(bytes) +
                       "): the memory budget of " + FormatBytes(limit_) + " is held by " +
                       FormatBytes(used_) + " of versions that are in use or required");
    }
    if (timed_out) break;
  }
  used_ += bytes;
  peak_ = std::max(peak_, used_);
}

void MemoryBudget::Settle(const BudgetItem& who, int64_t reserved, int64_t actual) {
  std::lock_guard<std::mutex> lk(mu_);
  used_ += actual - reserved;
  if (used_ > limit_) MakeRoomLocked(0, &who);
  peak_ = std::max(peak_, used_);
}

void MemoryBudget::Release(int64_t bytes) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    used_ -= bytes;
  }
  idle_.notify_all();
}

void MemoryBudget::NotifyIdle() {
  { std::lock_guard<std::mutex> lk(mu_); }
  idle_.notify_all();
}

void MemoryBudget::CheckRequired(const std::string& what) const {
  std::lock_guard<std::mutex> lk(mu_);
  int64_t total = 0;
  std::vector<std::pair<int64_t, std::string>> required;
  for (const BudgetItem* item : items_) {
    if (!item->Required()) continue;
    total += item->estimate_bytes();
    required.emplace_back(item->estimate_bytes(), item->budget_name());
  }
  if (total <= limit_) return;
  std::sort(required.rbegin(), required.rend());
  std::string list;
  for (size_t i = 0; i < required.size() && i < 8; ++i) {
    list += (i ? ", " : "") + required[i].second + " (" + FormatBytes(required[i].first) + ")";
  }
  if (required.size() > 8) list += " and " + std::to_string(required.size() - 8) + " more";
  throw InvalidArgument(what + ": the versions that must stay loaded take " + FormatBytes(total) +
                        ", more than the memory budget of " + FormatBytes(limit_) + ": " + list);
}

}  // namespace lepton
