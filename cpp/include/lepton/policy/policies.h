// Traffic policies: weighted and sticky splits, canary ramps with guardrails, shadows, bandits,
// load balancing, and the switching controllers (a sequential A/B test, a time-based schedule).
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "lepton/policy/routing.h"
#include "lepton/policy/stats.h"

namespace lepton {

// Chooses among arms in proportion to weights; with a key, by weighted rendezvous hashing, so the
// same key always lands on the same arm and raising one arm's weight moves keys only to that arm.
class WeightedChooser {
 public:
  WeightedChooser(std::vector<std::string> arms, std::vector<double> weights);
  // A random arm (thread-safe, lock-free).
  size_t Random() const;
  // The arm for `key`; stable across processes and restarts.
  size_t ForKey(std::string_view key) const;
  const std::vector<std::string>& arms() const { return arms_; }
  const std::vector<double>& weights() const { return weights_; }  // normalised

 private:
  std::vector<std::string> arms_;
  std::vector<double> weights_, cumulative_, inverse_;
  std::vector<uint64_t> seeds_;
};

// N-way split by weights (A/B/n); sticky: a request key always reaches the same version.
class WeightedPolicy final : public Policy {
 public:
  WeightedPolicy(std::vector<std::string> versions, std::vector<double> weights,
                 bool sticky = false);
  std::string name() const override { return "weighted"; }
  Route Select(const RequestContext& request, const LiveVersions& live) const override;
  void Validate(const LiveVersions& live) const override;
  std::shared_ptr<const Policy> Renamed(const std::string& from,
                                        const std::string& to) const override;
  std::string Describe() const override;
  std::vector<std::string> Needs(const LiveVersions& live) const override;
  const WeightedChooser& chooser() const { return chooser_; }
  bool sticky() const { return sticky_; }

 private:
  WeightedChooser chooser_;
  bool sticky_;
  std::vector<Reason> reasons_, key_reasons_;
};

struct Guardrails {
  // The candidate's error rate may exceed the baseline's by at most this much.
  double max_error_rate_increase = 0.02;
  // The candidate's p99 latency may be at most this multiple of the baseline's.
  double max_latency_ratio = 1.5;
  // ... unless it is within this many seconds of the baseline's: on a CPU the scheduler alone
  // moves a p99 by milliseconds, which a sub-millisecond baseline would make look like a ratio.
  double latency_slack_s = 0.002;
  // Judged only once both sides have this many requests in their windows.
  int64_t min_requests = 50;
  // Requests kept per side for the comparison.
  size_t window = 1000;
};

// Watches a candidate against a baseline on error rate and p99 latency.
class GuardrailMonitor {
 public:
  GuardrailMonitor(std::string baseline, std::string candidate, Guardrails g);
  void Observe(const Outcome& o);
  // A breach's description, or nothing while the guardrails hold (or cannot be judged yet).
  std::optional<std::string> Breach() const;
  bool ready() const;        // both sides have min_requests
  int64_t observed() const;  // outcomes seen on both sides
  std::string EvidenceJson() const;

