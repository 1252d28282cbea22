#include "lepton/control/feedback_ledger.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "lepton/common/errors.h"

namespace lepton {

FeedbackLedger::FeedbackLedger(std::string model, size_t window, Deliver deliver)
    : model_(std::move(model)),
      window_(std::max<size_t>(1, window)),
      deliver_(std::move(deliver)) {}

void FeedbackLedger::Remember(const std::string& request_id, std::shared_ptr<const Policy> policy,
                              std::vector<std::string> versions) {
  std::lock_guard<std::mutex> lk(mu_);
  if (order_.size() >= window_) {
    entries_.erase(order_.front());
    order_.pop_front();
  }
  entries_[request_id] = {std::move(policy), std::move(versions)};
  order_.push_back(request_id);
}

void FeedbackLedger::Reward(const std::string& request_id, double reward,
                            const std::string& source) {
  if (!std::isfinite(reward)) throw InvalidArgument("a reward must be a finite number");
  std::lock_guard<std::mutex> lk(mu_);
  auto it = entries_.find(request_id);
  if (it == entries_.end()) {
    throw NotFound("request '" + request_id + "' is unknown to " + model_ +
                   ", older than the last " + std::to_string(window_) +
                   " requests, or already has its reward (only requests routed by a policy "
                   "that learns take feedback)");
  }
  // Given before forgetting, so that a refused reward can be sent again.
  for (const auto& v : it->second.versions) {
    if (deliver_) {
      deliver_(*it->second.policy, v, reward, request_id);
    } else {
      it->second.policy->Feedback(v, reward);
    }
  }
  entries_.erase(it);
  Rewarded(request_id, source);
}

void FeedbackLedger::RewardElsewhere(const std::string& request_id, double reward,
                                     const std::string& source, const Policy& policy,
                                     const std::string& version) {
  if (!std::isfinite(reward)) throw InvalidArgument("a reward must be a finite number");
  std::lock_guard<std::mutex> lk(mu_);
  if (rewarded_.count(request_id)) {
    throw NotFound("request '" + request_id + "' already has its reward");
  }
  if (deliver_) {
    deliver_(policy, version, reward, request_id);
  } else {
    policy.Feedback(version, reward);
  }
  Rewarded(request_id, source);
}

void FeedbackLedger::Rewarded(const std::string& request_id, const std::string& source) {
  if (rewarded_order_.size() >= window_) {
    rewarded_.erase(rewarded_order_.front());
    rewarded_order_.pop_front();
  }
  if (rewarded_.insert(request_id).second) rewarded_order_.push_back(request_id);
  const std::string who = source.empty() ? "in-process" : source;
  if (sources_.size() < kMaxSources || sources_.count(who)) {
    ++sources_[who];
  } else {
    ++sources_["(other sources)"];
  }
}

std::map<std::string, int64_t> FeedbackLedger::TakeSources() {
  std::lock_guard<std::mutex> lk(mu_);
  return std::exchange(sources_, {});
}

}  // namespace lepton
