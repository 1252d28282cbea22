#include "lepton/observe/anomaly_watch.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>

#include "lepton/observe/events.h"

namespace lepton {

AnomalyWatch::AnomalyWatch(std::string model) : model_(std::move(model)) {}

void AnomalyWatch::Check(const std::vector<RequestSeries::Snapshot>& series,
                         const std::function<bool(const std::string&)>& live) {
  std::map<std::string, std::pair<uint64_t, uint64_t>> counts;  // requests, failed (by model)
  std::map<std::string, Histogram::Snapshot> totals;
  for (const auto& x : series) {
    if (!live(x.key.version)) continue;
    auto& c = counts[x.key.version];
    c.first += x.requests;
    c.second += x.failures[size_t(FailureReason::kModelError)] +
                x.failures[size_t(FailureReason::kTimeout)] +
                x.failures[size_t(FailureReason::kInternal)];
    auto it = totals.find(x.key.version);
    if (it == totals.end()) {
      totals.emplace(x.key.version, x.total);
    } else {
      for (size_t i = 0; i < it->second.counts.size(); ++i)
        it->second.counts[i] += x.total.counts[i];
      it->second.count += x.total.count;
      it->second.sum += x.total.sum;
    }
  }
  std::lock_guard<std::mutex> lk(mu_);
  for (const auto& [version, c] : counts) {
    Watch& w = watches_[version];
    const Histogram::Snapshot& total = totals.at(version);
    const uint64_t requests = c.first - std::min(c.first, w.requests);
    const uint64_t failed = c.second - std::min(c.second, w.failed);
    const double p99 = total.Minus(w.total).Quantile(0.99);
    w.requests = c.first;
    w.failed = c.second;
    w.total = total;
    for (const auto& change : w.detector.Update(requests, failed, p99)) {
      const bool error = change.signal == "error_rate";
      std::ostringstream msg;
      msg << version << (change.anomalous ? " left" : " is back in") << " its band of "
          << (error ? "error rate" : "p99 latency") << ": " << change.value << " against "
          << change.mean << " +- " << change.sd;
      EmitEvent(change.anomalous ? "warning" : "info",
                change.anomalous ? "anomaly" : "anomaly_cleared", model_, version, msg.str(),
                nlohmann::json({{"signal", change.signal},
                                {"value", change.value},
                                {"mean", change.mean},
                                {"sd", change.sd},
                                {"requests", requests}})
                    .dump());
    }
  }
}

bool AnomalyWatch::Anomalous(const std::string& version) const {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = watches_.find(version);
  return it != watches_.end() && it->second.detector.anomalous();
}

}  // namespace lepton