 private:
  std::string baseline_, candidate_;
  Guardrails g_;
  mutable std::mutex mu_;
  OutcomeWindow base_, cand_;
  uint64_t stamp_ = 0;
};

struct CanaryOptions {
  std::vector<double> steps{0.01, 0.05, 0.25, 1.0};  // the candidate's share at each step
  // A step ends after this many requests (0: not by count) or after this long (0: not by time);
  // with neither, after kDefaultStepRequests requests.
  int64_t step_requests = 0;
  double step_seconds = 0;
  static constexpr int64_t kDefaultStepRequests = 1000;
  Guardrails guardrails;
  std::optional<std::string> alias;  // moved to the candidate on promotion
  bool sticky = false;
  std::string name;  // the state's key; default from the versions
};

// A ramp from `stable` to `candidate` by steps; a guardrail breach rolls back at once, the last
// step's completion promotes.
class CanaryPolicy final : public Policy {
 public:
  CanaryPolicy(std::string stable, std::string candidate, CanaryOptions options);
  std::string name() const override { return "canary"; }
  Route Select(const RequestContext& request, const LiveVersions& live) const override;
  void Validate(const LiveVersions& live) const override;
  std::shared_ptr<const Policy> Renamed(const std::string& from,
                                        const std::string& to) const override;
  std::string Describe() const override;
  std::vector<std::string> Needs(const LiveVersions& live) const override;
  bool observes() const override { return true; }
  void Observe(const Outcome& outcome) const override;
  bool ticks() const override { return true; }
  std::vector<PolicyEvent> Tick(const LiveVersions& live, const LoadFn& load,
                                double now) const override;
  std::optional<std::string> alias() const override { return options_.alias; }
  std::string state_key() const override;
  std::string SaveState() const override;
  void LoadState(const std::string& state) const override;
  std::string Report() const override;

  enum class Phase { kRamping, kPromoted, kRolledBack };
  static const char* PhaseName(Phase p);  // "ramping", "promoted", "rolled_back"
  Phase phase() const { return phase_.load(); }
  size_t step() const { return step_.load(); }

 private:
  std::shared_ptr<const WeightedChooser> Chooser(size_t step) const;
  void Advance(double now, std::vector<PolicyEvent>& events) const;

  std::string stable_, candidate_;
  CanaryOptions options_;
  std::vector<std::shared_ptr<const WeightedChooser>> choosers_;
  std::vector<Reason> reasons_;  // per step: plain, sticky
  mutable GuardrailMonitor monitor_;
  mutable std::atomic<Phase> phase_{Phase::kRamping};
  mutable std::atomic<size_t> step_{0};
  mutable std::atomic<int64_t> step_count_{0};
  mutable std::mutex mu_;
  mutable double step_started_ = 0;  // 0: not started
  mutable std::optional<std::string> breach_;
  mutable bool waiting_for_evidence_ = false;  // held before a 100% step until guardrails can judge
  mutable std::vector<PolicyEvent> pending_;
  // The guardrails' evidence as stored by the replica that decides, for the report of one that
  // does not (whose own monitor sees no outcomes).
  mutable std::string stored_evidence_;
};

// The primary answers; each mirror gets a copy off the request path, and the deployment compares
// the mirrors' outputs with the primary's.
class ShadowPolicy final : public Policy {
 public:
  // Empty `primary`: the deployment's primary.
  ShadowPolicy(std::string primary, std::vector<std::string> mirrors);
  std::string name() const override { return "shadow"; }
  Route Select(const RequestContext& request, const LiveVersions& live) const override;
  void Validate(const LiveVersions& live) const override;
  std::shared_ptr<const Policy> Renamed(const std::string& from,
                                        const std::string& to) const override;
  std::string Describe() const override;
  std::vector<std::string> Needs(const LiveVersions& live) const override;

 private:
  std::string primary_;
  std::vector<std::string> mirrors_;
};

enum class BanditAlgorithm { kThompson, kUcb1, kEpsilonGreedy };

struct BanditOptions {
  BanditAlgorithm algorithm = BanditAlgorithm::kThompson;
  double epsilon = 0.1;  // epsilon-greedy's exploration rate
  uint64_t seed = 0;     // 0: from the system's entropy
  std::string name;      // the state's key; default from the algorithm and the versions
};

// Routes by rewards that arrive later. Thompson sampling and UCB1 take rewards in [0, 1];
// epsilon-greedy any finite reward.
class BanditPolicy final : public Policy {
 public:
  BanditPolicy(std::vector<std::string> versions, BanditOptions options);
  std::string name() const override { return "bandit"; }
  Route Select(const RequestContext& request, const LiveVersions& live) const override;
  void Validate(const LiveVersions& live) const override;
  std::shared_ptr<const Policy> Renamed(const std::string& from,
                                        const std::string& to) const override;
  std::string Describe() const override;
  std::vector<std::string> Needs(const LiveVersions& live) const override;
  bool takes_feedback() const override { return true; }
  void Feedback(const std::string& version, double reward) const override;
  void CheckReward(const std::string& version, double reward) const override;
  std::string state_key() const override;
  std::string SaveState() const override;
  void LoadState(const std::string& state) const override;
  std::string Report() const override;

