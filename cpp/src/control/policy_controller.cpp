#include "lepton/control/policy_controller.h"

#include <nlohmann/json.hpp>

#include "lepton/common/errors.h"
#include "lepton/observe/events.h"

namespace lepton {

PolicyController::PolicyController(std::shared_ptr<Registry> registry, std::string model,
                                   std::optional<std::string> alias, FeedbackLedger& ledger,
                                   std::function<bool(const Policy&)> shared)
    : registry_(std::move(registry)),
      model_(std::move(model)),
      alias_(std::move(alias)),
      ledger_(ledger),
      shared_(std::move(shared)) {}

void PolicyController::Apply(const Policy& policy, const PolicyEvent& e,
                             const std::function<void(const std::string&)>& move_primary) {
  AppliedEvent applied{e, policy.name(), policy.alias() ? policy.alias() : alias_, ""};
  std::vector<std::string> notes;
  const bool moves_primary =
      e.kind == PolicyEvent::Kind::kPromote || e.kind == PolicyEvent::Kind::kSwitch;
  if (registry_ && applied.alias) {
    const std::string& alias = *applied.alias;
    try {
      if (moves_primary) {
        std::optional<std::string> expected;
        if (e.kind == PolicyEvent::Kind::kPromote) expected = e.from;
        registry_->SetAlias(model_, alias, e.to, expected, e.reason);
        notes.push_back("moved " + model_ + "@" + alias + " to " + e.to);
      } else if (e.kind == PolicyEvent::Kind::kRollback) {
        std::optional<std::string> current;
        try {
          current = registry_->Get(model_ + "@" + alias).version;
        } catch (const NotFound&) {
        }
        if (current == e.from) {
          registry_->SetAlias(model_, alias, e.to, e.from, e.reason);
          notes.push_back("moved " + model_ + "@" + alias + " back to " + e.to);
        } else {
          notes.push_back(model_ + "@" + alias + " stays at " + current.value_or("(none)"));
        }
      }
    } catch (const std::exception& ex) {
      notes.push_back(std::string("alias not moved: ") + ex.what());
    }
  }
  nlohmann::json evidence =
      nlohmann::json::parse(e.evidence.empty() ? "{}" : e.evidence, nullptr, false);
  if (evidence.is_discarded() || !evidence.is_object()) {
    evidence = nlohmann::json{{"evidence", e.evidence}};
  }
  // Who sent the evidence is recorded with the switch it led to.
  const auto sources = ledger_.TakeSources();
  if (!sources.empty()) evidence["feedback_sources"] = sources;
  if (registry_) {
    try {
      registry_->Record(model_, e.action, e.to,
                        e.from.empty() ? std::nullopt : std::optional(e.from), e.to, e.reason,
                        evidence.dump());
    } catch (const std::exception& ex) {
      notes.push_back(std::string("audit entry not written: ") + ex.what());
    }
  }
  if (moves_primary) move_primary(e.to);
  for (size_t i = 0; i < notes.size(); ++i) applied.note += (i ? "; " : "") + notes[i];
  nlohmann::json details = {{"from", e.from}, {"to", e.to}, {"policy", policy.name()}};
  details["evidence"] = evidence;
  if (applied.alias) details["alias"] = *applied.alias;
  if (!applied.note.empty()) details["note"] = applied.note;
  EmitEvent(e.kind == PolicyEvent::Kind::kRollback ? "warning" : "info", e.action, model_, e.to,
            e.reason, details.dump());
  std::lock_guard<std::mutex> lk(events_mu_);
  if (events_.size() >= 1000) events_.pop_front();
  events_.push_back(std::move(applied));
}

std::vector<AppliedEvent> PolicyController::Events() const {
  std::lock_guard<std::mutex> lk(events_mu_);
  return {events_.begin(), events_.end()};
}

void PolicyController::Replacing(const Policy& out, const Policy& in) {
  if (&out == &in) return;
  Save(out, true);
  Restore(in);
}

void PolicyController::Restore(const Policy& policy) {
  const std::string key = policy.state_key();
  if (!registry_ || key.empty()) return;
  if (auto state = registry_->GetState(model_, key)) policy.LoadState(*state);
}

void PolicyController::Save(const Policy& policy, bool force) {
  const std::string key = policy.state_key();
  if (!registry_ || key.empty() || (shared_ && shared_(policy))) return;
  const std::string state = policy.SaveState();
  std::lock_guard<std::mutex> lk(saved_mu_);
  if (!force && saved_state_[key] == state) return;
  registry_->PutState(model_, key, state);
  saved_state_[key] = state;
}

}  // namespace lepton
