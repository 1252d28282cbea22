#include "lepton/observe/metrics.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <tuple>

namespace lepton {

// --- Histogram ---

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      counts_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0);
}

void Histogram::Observe(double value) {
  if (std::isnan(value)) return;
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  if (value == 0) return;  // the sum stays (a request that never queued, for one)
  double sum = sum_.load(std::memory_order_relaxed);
  while (!sum_.compare_exchange_weak(sum, sum + value, std::memory_order_relaxed)) {
  }
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.bounds = bounds_;
  s.sum = sum_.load(std::memory_order_relaxed);
  s.counts.resize(bounds_.size() + 1);
  uint64_t total = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    s.counts[i] = counts_[i].load(std::memory_order_relaxed);
    total += s.counts[i];
  }
  s.count = total;
  return s;
}

double Histogram::Snapshot::Quantile(double q) const {
  if (count == 0) return std::numeric_limits<double>::quiet_NaN();
  q = std::clamp(q, 0.0, 1.0);
  const double rank = q * static_cast<double>(count);
  double below = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double c = static_cast<double>(counts[i]);
    if (c > 0 && below + c >= rank) {
      if (i == bounds.size()) return bounds.empty() ? 0 : bounds.back();  // the +Inf bucket
      const double lo = i == 0 ? 0 : bounds[i - 1];
      const double hi = bounds[i];
      return lo + (hi - lo) * std::clamp((rank - below) / c, 0.0, 1.0);
    }
    below += c;
  }
  return bounds.empty() ? 0 : bounds.back();
}

Histogram::Snapshot Histogram::Snapshot::Minus(const Snapshot& earlier) const {
  Snapshot d = *this;
  if (earlier.counts.size() != counts.size()) return d;
  d.count = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    d.counts[i] = counts[i] >= earlier.counts[i] ? counts[i] - earlier.counts[i] : 0;
    d.count += d.counts[i];
  }
  d.sum = sum - earlier.sum;
  return d;
}

std::vector<double> LatencyBuckets() {
  return {25e-6, 50e-6,  100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
          50e-3, 100e-3, 250e-3, 500e-3, 1.0,    2.5,  5.0,    10.0, 30.0,  60.0};
}

std::vector<double> BatchBuckets() { return {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}; }

// --- series ---

bool SeriesKey::operator<(const SeriesKey& o) const {
  return std::tie(model, version, alias, policy) < std::tie(o.model, o.version, o.alias, o.policy);
}

RequestSeries::RequestSeries()
    : queue_(LatencyBuckets()),
      compute_(LatencyBuckets()),
      total_(LatencyBuckets()),
      batch_(BatchBuckets()) {
  for (auto& f : failures_) f.store(0);
}

namespace {

// Milliseconds since the epoch from the kernel's coarse clock (a few ms fine, and far cheaper to
// read per request than the precise one).
int64_t NowMs() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME_COARSE, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

}  // namespace

void RequestSeries::Succeeded(double queue_s, double compute_s, double total_s, int batch_rows,
                              int64_t rows) {
  succeeded_.fetch_add(1, std::memory_order_relaxed);
  rows_.fetch_add(static_cast<uint64_t>(std::max<int64_t>(rows, 0)), std::memory_order_relaxed);
  last_ms_.store(NowMs(), std::memory_order_relaxed);
  queue_.Observe(queue_s);
  compute_.Observe(compute_s);
  total_.Observe(total_s);
  if (batch_rows > 0) batch_.Observe(batch_rows);
}

void RequestSeries::Failed(FailureReason reason, double total_s) {
  failures_[static_cast<size_t>(reason)].fetch_add(1, std::memory_order_relaxed);
  total_.Observe(total_s);
  double f = failed_s_.load(std::memory_order_relaxed);
  while (!failed_s_.compare_exchange_weak(f, f + total_s, std::memory_order_relaxed)) {
  }
  last_ms_.store(NowMs(), std::memory_order_relaxed);
}

uint64_t RequestSeries::Snapshot::failed() const {
  uint64_t n = 0;
  for (auto f : failures) n += f;
  return n;
}

