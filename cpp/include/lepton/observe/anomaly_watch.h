// The anomaly watch of one deployment: each interval, every live version's error rate and p99
// latency over that interval go to its AnomalyDetector, and a version leaving (or coming back
// into) its band is an event. Thread-safe; one mutex.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "lepton/observe/metrics.h"

namespace lepton {

class AnomalyWatch {
 public:
  explicit AnomalyWatch(std::string model);
  // `series`: the deployment's request series now; `live`: whether a version is live (only live
  // versions are watched).
  void Check(const std::vector<RequestSeries::Snapshot>& series,
             const std::function<bool(const std::string&)>& live);
  bool Anomalous(const std::string& version) const;

 private:
  struct Watch {
    AnomalyDetector detector;
    uint64_t requests = 0, failed = 0;
    Histogram::Snapshot total;
  };
  const std::string model_;
  mutable std::mutex mu_;
  std::map<std::string, Watch> watches_;
};

}  // namespace lepton
