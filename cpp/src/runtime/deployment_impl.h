// A deployment's coordinator, shared by the files that define it: deployment.cpp (start, the
// request path, changes and the public face), deployment_control.cpp (the control chores) and
// deployment_status.cpp (status and metrics). Private to the runtime layer.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "lepton/common/errors.h"
#include "lepton/control/alias_follower.h"
#include "lepton/control/artifact_source.h"
#include "lepton/control/cpu_planner.h"
#include "lepton/control/dormancy.h"
#include "lepton/control/feedback_ledger.h"
#include "lepton/control/policy_sync.h"
#include "lepton/control/scheduler.h"
#include "lepton/observe/anomaly_watch.h"
#include "lepton/runtime/deployment.h"
#include "lepton/runtime/version_set.h"

namespace lepton {

// The coordinator: the request path and the control chores. Lock order: a unit's lock is never
// held while another unit is called, except the VersionSet's admin lock around a policy change,
// under which the PolicyController saves and restores state.
class Deployment::Impl {
 public:
  Impl(ArtifactSource source, std::optional<std::string> alias, DeploymentOptions options);

  ~Impl() { Close(); }

  void Start(const std::vector<std::string>& specs);

  const std::string& model() const { return model_; }
  std::shared_ptr<const VersionState> Snapshot() const { return versions_.Snapshot(); }
  const std::shared_ptr<MemoryBudget>& memory_budget() const { return versions_.budget(); }

  // --- requests ---

  Prediction Predict(const Tensors& inputs, const PredictOptions& o);

  // A client's malformed request is refused before any version runs it: it counts under no
  // version (so never against a canary's guardrails, an A/B test or an anomaly flag), and no
  // policy observes it.
  template <typename Check>
  void CheckRequest(const Check& check, const Route& route, Clock::time_point start) {
    try {
      check();
    } catch (const InvalidArgument&) {
      metrics_.Series({model_, "", alias_.value_or(""), route.policy})
          .Failed(FailureReason::kInvalidInput, Seconds(Clock::now() - start));
      throw;
    }
  }

  Prediction PredictOn(const std::shared_ptr<const VersionState>& st, const Tensors& inputs,
                       const PredictOptions& o, Clock::time_point start);

  // A model error is an event, at most one per version and second so that a failing version
  // cannot flood the log; the rest are counted in the metrics.
  void NoteModelError(const std::string& version);

  Prediction Answer(const VersionState& st, const Route& route, const Members& members,
                    const Tensors& inputs, const PredictOptions& o, Clock::time_point start);

  Prediction Routed(const std::shared_ptr<const VersionState>& st, const Route& route,
                    const Members& members, bool routed, const Tensors& inputs,
                    const PredictOptions& o, Clock::time_point start);

  // A shared policy's outcomes on a replica that does not lead wait for the next sync.
  void Observe(const Policy& policy, const Outcome& outcome);

  // A request another replica routed is unknown here: given the version that answered it (the
  // answer's model_version), its reward goes to the policy that replicas share.
  void Feedback(const std::string& request_id, double reward, const std::string& source,
                const std::optional<std::string>& version);

  // --- changes ---

  // A change that brings a policy wakes the control chores: a policy that ticks (a canary) is
  // ticked from now on.
  void Add(const std::string& spec, std::shared_ptr<const Policy> policy);
  void Remove(const std::string& version, std::shared_ptr<const Policy> policy);
  void Swap(const std::string& from, const std::string& to) { versions_.Swap(from, to); }
  void SetPolicy(std::shared_ptr<const Policy> policy);
  void SetCombiner(Combiner combiner) { versions_.SetCombiner(std::move(combiner)); }
  void Pin(const std::string& version) { versions_.Pin(version); }
  void Unpin(const std::string& version) { versions_.Unpin(version); }
  bool Refresh() { return versions_.Refresh(); }

  std::vector<ShadowStats> Shadows() const { return shadows_.Stats(); }
  std::vector<AppliedEvent> Events() const { return controller_.Events(); }

  // --- the control chores ---

  void Wake();

  // Activity (a request, feedback) for the control chores; wakes them when they sleep.
  void Touch();

  void NoteError(std::string what);

  void TickPolicy();

  void ApplyEvents(const VersionState& st, const std::vector<PolicyEvent>& events);

  // Sends or takes in a shared policy's evidence, keeps or seeks its lead; the leader then
  // decides and stores the state.
  void SyncPolicy();

  // A new policy is synced at once: joined, or its predecessor's lead handed on.
  bool PolicyChanged() const;

  bool SharesPolicy() const;

  // The control chores, run on the process's shared scheduler rather than a thread of the
  // deployment's own: what is due runs, and the time of the next chore is returned.
  void StartControl();

  Clock::time_point ControlOnce();

  void SaveCurrentState(bool force);

  void FollowAliasOnce();

  void Rebalance();

  void Close();

  // --- reading ---

  DeploymentStatus Status() const;

  MetricsSnapshot Metrics() const;

 private:
  const std::string model_;
  const std::optional<std::string> alias_;
  const DeploymentOptions options_;
  CpuPlanner planner_;  // used by the control chore only, after start
  FeedbackLedger ledger_;
  PolicyController controller_;
  VersionSet versions_;
  Executor executor_;
  ShadowComparator shadows_;
  AnomalyWatch anomalies_;
  std::optional<AliasFollower> follower_;
  RequestMetrics metrics_;
  std::unique_ptr<PolicySync> sync_;  // when the deployment shares its stateful policy
  const Policy* synced_ = nullptr;    // the policy of the last sync (the chore's own)

  // The control chores' next times: touched only by the chore, which never runs twice at once.
  struct {
    Clock::time_point poll, balance, tick, save, watch, refresh, sync;
  } next_;
  Scheduler* scheduler_ = nullptr;
  uint64_t control_id_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> woken_{false};
  Dormancy dormancy_;  // whether the chores sleep until the next request
  // Alias moves pushed by the registry, and how often the alias is still polled meanwhile.
  std::shared_ptr<void> alias_watch_;
  // Whether `alias_watch_` is set, for the chores and the status, which run beside Start and
  // Close.
  std::atomic<bool> alias_watched_{false};
  std::atomic<bool> alias_pushed_{false};
  static constexpr double kPushedPollS = 5.0;

  mutable std::mutex error_mu_;
  std::string last_error_;  // the latest failure of the control chores
  std::mutex error_event_mu_;
  std::map<std::string, double> last_error_event_;
};

}  // namespace lepton
