#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "lepton/common/errors.h"
#include "lepton/policy/policies.h"
#include "lepton/policy/policy_config.h"
#include "lepton/policy/stats.h"

namespace lepton {
namespace {

LiveVersions Live(std::vector<std::string> v) {
  LiveVersions live;
  live.versions = std::move(v);
  live.primary = live.versions.front();
  return live;
}

std::vector<std::string> Names(int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back("v" + std::to_string(i + 1));
  return out;
}

TEST(Weighted, SplitProportionsWithinThreeSigma) {
  const std::vector<double> w{0.5, 0.3, 0.15, 0.05};
  WeightedPolicy p(Names(4), w);
  const auto live = Live(Names(4));
  std::map<std::string, int> count;
  const int n = 100000;
  for (int i = 0; i < n; ++i) ++count[p.Select({}, live).targets[0].version];
  for (size_t i = 0; i < w.size(); ++i) {
    const double sigma = std::sqrt(n * w[i] * (1 - w[i]));
    EXPECT_NEAR(count["v" + std::to_string(i + 1)], n * w[i], 3 * sigma) << i;
  }
}

TEST(Weighted, ZeroWeightNeverChosenAndBadWeightsRefused) {
  WeightedPolicy p({"a", "b"}, {1, 0});
  const auto live = Live({"a", "b"});
  for (int i = 0; i < 2000; ++i) {
    EXPECT_EQ(p.Select({}, live).targets[0].version, "a");
    RequestContext r;
    r.key = "user" + std::to_string(i);
    EXPECT_EQ(p.Select(r, live).targets[0].version, "a");
  }
  EXPECT_THROW(WeightedPolicy({"a", "b"}, {1, -1}), InvalidArgument);
  EXPECT_THROW(WeightedPolicy({"a", "b"}, {0, 0}), InvalidArgument);
  EXPECT_THROW(WeightedPolicy({"a", "b"}, {1}), InvalidArgument);
  EXPECT_THROW(WeightedPolicy({"a", "a"}, {1, 1}), InvalidArgument);
  EXPECT_THROW(WeightedPolicy({"a", "c"}, {1, 1}).Validate(live), NotFound);
}

TEST(Sticky, SameKeySameVersionAcrossCallsAndRestarts) {
  const auto live = Live(Names(8));
  std::vector<double> w(8, 1.0);
  auto first = std::make_unique<WeightedPolicy>(Names(8), w, true);
  std::map<std::string, std::string> seen;
  std::map<std::string, int> count;
  const int keys = 40000;
  for (int i = 0; i < keys; ++i) {
    RequestContext r;
    r.key = "user-" + std::to_string(i);
    const std::string v = first->Select(r, live).targets[0].version;
    EXPECT_EQ(first->Select(r, live).targets[0].version, v);
    seen[*r.key] = v;
    ++count[v];
  }
  for (const auto& [v, c] : count) {
    const double sigma = std::sqrt(keys * 0.125 * 0.875);
    EXPECT_NEAR(c, keys * 0.125, 3 * sigma) << v;
  }
  // A new policy object (a restarted process) maps every key to the same version.
  first.reset();
  WeightedPolicy again(Names(8), w, true);
  for (const auto& [key, v] : seen) {
    RequestContext r;
    r.key = key;
    ASSERT_EQ(again.Select(r, live).targets[0].version, v);
  }
}

TEST(Sticky, RaisingTheCanaryMovesKeysOnlyToTheCanary) {
  const auto live = Live({"stable", "other", "canary"});
  WeightedPolicy before({"stable", "other", "canary"}, {0.60, 0.35, 0.05}, true);
  WeightedPolicy after({"stable", "other", "canary"}, {0.60 * 0.9 / 0.95, 0.35 * 0.9 / 0.95, 0.10},
                       true);
  int moved = 0, to_canary = 0, canary_before = 0, canary_after = 0;
  const int keys = 50000;
  for (int i = 0; i < keys; ++i) {
    RequestContext r;
    r.key = std::to_string(i * 7919);
    const std::string a = before.Select(r, live).targets[0].version;
    const std::string b = after.Select(r, live).targets[0].version;
    canary_before += a == "canary";
    canary_after += b == "canary";
    if (a != b) {
      ++moved;
      to_canary += b == "canary";
      ASSERT_NE(a, "canary") << "a key left the canary";
    }
  }
  EXPECT_EQ(moved, to_canary) << "keys moved between the other arms";
  EXPECT_NEAR(canary_before, keys * 0.05, 3 * std::sqrt(keys * 0.05 * 0.95));
  EXPECT_NEAR(canary_after, keys * 0.10, 3 * std::sqrt(keys * 0.10 * 0.90));
}

// Drives a canary with simulated requests: the candidate fails with `candidate_errors`.
struct CanaryRun {
  std::vector<double> shares;  // the candidate's observed share per step
  std::vector<PolicyEvent> events;
};

CanaryRun DriveCanary(CanaryPolicy& p, double candidate_errors, int requests, uint64_t seed) {
  const auto live = Live({"v1", "v2"});
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution fails(candidate_errors);
  std::lognormal_distribution<double> latency(std::log(0.002), 0.2);
  CanaryRun run;
  std::map<size_t, std::pair<int, int>> per_step;
  double now = 1000;
  for (int i = 0; i < requests; ++i) {
    const size_t step = p.step();
    const Route r = p.Select({}, live);
    const std::string& v = r.targets[0].version;
    const bool error = v == "v2" && fails(rng);
    if (p.phase() == CanaryPolicy::Phase::kRamping) {
      auto& [cand, total] = per_step[step];
      cand += v == "v2";
      ++total;
    }
    p.Observe({v, latency(rng), error});
    if (i % 10 == 0) {
      now += 0.01;
      for (auto& e : p.Tick(live, nullptr, now)) run.events.push_back(e);
    }
  }
  for (auto& e : p.Tick(live, nullptr, now + 1)) run.events.push_back(e);
  for (const auto& [step, c] : per_step) run.shares.push_back(double(c.first) / c.second);
  return run;
}

TEST(Canary, RampsMonotonicallyAndPromotes) {
  CanaryOptions o;
  o.steps = {0.05, 0.25, 0.5, 1.0};
  o.step_requests = 2000;
  o.guardrails.min_requests = 50;
  CanaryPolicy p("v1", "v2", o);
  const CanaryRun run = DriveCanary(p, 0.0, 12000, 1);
  ASSERT_EQ(run.shares.size(), 4u);
  for (size_t i = 1; i < run.shares.size(); ++i) EXPECT_GT(run.shares[i], run.shares[i - 1]);
  EXPECT_NEAR(run.shares[0], 0.05, 0.02);
  EXPECT_EQ(run.shares[3], 1.0);
  EXPECT_EQ(p.phase(), CanaryPolicy::Phase::kPromoted);
  ASSERT_EQ(run.events.size(), 1u);
  EXPECT_EQ(run.events[0].kind, PolicyEvent::Kind::kPromote);
  EXPECT_EQ(run.events[0].to, "v2");
  const auto evidence = nlohmann::json::parse(run.events[0].evidence);
  EXPECT_GE(evidence["v2"]["requests"].get<int>(), 50);
  EXPECT_EQ(p.Select({}, Live({"v1", "v2"})).targets[0].version, "v2");
}

TEST(Canary, ErrorGuardrailBreachRollsBackAtOnce) {
  CanaryOptions o;
  o.steps = {0.2, 0.5, 1.0};
  o.step_requests = 5000;
  o.guardrails.min_requests = 30;
  CanaryPolicy p("v1", "v2", o);
  const CanaryRun run = DriveCanary(p, 0.3, 3000, 2);
  EXPECT_EQ(p.phase(), CanaryPolicy::Phase::kRolledBack);
  ASSERT_EQ(run.events.size(), 1u);
  EXPECT_EQ(run.events[0].kind, PolicyEvent::Kind::kRollback);
  EXPECT_EQ(run.events[0].to, "v1");
  EXPECT_NE(run.events[0].reason.find("error rate"), std::string::npos) << run.events[0].reason;
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(p.Select({}, Live({"v1", "v2"})).targets[0].version, "v1");
  }
}

TEST(Canary, LatencyGuardrailBreachRollsBack) {
  CanaryOptions o;
  o.steps = {0.5, 1.0};
  o.step_requests = 100000;
  o.guardrails.min_requests = 50;
  o.guardrails.max_latency_ratio = 1.5;
  CanaryPolicy p("v1", "v2", o);
  const auto live = Live({"v1", "v2"});
  for (int i = 0; i < 400; ++i) {
    const std::string v = p.Select({}, live).targets[0].version;
    p.Observe({v, v == "v2" ? 0.010 : 0.002, false});
  }
  const auto events = p.Tick(live, nullptr, 5);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_NE(events[0].reason.find("p99 latency"), std::string::npos) << events[0].reason;
}

// A step that ends by time before the stable version has min_requests must not lead into a 100%
// step, where the stable would never get another request and the canary would ramp forever.
TEST(Canary, NeverEntersAHundredPercentStepBeforeTheGuardrailsCanJudge) {
  CanaryOptions o;
  o.steps = {0.5, 1.0};
  o.step_seconds = 1;
  o.guardrails.min_requests = 50;
  CanaryPolicy p("v1", "v2", o);
  const auto live = Live({"v1", "v2"});
  double now = 100;
  p.Tick(live, nullptr, now);
  // A quiet first step: 20 requests, then its time is up.
  for (int i = 0; i < 20; ++i) {
    const std::string v = p.Select({}, live).targets[0].version;
    p.Observe({v, 0.002, false});
  }
  now += 2;
  EXPECT_TRUE(p.Tick(live, nullptr, now).empty());
  EXPECT_EQ(p.step(), 0u) << "moved to 100% with the stable side unjudgeable";
  EXPECT_NE(p.Report().find("waiting"), std::string::npos) << p.Report();
  // Traffic goes on at 50%; once both sides have enough, the ramp moves on and promotes.
  std::vector<PolicyEvent> events;
  for (int i = 0; i < 2000 && p.phase() == CanaryPolicy::Phase::kRamping; ++i) {
    const std::string v = p.Select({}, live).targets[0].version;
    p.Observe({v, 0.002, false});
    now += 0.01;
    for (auto& e : p.Tick(live, nullptr, now)) events.push_back(e);
  }
  EXPECT_EQ(p.phase(), CanaryPolicy::Phase::kPromoted);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kind, PolicyEvent::Kind::kPromote);
}

