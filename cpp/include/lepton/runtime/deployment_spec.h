// Reading a deployment's options out of a larger JSON object (a server's configuration carries
// them among its own fields).
#pragma once

#include "lepton/common/json_fields.h"
#include "lepton/runtime/deployment_options.h"

namespace lepton {

// Reads the deployment fields that `fields` has into `options` (see DeploymentOptionsFromJson).
void ReadDeploymentOptions(Fields& fields, DeploymentOptions& options);

}  // namespace lepton