  struct Arm {
    int64_t pulls = 0;  // times chosen
    int64_t n = 0;      // rewards received
    double sum = 0;     // their sum
  };
  std::vector<Arm> arms() const;

 private:
  size_t Choose() const;
  std::vector<std::string> versions_;
  BanditOptions options_;
  mutable std::mutex mu_;
  mutable std::mt19937_64 rng_;
  mutable std::vector<Arm> arms_;
};

// Power of two choices: two random versions, the one with fewer outstanding requests answers.
class LeastLoadedPolicy final : public Policy {
 public:
  explicit LeastLoadedPolicy(std::vector<std::string> versions = {});  // empty: every live one
  std::string name() const override { return "least_loaded"; }
  Route Select(const RequestContext& request, const LiveVersions& live) const override;
  void Validate(const LiveVersions& live) const override;
  std::shared_ptr<const Policy> Renamed(const std::string& from,
                                        const std::string& to) const override;
  std::string Describe() const override;
  std::vector<std::string> Needs(const LiveVersions& live) const override;
  bool observes() const override { return true; }
  void Observe(const Outcome& outcome) const override;
  int64_t outstanding(const std::string& version) const;

 private:
  struct Counter {
    std::atomic<int64_t> n{0};
  };
  Counter* Find(const std::string& version) const;
  std::vector<std::string> versions_;
  std::unique_ptr<Counter[]> counters_;
  mutable std::mutex extra_mu_;
  mutable std::vector<std::pair<std::string, std::unique_ptr<Counter>>> extra_;
};

// Weights that follow the versions' load, as in the reference documents: by the requests each
// version completes (w_i = Q_i / sum Q over the last interval) or by the CPU each holds
// (w_i = R_i / sum R). Recomputed every `interval_s`.
class BalancedPolicy final : public Policy {
 public:
  enum class By { kRequests, kResources };
  BalancedPolicy(By by, std::vector<std::string> versions = {}, double interval_s = 1.0,
                 bool sticky = false);
  std::string name() const override { return "balanced"; }
  Route Select(const RequestContext& request, const LiveVersions& live) const override;
  void Validate(const LiveVersions& live) const override;
  std::shared_ptr<const Policy> Renamed(const std::string& from,
                                        const std::string& to) const override;
  std::string Describe() const override;
  std::vector<std::string> Needs(const LiveVersions& live) const override;
  bool ticks() const override { return true; }
  std::vector<PolicyEvent> Tick(const LiveVersions& live, const LoadFn& load,
                                double now) const override;
  std::string Report() const override;

