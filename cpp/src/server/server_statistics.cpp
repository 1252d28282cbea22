// Triton's statistics extension: GET /v2/models[/{m}[/versions/{v}]]/stats, per model version,
// in Triton's shape, from what lepton already counts. lepton does not time input preparation and
// output extraction apart from the forward: both are inside compute_infer, and compute_input and
// compute_output carry the counts with 0 ns. There is no response cache (cache_hit is zero) and
// no per-batch-size breakdown (batch_stats is empty; lepton_batch_size_rows in /metrics has the
// batch sizes).
#include "server_impl.h"

namespace lepton {
namespace {

json Duration(uint64_t count, double seconds) {
  return {{"count", count}, {"ns", static_cast<uint64_t>(std::max(0.0, seconds) * 1e9)}};
}

}  // namespace

json Server::Impl::ModelStatistics(const std::string& model,
                                   const std::optional<std::string>& version) const {
  const Entry e = Find(model);
  const DeploymentStatus st = e.deployment->Status();
  const MetricsSnapshot m = e.deployment->Metrics();
  const std::string wanted = version ? ResolveVersion(model, *version) : "";
  json out = json::array();
  bool found = false;
  for (const ServableStats& v : st.versions) {
    if (version && v.version != wanted) continue;
    found = true;
    uint64_t succeeded = 0, failed = 0, rows = 0;
    double success_s = 0, failed_s = 0, queue_s = 0, compute_s = 0;
    int64_t last_ms = 0;
    // Every series this version answered alone (any alias or policy; not an ensemble's).
    for (const auto& s : m.series) {
      if (s.key.version != v.version) continue;
      succeeded += s.succeeded;
      failed += s.failed();
      rows += s.rows;
      failed_s += s.failed_s;
      success_s += s.total.sum - s.failed_s;
      queue_s += s.queue.sum;
      compute_s += s.compute.sum;
      last_ms = std::max(last_ms, s.last_ms);
    }
    out.push_back({{"name", model},
                   {"version", v.version},
                   {"last_inference", last_ms},
                   {"inference_count", rows},
                   {"execution_count", v.batches},
                   {"inference_stats",
                    {{"success", Duration(succeeded, success_s)},
                     {"fail", Duration(failed, failed_s)},
                     {"queue", Duration(succeeded, queue_s)},
                     {"compute_input", Duration(succeeded, 0)},
                     {"compute_infer", Duration(succeeded, compute_s)},
                     {"compute_output", Duration(succeeded, 0)},
                     {"cache_hit", Duration(0, 0)}}},
                   {"batch_stats", json::array()}});
  }
  if (version && !found) {
    registry_->Get(model + ":" + wanted);  // 404 when the version does not exist at all
    throw NotFound("version '" + wanted + "' of " + model + " is not deployed");
  }
  return out;
}

Reply Server::Impl::StatisticsRoute(const std::optional<std::string>& model,
                                    const std::optional<std::string>& version,
                                    const Headers& headers) {
  RequireToken(headers);
  json stats = json::array();
  for (const auto& name : model ? std::vector<std::string>{*model} : Names()) {
    try {
      for (auto& s : ModelStatistics(name, version)) stats.push_back(std::move(s));
    } catch (const NotFound&) {
      if (model) throw;  // a model unloaded while all were listed is left out
    }
  }
  return JsonReply(200, {{"model_stats", stats}});
}

}  // namespace lepton
