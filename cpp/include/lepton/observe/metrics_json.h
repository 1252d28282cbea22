// The one JSON form of request metrics, for Python (Deployment.metrics()) and the HTTP API
// (/v2/lepton/models/{m}/stats) alike: durations in seconds, histograms with their count, sum,
// mean, p50, p90, p99 and cumulative buckets ([upper bound, count], +Inf left out: it is count),
// failures by reason where there were any.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include "lepton/observe/metrics.h"

namespace lepton {

nlohmann::json HistogramJson(const Histogram::Snapshot& h);
nlohmann::json SeriesJson(const RequestSeries::Snapshot& s);
// {"series": [...], "versions": [gauges...]}
nlohmann::json MetricsJson(const MetricsSnapshot& m);

}  // namespace lepton
