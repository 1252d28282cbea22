// A deployment is the set of live versions of one model plus the policy that routes requests to
// them. Versions are added, removed and swapped while requests flow; a deployment that follows an
// alias swaps itself when the alias moves in the registry, from this process or another.
//
// Deployment coordinates units that each have one job and their own lock: the VersionSet (live
// versions and their lifecycle), the Executor (running a routed request), the ShadowComparator,
// the FeedbackLedger, the PolicyController (automatic switches, audit, saved state), the
// CpuPlanner, the AnomalyWatch and the AliasFollower. It owns the request path (route, check,
// count, run, observe) and its control chores (policy ticks, alias polls, rebalancing, anomaly
// checks, state saves), which run on the process's shared Scheduler.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lepton/control/policy_controller.h"
#include "lepton/observe/metrics.h"
#include "lepton/policy/routing.h"
#include "lepton/registry/registry.h"
#include "lepton/runtime/combine.h"
#include "lepton/runtime/deployment_options.h"
#include "lepton/runtime/executor.h"
#include "lepton/runtime/servable.h"
#include "lepton/runtime/shadow.h"
#include "lepton/runtime/version_slot.h"

namespace lepton {

struct DeploymentStatus {
  std::string model;
  std::optional<std::string> alias;
  std::string primary;
  std::string policy;
  int threads = 0;
  bool adaptive = false;
  int64_t swaps = 0;
  std::vector<ServableStats> versions;
  std::vector<SlotStats> slots;             // each version's residency and loads, in the same order
  std::optional<MemoryBudgetStats> memory;  // the budget it loads under, if any
  int loader_threads = 0;
  std::string last_error;  // the latest failure of the alias watcher, if any
  // Whether its control chores sleep until the next request: nothing to watch after a few idle
  // seconds, and nothing to poll (no followed alias, no new versions, no policy clock).
  bool idle = false;
  // The followed alias's target when it cannot be loaded (the previous version keeps serving),
  // and how many attempts to load a target have failed.
  std::optional<std::string> alias_target_failed;
  int64_t alias_follow_failures = 0;
  // The registry pushes the followed alias's moves now (PostgreSQL's LISTEN/NOTIFY); otherwise
  // they are seen by polling.
  bool alias_pushed = false;
  // The registry could not be read at the last look at the followed alias; the loaded versions
  // keep serving.
  bool registry_unreachable = false;
  // A JSON object when its policy is shared with other replicas (PolicySync::Report): this
  // replica's role, the leader, the evidence sent and taken in.
  std::string policy_sync;
  // How ensemble requests that ran alone were laid over the cores (arrangement.h).
  std::vector<ArrangementStats> arrangements;
};

class Deployment {
 public:
  // Serves the given versions (labels, `@ALIAS` or references) of `model` from `registry`.
  Deployment(std::shared_ptr<Registry> registry, std::string model,
             std::vector<std::string> versions, DeploymentOptions options);
  // Serves whatever `model@alias` points to, and follows it when it moves.
  static std::unique_ptr<Deployment> FollowAlias(std::shared_ptr<Registry> registry,
                                                 std::string model, std::string alias,
                                                 DeploymentOptions options);
  // Serves TorchScript files without a registry: label -> path, in order.
  Deployment(std::string model, std::vector<std::pair<std::string, std::string>> files,
             DeploymentOptions options);
  ~Deployment();
  Deployment(const Deployment&) = delete;
  Deployment& operator=(const Deployment&) = delete;

  Prediction Predict(const Tensors& inputs, const PredictOptions& options = {});

  // Loads and warms `version`, then makes it live. The policy, if given, takes effect with it.
  void Add(const std::string& version, std::shared_ptr<const Policy> policy = nullptr);
  // Takes `version` out of routing, then drains it.
  void Remove(const std::string& version, std::shared_ptr<const Policy> policy = nullptr);
  // Loads and warms `to`, switches atomically from `from`, then drains `from`.
  void Swap(const std::string& from, const std::string& to);
  void SetPolicy(std::shared_ptr<const Policy> policy);
  void SetCombiner(Combiner combiner);
  // Keeps a version loaded whatever the memory budget needs (loading it now; InvalidArgument
  // when what must stay loaded would not fit), or lets it be unloaded again.
  void Pin(const std::string& version);
  void Unpin(const std::string& version);
  // With options.all_versions: looks for versions registered or deleted since (the control
  // thread also does, every versions_poll_s). Returns whether anything changed.
  bool RefreshVersions();

  // A reward for an earlier request, for policies that learn (bandits, A/B tests). NotFound when
  // the request id is unknown, too old, or already has its reward. `source` says who sent it
  // ("" in-process); the sources are recorded with the automatic switch they lead to. A request
  // another replica routed is taken with the `version` that answered it, when the policy is
  // shared between replicas (DeploymentOptions::share_policies).
  void Feedback(const std::string& request_id, double reward, const std::string& source = "",
                const std::optional<std::string>& version = std::nullopt);
  std::vector<ShadowStats> Shadows() const;
  // The automatic switches applied so far, oldest first (at most the last 1000).
  std::vector<AppliedEvent> Events() const;
  // Runs the policy's controller once now (the controller also runs every policy_tick_s).
  void TickPolicy();

  std::shared_ptr<const Policy> policy() const;
  std::vector<std::string> versions() const;
  // The version a plain request goes to ("" once closed).
  std::string primary() const;
  // The memory budget its versions load under; null when every version stays loaded.
  const std::shared_ptr<MemoryBudget>& memory_budget() const;
  DeploymentStatus Status() const;
  // Request counters and histograms per version, alias and policy, and each version's gauges.
  MetricsSnapshot Metrics() const;
  const std::string& model() const;

  // Stops the alias watcher and drains every version; later requests raise Unavailable.
  void Close();

 private:
  class Impl;
  explicit Deployment(std::unique_ptr<Impl> impl);
  // The implementation, or Unavailable in a child forked after the deployment was made.
  Impl* Live() const;
  std::unique_ptr<Impl> impl_;
  uint64_t generation_;  // the process's fork generation when the deployment was made
};

}  // namespace lepton
