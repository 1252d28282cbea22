#include "lepton/control/policy_sync.h"

#include <nlohmann/json.hpp>
#include <utility>

#include "lepton/common/errors.h"

namespace lepton {
namespace {

using json = nlohmann::json;

// Batches taken in per sync, at most: a leader catching up after a pause takes the rest in at
// the next syncs rather than holding the control chores.
constexpr int64_t kBatchesPerRead = 64;
constexpr int kReadsPerSync = 8;

}  // namespace

bool PolicySync::Evidence::Add(std::map<std::string, std::vector<double>>& to, const std::string& v,
                               double x, size_t max) {
  if (size >= max) return false;
  to[v].push_back(x);
  ++size;
  return true;
}

bool PolicySync::Evidence::AddReward(const std::string& v, double reward, const std::string& id,
                                     size_t max) {
  if (!Add(rewards, v, reward, max)) return false;
  reward_ids[v].push_back(id);
  return true;
}

std::string PolicySync::Evidence::Json() const {
  json j = json::object();
  if (!ok.empty()) j["ok"] = ok;
  if (!failed.empty()) j["failed"] = failed;
  if (!rewards.empty()) {
    j["rewards"] = rewards;
    j["reward_ids"] = reward_ids;
  }
  return j.dump();
}

bool PolicySync::FirstReward(const std::string& request_id) {
  if (request_id.empty()) return true;
  if (!rewarded_.insert(request_id).second) return false;
  rewarded_order_.push_back(request_id);
  if (rewarded_order_.size() > kRewardMemory) {
    rewarded_.erase(rewarded_order_.front());
    rewarded_order_.pop_front();
  }
  return true;
}

PolicySync::PolicySync(std::shared_ptr<Registry> registry, std::string model, std::string replica,
                       PolicySyncOptions options)
    : registry_(std::move(registry)),
      model_(std::move(model)),
      replica_(std::move(replica)),
      options_(options) {
  if (!registry_) throw InvalidArgument("sharing a policy needs a registry");
  if (replica_.empty()) throw InvalidArgument("a replica's name must not be empty");
  if (!(options_.interval_s > 0)) throw InvalidArgument("policy_sync_interval must be > 0");
  if (!(options_.lease_s > options_.interval_s)) {
    throw InvalidArgument("policy_lease must be longer than policy_sync_interval");
  }
}

PolicySync::~PolicySync() { Leave(); }

bool PolicySync::Shares(const Policy& policy) { return !policy.state_key().empty(); }

void PolicySync::Observe(const Policy& policy, const Outcome& outcome) {
  if (&policy == shared_.load()) {
    std::lock_guard<std::mutex> lk(out_mu_);
    if (!leading_) {
      auto& to = outcome.error ? outbox_.failed : outbox_.ok;
      if (!outbox_.Add(to, outcome.version, outcome.latency_s, options_.max_batch)) ++dropped_;
      return;
    }
    ++own_outcomes_;
  }
  policy.Observe(outcome);
}

void PolicySync::Feedback(const Policy& policy, const std::string& version, double reward,
                          const std::string& request_id) {
  if (&policy == shared_.load()) {
    policy.CheckReward(version, reward);
    std::lock_guard<std::mutex> lk(out_mu_);
    if (leading_ && !FirstReward(request_id)) {
      throw NotFound("request '" + request_id +
                     "' already has its reward (sent to another replica)");
    }
    if (!leading_) {
      if (!outbox_.AddReward(version, reward, request_id, options_.max_batch)) {
        // A reward is worth more than an outcome: refused, so that the sender can send it again.
        throw Unavailable("too much evidence waits for the registry; send the reward again");
      }
      return;
    }
    ++own_rewards_;
  }
  policy.Feedback(version, reward);
}

bool PolicySync::Decides(const Policy& policy) const {
  if (&policy != shared_.load()) return true;
  std::lock_guard<std::mutex> lk(out_mu_);
  return leading_;
}

void PolicySync::Follow(const std::shared_ptr<const Policy>& policy) {
  if (policy == policy_) return;
  if (policy_ && policy && Shares(*policy) && policy->state_key() == key_) {
    // The same policy rebuilt (a swap elsewhere in the deployment): the role carries over.
    policy_ = policy;
    shared_ = policy.get();
    return;
  }
  if (policy_) {
    bool was_leading;
    {
      std::lock_guard<std::mutex> lk(out_mu_);
      was_leading = std::exchange(leading_, false);
      outbox_ = {};
    }
    if (was_leading) {
      try {
        registry_->LeaveLead(model_, key_, term_);
      } catch (const std::exception&) {
        // Its lease runs out instead.
      }
    }
  }
  policy_ = policy && Shares(*policy) ? policy : nullptr;
  key_ = policy_ ? policy_->state_key() : "";
  shared_ = policy_.get();
  term_ = cursor_ = 0;
  seen_.reset();
  loaded_.clear();
  held_.clear();
  behind_.clear();
}

void PolicySync::Sync(const std::shared_ptr<const Policy>& policy, Clock::time_point now) {
  std::lock_guard<std::mutex> lk(mu_);
  Follow(policy);
  if (!policy_) return Publish();
  try {
    SeekLead(now);
    bool leading;
    {
      std::lock_guard<std::mutex> out(out_mu_);
      leading = leading_;
    }
    if (leading) {
      for (int read = 0; read < kReadsPerSync; ++read) {
        const auto batches = registry_->Evidence(model_, key_, cursor_, kBatchesPerRead);
        for (const auto& b : batches) {
          TakeIn(b.replica, b.payload);
          cursor_ = b.id;
          ++taken_;
        }
        if (static_cast<int64_t>(batches.size()) < kBatchesPerRead) break;
      }
    } else {
      SendEvidence();
      LoadStored();
    }
    error_.clear();
  } catch (const std::exception& e) {
    Failed(e);
  }
  Publish();
}

void PolicySync::SeekLead(Clock::time_point now) {
  const std::optional<PolicyLead> lead = registry_->Lead(model_, key_);
  bool leading;
  {
    std::lock_guard<std::mutex> out(out_mu_);
    leading = leading_;
  }
  if (leading) {
    if (lead && lead->term == term_ && lead->replica == replica_) return;
    LoseLead();
  }
  // Vacant or never led: taken at once. Otherwise once its leader has been silent for the lease
  // (a replica restarted under the same name too: two deployments in one process may share it).
  bool take = !lead || lead->replica.empty();
  if (!take) {
    if (!seen_ || seen_->term != lead->term || seen_->beat != lead->beat) {
      seen_ = lead;
      seen_at_ = now;
    } else {
      take = now - seen_at_ >= std::chrono::duration<double>(options_.lease_s);
    }
  }
  if (!take) return;
  if (auto taken = registry_->TakeLead(model_, key_, replica_, lead)) {
    BecomeLeader(*taken);
  } else {
    seen_.reset();
  }
}

void PolicySync::BecomeLeader(const PolicyLead& lead) {
  term_ = lead.term;
  cursor_ = lead.cursor;
  seen_.reset();
  if (auto state = registry_->GetState(model_, key_)) {
    if (*state != loaded_) policy_->LoadState(*state);
    loaded_ = *state;
  }
  // What this replica had not sent yet goes to its policy directly; what it sent is among the
  // batches after the cursor.
  Evidence own;
  {
    std::lock_guard<std::mutex> out(out_mu_);
    leading_ = true;
    own = std::exchange(outbox_, {});
  }
  TakeIn(replica_, own.Json());
}

void PolicySync::LoseLead() {
  std::lock_guard<std::mutex> out(out_mu_);
  leading_ = false;
  seen_.reset();
  loaded_.clear();  // the next leader's state is loaded whatever it is
  held_.clear();
}

void PolicySync::TakeIn(const std::string& replica, const std::string& payload) {
  const json j = json::parse(payload, nullptr, false);
  if (!j.is_object()) {
    ++refused_;
    return;
  }
  auto& counts = behind_[replica];
  auto each = [&](const char* field, auto&& give) {
    if (!j.contains(field) || !j[field].is_object()) return;
    for (const auto& [version, values] : j[field].items()) {
      if (!values.is_array()) continue;
      for (const auto& x : values) {
        if (!x.is_number()) continue;
        try {
          give(version, x.template get<double>());
          ++counts[field];
        } catch (const std::exception&) {
          ++refused_;  // a version the policy no longer has, a reward it refuses
        }
      }
    }
  };
  each("ok", [&](const std::string& v, double s) { policy_->Observe({v, s, false}); });
  each("failed", [&](const std::string& v, double s) { policy_->Observe({v, s, true}); });
  // Rewards, each once per request whichever replicas it was sent to.
  const json& ids =
      j.contains("reward_ids") && j["reward_ids"].is_object() ? j["reward_ids"] : json::object();
  if (!j.contains("rewards") || !j["rewards"].is_object()) return;
  for (const auto& [version, values] : j["rewards"].items()) {
    if (!values.is_array()) continue;
    const json& those =
        ids.contains(version) && ids[version].is_array() ? ids[version] : json::array();
    for (size_t i = 0; i < values.size(); ++i) {
      if (!values[i].is_number()) continue;
      const std::string id =
          i < those.size() && those[i].is_string() ? those[i].get<std::string>() : "";
      {
        std::lock_guard<std::mutex> out(out_mu_);
        if (!FirstReward(id)) {
          ++duplicates_;
          continue;
        }
      }
      try {
        policy_->Feedback(version, values[i].get<double>());
        ++counts["rewards"];
      } catch (const std::exception&) {
        ++refused_;
      }
    }
  }
}

void PolicySync::SendEvidence() {
  Evidence batch;
  {
    std::lock_guard<std::mutex> out(out_mu_);
    batch = std::exchange(outbox_, {});
  }
  if (batch.size == 0) return;
  try {
    registry_->AddEvidence(model_, key_, replica_, batch.Json());
    ++sent_;
  } catch (...) {
    // Kept for the next try, with what arrived meanwhile, up to the same bound.
    std::lock_guard<std::mutex> out(out_mu_);
    using Field = std::map<std::string, std::vector<double>> Evidence::*;
    for (Field kind : {&Evidence::ok, &Evidence::failed}) {
      for (const auto& [v, xs] : batch.*kind) {
        for (double x : xs) {
          if (!outbox_.Add(outbox_.*kind, v, x, options_.max_batch)) ++dropped_;
        }
      }
    }
    for (const auto& [v, xs] : batch.rewards) {
      const auto& ids = batch.reward_ids[v];
      for (size_t i = 0; i < xs.size(); ++i) {
        if (!outbox_.AddReward(v, xs[i], i < ids.size() ? ids[i] : "", options_.max_batch)) {
          ++dropped_;
        }
      }
    }
    throw;
  }
}

void PolicySync::LoadStored() {
  auto state = registry_->GetState(model_, key_);
  if (!state || *state == loaded_) return;
  policy_->LoadState(*state);
  loaded_ = *state;
}

std::vector<PolicyEvent> PolicySync::Commit(std::vector<PolicyEvent> events) {
  std::lock_guard<std::mutex> lk(mu_);
  if (!policy_) return events;
  {
    std::lock_guard<std::mutex> out(out_mu_);
    if (!leading_) return {};
  }
  held_.insert(held_.end(), std::make_move_iterator(events.begin()),
               std::make_move_iterator(events.end()));
  const std::string state = policy_->SaveState();
  try {
    const bool kept = registry_->KeepLead(model_, key_, term_, cursor_,
                                          state == loaded_ ? std::nullopt : std::optional(state));
    if (!kept) {
      LoseLead();
      Publish();
      return {};
    }
    loaded_ = state;
    error_.clear();
  } catch (const std::exception& e) {
    Failed(e);
    Publish();
    return {};
  }
  std::vector<PolicyEvent> out = std::exchange(held_, {});
  if (!out.empty()) {
    // Who decided, under which term, and whose outcomes and rewards the decision rests on.
    auto& own = behind_[replica_];
    own["ok"] += own_outcomes_.exchange(0);
    own["rewards"] += own_rewards_.exchange(0);
    json from = json::object();
    for (const auto& [replica, counts] : behind_) from[replica] = counts;
    for (auto& e : out) {
      json evidence = json::parse(e.evidence.empty() ? "{}" : e.evidence, nullptr, false);
      if (!evidence.is_object()) evidence = json{{"evidence", e.evidence}};
      evidence["decided_by"] = replica_;
      evidence["term"] = term_;
      evidence["evidence_from"] = from;
      e.evidence = evidence.dump();
    }
    behind_.clear();
  }
  Publish();
  return out;
}

void PolicySync::Leave() {
  std::lock_guard<std::mutex> lk(mu_);
  bool was_leading;
  {
    std::lock_guard<std::mutex> out(out_mu_);
    was_leading = std::exchange(leading_, false);
  }
  if (was_leading && policy_) {
    try {
      // The state as it is now, then the lead left vacant.
      const std::string state = policy_->SaveState();
      if (registry_->KeepLead(model_, key_, term_, cursor_,
                              state == loaded_ ? std::nullopt : std::optional(state))) {
        registry_->LeaveLead(model_, key_, term_);
      }
    } catch (const std::exception&) {
      // Its lease runs out instead.
    }
  }
  Publish();
}

void PolicySync::Failed(const std::exception& e) {
  error_ = e.what();
  seen_.reset();  // a leader that could not beat meanwhile is not held silent for it
}

void PolicySync::Publish() {
  json j{{"replica", replica_}};
  if (policy_) {
    bool leading;
    size_t pending;
    int64_t dropped;
    {
      std::lock_guard<std::mutex> out(out_mu_);
      leading = leading_;
      pending = outbox_.size;
      dropped = dropped_;
    }
    j["key"] = key_;
    j["role"] = leading ? "leader" : "follower";
    if (leading) {
      j["leader"] = replica_;
      j["term"] = term_;
    } else if (seen_) {
      j["leader"] = seen_->replica;
      j["term"] = seen_->term;
    }
    j["pending"] = pending;
    j["sent_batches"] = sent_;
    j["taken_batches"] = taken_;
    j["dropped"] = dropped;
    j["refused"] = refused_;
    {
      std::lock_guard<std::mutex> out(out_mu_);
      j["duplicate_rewards"] = duplicates_;
    }
    if (!error_.empty()) j["error"] = error_;
  }
  std::lock_guard<std::mutex> lk(info_mu_);
  info_ = j.dump();
}

std::string PolicySync::Report() const {
  json j;
  {
    std::lock_guard<std::mutex> lk(info_mu_);
    j = json::parse(info_);
  }
  if (j.contains("key")) {
    // What waits now, not at the last sync.
    std::lock_guard<std::mutex> out(out_mu_);
    j["pending"] = outbox_.size;
    j["dropped"] = dropped_;
  }
  return j.dump();
}

}  // namespace lepton
