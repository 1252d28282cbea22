// Policy sync: a deployment's stateful policy (a canary, an A/B test, a bandit: one with a state
// key) acts as one across the replicas that share its registry. Each replica passes the outcomes
// and rewards of the requests it served to the registry in batches. One replica at a time leads,
// under a lease in the registry that it keeps by beating and that another replica takes over
// once the leader has been silent for `lease_s`: the leader takes everyone's evidence into its
// policy, which decides exactly as it would alone, and stores the policy's state, which the
// others load and route by. Each change of leader opens a new term, and a write of a term that
// no longer leads is refused, so a leader that was paused and replaced cannot overwrite its
// successor. The request path only appends to a buffer; every registry call is made from Sync and
// Commit, on the deployment's control chores. Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "lepton/policy/routing.h"
#include "lepton/registry/registry.h"

namespace lepton {

struct PolicySyncOptions {
  double interval_s = 0.25;  // how often evidence is sent and taken in, and the lead kept
  double lease_s = 3;        // a leader silent this long is replaced
  size_t max_batch = 20000;  // outcomes and rewards kept between two syncs; more are dropped
};

class PolicySync {
 public:
  using Clock = std::chrono::steady_clock;

  PolicySync(std::shared_ptr<Registry> registry, std::string model, std::string replica,
             PolicySyncOptions options);
  ~PolicySync();

  // Whether `policy` is shared: it keeps state (a state key).
  static bool Shares(const Policy& policy);

  // --- the request path: never waits on the registry ---
  // The outcome or reward of a request routed by `policy`: kept for the next sync while `policy`
  // is the shared one and this replica does not lead, else given to the policy. A reward is
  // checked first (the policy's own errors).
  void Observe(const Policy& policy, const Outcome& outcome);
  // `request_id` names the request rewarded: the leader takes one reward per request, whichever
  // replica it came through (NotFound when it already has one; a follower's repeat is dropped
  // when the leader takes it in, and counted).
  void Feedback(const Policy& policy, const std::string& version, double reward,
                const std::string& request_id);

  // --- the control path ---
  // Follows the deployment's policy now (`policy`), keeps or seeks its lead, and then, leading,
  // takes the other replicas' evidence in; not leading, sends this replica's evidence and loads
  // the stored state. Registry errors are kept for the report (and the lease clock restarts).
  void Sync(const std::shared_ptr<const Policy>& policy, Clock::time_point now);
  // Whether this replica decides for `policy` (always, for a policy that is not shared).
  bool Decides(const Policy& policy) const;
  // The leader, after its policy decided `events` (or none: a heartbeat): beats and stores the
  // policy's state. Returns the events to apply now (with the replicas behind them and the term
  // in their evidence), including any held back by a registry error; none when the lead was
  // lost, whose events the new leader decides again.
  std::vector<PolicyEvent> Commit(std::vector<PolicyEvent> events);
  // Steps down from the lead, if held, so that another replica takes over at once.
  void Leave();

  // JSON: replica, key, role ("leader", "follower"), leader, term, pending, sent and taken
  // batches, dropped evidence, the last registry error.
  std::string Report() const;

 private:
  // Outcomes and rewards by version, waiting for the next batch.
  struct Evidence {
    std::map<std::string, std::vector<double>> ok, failed, rewards;  // latencies, rewards
    std::map<std::string, std::vector<std::string>> reward_ids;      // beside `rewards`
    size_t size = 0;
    bool Add(std::map<std::string, std::vector<double>>& to, const std::string& v, double x,
             size_t max);
    bool AddReward(const std::string& v, double reward, const std::string& id, size_t max);
    std::string Json() const;
  };

  void Follow(const std::shared_ptr<const Policy>& policy);
  void SeekLead(Clock::time_point now);
  void BecomeLeader(const PolicyLead& lead);
  void LoseLead();
  void TakeIn(const std::string& replica, const std::string& payload);
  void SendEvidence();
  void LoadStored();
  void Failed(const std::exception& e);
  void Publish();
  // Under out_mu_: whether this is the first reward for `request_id` the leader sees.
  bool FirstReward(const std::string& request_id);

  const std::shared_ptr<Registry> registry_;
  const std::string model_;
  const std::string replica_;
  const PolicySyncOptions options_;

  // The request path's side: the shared policy, whether this replica leads it, and what waits.
  std::atomic<const Policy*> shared_{nullptr};
  mutable std::mutex out_mu_;
  bool leading_ = false;  // under out_mu_
  Evidence outbox_;       // under out_mu_
  int64_t dropped_ = 0;   // under out_mu_
  // The requests rewarded lately (under out_mu_), so that none counts twice.
  static constexpr size_t kRewardMemory = 100000;
  std::unordered_set<std::string> rewarded_;
  std::deque<std::string> rewarded_order_;
  int64_t duplicates_ = 0;
  std::atomic<int64_t> own_outcomes_{0}, own_rewards_{0};

  // The control side, under mu_.
  mutable std::mutex mu_;
  std::shared_ptr<const Policy> policy_;
  std::string key_;
  int64_t term_ = 0;
  int64_t cursor_ = 0;
  std::optional<PolicyLead> seen_;
  Clock::time_point seen_at_{};
  std::string loaded_;                                            // the state last loaded or stored
  std::vector<PolicyEvent> held_;                                 // decided, not yet stored
  std::map<std::string, std::map<std::string, int64_t>> behind_;  // replica -> kind -> count
  int64_t sent_ = 0, taken_ = 0, refused_ = 0;
  std::string error_;

  mutable std::mutex info_mu_;
  std::string info_ = "{}";
};

}  // namespace lepton
