// Canary ramps and the guardrails that roll them back.
#include <algorithm>
#include <cmath>
#include <sstream>

#include "lepton/common/errors.h"
#include "lepton/common/names.h"
#include "lepton/policy/policies.h"
#include "policy_support.h"

namespace lepton {

using namespace policy_detail;

GuardrailMonitor::GuardrailMonitor(std::string baseline, std::string candidate, Guardrails g)
    : baseline_(std::move(baseline)),
      candidate_(std::move(candidate)),
      g_(g),
      base_(g.window),
      cand_(g.window) {
  ValidateGuardrails(g_);
}

void GuardrailMonitor::Observe(const Outcome& o) {
  std::lock_guard<std::mutex> lk(mu_);
  if (o.version == candidate_) {
    cand_.Add(o.latency_s, o.error, ++stamp_);
  } else if (o.version == baseline_) {
    base_.Add(o.latency_s, o.error, ++stamp_);
  }
}

bool GuardrailMonitor::ready() const {
  std::lock_guard<std::mutex> lk(mu_);
  return base_.size() >= static_cast<size_t>(g_.min_requests) &&
         cand_.size() >= static_cast<size_t>(g_.min_requests);
}

int64_t GuardrailMonitor::observed() const {
  std::lock_guard<std::mutex> lk(mu_);
  return base_.total() + cand_.total();
}

std::optional<std::string> GuardrailMonitor::Breach() const {
  std::lock_guard<std::mutex> lk(mu_);
  const size_t need = static_cast<size_t>(g_.min_requests);
  if (cand_.size() < need || base_.size() < need) return std::nullopt;
  const double ce = cand_.error_rate(), be = base_.error_rate();
  if (ce > be + g_.max_error_rate_increase) {
    return "error rate " + Percent(ce) + " for " + candidate_ + " against " + Percent(be) +
           " for " + baseline_ + " (allowed: +" + Percent(g_.max_error_rate_increase) + ")";
  }
  // The baseline's p99 over the span of the candidate's window: a candidate at a small share
  // spreads its requests over a longer time, and comparing them with only the baseline's latest
  // (and so briefer) requests would hold every scheduler hiccup against the candidate alone.
  // Too few baseline requests in that span: the same number of its latest requests.
  size_t overlap = 0;
  const double cp = cand_.Quantile(0.99);
  double bp = base_.QuantileSince(0.99, cand_.oldest_stamp(), &overlap);
  if (overlap < need) bp = base_.Quantile(0.99, std::min(cand_.size(), base_.size()));
  if (bp > 0 && cp > g_.max_latency_ratio * bp && cp - bp > g_.latency_slack_s) {
    std::ostringstream s;
    s.precision(3);
    s << "p99 latency " << cp * 1e3 << " ms for " << candidate_ << " against " << bp * 1e3
      << " ms for " << baseline_ << " (allowed: x" << g_.max_latency_ratio << " or +"
      << g_.latency_slack_s * 1e3 << " ms)";
    return s.str();
  }
  return std::nullopt;
}

std::string GuardrailMonitor::EvidenceJson() const {
  std::lock_guard<std::mutex> lk(mu_);
  auto side = [](const OutcomeWindow& w) {
    return json{{"requests", w.total()},    {"errors", w.total_errors()},
                {"window", w.size()},       {"error_rate", w.error_rate()},
                {"p50_s", w.Quantile(0.5)}, {"p99_s", w.Quantile(0.99)}};
  };
  json j{{baseline_, side(base_)},
         {candidate_, side(cand_)},
         {"guardrails",
          {{"max_error_rate_increase", g_.max_error_rate_increase},
           {"max_latency_ratio", g_.max_latency_ratio},
           {"latency_slack_s", g_.latency_slack_s},
           {"min_requests", g_.min_requests}}}};
  return j.dump();
}

// --- CanaryPolicy ---

CanaryPolicy::CanaryPolicy(std::string stable, std::string candidate, CanaryOptions options)
    : stable_(std::move(stable)),
      candidate_(std::move(candidate)),
      options_(std::move(options)),
      monitor_(stable_, candidate_, options_.guardrails) {
  RequireDistinct({stable_, candidate_}, "a canary");
  if (options_.steps.empty()) throw InvalidArgument("a canary needs at least one step");
  double last = 0;
  for (double s : options_.steps) {
    if (!(s > 0 && s <= 1)) {
      throw InvalidArgument("canary step " + std::to_string(s) + " is outside (0, 1]");
    }
    if (s < last) throw InvalidArgument("canary steps must not decrease");
    last = s;
  }
  if (options_.steps.size() == 1 && options_.steps[0] >= 1.0) {
    throw InvalidArgument(
        "a canary whose only step sends the candidate all traffic gives the stable version none "
        "to judge the guardrails against; start with a smaller share, e.g. steps [0.1, 1.0]");
  }
  if (options_.step_requests < 0) throw InvalidArgument("step_requests must be >= 0");
  if (!(options_.step_seconds >= 0)) throw InvalidArgument("step_seconds must be >= 0");
  // Neither given: each step lasts the default number of requests (the one place it is set, for
  // Python, C++ and JSON alike).
  if (options_.step_requests == 0 && options_.step_seconds == 0) {
    options_.step_requests = CanaryOptions::kDefaultStepRequests;
  }
  if (options_.alias) ValidateName(*options_.alias, "alias");
  for (size_t k = 0; k < options_.steps.size(); ++k) {
    const double s = options_.steps[k];
    choosers_.push_back(std::make_shared<WeightedChooser>(
        std::vector<std::string>{stable_, candidate_}, std::vector<double>{1 - s, s}));
    const std::string text = "canary step " + std::to_string(k + 1) + "/" +
                             std::to_string(options_.steps.size()) + ": " + candidate_ + " at " +
                             Percent(s);
    reasons_.emplace_back(text);
    reasons_.emplace_back(text + " (sticky key)");
  }
}

Route CanaryPolicy::Select(const RequestContext& request, const LiveVersions& live) const {
  (void)live;
  switch (phase_.load()) {
    case Phase::kPromoted:
      return OneTarget("canary", candidate_, "canary promoted " + candidate_);
    case Phase::kRolledBack: {
      std::lock_guard<std::mutex> lk(mu_);
      return OneTarget("canary", stable_, "canary rolled back: " + breach_.value_or("breach"));
    }
    case Phase::kRamping:
      break;
  }
  const size_t step = std::min(step_.load(), choosers_.size() - 1);
  const WeightedChooser& c = *choosers_[step];
  const bool by_key = options_.sticky && request.key;
  const size_t i = by_key ? c.ForKey(*request.key) : c.Random();
  return OneTarget("canary", c.arms()[i], reasons_[step * 2 + (by_key ? 1 : 0)]);
}

void CanaryPolicy::Validate(const LiveVersions& live) const {
  RequireLive(stable_, live, "the canary");
  RequireLive(candidate_, live, "the canary");
}

std::shared_ptr<const Policy> CanaryPolicy::Renamed(const std::string& from,
                                                    const std::string& to) const {
  (void)to;
  if (from == stable_ || from == candidate_) RefuseRename("canary", from);
  return std::make_shared<CanaryPolicy>(stable_, candidate_, options_);
}

std::string CanaryPolicy::Describe() const {
  const Phase p = phase_.load();
  if (p == Phase::kPromoted) return "canary " + stable_ + " -> " + candidate_ + ": promoted";
  if (p == Phase::kRolledBack) return "canary " + stable_ + " -> " + candidate_ + ": rolled back";
  const size_t step = std::min(step_.load(), choosers_.size() - 1);
  return "canary " + stable_ + " -> " + candidate_ + ": step " + std::to_string(step + 1) + "/" +
         std::to_string(choosers_.size()) + " at " + Percent(options_.steps[step]);
}

void CanaryPolicy::Observe(const Outcome& outcome) const {
  monitor_.Observe(outcome);
  if (phase_.load() != Phase::kRamping) return;
  ++step_count_;
  if (outcome.error && outcome.version == candidate_) {
    // An error on the candidate is judged at once, so a failing candidate stops taking traffic
    // before the controller's next tick.
    if (auto breach = monitor_.Breach()) {
      std::lock_guard<std::mutex> lk(mu_);
      if (phase_.load() != Phase::kRamping) return;
      breach_ = breach;
      phase_ = Phase::kRolledBack;
      pending_.push_back({PolicyEvent::Kind::kRollback, "canary_rollback", candidate_, stable_,
                          "canary guardrail breached: " + *breach, monitor_.EvidenceJson(),
                          WallSeconds()});
    }
  }
}

void CanaryPolicy::Advance(double now, std::vector<PolicyEvent>& events) const {
  if (step_started_ == 0) step_started_ = now;
  const bool by_count = options_.step_requests > 0 && step_count_.load() >= options_.step_requests;
  const bool by_time = options_.step_seconds > 0 && now - step_started_ >= options_.step_seconds;
  if (!by_count && !by_time) return;
  const size_t step = step_.load();
  if (step + 1 < choosers_.size()) {
    // A step that gives the stable version no traffic would leave its side of the guardrails
    // without evidence for good: it is entered only once both sides can be judged.
    if (options_.steps[step + 1] >= 1.0 && !monitor_.ready()) {
      waiting_for_evidence_ = true;
      return;
    }
    waiting_for_evidence_ = false;
    step_ = step + 1;
    step_count_ = 0;
    step_started_ = now;
    return;
  }
  // The last step is done: promotion needs enough evidence that the guardrails hold.
  if (!monitor_.ready()) return;
  phase_ = Phase::kPromoted;
  json evidence = json::parse(monitor_.EvidenceJson());
  evidence["steps"] = options_.steps;
  events.push_back(
      {PolicyEvent::Kind::kPromote, "canary_promote", stable_, candidate_,
       "canary completed " + std::to_string(choosers_.size()) + " steps within its guardrails",
       evidence.dump(), now});
}

std::vector<PolicyEvent> CanaryPolicy::Tick(const LiveVersions& live, const LoadFn& load,
                                            double now) const {
  (void)live;
  (void)load;
  std::vector<PolicyEvent> events;
  std::lock_guard<std::mutex> lk(mu_);
  if (phase_.load() == Phase::kRamping) {
    if (auto breach = monitor_.Breach()) {
      breach_ = breach;
      phase_ = Phase::kRolledBack;
      pending_.push_back({PolicyEvent::Kind::kRollback, "canary_rollback", candidate_, stable_,
                          "canary guardrail breached: " + *breach, monitor_.EvidenceJson(), now});
    } else {
      Advance(now, events);
    }
  }
  events.insert(events.begin(), pending_.begin(), pending_.end());
  pending_.clear();
  return events;
}

const char* CanaryPolicy::PhaseName(Phase p) {
  switch (p) {
    case Phase::kRamping:
      return "ramping";
    case Phase::kPromoted:
      return "promoted";
    case Phase::kRolledBack:
      return "rolled_back";
  }
  return "?";
}

std::string CanaryPolicy::state_key() const {
  return "canary/" + (options_.name.empty() ? stable_ + ":" + candidate_ : options_.name);
}

std::string CanaryPolicy::SaveState() const {
  std::lock_guard<std::mutex> lk(mu_);
  json j{{"phase", PhaseName(phase_.load())},
         {"step", step_.load()},
         {"step_requests", step_count_.load()},
         {"step_started", step_started_},
         {"waiting", waiting_for_evidence_},
         {"breach", breach_ ? json(*breach_) : json(nullptr)},
         {"evidence",
          json::parse(monitor_.observed() > 0 || stored_evidence_.empty() ? monitor_.EvidenceJson()
                                                                          : stored_evidence_)}};
  return j.dump();
}

void CanaryPolicy::LoadState(const std::string& state) const {
  try {
    const json j = json::parse(state);
    const std::string phase = j.at("phase").get<std::string>();
    Phase p;
    if (phase == "ramping") {
      p = Phase::kRamping;
    } else if (phase == "promoted") {
      p = Phase::kPromoted;
    } else if (phase == "rolled_back") {
      p = Phase::kRolledBack;
    } else {
      throw InvalidArgument("unknown phase '" + phase + "'");
    }
    const auto step = j.at("step").get<size_t>();
    const auto count = j.at("step_requests").get<int64_t>();
    const double started = j.at("step_started").get<double>();
    if (step >= choosers_.size())
      throw InvalidArgument("step " + std::to_string(step) + " of " +
                            std::to_string(choosers_.size()));
    if (count < 0 || !std::isfinite(started)) throw InvalidArgument("negative counts");
    std::lock_guard<std::mutex> lk(mu_);
    step_ = step;
    step_count_ = count;
    step_started_ = started;
    waiting_for_evidence_ = j.value("waiting", false);
    breach_.reset();
    if (j.contains("breach") && !j["breach"].is_null()) breach_ = j["breach"].get<std::string>();
    if (j.contains("evidence") && j["evidence"].is_object())
      stored_evidence_ = j["evidence"].dump();
    phase_ = p;
  } catch (const std::exception& e) {
    throw InvalidArgument("the stored state of " + state_key() + " is not valid: " + e.what());
  }
}

std::string CanaryPolicy::Report() const {
  const Phase p = phase_.load();
  const size_t step = std::min(step_.load(), choosers_.size() - 1);
  json j{{"stable", stable_},
         {"candidate", candidate_},
         {"phase", PhaseName(p)},
         {"step", step + 1},
         {"steps", options_.steps},
         {"share", p == Phase::kPromoted     ? 1.0
                   : p == Phase::kRolledBack ? 0.0
                                             : options_.steps[step]},
         {"evidence", json::parse(monitor_.EvidenceJson())}};
  std::lock_guard<std::mutex> lk(mu_);
  if (monitor_.observed() == 0 && !stored_evidence_.empty()) {
    j["evidence"] = json::parse(stored_evidence_);
  }
  if (breach_) j["breach"] = *breach_;
  if (waiting_for_evidence_ && p == Phase::kRamping) {
    j["waiting"] = "for " + std::to_string(options_.guardrails.min_requests) +
                   " requests on each side before the step that sends " + candidate_ +
                   " all traffic";
  }
  return j.dump();
}

// --- ShadowPolicy ---

}  // namespace lepton