RequestSeries::Snapshot RequestSeries::snapshot(const SeriesKey& key) const {
  Snapshot s;
  s.key = key;
  s.succeeded = succeeded_.load(std::memory_order_relaxed);
  for (size_t i = 0; i < kFailureReasons; ++i) s.failures[i] = failures_[i].load();
  s.requests = s.succeeded + s.failed();
  s.queue = queue_.snapshot();
  s.compute = compute_.snapshot();
  s.total = total_.snapshot();
  s.batch = batch_.snapshot();
  s.rows = rows_.load(std::memory_order_relaxed);
  s.failed_s = failed_s_.load(std::memory_order_relaxed);
  s.last_ms = last_ms_.load(std::memory_order_relaxed);
  return s;
}

namespace {

std::atomic<uint64_t> next_metrics_id{1};

// The series this thread used last and its labels: a thread that serves one deployment's route
// finds it again without building a key or taking the map's lock.
struct LastSeries {
  uint64_t owner = 0;  // RequestMetrics::id_
  std::string model, version, alias, policy;
  RequestSeries* series = nullptr;
};
thread_local LastSeries last_series;

}  // namespace

RequestMetrics::RequestMetrics() : id_(next_metrics_id.fetch_add(1)) {}

RequestSeries& RequestMetrics::Series(std::string_view model, std::string_view version,
                                      std::string_view alias, std::string_view policy) {
  LastSeries& last = last_series;
  if (last.owner == id_ && last.version == version && last.policy == policy &&
      last.model == model && last.alias == alias) {
    return *last.series;
  }
  RequestSeries& s = Series(
      SeriesKey{std::string(model), std::string(version), std::string(alias), std::string(policy)});
  last.owner = id_;
  last.model.assign(model);
  last.version.assign(version);
  last.alias.assign(alias);
  last.policy.assign(policy);
  last.series = &s;
  return s;
}

RequestSeries& RequestMetrics::Series(const SeriesKey& key) {
  {
    std::shared_lock<std::shared_mutex> lk(mu_);
    auto it = series_.find(key);
    if (it != series_.end()) return *it->second;
  }
  std::unique_lock<std::shared_mutex> lk(mu_);
  auto& slot = series_[key];
  if (!slot) slot = std::make_unique<RequestSeries>();
  return *slot;
}

std::vector<RequestSeries::Snapshot> RequestMetrics::Snapshot() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  std::vector<RequestSeries::Snapshot> out;
  out.reserve(series_.size());
  for (const auto& [k, s] : series_) out.push_back(s->snapshot(k));
  return out;
}

// --- Prometheus text ---

std::string PrometheusEscape(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

namespace {

std::string Escape(const std::string& v) { return PrometheusEscape(v); }

// The shortest text that reads back as the same double ("0.1", not "0.10000000000000001"), so
// that a selector such as {le="0.1"} written by hand matches the bucket.
std::string Number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

std::string Labels(const SeriesKey& k, const std::string& extra = "") {
  std::string s = "{model=\"" + Escape(k.model) + "\",version=\"" + Escape(k.version) +
                  "\",alias=\"" + Escape(k.alias) + "\",policy=\"" + Escape(k.policy) + "\"";
  if (!extra.empty()) s += "," + extra;
  return s + "}";
}

void Header(std::ostringstream& o, const char* name, const char* type, const char* help) {
  o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
}

void HistogramLines(std::ostringstream& o, const std::string& name, const SeriesKey& k,
                    const Histogram::Snapshot& h) {
  const std::string labels = Labels(k);
  o << PrometheusHistogram(name, labels.substr(1, labels.size() - 2), h);
}

}  // namespace

int64_t ProcessResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = -1;
  if (!(statm >> size >> resident)) return -1;
  return resident * static_cast<int64_t>(::sysconf(_SC_PAGESIZE));
}

int64_t ProcessThreads() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("Threads:", 0) == 0) return std::stoll(line.substr(8));
  }
  return -1;
}

