// Policies described as JSON, for the HTTP API and `lepton serve`'s config file:
//   {"type": "weighted", "weights": {"v1": 0.9, "v2": 0.1}, "sticky": true}
// Types: fixed, ensemble, weighted, canary, shadow, bandit, least_loaded, balanced, ab_test,
// time_based. Unknown types, unknown fields and wrong value types raise InvalidArgument naming
// them.
#pragma once

#include <memory>
#include <string>

#include "lepton/policy/policies.h"
#include "lepton/policy/routing.h"

namespace lepton {

struct PolicyJsonOptions {
  // The caller supplies an ensemble's combiner function, so {"combine": "custom"} is accepted.
  bool combiner = false;
};

// The one way a policy is specified: the HTTP API, `lepton serve`'s config file and the Python
// policy classes all build this JSON, and defaults live in the policies' option structs.
std::shared_ptr<const Policy> PolicyFromJson(const std::string& json_text,
                                             const PolicyJsonOptions& options = {});

// The names policies' options take in JSON and in Python; InvalidArgument lists the valid ones.
Combine ParseCombine(const std::string& name);                  // auto, mean, vote, custom
OnError ParseOnError(const std::string& name);                  // fail, skip
BanditAlgorithm ParseBanditAlgorithm(const std::string& name);  // thompson, ucb1, epsilon_greedy
BalancedPolicy::By ParseBalanceBy(const std::string& name);     // requests, resources
TimeBasedPolicy::Mode ParseTimeBasedMode(const std::string& name);  // switch, split

}  // namespace lepton