// Neither step_requests nor step_seconds: the same default wherever the canary is built.
TEST(Canary, StepsLastTheDefaultNumberOfRequestsWhenNoLengthIsGiven) {
  const auto p = PolicyFromJson(R"({"type": "canary", "stable": "v1", "candidate": "v2"})");
  const auto report = nlohmann::json::parse(p->Report());
  EXPECT_EQ(report["step"], 1);
  CanaryOptions o;
  o.steps = {0.5, 1.0};
  CanaryPolicy c("v1", "v2", o);
  const auto live = Live({"v1", "v2"});
  for (int i = 0; i < CanaryOptions::kDefaultStepRequests - 1; ++i) {
    c.Observe({c.Select({}, live).targets[0].version, 0.001, false});
  }
  c.Tick(live, nullptr, 1);
  EXPECT_EQ(c.step(), 0u);
  c.Observe({c.Select({}, live).targets[0].version, 0.001, false});
  c.Tick(live, nullptr, 2);
  EXPECT_EQ(c.step(), 1u);
}

TEST(Canary, BadOptionsRefused) {
  CanaryOptions o;
  o.step_requests = 10;
  o.steps = {};
  EXPECT_THROW(CanaryPolicy("a", "b", o), InvalidArgument);
  o.steps = {0.5, 0.2};
  EXPECT_THROW(CanaryPolicy("a", "b", o), InvalidArgument);
  o.steps = {1.5};
  EXPECT_THROW(CanaryPolicy("a", "b", o), InvalidArgument);
  o.steps = {1.0};  // the stable would never get a request to compare with
  EXPECT_THROW(CanaryPolicy("a", "b", o), InvalidArgument);
  o.steps = {0.5};
  o.step_requests = -1;
  EXPECT_THROW(CanaryPolicy("a", "b", o), InvalidArgument);
  o.step_requests = 10;
  EXPECT_THROW(CanaryPolicy("a", "a", o), InvalidArgument);
  o.guardrails.min_requests = 0;
  EXPECT_THROW(CanaryPolicy("a", "b", o), InvalidArgument);
}

