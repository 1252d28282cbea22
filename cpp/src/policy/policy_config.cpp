#include "lepton/policy/policy_config.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "lepton/common/errors.h"
#include "lepton/common/json_fields.h"
#include "lepton/policy/policies.h"

namespace lepton {
namespace {

using json = nlohmann::json;

// {"v1": 0.5, "v2": 0.5} or [["v1", 0.5], ["v2", 0.5]]: order kept.
std::pair<std::vector<std::string>, std::vector<double>> WeightsOf(const json& w,
                                                                   const std::string& where) {
  std::pair<std::vector<std::string>, std::vector<double>> out;
  auto add = [&](const std::string& v, const json& x) {
    if (!x.is_number())
      throw InvalidArgument(where + ": the weight of '" + v + "' must be a number");
    out.first.push_back(v);
    out.second.push_back(x.get<double>());
  };
  if (w.is_object()) {
    for (const auto& [v, x] : w.items()) add(v, x);
  } else if (w.is_array()) {
    for (const auto& e : w) {
      if (!e.is_array() || e.size() != 2 || !e[0].is_string()) {
        throw InvalidArgument(where + ": weights must be {version: weight} or [[version, weight]]");
      }
      add(e[0].get<std::string>(), e[1]);
    }
  } else {
    throw InvalidArgument(where + ": weights must be {version: weight} or [[version, weight]]");
  }
  if (out.first.empty()) throw InvalidArgument(where + ": weights must not be empty");
  return out;
}

Guardrails GuardrailsOf(const json& j) {
  Fields f(j, "guardrails");
  Guardrails g;
  g.max_error_rate_increase =
      f.get<double>("max_error_rate_increase", "a number", g.max_error_rate_increase);
  g.max_latency_ratio = f.get<double>("max_latency_ratio", "a number", g.max_latency_ratio);
  g.latency_slack_s = f.get<double>("latency_slack_s", "a number", g.latency_slack_s);
  g.min_requests = f.get<int64_t>("min_requests", "an integer", g.min_requests);
  const int64_t window = f.get<int64_t>("window", "an integer", static_cast<int64_t>(g.window));
  if (window < 1) throw InvalidArgument("guardrails: 'window' must be >= 1");
  g.window = static_cast<size_t>(window);
  return g;
}

std::shared_ptr<const Policy> Build(const json& j, const PolicyJsonOptions& options) {
  if (!j.is_object()) throw InvalidArgument("a policy must be a JSON object with a \"type\"");
  if (!j.contains("type") || !j.at("type").is_string()) {
    throw InvalidArgument(
        "a policy needs a \"type\" (fixed, ensemble, weighted, canary, shadow, "
        "bandit, least_loaded, balanced, ab_test or time_based)");
  }
  const std::string type = j.at("type").get<std::string>();
  Fields f(j, "policy '" + type + "'");
  f.has("type");
  if (type == "fixed") {
    return std::make_shared<FixedPolicy>(f.maybe<std::string>("version", "a string"));
  }
  if (type == "ensemble") {
    // Members and weights: {"weights": {version: weight}} (or [[version, weight]]), or
    // {"versions": [...], "weights": [numbers]}; without versions the weights follow the
    // deployment's versions, and without weights the members weigh the same.
    std::vector<std::string> versions =
        f.get<std::vector<std::string>>("versions", "a list of strings", {});
    std::vector<double> weights;
    if (f.has("weights")) {
      const json& w = f.raw("weights");
      if (w.is_array() &&
          std::all_of(w.begin(), w.end(), [](const json& x) { return x.is_number(); })) {
        weights = w.get<std::vector<double>>();
      } else {
        if (!versions.empty()) {
          throw InvalidArgument(f.where() +
                                ": give the versions in the weights or in 'versions', not both");
        }
        std::tie(versions, weights) = WeightsOf(w, f.where());
      }
    }
    const Combine c = ParseCombine(f.get<std::string>("combine", "a string", "auto"));
    if (c == Combine::kCustom && !options.combiner) {
      throw InvalidArgument("combine 'custom' needs a combiner function; set it from Python");
    }
    const OnError on_error = ParseOnError(f.get<std::string>("on_error", "a string", "fail"));
    return std::make_shared<EnsemblePolicy>(versions, weights, c, on_error,
                                            f.get<bool>("balance", "true or false", true));
  }
  if (type == "weighted") {
    auto [versions, weights] = WeightsOf(f.raw("weights"), f.where());
    return std::make_shared<WeightedPolicy>(versions, weights,
                                            f.get<bool>("sticky", "true or false", false));
  }
  if (type == "canary") {
    CanaryOptions o;
    o.steps = f.get<std::vector<double>>("steps", "a list of numbers", o.steps);
    o.step_requests = f.get<int64_t>("step_requests", "an integer", 0);
    o.step_seconds = f.get<double>("step_seconds", "a number", 0);
    if (f.has("guardrails")) o.guardrails = GuardrailsOf(f.raw("guardrails"));
    o.alias = f.maybe<std::string>("alias", "a string");
    o.sticky = f.get<bool>("sticky", "true or false", false);
    o.name = f.get<std::string>("name", "a string", "");
    return std::make_shared<CanaryPolicy>(f.get<std::string>("stable", "a string"),
                                          f.get<std::string>("candidate", "a string"), o);
  }
  if (type == "shadow") {
    return std::make_shared<ShadowPolicy>(
        f.get<std::string>("primary", "a string", ""),
        f.get<std::vector<std::string>>("mirrors", "a list of strings"));
  }
  if (type == "bandit") {
    BanditOptions o;
    o.algorithm = ParseBanditAlgorithm(f.get<std::string>("algorithm", "a string", "thompson"));
    o.epsilon = f.get<double>("epsilon", "a number", o.epsilon);
    const json& seed = f.has("seed") ? f.raw("seed") : json(uint64_t{0});
    if (!seed.is_number_unsigned())
      throw InvalidArgument("bandit: 'seed' must be a non-negative integer");
    o.seed = seed.get<uint64_t>();
    o.name = f.get<std::string>("name", "a string", "");
    return std::make_shared<BanditPolicy>(
        f.get<std::vector<std::string>>("versions", "a list of strings"), o);
  }
  if (type == "least_loaded") {
    return std::make_shared<LeastLoadedPolicy>(
        f.get<std::vector<std::string>>("versions", "a list of strings", {}));
  }
  if (type == "balanced") {
    return std::make_shared<BalancedPolicy>(
        ParseBalanceBy(f.get<std::string>("by", "a string", "requests")),
        f.get<std::vector<std::string>>("versions", "a list of strings", {}),
        f.get<double>("interval_s", "a number", 1.0),
        f.get<bool>("sticky", "true or false", false));
  }
  if (type == "ab_test") {
    ABTestOptions o;
    o.split = f.get<double>("split", "a number", o.split);
    o.alpha = f.get<double>("alpha", "a number", o.alpha);
    o.effect = f.get<double>("effect", "a number", o.effect);
    o.min_samples = f.get<int64_t>("min_samples", "an integer", o.min_samples);
    o.sticky = f.get<bool>("sticky", "true or false", false);
    if (f.has("guardrails")) o.guardrails = GuardrailsOf(f.raw("guardrails"));
    o.alias = f.maybe<std::string>("alias", "a string");
    o.name = f.get<std::string>("name", "a string", "");
    return std::make_shared<ABTestPolicy>(f.get<std::string>("control", "a string"),
                                          f.get<std::string>("treatment", "a string"), o);
  }
  if (type == "time_based") {
    std::vector<TimeBasedEntry> entries;
    const json& schedule = f.raw("schedule");
    if (!schedule.is_array() || schedule.empty()) {
      throw InvalidArgument("time_based: schedule must be a non-empty list");
    }
    for (const auto& e : schedule) {
      Fields g(e, "a time_based schedule entry");
      entries.push_back(
          {g.get<std::string>("version", "a string"), g.get<double>("start", "a number", 0.0),
           g.maybe<double>("validity", "a number"), g.maybe<double>("cycle", "a number")});
    }
    return std::make_shared<TimeBasedPolicy>(
        entries, ParseTimeBasedMode(f.get<std::string>("mode", "a string", "switch")),
        f.maybe<std::string>("alias", "a string"));
  }
  throw InvalidArgument("unknown policy type '" + type +
                        "' (fixed, ensemble, weighted, canary, shadow, bandit, least_loaded, "
                        "balanced, ab_test or time_based)");
}

}  // namespace

Combine ParseCombine(const std::string& name) {
  if (name == "auto") return Combine::kAuto;
  if (name == "mean") return Combine::kMean;
  if (name == "vote") return Combine::kVote;
  if (name == "custom") return Combine::kCustom;
  throw InvalidArgument("combine must be 'auto', 'mean', 'vote' or a combiner, not '" + name + "'");
}

OnError ParseOnError(const std::string& name) {
  if (name == "fail") return OnError::kFail;
  if (name == "skip") return OnError::kSkip;
  throw InvalidArgument("on_error must be 'fail' or 'skip', not '" + name + "'");
}

BanditAlgorithm ParseBanditAlgorithm(const std::string& name) {
  if (name == "thompson") return BanditAlgorithm::kThompson;
  if (name == "ucb1") return BanditAlgorithm::kUcb1;
  if (name == "epsilon_greedy") return BanditAlgorithm::kEpsilonGreedy;
  throw InvalidArgument("algorithm must be 'thompson', 'ucb1' or 'epsilon_greedy', not '" + name +
                        "'");
}

BalancedPolicy::By ParseBalanceBy(const std::string& name) {
  if (name == "requests") return BalancedPolicy::By::kRequests;
  if (name == "resources") return BalancedPolicy::By::kResources;
  throw InvalidArgument("by must be 'requests' or 'resources', not '" + name + "'");
}

TimeBasedPolicy::Mode ParseTimeBasedMode(const std::string& name) {
  if (name == "switch") return TimeBasedPolicy::Mode::kSwitch;
  if (name == "split") return TimeBasedPolicy::Mode::kSplit;
  throw InvalidArgument("mode must be 'switch' or 'split', not '" + name + "'");
}

std::shared_ptr<const Policy> PolicyFromJson(const std::string& json_text,
                                             const PolicyJsonOptions& options) {
  json j = json::parse(json_text, nullptr, false);
  if (j.is_discarded()) throw InvalidArgument("the policy is not valid JSON");
  return Build(j, options);
}

}  // namespace lepton
