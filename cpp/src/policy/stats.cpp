#include "lepton/policy/stats.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "lepton/common/errors.h"

namespace lepton {

void RunningMoments::Add(double x) {
  ++n_;
  const double delta = x - mean_;
  mean_ += delta / double(n_);
  m2_ += delta * (x - mean_);
}

RunningMoments RunningMoments::FromParts(int64_t n, double mean, double m2) {
  if (n < 0 || !std::isfinite(mean) || !std::isfinite(m2) || m2 < 0) {
    throw InvalidArgument("running moments need n >= 0, a finite mean and m2 >= 0");
  }
  RunningMoments r;
  r.n_ = n;
  r.mean_ = n ? mean : 0;
  r.m2_ = n > 1 ? m2 : 0;
  return r;
}

double RunningMoments::variance() const { return n_ > 1 ? m2_ / double(n_ - 1) : 0.0; }

namespace {

// The q-quantile of `values` (nearest rank); 0 when empty. Reorders `values`.
double NearestRank(std::vector<double>& values, double q) {
  if (values.empty()) return 0;
  const size_t k =
      std::min(values.size() - 1,
               static_cast<size_t>(std::ceil(q * double(values.size()))) - (q > 0 ? 1 : 0));
  std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(k), values.end());
  return values[k];
}

}  // namespace

OutcomeWindow::OutcomeWindow(size_t capacity) : capacity_(std::max<size_t>(1, capacity)) {}

void OutcomeWindow::Add(double latency_s, bool error, uint64_t stamp) {
  ++total_;
  if (error) ++total_errors_;
  if (error) ++window_errors_;
  if (latencies_.size() < capacity_) {
    latencies_.push_back(latency_s);
    errors_.push_back(error);
    stamps_.push_back(stamp);
    return;
  }
  if (errors_[next_]) --window_errors_;
  latencies_[next_] = latency_s;
  errors_[next_] = error;
  stamps_[next_] = stamp;
  next_ = (next_ + 1) % capacity_;
}

uint64_t OutcomeWindow::oldest_stamp() const {
  if (stamps_.empty()) return 0;
  return latencies_.size() < capacity_ ? stamps_.front() : stamps_[next_];
}

double OutcomeWindow::QuantileSince(double q, uint64_t stamp, size_t* count) const {
  std::vector<double> ok;
  for (size_t i = 0; i < latencies_.size(); ++i) {
    if (!errors_[i] && stamps_[i] >= stamp) ok.push_back(latencies_[i]);
  }
  if (count) *count = ok.size();
  return NearestRank(ok, q);
}

double OutcomeWindow::error_rate() const {
  if (errors_.empty()) return 0;
  return double(window_errors_) / double(errors_.size());
}

double OutcomeWindow::Quantile(double q, size_t last_n) const {
  // The newest entry is just before next_ once the ring is full, else at the back.
  const size_t n = latencies_.size();
  const size_t take = std::min(n, last_n);
  const size_t newest = n < capacity_ ? n - 1 : (next_ + n - 1) % n;
  std::vector<double> ok;
  ok.reserve(take);
  for (size_t j = 0; j < take; ++j) {
    const size_t i = (newest + n - j) % n;
    if (!errors_[i]) ok.push_back(latencies_[i]);
  }
  return NearestRank(ok, q);
}

SequentialTest::SequentialTest(double alpha, double effect, int64_t min_samples)
    : alpha_(alpha), effect_(effect), min_samples_(min_samples) {
  if (!(alpha > 0 && alpha < 1)) throw InvalidArgument("alpha must be in (0, 1)");
  if (!(effect > 0) || !std::isfinite(effect)) throw InvalidArgument("effect must be > 0");
  if (min_samples < 2) throw InvalidArgument("min_samples must be >= 2");
}

void SequentialTest::Add(int arm, double value) {
  if (arm != 0 && arm != 1) throw InvalidArgument("arm must be 0 or 1");
  if (!std::isfinite(value)) throw InvalidArgument("a reward must be a finite number");
  arms_[arm].Add(value);
}

void SequentialTest::Restore(const RunningMoments& a, const RunningMoments& b, double p_value) {
  arms_[0] = a;
  arms_[1] = b;
  p_value_ = std::clamp(p_value, 0.0, 1.0);
}

SequentialTest::Result SequentialTest::Evaluate() {
  Result r;
  const RunningMoments &a = arms_[0], &b = arms_[1];
  r.n_a = a.count();
  r.n_b = b.count();
  r.mean_a = a.mean();
  r.mean_b = b.mean();
  r.difference = r.mean_b - r.mean_a;
  r.p_value = p_value_;
  r.confidence = 1 - p_value_;
  r.ci_low = -INFINITY;
  r.ci_high = INFINITY;
  if (r.n_a < 2 || r.n_b < 2) return r;
  // A floor on the variance keeps a run of identical rewards from claiming certainty.
  const double var_a = std::max(a.variance(), 1e-12), var_b = std::max(b.variance(), 1e-12);
  const double v = var_a / double(r.n_a) + var_b / double(r.n_b);
  const double pooled =
      (var_a * double(r.n_a - 1) + var_b * double(r.n_b - 1)) / double(r.n_a + r.n_b - 2);
  const double tau2 = effect_ * effect_ * std::max(pooled, 1e-12);
  const double log_ratio =
      0.5 * std::log(v / (v + tau2)) + tau2 * r.difference * r.difference / (2 * v * (v + tau2));
  r.likelihood_ratio = std::exp(std::min(log_ratio, 700.0));
  if (r.n_a >= min_samples_ && r.n_b >= min_samples_) {
    p_value_ = std::min(p_value_, std::min(1.0, std::exp(-log_ratio)));
  }
  r.p_value = p_value_;
  r.confidence = 1 - p_value_;
  // The confidence sequence at level alpha: differences whose ratio stays below 1 / alpha.
  const double radius = std::sqrt(std::max(
      0.0, (v * (v + tau2) / tau2) * (2 * std::log(1 / alpha_) - std::log(v / (v + tau2)))));
  r.ci_low = r.difference - radius;
  r.ci_high = r.difference + radius;
  if (r.n_a >= min_samples_ && r.n_b >= min_samples_) {
    // A confidence sequence stays valid intersected over time, like the running p-value.
    ci_low_ = std::max(ci_low_, r.ci_low);
    ci_high_ = std::min(ci_high_, r.ci_high);
    r.ci_low = ci_low_;
    r.ci_high = ci_high_;
  }
  r.decided = r.n_a >= min_samples_ && r.n_b >= min_samples_ && p_value_ <= alpha_;
  if (r.decided) r.winner = r.difference > 0 ? 1 : 0;
  return r;
}

}  // namespace lepton
