#include "lepton/control/dormancy.h"

namespace lepton {

Dormancy::Dormancy(Clock::duration after, Clock::duration longest)
    : after_(after), longest_(longest) {}

bool Dormancy::Touch() {
  activity_.fetch_add(1);
  return asleep_.load(std::memory_order_relaxed) && asleep_.exchange(false);
}

// The flag is set before activity is read again, and a request counts before it reads the flag,
// so one of the two always sees the other: no request is left behind a sleeping chore.
std::optional<Dormancy::Clock::time_point> Dormancy::Settle(Clock::time_point now, bool woken,
                                                            bool may_sleep) {
  const uint64_t seen = activity_.load();
  if (woken || seen != seen_) last_active_ = now;
  seen_ = seen;
  if (!may_sleep || now - last_active_ < after_) return std::nullopt;
  asleep_.store(true);
  if (activity_.load() == seen) return now + longest_;
  asleep_.store(false);
  return std::nullopt;
}

}  // namespace lepton
