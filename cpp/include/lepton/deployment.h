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
};

struct PredictOptions {
  RequestContext context;           // key, pinned version, headers
  std::optional<double> timeout_s;  // per-request deadline
  std::optional<int> priority;      // overrides the version's default
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

  std::shared_ptr<const Policy> policy() const;
  std::vector<std::string> versions() const;
  DeploymentStatus Status() const;
  const std::string& model() const;

  // Stops the alias watcher and drains every version; later requests raise Unavailable.
  void Close();

 private:
  struct State;
  class Impl;
  explicit Deployment(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lepton
