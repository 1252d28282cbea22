// The feedback ledger: which recent requests a learning policy routed, so that a reward sent
// later reaches the policy that made the choice, once; and who sent rewards since the last
// automatic switch, for the audit trail. Thread-safe; one mutex.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "lepton/policy/routing.h"

namespace lepton {

class FeedbackLedger {
 public:
  // Gives a policy a reward for a version, for a request (Policy::Feedback unless told otherwise).
  using Deliver = std::function<void(const Policy&, const std::string& version, double reward,
                                     const std::string& request_id)>;
  // Remembers the last `window` requests (at least one).
  FeedbackLedger(std::string model, size_t window, Deliver deliver = {});

  void Remember(const std::string& request_id, std::shared_ptr<const Policy> policy,
                std::vector<std::string> versions);
  // Gives the reward to the policy that routed the request, for each version that answered.
  // InvalidArgument for a reward that is not finite or that the policy refuses (the request can
  // take a corrected one); NotFound when the request is unknown, too old or already rewarded.
  void Reward(const std::string& request_id, double reward, const std::string& source);
  // A reward for a request this process did not route (another replica did), given with the
  // version that answered it, to `policy`: NotFound when the request was rewarded here already.
  void RewardElsewhere(const std::string& request_id, double reward, const std::string& source,
                       const Policy& policy, const std::string& version);
  // Rewards per sender since the last call ("in-process" for ""), at most 32 senders by name.
  std::map<std::string, int64_t> TakeSources();

 private:
  struct Entry {
    std::shared_ptr<const Policy> policy;
    std::vector<std::string> versions;
  };
  static constexpr size_t kMaxSources = 32;
  const std::string model_;
  const size_t window_;
  const Deliver deliver_;
  std::mutex mu_;
  std::unordered_map<std::string, Entry> entries_;
  std::deque<std::string> order_;
  // The last `window` requests rewarded, so that none is rewarded twice by either way.
  std::unordered_set<std::string> rewarded_;
  std::deque<std::string> rewarded_order_;
  void Rewarded(const std::string& request_id, const std::string& source);
  std::map<std::string, int64_t> sources_;
};

}  // namespace lepton
