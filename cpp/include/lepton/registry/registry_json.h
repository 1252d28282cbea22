// The JSON form of what the registry holds, as the HTTP API gives it (/v2/lepton/registry/...).
// Times are seconds since the Unix epoch.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include "lepton/registry/registry.h"

namespace lepton {

nlohmann::json ModelSummaryJson(const ModelSummary& model);
nlohmann::json ModelVersionJson(const ModelVersion& version);
nlohmann::json AuditEntryJson(const AuditEntry& entry);

}  // namespace lepton