double Regret(BanditAlgorithm algorithm, const std::vector<double>& p, int rounds, uint64_t seed) {
  BanditOptions o;
  o.algorithm = algorithm;
  o.seed = seed;
  BanditPolicy bandit(Names(static_cast<int>(p.size())), o);
  const auto live = Live(Names(static_cast<int>(p.size())));
  std::mt19937_64 rng(seed + 1);
  const double best = *std::max_element(p.begin(), p.end());
  double regret = 0;
  for (int t = 0; t < rounds; ++t) {
    const std::string v = bandit.Select({}, live).targets[0].version;
    const size_t arm = static_cast<size_t>(std::stoi(v.substr(1)) - 1);
    regret += best - p[arm];
    bandit.Feedback(v, std::bernoulli_distribution(p[arm])(rng) ? 1.0 : 0.0);
  }
  return regret;
}

TEST(Bandit, RegretBelowUniformRouting) {
  const std::vector<double> p{0.3, 0.5, 0.7};
  const int rounds = 3000;
  const double uniform = rounds * (0.7 - (0.3 + 0.5 + 0.7) / 3);  // 600
  for (auto a :
       {BanditAlgorithm::kThompson, BanditAlgorithm::kUcb1, BanditAlgorithm::kEpsilonGreedy}) {
    double total = 0;
    for (uint64_t seed = 1; seed <= 5; ++seed) total += Regret(a, p, rounds, seed);
    const double mean = total / 5;
    RecordProperty("regret_" + std::to_string(static_cast<int>(a)), std::to_string(mean));
    EXPECT_LT(mean, 0.5 * uniform) << "algorithm " << static_cast<int>(a);
  }
}

