// Policies that learn from rewards: bandits and A/B tests with a sequential test.
#include <algorithm>
#include <cmath>
#include <sstream>

#include "lepton/common/errors.h"
#include "lepton/common/names.h"
#include "lepton/policy/policies.h"
#include "policy_support.h"

namespace lepton {

using namespace policy_detail;

BanditPolicy::BanditPolicy(std::vector<std::string> versions, BanditOptions options)
    : versions_(std::move(versions)), options_(std::move(options)) {
  RequireDistinct(versions_, "a bandit");
  if (options_.algorithm == BanditAlgorithm::kEpsilonGreedy &&
      !(options_.epsilon >= 0 && options_.epsilon <= 1)) {
    throw InvalidArgument("epsilon must be in [0, 1]");
  }
  rng_.seed(options_.seed != 0 ? options_.seed : ThreadRng()());
  arms_.resize(versions_.size());
}

static const char* AlgorithmName(BanditAlgorithm a) {
  switch (a) {
    case BanditAlgorithm::kThompson:
      return "thompson";
    case BanditAlgorithm::kUcb1:
      return "ucb1";
    case BanditAlgorithm::kEpsilonGreedy:
      return "epsilon_greedy";
  }
  return "?";
}

size_t BanditPolicy::Choose() const {
  const size_t n = arms_.size();
  auto least_pulled_untried = [&]() -> std::optional<size_t> {
    std::optional<size_t> best;
    for (size_t i = 0; i < n; ++i) {
      if (arms_[i].n == 0 && (!best || arms_[i].pulls < arms_[*best].pulls)) best = i;
    }
    return best;
  };
  switch (options_.algorithm) {
    case BanditAlgorithm::kThompson: {
      size_t best = 0;
      double best_draw = -1;
      for (size_t i = 0; i < n; ++i) {
        const double s = std::clamp(arms_[i].sum, 0.0, double(arms_[i].n));
        std::gamma_distribution<double> ga(1 + s, 1), gb(1 + double(arms_[i].n) - s, 1);
        const double x = ga(rng_), y = gb(rng_);
        const double draw = x / (x + y);
        if (draw > best_draw) {
          best_draw = draw;
          best = i;
        }
      }
      return best;
    }
    case BanditAlgorithm::kUcb1: {
      if (auto untried = least_pulled_untried()) return *untried;
      int64_t total = 0;
      for (const auto& a : arms_) total += a.n;
      size_t best = 0;
      double best_bound = -INFINITY;
      for (size_t i = 0; i < n; ++i) {
        const double bound = arms_[i].sum / double(arms_[i].n) +
                             std::sqrt(2 * std::log(double(total)) / double(arms_[i].n));
        if (bound > best_bound) {
          best_bound = bound;
          best = i;
        }
      }
      return best;
    }
    case BanditAlgorithm::kEpsilonGreedy: {
      if (Uniform(rng_) < options_.epsilon) return static_cast<size_t>(rng_() % n);
      if (auto untried = least_pulled_untried()) return *untried;
      size_t best = 0;
      for (size_t i = 1; i < n; ++i) {
        if (arms_[i].sum / double(arms_[i].n) > arms_[best].sum / double(arms_[best].n)) best = i;
      }
      return best;
    }
  }
  return 0;
}

Route BanditPolicy::Select(const RequestContext& request, const LiveVersions& live) const {
  (void)request;
  (void)live;
  size_t i;
  {
    std::lock_guard<std::mutex> lk(mu_);
    i = Choose();
    ++arms_[i].pulls;
  }
  return OneTarget("bandit", versions_[i],
                   std::string("bandit (") + AlgorithmName(options_.algorithm) +
                       ") chose from the rewards so far");
}

void BanditPolicy::Validate(const LiveVersions& live) const {
  for (const auto& v : versions_) RequireLive(v, live, "the bandit");
}

std::shared_ptr<const Policy> BanditPolicy::Renamed(const std::string& from,
                                                    const std::string& to) const {
  (void)to;
  if (Contains(versions_, from)) RefuseRename("bandit", from);
  return std::make_shared<BanditPolicy>(versions_, options_);
}

std::string BanditPolicy::Describe() const {
  return std::string("bandit(") + AlgorithmName(options_.algorithm) + ": " + JoinNames(versions_) +
         ")";
}

void BanditPolicy::CheckReward(const std::string& version, double reward) const {
  if (!std::isfinite(reward)) throw InvalidArgument("a reward must be a finite number");
  if (options_.algorithm != BanditAlgorithm::kEpsilonGreedy && (reward < 0 || reward > 1)) {
    throw InvalidArgument(std::string("the ") + AlgorithmName(options_.algorithm) +
                          " bandit takes rewards in [0, 1]; got " + std::to_string(reward));
  }
  if (!Contains(versions_, version)) {
    throw NotFound("version '" + version + "' is not an arm of the bandit");
  }
}

void BanditPolicy::Feedback(const std::string& version, double reward) const {
  CheckReward(version, reward);
  auto it = std::find(versions_.begin(), versions_.end(), version);
  std::lock_guard<std::mutex> lk(mu_);
  auto& arm = arms_[static_cast<size_t>(it - versions_.begin())];
  ++arm.n;
  arm.sum += reward;
}

std::string BanditPolicy::state_key() const {
  return "bandit/" + (options_.name.empty() ? std::string(AlgorithmName(options_.algorithm)) + ":" +
                                                  JoinNames(versions_)
                                            : options_.name);
}

std::string BanditPolicy::SaveState() const {
  std::lock_guard<std::mutex> lk(mu_);
  json arms = json::object();
  for (size_t i = 0; i < versions_.size(); ++i) {
    arms[versions_[i]] = {{"pulls", arms_[i].pulls}, {"n", arms_[i].n}, {"sum", arms_[i].sum}};
  }
  return json{{"algorithm", AlgorithmName(options_.algorithm)}, {"arms", arms}}.dump();
}

void BanditPolicy::LoadState(const std::string& state) const {
  std::vector<Arm> restored(versions_.size());
  try {
    const json j = json::parse(state);
    const json& arms = j.at("arms");
    for (size_t i = 0; i < versions_.size(); ++i) {
      if (!arms.contains(versions_[i])) continue;
      const json& a = arms.at(versions_[i]);
      restored[i] = {a.at("pulls").get<int64_t>(), a.at("n").get<int64_t>(),
                     a.at("sum").get<double>()};
      if (restored[i].n < 0 || restored[i].pulls < 0 || !std::isfinite(restored[i].sum)) {
        throw InvalidArgument("negative counts");
      }
    }
  } catch (const std::exception& e) {
    throw InvalidArgument("the stored state of " + state_key() + " is not valid: " + e.what());
  }
  std::lock_guard<std::mutex> lk(mu_);
  arms_ = std::move(restored);
}

std::vector<BanditPolicy::Arm> BanditPolicy::arms() const {
  std::lock_guard<std::mutex> lk(mu_);
  return arms_;
}

std::string BanditPolicy::Report() const {
  json j = json::parse(SaveState());
  for (auto& [v, a] : j["arms"].items()) {
    const double n = a["n"].get<double>();
    a["mean"] = n > 0 ? a["sum"].get<double>() / n : 0.0;
  }
  return j.dump();
}

// --- LeastLoadedPolicy ---

// --- ABTestPolicy ---

ABTestPolicy::ABTestPolicy(std::string control, std::string treatment, ABTestOptions options)
    : control_(std::move(control)),
      treatment_(std::move(treatment)),
      options_(std::move(options)),
      chooser_({control_, treatment_}, {1 - options_.split, options_.split}),
      test_(options_.alpha, options_.effect, options_.min_samples) {
  if (!(options_.split > 0 && options_.split < 1)) {
    throw InvalidArgument("an A/B test's split must be in (0, 1)");
  }
  if (options_.guardrails) monitor_.emplace(control_, treatment_, *options_.guardrails);
  if (options_.alias) ValidateName(*options_.alias, "alias");
}

Route ABTestPolicy::Select(const RequestContext& request, const LiveVersions& live) const {
  (void)live;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (winner_) return OneTarget("ab_test", *winner_, "A/B test concluded: " + *winner_ + " won");
  }
  const bool by_key = options_.sticky && request.key;
  const size_t i = by_key ? chooser_.ForKey(*request.key) : chooser_.Random();
  return OneTarget("ab_test", chooser_.arms()[i],
                   std::string("A/B test running: ") + (i ? "treatment" : "control") + " arm" +
                       (by_key ? " (sticky key)" : ""));
}