std::string ProcessMetricsText() {
  std::ostringstream o;
  Header(o, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
  o << "process_resident_memory_bytes " << ProcessResidentBytes() << '\n';
  Header(o, "process_threads", "gauge", "Threads of the process.");
  o << "process_threads " << ProcessThreads() << '\n';
  return o.str();
}

std::string RenderPrometheus(const std::vector<MetricsSnapshot>& snapshots) {
  std::vector<const RequestSeries::Snapshot*> series;
  std::vector<const VersionGauges*> gauges;
  for (const auto& s : snapshots) {
    for (const auto& x : s.series) series.push_back(&x);
    for (const auto& g : s.versions) gauges.push_back(&g);
  }
  std::ostringstream o;
  Header(o, "lepton_requests_total", "counter", "Requests routed to a version.");
  for (auto* s : series)
    o << "lepton_requests_total" << Labels(s->key) << ' ' << s->requests << '\n';
  Header(o, "lepton_request_successes_total", "counter", "Requests answered.");
  for (auto* s : series) {
    o << "lepton_request_successes_total" << Labels(s->key) << ' ' << s->succeeded << '\n';
  }
  Header(o, "lepton_request_failures_total", "counter", "Requests failed, by reason.");
  for (auto* s : series) {
    for (size_t i = 0; i < kFailureReasons; ++i) {
      o << "lepton_request_failures_total"
        << Labels(s->key, std::string("reason=\"") +
                              FailureReasonName(static_cast<FailureReason>(i)) + "\"")
        << ' ' << s->failures[i] << '\n';
    }
  }
  const std::pair<const char*, const char*> kLatency[] = {
      {"lepton_request_queue_seconds", "Time requests waited in a version's queue."},
      {"lepton_request_compute_seconds", "Time a version computed requests (their batch)."},
      {"lepton_request_duration_seconds", "Time from arrival to answer or failure."}};
  for (int h = 0; h < 3; ++h) {
    Header(o, kLatency[h].first, "histogram", kLatency[h].second);
    for (auto* s : series) {
      HistogramLines(o, kLatency[h].first, s->key,
                     h == 0   ? s->queue
                     : h == 1 ? s->compute
                              : s->total);
    }
  }
  Header(o, "lepton_batch_size_rows", "histogram", "Rows in the batch a request ran in.");
  for (auto* s : series) HistogramLines(o, "lepton_batch_size_rows", s->key, s->batch);

  auto version_labels = [](const VersionGauges& g) {
    return "{model=\"" + Escape(g.model) + "\",version=\"" + Escape(g.version) + "\"}";
  };
  Header(o, "lepton_in_flight_requests", "gauge", "Requests a version is computing now.");
  for (auto* g : gauges)
    o << "lepton_in_flight_requests" << version_labels(*g) << ' ' << g->in_flight << '\n';
  Header(o, "lepton_queue_length", "gauge", "Requests waiting in a version's queue.");
  for (auto* g : gauges)
    o << "lepton_queue_length" << version_labels(*g) << ' ' << g->queued << '\n';
  Header(o, "lepton_cpu_threads", "gauge", "CPU budget of a version (threads of its arena).");
  for (auto* g : gauges)
    o << "lepton_cpu_threads" << version_labels(*g) << ' ' << g->threads << '\n';
  Header(o, "lepton_weights_bytes", "gauge", "Memory held by a version's parameters and buffers.");
  for (auto* g : gauges)
    o << "lepton_weights_bytes" << version_labels(*g) << ' ' << g->weight_bytes << '\n';
  Header(o, "lepton_version_ready", "gauge", "1 when a version takes traffic.");
  for (auto* g : gauges) {
    o << "lepton_version_ready" << version_labels(*g) << ' ' << (g->health == "ready" ? 1 : 0)
      << '\n';
  }
  Header(o, "lepton_version_anomalous", "gauge",
         "1 when a version's error rate or p99 latency left its recent band.");
  for (auto* g : gauges) {
    o << "lepton_version_anomalous" << version_labels(*g) << ' ' << (g->anomalous ? 1 : 0) << '\n';
  }
  Header(o, "lepton_version_loaded", "gauge",
         "1 while a version is loaded (under a memory budget versions load on demand).");
  for (auto* g : gauges) {
    o << "lepton_version_loaded" << version_labels(*g) << ' ' << (g->residency == "loaded" ? 1 : 0)
      << '\n';
  }
  Header(o, "lepton_version_memory_bytes", "gauge",
         "Memory a loaded version holds, measured at load: its tensors (parameters, buffers, "
         "tensor attributes), each storage once.");
  for (auto* g : gauges) {
    o << "lepton_version_memory_bytes" << version_labels(*g) << ' ' << g->memory_bytes << '\n';
  }
  const std::pair<const char*, const char*> kLoads[] = {
      {"lepton_version_loads_total", "Loads of a version (at start, on demand or prefetched)."},
      {"lepton_version_load_failures_total", "Loads of a version that failed."},
      {"lepton_version_evictions_total", "Times a version was unloaded to make room."},
      {"lepton_version_cache_hits_total", "Requests that found their version loaded."},
      {"lepton_version_cache_misses_total", "Requests that waited for their version to load."},
      {"lepton_version_loaded_bytes_total", "Bytes of versions loaded, summed over loads."}};
  for (int k = 0; k < 6; ++k) {
    Header(o, kLoads[k].first, "counter", kLoads[k].second);
    for (auto* g : gauges) {
      const int64_t v = k == 0   ? g->loads
                        : k == 1 ? g->load_failures
                        : k == 2 ? g->evictions
                        : k == 3 ? g->hits
                        : k == 4 ? g->misses
                                 : g->bytes_loaded;
      o << kLoads[k].first << version_labels(*g) << ' ' << v << '\n';
    }
  }
  Header(o, "lepton_model_load_seconds", "histogram",
         "How long loading a version took (fetch, checksum, load, warm-up): the cold start.");
  for (const auto& s : snapshots) {
    if (s.model.empty()) continue;
    o << PrometheusHistogram("lepton_model_load_seconds", "model=\"" + Escape(s.model) + "\"",
                             s.load_seconds);
  }
  Header(o, "lepton_memory_budget_bytes", "gauge",
         "The memory budget a model's versions load under (absent: none).");
  for (const auto& s : snapshots) {
    if (s.memory_limit_bytes <= 0) continue;
    o << "lepton_memory_budget_bytes{model=\"" << Escape(s.model) << "\"} " << s.memory_limit_bytes
      << '\n';
  }
  Header(o, "lepton_memory_budget_used_bytes", "gauge",
         "Bytes loaded or being loaded under that budget (shared budgets count every model).");
  for (const auto& s : snapshots) {
    if (s.memory_limit_bytes <= 0) continue;
    o << "lepton_memory_budget_used_bytes{model=\"" << Escape(s.model) << "\"} "
      << s.memory_used_bytes << '\n';
  }
  return o.str();
}

std::string PrometheusHistogram(const std::string& name, const std::string& labels,
                                const Histogram::Snapshot& h) {
  std::ostringstream o;
  const std::string sep = labels.empty() ? "" : ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.counts.size(); ++i) {
    cumulative += h.counts[i];
    const std::string le = i < h.bounds.size() ? Number(h.bounds[i]) : "+Inf";
    o << name << "_bucket{" << labels << sep << "le=\"" << le << "\"} " << cumulative << '\n';
  }
  o << name << "_sum{" << labels << "} " << Number(h.sum) << '\n';
  o << name << "_count{" << labels << "} " << cumulative << '\n';
  return o.str();
}

