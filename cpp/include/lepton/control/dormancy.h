// When a deployment's control chores (rebalancing, the anomaly watch, saving policy state) may
// sleep: after a while without activity (requests, feedback) nothing they watch changes, so they
// sleep until the next activity wakes them, or for at most `longest` as a safety net.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>

namespace lepton {

class Dormancy {
 public:
  using Clock = std::chrono::steady_clock;

  explicit Dormancy(Clock::duration after = std::chrono::seconds(3),
                    Clock::duration longest = std::chrono::seconds(60));

  // On the request path: counts one activity. True when the chores sleep and this call is the
  // one that must wake them (once per sleep).
  bool Touch();

  // On the chores' thread, once per round: notes the activity since the last round (`woken`:
  // a change woke the chores, which counts as activity). When `may_sleep` (nothing needs
  // polling) and nothing happened for `after`, the chores sleep: returns when to look again.
  // Nullopt: keep the usual schedule.
  std::optional<Clock::time_point> Settle(Clock::time_point now, bool woken, bool may_sleep);

  bool asleep() const { return asleep_.load(); }

 private:
  const Clock::duration after_, longest_;
  std::atomic<uint64_t> activity_{0};
  std::atomic<bool> asleep_{false};
  // The chores' thread's own.
  uint64_t seen_ = 0;
  Clock::time_point last_active_ = Clock::now();
};

}  // namespace lepton
