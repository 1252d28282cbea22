// The live versions of one deployment and their lifecycle: fetch, load and warm a version before
// it takes traffic, add, remove, swap (atomically, then drain the old one), set the policy and
// the primary, follow an alias. Readers take an immutable snapshot without a lock; every change
// is made under one lock (the set's admin lock) and published as a new snapshot.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "lepton/control/artifact_source.h"
#include "lepton/control/cpu_planner.h"
#include "lepton/policy/routing.h"
#include "lepton/runtime/combine.h"
#include "lepton/runtime/deployment_options.h"
#include "lepton/runtime/servable.h"

namespace lepton {

// One immutable state of the set: what requests route over.
struct VersionState {
  std::string model;
  LiveVersions live;
  std::map<std::string, std::shared_ptr<Servable>> servables;
  std::shared_ptr<const Policy> policy;
  Combiner combiner;

  // NotFound naming the live versions when `version` is not one of them.
  std::shared_ptr<Servable> Lookup(const std::string& version) const;
};

class VersionSet {
 public:
  // `on_policy_change(out, in)` runs under the admin lock when a policy takes over from another.
  VersionSet(ArtifactSource source, const DeploymentOptions& options, const CpuPlanner& planner,
             std::optional<std::string> alias,
             std::function<void(const Policy&, const Policy&)> on_policy_change);

  // The current state; null before Start.
  std::shared_ptr<const VersionState> Snapshot() const { return std::atomic_load(&state_); }
  bool closed() const { return closed_; }
  int64_t swaps() const { return swaps_; }
  const std::string& model() const { return source_.model(); }
  const std::optional<std::string>& alias() const { return alias_; }
  const std::shared_ptr<Registry>& registry() const { return source_.registry(); }

  // Loads the first versions under a fixed policy; the first is the primary.
  void Start(const std::vector<std::string>& specs);
  void Add(const std::string& spec, std::shared_ptr<const Policy> policy);
  // Takes the version out of routing, then drains it.
  void Remove(const std::string& version, std::shared_ptr<const Policy> policy);
  void Swap(const std::string& from, const std::string& to_spec);
  void SetPolicy(std::shared_ptr<const Policy> policy);
  void SetCombiner(Combiner combiner);
  // Makes a live version the primary (nothing when it is not live or already primary).
  void SetPrimary(const std::string& version);
  // Makes `target` the primary: a live version becomes it, another is loaded in place of the
  // primary, which then drains. Returns false when `target` already was the primary.
  bool Follow(const std::string& target);
  // Refuses further changes; returns the last state for draining (null when already closed).
  std::shared_ptr<const VersionState> Close();

 private:
  void Publish(std::shared_ptr<const VersionState> next) { std::atomic_store(&state_, next); }
  std::shared_ptr<const VersionState> LiveState() const;  // Unavailable once closed
  std::shared_ptr<Servable> LoadServable(const Artifact& a, size_t live_count);
  // Under the admin lock: swaps `from` for `to_spec`, leaving the old servable in `old` (null
  // when `to_spec` is `from`).
  void SwapLocked(const std::string& from, const std::string& to_spec,
                  std::shared_ptr<Servable>* old);
  void DrainSwapped(const std::shared_ptr<Servable>& old);

  const ArtifactSource source_;
  const DeploymentOptions& options_;
  const CpuPlanner& planner_;
  const std::optional<std::string> alias_;
  const std::function<void(const Policy&, const Policy&)> on_policy_change_;
  std::shared_ptr<const VersionState> state_;
  std::mutex admin_mu_;
  std::atomic<bool> closed_{false};
  std::atomic<int64_t> swaps_{0};
};

}  // namespace lepton