void ABTestPolicy::Validate(const LiveVersions& live) const {
  RequireLive(control_, live, "the A/B test");
  RequireLive(treatment_, live, "the A/B test");
}

std::shared_ptr<const Policy> ABTestPolicy::Renamed(const std::string& from,
                                                    const std::string& to) const {
  (void)to;
  if (from == control_ || from == treatment_) RefuseRename("A/B test", from);
  return std::make_shared<ABTestPolicy>(control_, treatment_, options_);
}

std::string ABTestPolicy::Describe() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::ostringstream s;
  s.precision(3);
  s << "ab_test(" << control_ << " vs " << treatment_ << ": ";
  if (winner_) {
    s << *winner_ << " won";
  } else {
    s << "confidence " << (1 - test_.p_value());
  }
  s << ")";
  return s.str();
}

void ABTestPolicy::Observe(const Outcome& outcome) const {
  if (monitor_) monitor_->Observe(outcome);
}

void ABTestPolicy::CheckReward(const std::string& version, double reward) const {
  if (!std::isfinite(reward)) throw InvalidArgument("a reward must be a finite number");
  if (version != control_ && version != treatment_) {
    throw NotFound("version '" + version + "' is not an arm of the A/B test");
  }
}

void ABTestPolicy::Feedback(const std::string& version, double reward) const {
  CheckReward(version, reward);
  const int arm = version == control_ ? 0 : 1;
  std::lock_guard<std::mutex> lk(mu_);
  test_.Add(arm, reward);
  dirty_ = true;
}

