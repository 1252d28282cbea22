// The one JSON form of what a deployment reports, for Python (Deployment.status(),
// shadow_report(), events()) and the HTTP API (/v2/lepton/models/{m}/stats) alike.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <vector>

#include "lepton/runtime/deployment.h"

namespace lepton {

nlohmann::json StatusJson(const DeploymentStatus& status);
nlohmann::json ShadowsJson(const std::vector<ShadowStats>& shadows);
// Each switch with its evidence as the JSON object the policy gave.
nlohmann::json EventsJson(const std::vector<AppliedEvent>& events);

}  // namespace lepton
