// Online statistics for policies: running moments, a window of recent latencies and errors, and an
// always-valid two-sample sequential test (mixture SPRT) that may be checked after every sample.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace lepton {

// Welford's running mean and variance.
class RunningMoments {
 public:
  void Add(double x);
  int64_t count() const { return n_; }
  double mean() const { return mean_; }
  double variance() const;  // sample variance; 0 below two samples
  double sum() const { return mean_ * double(n_); }
  double m2() const { return m2_; }
  static RunningMoments FromParts(int64_t n, double mean, double m2);

 private:
  int64_t n_ = 0;
  double mean_ = 0, m2_ = 0;
};

// The last `capacity` outcomes of one version: latencies and whether each failed.
class OutcomeWindow {
 public:
  explicit OutcomeWindow(size_t capacity = 2048);
  // `stamp` orders entries across windows (a shared counter), for comparisons over one span.
  void Add(double latency_s, bool error, uint64_t stamp = 0);
  int64_t total() const { return total_; }
  int64_t total_errors() const { return total_errors_; }
  size_t size() const { return latencies_.size(); }
  double error_rate() const;  // over the window
  // Latency quantile over the successful requests among the window's newest `last_n`.
  double Quantile(double q, size_t last_n = SIZE_MAX) const;
  // Latency quantile over the successful requests stamped at or after `stamp`; `count` receives
  // how many there were.
  double QuantileSince(double q, uint64_t stamp, size_t* count) const;
  uint64_t oldest_stamp() const;

 private:
  size_t capacity_, next_ = 0;
  std::vector<double> latencies_;
  std::vector<char> errors_;
  std::vector<uint64_t> stamps_;
  int64_t total_ = 0, total_errors_ = 0;
  size_t window_errors_ = 0;
};

// Two-sample mixture sequential probability ratio test on the difference of means
// theta = mean(B) - mean(A) (Johari, Pekelis, Walsh: "Always valid inference"). The mixing
// distribution is N(0, tau^2) with tau = effect * (pooled standard deviation). The p-value is
// valid at every look: P(p <= alpha ever | theta = 0) <= alpha (asymptotically, with the variance
// estimated from the data).
class SequentialTest {
 public:
  struct Result {
    int64_t n_a = 0, n_b = 0;
    double mean_a = 0, mean_b = 0;
    double difference = 0;           // mean_b - mean_a
    double likelihood_ratio = 1;     // the mixture likelihood ratio now
    double p_value = 1;              // always-valid: the running minimum of 1 / ratio
    double confidence = 0;           // 1 - p_value
    double ci_low = 0, ci_high = 0;  // always-valid confidence sequence for the difference,
                                     // intersected over the looks so far
    bool decided = false;            // p_value <= alpha with both arms at min_samples
    int winner = -1;                 // 0 (A), 1 (B), or -1 while undecided
  };

  explicit SequentialTest(double alpha = 0.05, double effect = 0.1, int64_t min_samples = 100);
  void Add(int arm, double value);  // arm 0 (A) or 1 (B)
  // Evaluates at the current sample; lowers the running p-value.
  Result Evaluate();
  double alpha() const { return alpha_; }
  int64_t min_samples() const { return min_samples_; }
  const RunningMoments& arm(int i) const { return arms_[i]; }
  void Restore(const RunningMoments& a, const RunningMoments& b, double p_value);
  double p_value() const { return p_value_; }

 private:
  double alpha_, effect_;
  int64_t min_samples_;
  RunningMoments arms_[2];
  double p_value_ = 1;
  double ci_low_ = -INFINITY, ci_high_ = INFINITY;
};

}  // namespace lepton