std::vector<PolicyEvent> ABTestPolicy::Tick(const LiveVersions& live, const LoadFn& load,
                                            double now) const {
  (void)live;
  (void)load;
  std::lock_guard<std::mutex> lk(mu_);
  if (winner_) {
    if (announced_) return {};
  } else {
    if (!dirty_) return {};
    dirty_ = false;
    const SequentialTest::Result r = test_.Evaluate();
    if (!r.decided) return {};
    winner_ = r.winner == 1 ? treatment_ : control_;
  }
  announced_ = true;
  // Re-evaluating after a decision does not change the running p-value's minimum.
  json evidence = ResultJson(test_.Evaluate());
  evidence["alpha"] = options_.alpha;
  evidence["winner"] = *winner_;
  if (*winner_ == treatment_ && monitor_) {
    evidence["guardrails"] = json::parse(monitor_->EvidenceJson());
    if (auto breach = monitor_->Breach()) {
      winner_ = control_;
      return {{PolicyEvent::Kind::kConclude, "ab_keep_control", treatment_, control_,
               "treatment won on the metric but breached a guardrail: " + *breach, evidence.dump(),
               now}};
    }
  }
  std::ostringstream reason;
  reason.precision(4);
  reason << *winner_ << " won the A/B test on the metric (difference "
         << evidence["difference"].get<double>() << ", p " << evidence["p_value"].get<double>()
         << " <= alpha " << options_.alpha << ")";
  if (*winner_ == treatment_) {
    return {{PolicyEvent::Kind::kPromote, "ab_promote", control_, treatment_, reason.str(),
             evidence.dump(), now}};
  }
  return {{PolicyEvent::Kind::kConclude, "ab_keep_control", treatment_, control_, reason.str(),
           evidence.dump(), now}};
}

std::string ABTestPolicy::state_key() const {
  return "ab_test/" + (options_.name.empty() ? control_ + ":" + treatment_ : options_.name);
}

std::string ABTestPolicy::SaveState() const {
  std::lock_guard<std::mutex> lk(mu_);
  json j{{"control", MomentsJson(test_.arm(0))},
         {"treatment", MomentsJson(test_.arm(1))},
         {"p_value", test_.p_value()},
         {"winner", winner_ ? json(*winner_) : json(nullptr)},
         {"announced", announced_}};
  return j.dump();
}

void ABTestPolicy::LoadState(const std::string& state) const {
  try {
    const json j = json::parse(state);
    RunningMoments a = MomentsFrom(j.at("control")), b = MomentsFrom(j.at("treatment"));
    const double p = j.at("p_value").get<double>();
    std::optional<std::string> winner;
    if (!j.at("winner").is_null()) winner = j.at("winner").get<std::string>();
    if (winner && *winner != control_ && *winner != treatment_) {
      throw InvalidArgument("winner '" + *winner + "' is not an arm");
    }
    std::lock_guard<std::mutex> lk(mu_);
    test_.Restore(a, b, p);
    winner_ = winner;
    announced_ = j.value("announced", winner.has_value());
  } catch (const std::exception& e) {
    throw InvalidArgument("the stored state of " + state_key() + " is not valid: " + e.what());
  }
}

std::string ABTestPolicy::Report() const {
  std::lock_guard<std::mutex> lk(mu_);
  json j = ResultJson(test_.Evaluate());
  j["control"] = control_;
  j["treatment"] = treatment_;
  j["alpha"] = options_.alpha;
  j["winner"] = winner_ ? json(*winner_) : json(nullptr);
  return j.dump();
}

SequentialTest::Result ABTestPolicy::Result() const {
  std::lock_guard<std::mutex> lk(mu_);
  return test_.Evaluate();
}

std::optional<std::string> ABTestPolicy::winner() const {
  std::lock_guard<std::mutex> lk(mu_);
  return winner_;
}

}  // namespace lepton
