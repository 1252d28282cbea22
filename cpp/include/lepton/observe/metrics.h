// Request metrics per model, version, alias and policy: counters, failures by reason and latency
// histograms (queue, compute, total) plus batch sizes, rendered as Prometheus text; and a detector
// that flags a version whose error rate or latency leaves its recent band.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "lepton/common/errors.h"

namespace lepton {

// Why a request failed, as counted in `lepton_request_failures_total{reason=...}`.
// FailureReason (the labels failures are counted under) comes from the error table, errors.h.
constexpr size_t kFailureReasons = static_cast<size_t>(FailureReason::kCount);

// A histogram over fixed upper bounds (Prometheus buckets; the last bucket is +Inf).
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);

  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> counts;  // per bucket, not cumulative; bounds.size() + 1 entries
    uint64_t count = 0;
    double sum = 0;
    // Linear interpolation inside the bucket holding the q-th value; NaN when empty.
    double Quantile(double q) const;
    Snapshot Minus(const Snapshot& earlier) const;
  };
  Snapshot snapshot() const;

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<double> sum_{0};
};

std::vector<double> LatencyBuckets();  // seconds, 25 us to 60 s
std::vector<double> BatchBuckets();    // rows, 1 to 1024

struct SeriesKey {
  std::string model, version, alias, policy;
  bool operator<(const SeriesKey& o) const;
};

// The counters of one label set.
class RequestSeries {
 public:
  RequestSeries();
  // `rows`: the request's own rows (its inferences, as Triton's statistics count them).
  void Succeeded(double queue_s, double compute_s, double total_s, int batch_rows,
                 int64_t rows = 1);
  void Failed(FailureReason reason, double total_s);

  struct Snapshot {
    SeriesKey key;
    uint64_t requests = 0, succeeded = 0;
    std::array<uint64_t, kFailureReasons> failures{};
    Histogram::Snapshot queue, compute, total, batch;
    uint64_t rows = 0;    // rows of the requests answered
    double failed_s = 0;  // time the failed requests took, in all
    int64_t last_ms = 0;  // when the latest request ended, ms since the epoch (0: none yet)
    uint64_t failed() const;
  };
  Snapshot snapshot(const SeriesKey& key) const;

 private:
  std::atomic<uint64_t> succeeded_{0}, rows_{0};
  std::atomic<double> failed_s_{0};
  std::atomic<int64_t> last_ms_{0};
  std::array<std::atomic<uint64_t>, kFailureReasons> failures_{};
  Histogram queue_, compute_, total_, batch_;
};

// What a version holds right now (read from the servable when metrics are taken).
struct VersionGauges {
  std::string model, version, health;
  int threads = 0;
  int64_t in_flight = 0, queued = 0, weight_bytes = 0;
  bool anomalous = false;
  // Loading on demand: where it is, what it holds, and what loading it has cost so far.
  std::string residency = "loaded";
  int64_t memory_bytes = 0;
  int64_t loads = 0, load_failures = 0, evictions = 0, hits = 0, misses = 0, bytes_loaded = 0;
};

struct MetricsSnapshot {
  std::vector<RequestSeries::Snapshot> series;
  std::vector<VersionGauges> versions;
  std::string model;                 // the deployment's, for its own series below
  Histogram::Snapshot load_seconds;  // how long its versions took to load (cold starts)
  int64_t memory_limit_bytes = 0;    // its memory budget; 0: none
  int64_t memory_used_bytes = 0;
};

class RequestMetrics {
 public:
  RequestMetrics();
  RequestMetrics(const RequestMetrics&) = delete;
  RequestMetrics& operator=(const RequestMetrics&) = delete;

  // The series of a label set, created on first use; the reference stays valid.
  RequestSeries& Series(const SeriesKey& key);
  // The same by its labels, without copying them when the calling thread's last series had them.
  RequestSeries& Series(std::string_view model, std::string_view version, std::string_view alias,
                        std::string_view policy);
  std::vector<RequestSeries::Snapshot> Snapshot() const;

 private:
  const uint64_t id_;  // unique in the process, never reused: tells threads' caches apart
  mutable std::shared_mutex mu_;
  std::map<SeriesKey, std::unique_ptr<RequestSeries>> series_;
};

// Prometheus text exposition format 0.0.4 of any number of deployments' metrics.
std::string RenderPrometheus(const std::vector<MetricsSnapshot>& snapshots);

// This process's resident memory in bytes and its thread count, read from /proc/self (-1 where
// that cannot be read), and as Prometheus gauges (process_resident_memory_bytes, process_threads).
int64_t ProcessResidentBytes();
int64_t ProcessThreads();
std::string ProcessMetricsText();

// A label value escaped for the Prometheus text format.
std::string PrometheusEscape(const std::string& v);

// The _bucket, _sum and _count lines of one histogram; `labels` is `a="x",b="y"` (escaped) or "".
std::string PrometheusHistogram(const std::string& name, const std::string& labels,
                                const Histogram::Snapshot& h);

// Flags a version whose error rate or p99 latency over the last interval leaves the band of its
// recent intervals (exponentially weighted mean +- k standard deviations, with absolute floors so
// that quiet versions are not flagged for noise).
struct AnomalyOptions {
  double k = 4.0;                    // band width in standard deviations
  double alpha = 0.2;                // weight of the newest interval in the band
  int warmup_intervals = 5;          // intervals seen before judging
  uint64_t min_requests = 20;        // per interval, to judge it at all
  double min_error_increase = 0.05;  // absolute error-rate rise that can count
  double min_latency_ratio = 1.5;    // p99 rise (ratio to the band's mean) that can count
};

struct AnomalyChange {
  std::string signal;  // "error_rate" or "latency_p99"
  bool anomalous;      // true: left the band; false: back in it
  double value, mean, sd;
};

class AnomalyDetector {
 public:
  explicit AnomalyDetector(AnomalyOptions options = {});
  // One interval's outcome; returns the signals that changed state.
  std::vector<AnomalyChange> Update(uint64_t requests, uint64_t failed, double p99_s);
  bool anomalous() const { return error_.flagged || latency_.flagged; }

 private:
  struct Band {
    double mean = 0, var = 0;
    int seen = 0;
    bool flagged = false;
  };
  std::optional<AnomalyChange> Judge(Band& band, const char* signal, double value, bool over);
  AnomalyOptions options_;
  Band error_, latency_;
};

}  // namespace lepton
