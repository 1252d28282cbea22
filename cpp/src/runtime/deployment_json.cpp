#include "lepton/runtime/deployment_json.h"

#include <nlohmann/json.hpp>

namespace lepton {

using json = nlohmann::json;

namespace {

template <typename T>
json Optional(const std::optional<T>& v) {
  return v ? json(*v) : json(nullptr);
}

}  // namespace

json StatusJson(const DeploymentStatus& s) {
  json arrangements = json::array();
  for (const auto& a : s.arrangements) {
    arrangements.push_back({{"ensemble", a.key},
                            {"kept", a.kept.empty() ? json(nullptr) : json(a.kept)},
                            {"spread_median_s", a.spread_median_s},
                            {"sequence_median_s", a.sequence_median_s},
                            {"spread_measured", a.spread_measured},
                            {"sequence_measured", a.sequence_measured},
                            {"rechecks", a.rechecks}});
  }
  json versions = json::array();
  for (size_t i = 0; i < s.versions.size(); ++i) {
    const ServableStats& v = s.versions[i];
    const SlotStats r = i < s.slots.size() ? s.slots[i] : SlotStats{};
    versions.push_back(
        {{"version", v.version},
         {"state", ResidencyName(r.residency)},
         {"pinned", r.pinned},
         {"required", r.required},
         {"memory_bytes", r.memory_bytes},
         {"loads", r.loads},
         {"inline_loads", r.inline_loads},
         {"load_failures", r.load_failures},
         {"evictions", r.evictions},
         {"hits", r.hits},
         {"misses", r.misses},
         {"last_load_seconds", r.last_load_s},
         {"last_load_error", r.last_error},
         {"health", HealthName(v.health)},
         {"threads", v.threads},
         {"executors", v.executors},
         {"requests", v.requests},
         {"succeeded", v.succeeded},
         {"failed", v.failed},
         {"timed_out", v.timed_out},
         {"rejected", v.rejected},
         {"batches", v.batches},
         {"batched_rows", v.batched_rows},
         {"in_flight", v.in_flight},
         {"borrowed", v.borrowed},
         {"queued", v.queued},
         {"busy_seconds", v.busy_s},
         {"weight_bytes", v.weight_bytes},
         {"shared_code", v.shared_code},
         {"mapped", v.mapped},
         {"pooled", v.pooled},
         {"placement", v.placement},
         {"worker", v.worker ? json{{"pid", v.worker->pid},
                                    {"state", v.worker->state},
                                    {"restarts", v.worker->restarts},
                                    {"crashes", v.worker->crashes},
                                    {"last_exit", v.worker->last_exit},
                                    {"memory_limit_bytes", v.worker->applied.memory_bytes},
                                    {"cpus", v.worker->applied.cpus}}
                             : json(nullptr)}});
  }
  return {{"model", s.model},
          {"alias", Optional(s.alias)},
          {"primary", s.primary},
          {"policy", s.policy},
          {"threads", s.threads},
          {"adaptive", s.adaptive},
          {"swaps", s.swaps},
          {"last_error", s.last_error},
          {"idle", s.idle},
          {"alias_target_failed", Optional(s.alias_target_failed)},
          {"alias_follow_failures", s.alias_follow_failures},
          {"alias_pushed", s.alias_pushed},
          {"registry_unreachable", s.registry_unreachable},
          {"policy_sync", s.policy_sync.empty() ? json(nullptr) : json::parse(s.policy_sync)},
          {"loader_threads", s.loader_threads},
          {"memory", s.memory ? json{{"limit_bytes", s.memory->limit},
                                     {"used_bytes", s.memory->used},
                                     {"peak_bytes", s.memory->peak},
                                     {"evictions", s.memory->evictions},
                                     {"waits", s.memory->waits},
                                     {"exhausted", s.memory->exhausted},
                                     {"buffers_reused", s.memory->buffers_reused},
                                     {"buffers_kept_bytes", s.memory->buffers_kept_bytes}}
                              : json(nullptr)},
          {"arrangements", arrangements},
          {"versions", versions}};
}

json ShadowsJson(const std::vector<ShadowStats>& shadows) {
  json out = json::array();
  for (const auto& s : shadows) {
    out.push_back({{"primary", s.primary},
                   {"mirror", s.mirror},
                   {"compared", s.compared},
                   {"failed", s.failed},
                   {"dropped", s.dropped},
                   {"max_abs_diff", s.max_abs_diff},
                   {"mean_abs_diff", s.mean_abs_diff},
                   {"argmax_agreement", Optional(s.argmax_agreement)},
                   {"kl_divergence", Optional(s.kl_divergence)}});
  }
  return out;
}

json EventsJson(const std::vector<AppliedEvent>& events) {
  static const char* kKinds[] = {"promote", "rollback", "switch", "conclude"};
  json out = json::array();
  for (const auto& a : events) {
    json evidence = json::parse(a.event.evidence.empty() ? "{}" : a.event.evidence, nullptr, false);
    if (evidence.is_discarded()) evidence = a.event.evidence;
    out.push_back({{"kind", kKinds[static_cast<int>(a.event.kind)]},
                   {"action", a.event.action},
                   {"from", a.event.from},
                   {"to", a.event.to},
                   {"reason", a.event.reason},
                   {"evidence", evidence},
                   {"time", a.event.time},
                   {"policy", a.policy},
                   {"alias", Optional(a.alias)},
                   {"note", a.note}});
  }
  return out;
}

}  // namespace lepton
