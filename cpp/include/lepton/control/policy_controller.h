// The policy controller of one deployment: applies the automatic switches a policy decides
// (moving its alias in the registry by compare-and-swap, writing the audit entry with the
// evidence and who sent the rewards behind it, saying it in the event log, keeping the last
// 1000), and saves and restores stateful policies' state in the registry. Without a registry it
// still applies and records switches. Thread-safe.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "lepton/control/feedback_ledger.h"
#include "lepton/policy/routing.h"
#include "lepton/registry/registry.h"

namespace lepton {

// An automatic switch that a policy decided and the deployment applied.
struct AppliedEvent {
  PolicyEvent event;
  std::string policy;
  std::optional<std::string> alias;  // the alias moved, if any
  std::string note;                  // what applying it did or why part of it could not
};

class PolicyController {
 public:
  // `registry` may be null; `alias` is the alias the deployment follows, if any; `ledger` gives
  // the feedback senders recorded with each switch; `shared(policy)` tells the policies whose
  // state the replicas' leader stores (PolicySync), which are never saved here.
  PolicyController(std::shared_ptr<Registry> registry, std::string model,
                   std::optional<std::string> alias, FeedbackLedger& ledger,
                   std::function<bool(const Policy&)> shared = {});

  // Applies `e`, decided by `policy`. `move_primary(version)` is called when the event makes
  // another live version the primary (a promotion or a switch).
  void Apply(const Policy& policy, const PolicyEvent& e,
             const std::function<void(const std::string&)>& move_primary);
  // The switches applied so far, oldest first.
  std::vector<AppliedEvent> Events() const;

  // A policy takes over from another: the outgoing one's state is saved, the incoming one's
  // restored.
  void Replacing(const Policy& out, const Policy& in);
  void Restore(const Policy& policy);
  // Writes the policy's state when it changed since the last write (always with `force`).
  void Save(const Policy& policy, bool force);

 private:
  const std::shared_ptr<Registry> registry_;
  const std::string model_;
  const std::optional<std::string> alias_;
  FeedbackLedger& ledger_;
  const std::function<bool(const Policy&)> shared_;
  std::mutex saved_mu_;
  std::map<std::string, std::string> saved_state_;
  mutable std::mutex events_mu_;
  std::deque<AppliedEvent> events_;
};

}  // namespace lepton