TEST(Bandit, StateSurvivesARestart) {
  BanditOptions o;
  o.seed = 3;
  BanditPolicy a({"x", "y"}, o);
  const auto live = Live({"x", "y"});
  for (int i = 0; i < 50; ++i) {
    a.Feedback("x", 0);
    a.Feedback("y", 1);
  }
  BanditPolicy b({"x", "y"}, o);
  EXPECT_EQ(a.state_key(), b.state_key());
  b.LoadState(a.SaveState());
  EXPECT_EQ(b.arms()[1].n, 50);
  EXPECT_DOUBLE_EQ(b.arms()[1].sum, 50);
  int y = 0;
  for (int i = 0; i < 200; ++i) y += b.Select({}, live).targets[0].version == "y";
  EXPECT_GT(y, 190);
  EXPECT_THROW(b.LoadState("{not json"), InvalidArgument);
  EXPECT_THROW(b.Feedback("x", 2.0), InvalidArgument);
  EXPECT_THROW(b.Feedback("x", std::nan("")), InvalidArgument);
  EXPECT_THROW(b.Feedback("z", 1.0), NotFound);
}

TEST(LeastLoaded, PrefersTheVersionWithFewerOutstanding) {
  LeastLoadedPolicy p({"a", "b"});
  const auto live = Live({"a", "b"});
  // Five requests in flight: they alternate, never more than one apart.
  std::vector<std::string> chosen;
  for (int i = 0; i < 5; ++i) chosen.push_back(p.Select({}, live).targets[0].version);
  EXPECT_LE(std::abs(p.outstanding("a") - p.outstanding("b")), 1);
  for (const auto& v : chosen) p.Observe({v, 0.001, false});
  EXPECT_EQ(p.outstanding("a") + p.outstanding("b"), 0);
  // A version stuck with work gets nothing new: two requests go one to each version, then
  // "b" keeps completing its work while "a" never does.
  LeastLoadedPolicy q({"a", "b"});
  const std::string first = q.Select({}, live).targets[0].version;
  const std::string second = q.Select({}, live).targets[0].version;
  ASSERT_NE(first, second);
  q.Observe({"b", 0.001, false});
  for (int i = 0; i < 50; ++i) {
    ASSERT_EQ(q.Select({}, live).targets[0].version, "b");
    q.Observe({"b", 0.001, false});
  }
  EXPECT_EQ(q.outstanding("a"), 1);
  EXPECT_EQ(q.outstanding("b"), 0);
}

