#include "lepton/registry/registry_json.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "registry_impl.h"

namespace lepton {

using json = nlohmann::json;

namespace {

template <typename T>
json Optional(const std::optional<T>& v) {
  return v ? json(*v) : json(nullptr);
}

}  // namespace

json ModelSummaryJson(const ModelSummary& m) {
  return {{"name", m.name},
          {"description", m.description},
          {"created_at", m.created_at},
          {"version_count", m.version_count},
          {"latest", Optional(m.latest)},
          {"aliases", m.aliases}};
}

json ModelVersionJson(const ModelVersion& v) {
  // Metrics that are not finite (a NaN loss) are kept as null: JSON has no NaN.
  json metrics = json::object();
  for (const auto& [k, x] : v.metrics) metrics[k] = std::isfinite(x) ? json(x) : json(nullptr);
  return {{"name", v.model},
          {"version", v.version},
          {"seq", v.seq},
          {"sha256", v.sha256},
          {"size", v.size},
          {"format", v.format},
          {"created_at", v.created_at},
          {"updated_at", v.updated_at},
          {"description", v.description},
          {"tags", v.tags},
          {"metrics", metrics},
          {"parent", Optional(v.parent)},
          {"aliases", v.aliases},
          {"signature", v.signature ? SignatureToJson(*v.signature) : json(nullptr)}};
}

json AuditEntryJson(const AuditEntry& e) {
  json details = json::parse(e.details, nullptr, false);
  if (details.is_discarded()) details = e.details;
  return {{"id", e.id},
          {"time", e.time},
          {"model", e.model},
          {"actor", e.actor},
          {"action", e.action},
          {"version", Optional(e.version)},
          {"alias", Optional(e.alias)},
          {"from_version", Optional(e.from_version)},
          {"to_version", Optional(e.to_version)},
          {"reason", e.reason},
          {"details", details}};
}

}  // namespace lepton