 private:
  std::vector<std::string> Arms(const LiveVersions& live) const;
  By by_;
  std::vector<std::string> versions_;
  double interval_s_;
  bool sticky_;
  mutable std::mutex mu_;
  mutable std::shared_ptr<const WeightedChooser> chooser_;
  mutable std::map<std::string, int64_t> last_completed_;
  mutable double last_tick_ = 0;
};

struct ABTestOptions {
  double split = 0.5;         // the treatment's share while the test runs
  double alpha = 0.05;        // the test's level
  double effect = 0.1;        // the mixture's scale, in pooled standard deviations
  int64_t min_samples = 100;  // rewards per arm before any decision
  bool sticky = false;
  std::optional<Guardrails> guardrails;  // must hold for the treatment to be promoted
  std::optional<std::string> alias;
  std::string name;  // the state's key; default from the versions
};

// Performance-based switching: an A/B test on a metric from feedback with an always-valid
// sequential test (mSPRT), so looking after every reward is safe. When the evidence is there the
// winner takes all traffic; a winning treatment is promoted (alias moved) if the guardrails hold.
class ABTestPolicy final : public Policy {
 public:
  ABTestPolicy(std::string control, std::string treatment, ABTestOptions options);
  std::string name() const override { return "ab_test"; }
  Route Select(const RequestContext& request, const LiveVersions& live) const override;
  void Validate(const LiveVersions& live) const override;
  std::shared_ptr<const Policy> Renamed(const std::string& from,
                                        const std::string& to) const override;
  std::string Describe() const override;
  std::vector<std::string> Needs(const LiveVersions& live) const override;
  bool observes() const override { return options_.guardrails.has_value(); }
  void Observe(const Outcome& outcome) const override;
  bool takes_feedback() const override { return true; }
  void Feedback(const std::string& version, double reward) const override;
  void CheckReward(const std::string& version, double reward) const override;
  bool ticks() const override { return true; }
  std::vector<PolicyEvent> Tick(const LiveVersions& live, const LoadFn& load,
                                double now) const override;
  std::optional<std::string> alias() const override { return options_.alias; }
  std::string state_key() const override;
  std::string SaveState() const override;
  void LoadState(const std::string& state) const override;
  std::string Report() const override;
  SequentialTest::Result Result() const;
  std::optional<std::string> winner() const;

 private:
  std::string control_, treatment_;
  ABTestOptions options_;
  WeightedChooser chooser_;
  mutable std::optional<GuardrailMonitor> monitor_;
  mutable std::mutex mu_;
  mutable SequentialTest test_;
  mutable std::optional<std::string> winner_;
  mutable bool announced_ = false;
  mutable bool dirty_ = false;
};

struct TimeBasedEntry {
  std::string version;
  double start = 0;                // seconds since the epoch when it becomes eligible
  std::optional<double> validity;  // T_i, seconds it stays valid after `start`
  std::optional<double> cycle;     // C_i, its update cycle in seconds
};

// Time-based switching: versions become eligible on a schedule and expire after their validity.
// Among the eligible ones, with validity and cycle given, each gets w_i = 1 / (T_i + C_i): "switch"
// sends everything to the largest weight, "split" splits by the normalised weights. Without them
// the newest eligible version takes all. Each change of the chosen version is an event.
class TimeBasedPolicy final : public Policy {
 public:
  enum class Mode { kSwitch, kSplit };
  TimeBasedPolicy(std::vector<TimeBasedEntry> entries, Mode mode = Mode::kSwitch,
                  std::optional<std::string> alias = std::nullopt,
                  std::function<double()> clock = nullptr);
  std::string name() const override { return "time_based"; }
  Route Select(const RequestContext& request, const LiveVersions& live) const override;
  void Validate(const LiveVersions& live) const override;
  std::shared_ptr<const Policy> Renamed(const std::string& from,
                                        const std::string& to) const override;
  std::string Describe() const override;
  std::vector<std::string> Needs(const LiveVersions& live) const override;
  bool ticks() const override { return true; }
  std::vector<PolicyEvent> Tick(const LiveVersions& live, const LoadFn& load,
                                double now) const override;
  std::optional<std::string> alias() const override { return alias_; }
  std::string Report() const override;
  // The versions eligible at `now` and their normalised weights.
  std::vector<Target> Eligible(double now) const;

 private:
  std::vector<TimeBasedEntry> entries_;
  Mode mode_;
  std::optional<std::string> alias_;
  std::function<double()> clock_;
  mutable std::mutex mu_;
  mutable std::string last_chosen_;
};

double WallSeconds();

// Seeds the random draws of every policy (weighted splits, two-choice balancing, bandits without a
// seed of their own), for reproducible runs; 0 goes back to seeding from the system.
void SeedRandom(uint64_t seed);

}  // namespace lepton