TEST(Balanced, WeightsFollowServiceRateOrCores) {
  BalancedPolicy by_requests(BalancedPolicy::By::kRequests, {}, 0.5);
  BalancedPolicy by_cores(BalancedPolicy::By::kResources, {}, 0.5);
  const auto live = Live({"fast", "slow"});
  LoadFn load = [](const std::string& v) {
    VersionLoad l;
    l.threads = v == "fast" ? 1 : 3;
    l.completed = 1000;
    l.busy_s = v == "fast" ? 1.0 : 4.0;  // fast: 1000 req/s per core; slow: 250 req/s per core
    return l;
  };
  by_requests.Tick(live, load, 10);
  by_cores.Tick(live, load, 10);
  const auto rq = nlohmann::json::parse(by_requests.Report())["weights"];
  const auto rc = nlohmann::json::parse(by_cores.Report())["weights"];
  // Q = 1000 * 1 = 1000 and 250 * 3 = 750 requests per second.
  EXPECT_NEAR(rq["fast"].get<double>(), 1000.0 / 1750, 1e-12);
  EXPECT_NEAR(rc["fast"].get<double>(), 0.25, 1e-12);
}

TEST(ABTest, PromotesABetterTreatmentAndKeepsStateAcrossARestart) {
  ABTestOptions o;
  o.split = 0.5;
  o.min_samples = 100;
  ABTestPolicy p("v1", "v2", o);
  const auto live = Live({"v1", "v2"});
  std::mt19937_64 rng(5);
  std::vector<PolicyEvent> events;
  int n = 0;
  for (; n < 20000 && events.empty(); ++n) {
    const std::string v = p.Select({}, live).targets[0].version;
    p.Feedback(v, std::bernoulli_distribution(v == "v2" ? 0.6 : 0.5)(rng) ? 1 : 0);
    if (n % 20 == 0) events = p.Tick(live, nullptr, n);
  }
  ASSERT_EQ(events.size(), 1u) << "no decision after " << n << " rewards";
  EXPECT_EQ(events[0].kind, PolicyEvent::Kind::kPromote);
  EXPECT_EQ(events[0].to, "v2");
  const auto evidence = nlohmann::json::parse(events[0].evidence);
  EXPECT_LE(evidence["p_value"].get<double>(), 0.05);
  EXPECT_GT(evidence["ci_low"].get<double>(), 0);
  EXPECT_EQ(p.Select({}, live).targets[0].version, "v2");
  ABTestPolicy restarted("v1", "v2", o);
  restarted.LoadState(p.SaveState());
  EXPECT_EQ(restarted.winner(), std::optional<std::string>("v2"));
  EXPECT_TRUE(restarted.Tick(live, nullptr, 0).empty()) << "a decision is announced once";
  EXPECT_THROW(p.Feedback("v1", std::nan("")), InvalidArgument);
  EXPECT_THROW(p.Feedback("v3", 1), NotFound);
}

