// A deployment is the set of live versions of one model plus the policy that routes requests to
// them. Versions are added, removed and swapped while requests flow; a deployment that follows an
// alias swaps itself when the alias moves in the registry, from this process or another.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lepton/combine.h"
#include "lepton/metrics.h"
#include "lepton/registry.h"
#include "lepton/routing.h"
#include "lepton/servable.h"

namespace lepton {

struct DeploymentOptions {
  // Cores shared by the deployment's versions; 0: every core of the machine.
  int threads = 0;
  // Defaults for every version; `servable.threads` is set by the deployment (see below).
  ServableOptions servable;
  // Fixed CPU budgets per version label; the others share what is left.
  std::map<std::string, int> version_threads;
  // Default request priority per version label.
  std::map<std::string, int> version_priority;
  // Reassign cores among versions from their measured demand, never below `min_threads`.
  bool adaptive = true;
  int min_threads = 1;
  double rebalance_interval_s = 0.5;
  // How long a removed or swapped-out version may finish its requests.
  double drain_timeout_s = 30;
  // How often a deployment that follows an alias checks the registry.
  double alias_poll_s = 0.2;
  // How often the policy's controller runs (canary steps, A/B decisions, schedules).
  double policy_tick_s = 0.02;
  // How often a stateful policy's state is saved to the registry (and at close).
  double state_save_s = 1.0;
  // How many recent requests can still take feedback.
  size_t feedback_window = 100000;
  // Mirrored requests waiting for comparison; more are dropped (and counted).
  size_t shadow_queue = 256;
  // How often each version's error rate and latency are checked against their recent band.
  double anomaly_interval_s = 1.0;
};

// How a mirror's outputs compare with the primary's, over the mirrored requests so far.
struct ShadowStats {
  std::string primary, mirror;
  int64_t compared = 0;  // requests whose outputs were compared
  int64_t failed = 0;    // the mirror failed or its outputs could not be compared
  int64_t dropped = 0;   // not mirrored: the mirror or the comparison queue was full
  double max_abs_diff = 0;
  double mean_abs_diff = 0;                // mean over requests of the mean |difference|
  std::optional<double> argmax_agreement;  // share of rows whose argmax agrees
  std::optional<double> kl_divergence;     // mean KL(primary || mirror) for probabilities
};

// An automatic switch that a policy decided and the deployment applied.
struct AppliedEvent {
  PolicyEvent event;
  std::string policy;
  std::optional<std::string> alias;  // the alias moved, if any
  std::string note;                  // what applying it did or why part of it could not
};

struct PredictOptions {
  RequestContext context;           // key, pinned version, headers
  std::optional<double> timeout_s;  // per-request deadline
  std::optional<int> priority;      // overrides the version's default
  // The request's names for its inputs, in order (the HTTP API's); checked against the answering
  // version's input names. Empty: inputs are positional.
  std::vector<std::string> input_names;
};

struct Prediction {
  Tensors outputs;
  std::vector<std::string> versions;  // which versions answered (ensemble: every member used)
  std::vector<std::string> skipped;   // ensemble members left out after an error
  std::string policy;
  std::string route;  // why these versions
  std::string request_id;
  double latency_s = 0;
  double queue_s = 0;
  double compute_s = 0;
  int batch_rows = 0;  // rows in the batch it ran in (0 for an ensemble)
};

struct DeploymentStatus {
  std::string model;
  std::optional<std::string> alias;
  std::string primary;
  std::string policy;
  int threads = 0;
  bool adaptive = false;
  int64_t swaps = 0;
  std::vector<ServableStats> versions;
  std::string last_error;  // the latest failure of the alias watcher, if any
  // The followed alias's target when it cannot be loaded (the previous version keeps serving),
  // and how many attempts to load a target have failed.
  std::optional<std::string> alias_target_failed;
  int64_t alias_follow_failures = 0;
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

  // A reward for an earlier request, for policies that learn (bandits, A/B tests). NotFound when
  // the request id is unknown, too old, or already has its reward. `source` says who sent it
  // ("" in-process); the sources are recorded with the automatic switch they lead to.
  void Feedback(const std::string& request_id, double reward, const std::string& source = "");
  std::vector<ShadowStats> Shadows() const;
  // The automatic switches applied so far, oldest first (at most the last 1000).
  std::vector<AppliedEvent> Events() const;
  // Runs the policy's controller once now (the controller also runs every policy_tick_s).
  void TickPolicy();

  std::shared_ptr<const Policy> policy() const;
  std::vector<std::string> versions() const;
  DeploymentStatus Status() const;
  // Request counters and histograms per version, alias and policy, and each version's gauges.
  MetricsSnapshot Metrics() const;
  const std::string& model() const;

  // Stops the alias watcher and drains every version; later requests raise Unavailable.
  void Close();

 private:
  struct State;
  class Impl;
  explicit Deployment(std::unique_ptr<Impl> impl);
  // The implementation, or Unavailable in a child forked after the deployment was made.
  Impl* Live() const;
  std::unique_ptr<Impl> impl_;
  uint64_t generation_;  // the process's fork generation when the deployment was made
};

}  // namespace lepton
