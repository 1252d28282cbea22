// Reading a deployment's options out of a larger JSON object (a server's configuration carries
// them among its own fields).
#pragma once

#include "lepton/common/json_fields.h"
#include "lepton/runtime/deployment_options.h"

namespace lepton {

// Reads the deployment fields that `fields` has into `options` (see DeploymentOptionsFromJson).
void ReadDeploymentOptions(Fields& fields, DeploymentOptions& options);
// Reads only "placement", "resources", "worker" and "remotes" (a model's own, in a server's
// configuration).
void ReadPlacementOptions(Fields& fields, DeploymentOptions& options);
// The same from a JSON object's text.
void ApplyPlacementJson(const std::string& json_text, DeploymentOptions& options);
// Those four fields of `object` (a served model's spec, a load request's parameters) as a JSON
// object's text, checked as ApplyPlacementJson reads them; "" when it has none.
std::string PlacementSpecOf(const nlohmann::json& object);

}  // namespace lepton