TEST(TimeBased, SwitchesOnTheScheduleWithWeightsFromValidityAndCycle) {
  double now = 0;
  auto clock = [&now] { return now; };
  TimeBasedPolicy plain(
      {{"v1", 0, std::nullopt, std::nullopt}, {"v2", 100, std::nullopt, std::nullopt}},
      TimeBasedPolicy::Mode::kSwitch, std::nullopt, clock);
  const auto live = Live({"v1", "v2", "v3"});
  now = 50;
  EXPECT_EQ(plain.Select({}, live).targets[0].version, "v1");
  auto first = plain.Tick(live, nullptr, now);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].to, "v1");
  now = 150;
  EXPECT_EQ(plain.Select({}, live).targets[0].version, "v2");
  auto events = plain.Tick(live, nullptr, now);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].from, "v1");
  EXPECT_EQ(events[0].to, "v2");
  EXPECT_TRUE(plain.Tick(live, nullptr, now).empty());

  // T = 2, 3, 4 and C = 1, 2, 3: w = 1/3, 1/5, 1/7; all eligible from 0.
  TimeBasedPolicy split({{"v1", 0, 2.0, 1.0}, {"v2", 0, 3.0, 2.0}, {"v3", 0, 4.0, 3.0}},
                        TimeBasedPolicy::Mode::kSplit, std::nullopt, clock);
  now = 1;
  const auto eligible = split.Eligible(now);
  ASSERT_EQ(eligible.size(), 3u);
  const double total = 1.0 / 3 + 1.0 / 5 + 1.0 / 7;
  EXPECT_EQ(eligible[0].version, "v1");
  EXPECT_NEAR(eligible[0].weight, (1.0 / 3) / total, 1e-12);
  EXPECT_NEAR(eligible[2].weight, (1.0 / 7) / total, 1e-12);
  // v1 expires at 2: the largest weight among the rest is v2's.
  now = 2.5;
  EXPECT_EQ(split.Eligible(now)[0].version, "v2");
  now = 10;
  EXPECT_EQ(split.Select({}, live).targets[0].version, "v1");  // none valid: the primary
  EXPECT_THROW(TimeBasedPolicy({}), InvalidArgument);
  EXPECT_THROW(TimeBasedPolicy({{"v1", 0, 1.0, 1.0}, {"v2", 0, std::nullopt, std::nullopt}}),
               InvalidArgument);
}

TEST(Canary, LatencyWithinTheSlackIsNoBreach) {
  CanaryOptions o;
  o.steps = {0.5, 1.0};
  o.step_requests = 100000;
  o.guardrails.min_requests = 20;
  o.guardrails.max_latency_ratio = 1.5;
  o.guardrails.latency_slack_s = 0.002;
  CanaryPolicy p("v1", "v2", o);
  const auto live = Live({"v1", "v2"});
  // 10x the baseline's p99, but only 1.8 ms above it: a scheduler hiccup, not a regression.
  for (int i = 0; i < 200; ++i) p.Observe({i % 2 ? "v2" : "v1", i % 2 ? 0.002 : 0.0002, false});
  EXPECT_TRUE(p.Tick(live, {}, 0).empty());
  EXPECT_EQ(p.phase(), CanaryPolicy::Phase::kRamping);
  o.guardrails.latency_slack_s = -1;
  EXPECT_THROW(CanaryPolicy("v1", "v2", o), InvalidArgument);
}

}  // namespace
}  // namespace lepton
