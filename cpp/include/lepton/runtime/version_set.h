// The live versions of one deployment and their lifecycle: add, remove, swap (atomically, then
// drain the old one), set the policy and the primary, follow an alias, pin. Each live version has
// a slot that loads it. Without a memory budget every version is loaded and warmed before it
// takes traffic and stays loaded; under one, versions load when a request needs them, and those
// that must stay (pinned, or routed to by the policy, or the followed alias's target) are loaded
// before the change that needs them is published (prefetch). Readers take an immutable snapshot
// without a lock; every change is made under one lock (the set's admin lock) and published as a
// new snapshot.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "lepton/control/artifact_source.h"
#include "lepton/control/cpu_planner.h"
#include "lepton/policy/routing.h"
#include "lepton/runtime/combine.h"
#include "lepton/runtime/deployment_options.h"
#include "lepton/runtime/servable.h"
#include "lepton/runtime/version_slot.h"

namespace lepton {

// One immutable state of the set: what requests route over.
struct VersionState {
  std::string model;
  LiveVersions live;
  std::map<std::string, std::shared_ptr<VersionSlot>> slots;
  std::shared_ptr<const Policy> policy;
  Combiner combiner;

  // NotFound naming the live versions when `version` is not one of them.
  const std::shared_ptr<VersionSlot>& Slot(const std::string& version) const;
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

  // Makes the first versions live under a fixed policy; the first is the primary (with
  // options.all_versions: every version of the model, the newest the primary).
  void Start(const std::vector<std::string>& specs);
  // With options.all_versions: makes versions registered since live (and drops deleted ones
  // that nothing needs). Returns whether anything changed.
  bool Refresh();
  // Keeps a version loaded whatever the budget needs (loading it now), or lets it go again.
  void Pin(const std::string& version);
  void Unpin(const std::string& version);
  const std::shared_ptr<MemoryBudget>& budget() const { return budget_; }
  const std::shared_ptr<Histogram>& load_seconds() const { return load_seconds_; }
  int loader_threads() const { return pool_->threads_alive(); }
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
  // After Close and the slots' retirement: stops the loader threads.
  void StopLoads() { pool_->Stop(); }

 private:
  void Publish(std::shared_ptr<const VersionState> next) {
    live_hint_ = std::max<size_t>(1, next->live.versions.size());
    std::atomic_store(&state_, next);
  }
  std::shared_ptr<const VersionState> LiveState() const;  // Unavailable once closed
  std::shared_ptr<Servable> LoadServable(const ArtifactInfo& a);
  std::shared_ptr<VersionSlot> MakeSlot(const ArtifactInfo& a);
  // Under the admin lock, before `next` is published: marks what it needs as required, checks
  // that what must stay loaded fits the budget, and loads it (every version without a budget).
  // On failure nothing is marked and the error says what did not fit or load.
  void Prepare(const VersionState& next, const std::string& what);
  // Under the admin lock: swaps `from` for `to_spec`, leaving the old slot in `old` (null
  // when `to_spec` is `from`).
  void SwapLocked(const std::string& from, const std::string& to_spec,
                  std::shared_ptr<VersionSlot>* old);
  void DrainSwapped(const std::shared_ptr<VersionSlot>& old);

  const ArtifactSource source_;
  const DeploymentOptions& options_;
  const CpuPlanner& planner_;
  const std::optional<std::string> alias_;
  const std::function<void(const Policy&, const Policy&)> on_policy_change_;
  const std::shared_ptr<MemoryBudget> budget_;
  const std::shared_ptr<LoadPool> pool_;
  // The deployment's cores, shared by its versions' budgets (ServableOptions::cores).
  const std::shared_ptr<CorePool> cores_;
  const std::shared_ptr<Histogram> load_seconds_;
  std::shared_ptr<const VersionState> state_;
  std::mutex admin_mu_;
  std::atomic<bool> closed_{false};
  std::atomic<int64_t> swaps_{0};
  std::atomic<size_t> live_hint_{1};
  std::set<std::string> oversized_;  // registered versions too large for the budget (admin lock) //
                                     // how many versions share the cores, for a new load
};

}  // namespace lepton