// --- anomalies ---

AnomalyDetector::AnomalyDetector(AnomalyOptions options) : options_(options) {}

std::optional<AnomalyChange> AnomalyDetector::Judge(Band& band, const char* signal, double value,
                                                    bool over) {
  std::optional<AnomalyChange> change;
  const double sd = std::sqrt(band.var);
  if (band.flagged != over) {
    band.flagged = over;
    change = AnomalyChange{signal, over, value, band.mean, sd};
  }
  // An anomalous interval does not move the band, so a lasting fault stays flagged.
  if (!over) {
    if (band.seen == 0) {
      band.mean = value;
    } else {
      const double d = value - band.mean;
      band.mean += options_.alpha * d;
      band.var = (1 - options_.alpha) * (band.var + options_.alpha * d * d);
    }
    ++band.seen;
  }
  return change;
}

std::vector<AnomalyChange> AnomalyDetector::Update(uint64_t requests, uint64_t failed,
                                                   double p99_s) {
  std::vector<AnomalyChange> out;
  if (requests < options_.min_requests) return out;
  const double rate = static_cast<double>(failed) / static_cast<double>(requests);
  const bool judged = error_.seen >= options_.warmup_intervals;
  bool err_over = false;
  if (judged) {
    const double limit =
        error_.mean + std::max(options_.k * std::sqrt(error_.var), options_.min_error_increase);
    err_over = rate > limit;
  }
  if (auto c = Judge(error_, "error_rate", rate, err_over)) out.push_back(*c);
  if (std::isfinite(p99_s)) {
    bool lat_over = false;
    if (latency_.seen >= options_.warmup_intervals) {
      const double limit = std::max(latency_.mean + options_.k * std::sqrt(latency_.var),
                                    latency_.mean * options_.min_latency_ratio);
      lat_over = p99_s > limit;
    }
    if (auto c = Judge(latency_, "latency_p99", p99_s, lat_over)) out.push_back(*c);
  }
  return out;
}

}  // namespace lepton
