#include "lepton/observe/metrics_json.h"

#include <cmath>
#include <nlohmann/json.hpp>

namespace lepton {

using json = nlohmann::json;

json HistogramJson(const Histogram::Snapshot& h) {
  auto q = [&](double p) { return h.count ? json(h.Quantile(p)) : json(nullptr); };
  json buckets = json::array();
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.bounds.size() && i < h.counts.size(); ++i) {
    cumulative += h.counts[i];
    buckets.push_back({h.bounds[i], cumulative});
  }
  return {{"count", h.count},
          {"sum", h.sum},
          {"mean", h.count ? json(h.sum / double(h.count)) : json(nullptr)},
          {"p50", q(0.5)},
          {"p90", q(0.9)},
          {"p99", q(0.99)},
          {"buckets", buckets}};
}

json SeriesJson(const RequestSeries::Snapshot& x) {
  json failures = json::object();
  for (size_t i = 0; i < kFailureReasons; ++i) {
    if (x.failures[i]) failures[FailureReasonName(static_cast<FailureReason>(i))] = x.failures[i];
  }
  return {{"model", x.key.model},
          {"version", x.key.version},
          {"alias", x.key.alias},
          {"policy", x.key.policy},
          {"requests", x.requests},
          {"succeeded", x.succeeded},
          {"failed", x.failed()},
          {"failures", failures},
          {"queue_s", HistogramJson(x.queue)},
          {"compute_s", HistogramJson(x.compute)},
          {"total_s", HistogramJson(x.total)},
          {"batch_rows", HistogramJson(x.batch)}};
}

json MetricsJson(const MetricsSnapshot& m) {
  json series = json::array();
  for (const auto& x : m.series) series.push_back(SeriesJson(x));
  json versions = json::array();
  for (const auto& g : m.versions) {
    versions.push_back({{"model", g.model},
                        {"version", g.version},
                        {"health", g.health},
                        {"threads", g.threads},
                        {"in_flight", g.in_flight},
                        {"queued", g.queued},
                        {"weight_bytes", g.weight_bytes},
                        {"anomalous", g.anomalous},
                        {"state", g.residency},
                        {"memory_bytes", g.memory_bytes},
                        {"loads", g.loads},
                        {"load_failures", g.load_failures},
                        {"evictions", g.evictions},
                        {"hits", g.hits},
                        {"misses", g.misses},
                        {"bytes_loaded", g.bytes_loaded}});
  }
  json out = {
      {"series", series}, {"versions", versions}, {"load_s", HistogramJson(m.load_seconds)}};
  if (m.memory_limit_bytes > 0) {
    out["memory_budget"] = {{"limit_bytes", m.memory_limit_bytes},
                            {"used_bytes", m.memory_used_bytes}};
  }
  return out;
}

}  // namespace lepton
