#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <set>
#include <thread>

#include "engine_models.h"
#include "engine_registry.h"
#include "lepton/common/errors.h"
#include "lepton/policy/policies.h"
#include "lepton/runtime/deployment.h"
#include "test_util.h"

namespace lepton {
namespace {

using testing::AddN;
using testing::TempDir;

class DeploymentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    reg_ = testing::EngineRegistry(dir_ / "reg");
    for (int n = 1; n <= 4; ++n)
      testing::RegisterLabelled(*reg_, "m", "v" + std::to_string(n), AddN(n));
  }
  static DeploymentOptions Opts() {
    DeploymentOptions o;
    o.threads = 2;
    o.adaptive = false;
    o.drain_timeout_s = 5;
    return o;
  }
  // AddN(n) answers n for a zero input, which says which version ran.
  static int Answer(const Prediction& p) { return static_cast<int>(p.outputs[0].item<float>()); }

  TempDir dir_;
  std::shared_ptr<Registry> reg_;
};

TEST_F(DeploymentTest, FixedRoutesToThePrimaryAndPinsOverride) {
  Deployment d(reg_, "m", {"v1", "v2"}, Opts());
  Prediction p = d.Predict({torch::zeros({1})});
  EXPECT_EQ(Answer(p), 1);
  EXPECT_EQ(p.versions, std::vector<std::string>{"v1"});
  EXPECT_EQ(p.policy, "fixed");
  EXPECT_EQ(p.request_id.str().size(), 32u);
  EXPECT_EQ(p.request_id.str(), p.request_id.str());
  const Prediction q = d.Predict({torch::zeros({1})});
  const Prediction copy = q;  // copied before its id was read: both have the same one
  EXPECT_EQ(copy.request_id.str(), q.request_id.str());
  EXPECT_NE(q.request_id.str(), p.request_id.str());
  EXPECT_GT(p.latency_s, 0);
  // Run at once on the caller's thread: it never queued, and its answer came after its forward.
  EXPECT_EQ(p.queue_s, 0);
  EXPECT_GT(p.compute_s, 0);
  EXPECT_GE(p.latency_s, p.compute_s);
  PredictOptions pin;
  pin.context.version = "v2";
  EXPECT_EQ(Answer(d.Predict({torch::zeros({1})}, pin)), 2);
  pin.context.version = "v3";
  EXPECT_THROW(d.Predict({torch::zeros({1})}, pin), NotFound);
  d.SetPolicy(std::make_shared<FixedPolicy>("v2"));
  EXPECT_EQ(Answer(d.Predict({torch::zeros({1})})), 2);
  EXPECT_THROW(d.SetPolicy(std::make_shared<FixedPolicy>("v4")), NotFound);
  EXPECT_NE(d.Predict({torch::zeros({1})}).request_id.str(), p.request_id.str());
}

TEST_F(DeploymentTest, VersionsResolveThroughTheRegistry) {
  reg_->SetAlias("m", "production", "v3", std::nullopt, "");
  Deployment d(reg_, "m", {"@production", "m:v1"}, Opts());
  EXPECT_EQ(d.versions(), (std::vector<std::string>{"v3", "v1"}));
  EXPECT_THROW(Deployment(reg_, "m", {"v9"}, Opts()), NotFound);
  EXPECT_THROW(Deployment(reg_, "m", {}, Opts()), InvalidArgument);
  EXPECT_THROW(Deployment(reg_, "m", {"v1", "v1"}, Opts()), InvalidArgument);
}

TEST_F(DeploymentTest, EnsembleAveragesWithWeights) {
  Deployment d(reg_, "m", {"v1", "v2", "v4"}, Opts());
  d.SetPolicy(std::make_shared<EnsemblePolicy>(std::vector<std::string>{"v1", "v2", "v4"},
                                               std::vector<double>{0.5, 0.3, 0.2}));
  Prediction p = d.Predict({torch::zeros({3, 2})});
  EXPECT_TRUE(torch::allclose(p.outputs[0], torch::full({3, 2}, 0.5 * 1 + 0.3 * 2 + 0.2 * 4)));
  EXPECT_EQ(p.versions, (std::vector<std::string>{"v1", "v2", "v4"}));
  EXPECT_EQ(p.policy, "ensemble");
  // Weights that do not sum to one are normalised.
  d.SetPolicy(std::make_shared<EnsemblePolicy>(std::vector<std::string>{"v1", "v2"},
                                               std::vector<double>{1, 3}));
  EXPECT_NEAR(d.Predict({torch::zeros({1})}).outputs[0].item<float>(), 1.75, 1e-6);
  for (auto bad : {std::vector<double>{-1, 1}, std::vector<double>{0, 0},
                   std::vector<double>{NAN, 1}, std::vector<double>{1}}) {
    EXPECT_THROW(EnsemblePolicy({"v1", "v2"}, bad), InvalidArgument);
  }
  EXPECT_THROW(d.SetPolicy(std::make_shared<EnsemblePolicy>(std::vector<std::string>{"v1", "v3"},
                                                            std::vector<double>{})),
               NotFound);
}

TEST_F(DeploymentTest, EnsembleVotesOnClassLabels) {
  std::vector<std::pair<std::string, std::string>> files;
  TempDir files_dir;
  // Member i shifts the scores so that it predicts class i for a zero input row [0, 0, 0].
  for (int i = 0; i < 3; ++i) {
    torch::jit::Module m("L");
    m.register_buffer("shift", torch::one_hot(torch::tensor(i), 3).to(torch::kFloat));
    m.define("def forward(self, x):\n  return (x + self.shift).argmax(1)\n");
    const std::string path = files_dir / ("m" + std::to_string(i) + ".pt");
    m.save(path);
    files.emplace_back("c" + std::to_string(i), path);
  }
  Deployment d("labels", files, Opts());
  d.SetPolicy(std::make_shared<EnsemblePolicy>(std::vector<std::string>{"c0", "c1", "c2"},
                                               std::vector<double>{0.2, 0.5, 0.3}));
  Prediction p = d.Predict({torch::zeros({4, 3})});
  EXPECT_EQ(p.outputs[0].scalar_type(), torch::kLong);
  EXPECT_TRUE(p.outputs[0].equal(torch::full({4}, 1, torch::kLong)));
}

TEST_F(DeploymentTest, BalancedEnsembleRunsWholeWhatRowsCannotSplit) {
  std::vector<std::pair<std::string, std::string>> files;
  TempDir files_dir;
  // Three members on two cores: the third is split by rows unless its outputs are not per row,
  // as these column sums are.
  const char* sources[] = {
      "def forward(self, x):\n  return x.sum(0) * 2.0\n",
      "def forward(self, x):\n  return x.sum(0) + 1.0\n",
      "def forward(self, x):\n  return x.sum(0)\n",
  };
  for (int i = 0; i < 3; ++i) {
    torch::jit::Module m("P");
    m.define(sources[i]);
    const std::string path = files_dir / ("p" + std::to_string(i) + ".pt");
    m.save(path);
    files.emplace_back("p" + std::to_string(i), path);
  }
  Deployment d("pooled", files, Opts());
  for (bool balance : {true, false}) {
    d.SetPolicy(std::make_shared<EnsemblePolicy>(std::vector<std::string>{"p0", "p1", "p2"},
                                                 std::vector<double>{1, 1, 1}, Combine::kAuto,
                                                 OnError::kFail, balance));
    const torch::Tensor x = torch::arange(12, torch::kFloat).reshape({6, 2});
    const torch::Tensor sum = x.sum(0);
    Prediction p = d.Predict({x});
    EXPECT_TRUE(torch::allclose(p.outputs[0], (sum * 2 + (sum + 1) + sum) / 3))
        << "balance=" << balance << ": " << p.outputs[0];
    EXPECT_THROW(d.Predict({torch::tensor(3.0f)}), InvalidArgument);
  }
}

TEST_F(DeploymentTest, AnEnsembleAloneIsMeasuredInBothArrangementsWithTheSameAnswers) {
  // Three members on two cores, one request at a time: spread over the cores (the third split
  // by rows) or in sequence with two intra-op threads each, whichever measures faster.
  Deployment d(reg_, "m", {"v1", "v2", "v4"}, Opts());
  d.SetPolicy(std::make_shared<EnsemblePolicy>(std::vector<std::string>{"v1", "v2", "v4"},
                                               std::vector<double>{0.5, 0.3, 0.2}));
  const torch::Tensor x = torch::arange(16, torch::kFloat).reshape({8, 2});
  const torch::Tensor expected = x + (0.5 * 1 + 0.3 * 2 + 0.2 * 4);
  const auto measured = [&] {
    const auto arrangements = d.Status().arrangements;
    return arrangements.empty() ? ArrangementStats{} : arrangements[0];
  };
  for (int i = 0; i < 500; ++i) {
    Prediction p = d.Predict({x});
    ASSERT_TRUE(torch::allclose(p.outputs[0], expected)) << "request " << i << ": " << p.outputs[0];
    if (measured().spread_measured >= 5 && measured().sequence_measured >= 5) break;
  }
  const ArrangementStats a = measured();
  EXPECT_EQ(a.key, "v1+v2+v4, rows <= 8");
  EXPECT_GE(a.spread_measured, 5);
  EXPECT_GE(a.sequence_measured, 5);
  EXPECT_TRUE(a.kept == "spread" || a.kept == "sequence") << a.kept;
  EXPECT_GT(a.spread_median_s, 0);
  EXPECT_GT(a.sequence_median_s, 0);
  // A batch of another size class is measured on its own.
  d.Predict({torch::zeros({1, 2})});
  const auto arrangements = d.Status().arrangements;
  ASSERT_EQ(arrangements.size(), 2u);
  EXPECT_EQ(arrangements[0].key, "v1+v2+v4, rows <= 1");
  EXPECT_EQ(arrangements[1].key, "v1+v2+v4, rows <= 8");
  EXPECT_EQ(arrangements[1].spread_measured + arrangements[1].sequence_measured,
            a.spread_measured + a.sequence_measured);
  // With a deadline, or unbalanced, members run whole on their own threads: nothing measured.
  PredictOptions timed;
  timed.timeout_s = 10;
  ASSERT_TRUE(torch::allclose(d.Predict({x}, timed).outputs[0], expected));
  d.SetPolicy(std::make_shared<EnsemblePolicy>(std::vector<std::string>{"v1", "v2", "v4"},
                                               std::vector<double>{0.5, 0.3, 0.2}, Combine::kAuto,
                                               OnError::kFail, /*balance=*/false));
  ASSERT_TRUE(torch::allclose(d.Predict({x}).outputs[0], expected));
  const auto after = d.Status().arrangements;
  EXPECT_EQ(after[1].spread_measured + after[1].sequence_measured,
            a.spread_measured + a.sequence_measured);
}

TEST_F(DeploymentTest, EnsembleSkipsOrFailsOnAMemberError) {
  RegisterOptions r;
  r.version = "bad";
  reg_->RegisterBytes("m", testing::FailsOnNegative(), r);
  Deployment d(reg_, "m", {"v1", "v2", "bad"}, Opts());
  d.SetPolicy(std::make_shared<EnsemblePolicy>(std::vector<std::string>{"v1", "v2", "bad"},
                                               std::vector<double>{1, 1, 2}, Combine::kAuto,
                                               OnError::kSkip));
  const torch::Tensor x = -torch::ones({1});
  Prediction p = d.Predict({x});
  EXPECT_EQ(p.skipped, std::vector<std::string>{"bad"});
  EXPECT_EQ(p.versions, (std::vector<std::string>{"v1", "v2"}));
  EXPECT_NEAR(p.outputs[0].item<float>(), 0.5, 1e-6);  // mean of 0 and 1, weights renormalised
  d.SetPolicy(std::make_shared<EnsemblePolicy>(std::vector<std::string>{"v1", "v2", "bad"},
                                               std::vector<double>{1, 1, 2}));
  EXPECT_THROW(d.Predict({x}), ModelError);
  EXPECT_NO_THROW(d.Predict({torch::ones({1})}));
  // The failing member first, where it runs whole on a core of its own, and last, split by
  // rows with one failing half: skipped alike.
  for (auto order :
       {std::vector<std::string>{"bad", "v1", "v2"}, std::vector<std::string>{"v1", "v2", "bad"}}) {
    d.SetPolicy(std::make_shared<EnsemblePolicy>(order, std::vector<double>{1, 1, 1},
                                                 Combine::kAuto, OnError::kSkip));
    Prediction q = d.Predict({torch::tensor({1.0f, -1.0f})});
    EXPECT_EQ(q.skipped, std::vector<std::string>{"bad"});
    EXPECT_EQ(q.versions, (std::vector<std::string>{"v1", "v2"}));
  }
}

TEST_F(DeploymentTest, CustomCombiner) {
  Deployment d(reg_, "m", {"v1", "v3"}, Opts());
  d.SetPolicy(std::make_shared<EnsemblePolicy>(std::vector<std::string>{"v1", "v3"},
                                               std::vector<double>{1, 1}, Combine::kCustom));
  EXPECT_THROW(d.Predict({torch::zeros({1})}), InvalidArgument);
  d.SetCombiner([](const std::vector<Tensors>& outs, const std::vector<double>&) {
    return Tensors{torch::maximum(outs[0][0], outs[1][0])};
  });
  EXPECT_EQ(d.Predict({torch::zeros({1})}).outputs[0].item<float>(), 3.0f);
}

TEST_F(DeploymentTest, AddRemoveAndTheirRefusals) {
  Deployment d(reg_, "m", {"v1"}, Opts());
  d.Add("v2");
  EXPECT_THROW(d.Add("v2"), Conflict);
  EXPECT_THROW(d.Add("v9"), NotFound);
  EXPECT_EQ(d.versions(), (std::vector<std::string>{"v1", "v2"}));
  d.SetPolicy(std::make_shared<FixedPolicy>("v2"));
  EXPECT_THROW(d.Remove("v2"), Conflict);  // the policy routes to it
  d.Remove("v1");
  EXPECT_EQ(Answer(d.Predict({torch::zeros({1})})), 2);
  EXPECT_THROW(d.Remove("v2"), Conflict);  // the last one
  EXPECT_THROW(d.Remove("v7"), NotFound);
}

TEST_F(DeploymentTest, HotSwapUnderLoadDropsNothing) {
  Deployment d(reg_, "m", {"v1"}, Opts());
  std::atomic<bool> stop{false};
  std::atomic<int> errors{0}, answered{0};
  std::mutex seen_mu;
  std::set<int> seen;
  std::vector<std::thread> clients;
  for (int t = 0; t < 8; ++t) {
    clients.emplace_back([&] {
      while (!stop) {
        try {
          const int v = Answer(d.Predict({torch::zeros({1})}));
          ++answered;
          std::lock_guard<std::mutex> lk(seen_mu);
          seen.insert(v);
        } catch (...) {
          ++errors;
        }
      }
    });
  }
  std::string live = "v1";
  for (int i = 0; i < 12; ++i) {
    // Each swap happens under traffic: it waits until the clients have had answers since the
    // last one (a swap can take less time than a client thread takes to start).
    const int before = answered.load();
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (answered.load() < before + 10 && std::chrono::steady_clock::now() < until) {
      std::this_thread::yield();
    }
    const std::string next = "v" + std::to_string(1 + (i + 1) % 4);
    d.Swap(live, next);
    live = next;
  }
  stop = true;
  for (auto& c : clients) c.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_GT(answered.load(), 100);
  for (int v : seen) EXPECT_TRUE(v >= 1 && v <= 4) << v;
  EXPECT_EQ(d.Status().swaps, 12);
}

TEST_F(DeploymentTest, FollowsAnAliasMovedByAnotherRegistryHandle) {
  reg_->SetAlias("m", "production", "v1", std::nullopt, "");
  DeploymentOptions o = Opts();
  o.alias_poll_s = 0.02;
  auto d = Deployment::FollowAlias(reg_, "m", "production", o);
  EXPECT_EQ(Answer(d->Predict({torch::zeros({1})})), 1);
  Registry other(dir_ / "reg");
  other.SetAlias("m", "production", "v3", std::nullopt, "promote");
  const auto until = Clock::now() + std::chrono::seconds(10);
  while (d->Status().primary != "v3" && Clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(Answer(d->Predict({torch::zeros({1})})), 3);
  EXPECT_EQ(d->Status().alias, "production");
  EXPECT_THROW(d->Remove("v3"), Conflict);
}

TEST_F(DeploymentTest, AdaptiveBudgetsFollowDemand) {
  RegisterOptions r;
  r.version = "spin";
  reg_->RegisterBytes("m", testing::Sleeps(), r);
  DeploymentOptions o = Opts();
  o.threads = 4;
  o.adaptive = true;
  o.rebalance_interval_s = 0.05;
  Deployment d(reg_, "m", {"v1", "spin"}, o);
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&] {
      PredictOptions pin;
      pin.context.version = "spin";
      while (!stop) d.Predict({torch::full({1, 1}, 2.0f)}, pin);
    });
  }
  int spin_threads = 0;
  const auto until = Clock::now() + std::chrono::seconds(10);
  while (spin_threads < 3 && Clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    for (const auto& s : d.Status().versions) {
      if (s.version == "spin") spin_threads = s.threads;
    }
  }
  stop = true;
  for (auto& c : clients) c.join();
  EXPECT_EQ(spin_threads, 3);  // the idle version keeps its minimum of one
}

TEST_F(DeploymentTest, AVersionBorrowsTheCoresItsSharesLeaveIdleUnlessItsBudgetIsItsOwn) {
  RegisterOptions r;
  r.version = "slow";
  reg_->RegisterBytes("m", testing::Sleeps(), r);
  for (const bool own_budget : {false, true}) {
    SCOPED_TRACE(own_budget ? "version_threads" : "shares");
    DeploymentOptions o = Opts();  // two cores, shared by two versions: one thread each
    if (own_budget) o.version_threads = {{"slow", 1}, {"v1", 1}};
    Deployment d(reg_, "m", {"slow", "v1"}, o);
    auto slow = [&] {
      for (const auto& v : d.Status().versions) {
        if (v.version == "slow") return v;
      }
      return ServableStats{};
    };
    ASSERT_EQ(slow().threads, 1);
    // Two clients of the one version: while one request sleeps in the version's one slot, the
    // other finds the second core idle.
    std::atomic<bool> stop{false};
    std::atomic<int> wrong{0};
    std::vector<std::thread> clients;
    for (int t = 0; t < 2; ++t) {
      clients.emplace_back([&] {
        while (!stop) {
          Prediction p = d.Predict({torch::full({1, 1}, 20.0f)});
          wrong += p.outputs[0].item<float>() != 20.0f || p.versions[0] != "slow";
        }
      });
    }
    const auto until = Clock::now() + std::chrono::seconds(own_budget ? 1 : 20);
    while (slow().borrowed == 0 && Clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    stop = true;
    for (auto& c : clients) c.join();
    EXPECT_EQ(wrong.load(), 0);
    if (own_budget) {
      EXPECT_EQ(slow().borrowed, 0);
    } else {
      EXPECT_GT(slow().borrowed, 0);
    }
    EXPECT_EQ(slow().threads, 1);
  }
}

TEST_F(DeploymentTest, CloseMakesItUnavailable) {
  Deployment d(reg_, "m", {"v1"}, Opts());
  d.Close();
  EXPECT_THROW(d.Predict({torch::zeros({1})}), Unavailable);
  EXPECT_NO_THROW(d.Close());
}

TEST_F(DeploymentTest, TimeoutAndOverloadAreTyped) {
  RegisterOptions r;
  r.version = "spin";
  reg_->RegisterBytes("m", testing::Sleeps(), r);
  Deployment d(reg_, "m", {"spin", "v1"}, Opts());
  PredictOptions o;
  o.timeout_s = 0.1;
  EXPECT_THROW(d.Predict({torch::full({1, 1}, 1000.0f)}, o), Timeout);
  PredictOptions pin;
  pin.context.version = "v1";
  EXPECT_EQ(Answer(d.Predict({torch::zeros({1, 1})}, pin)), 1);
  o.timeout_s = -1;
  EXPECT_THROW(d.Predict({torch::zeros({1, 1})}, o), InvalidArgument);
}

TEST_F(DeploymentTest, CanaryBreachRollsBackTheAliasWithAnAuditEntry) {
  RegisterOptions r;
  r.version = "bad";
  reg_->RegisterBytes("m", testing::FailsOnNegative(), r);
  reg_->SetAlias("m", "prod", "bad", std::nullopt, "release");
  Deployment d(reg_, "m", {"v1", "bad"}, Opts());
  CanaryOptions o;
  o.steps = {0.5, 1.0};
  o.step_requests = 100000;
  o.guardrails.min_requests = 10;
  o.alias = "prod";
  auto canary = std::make_shared<CanaryPolicy>("v1", "bad", o);
  d.SetPolicy(canary);
  int failures = 0;
  for (int i = 0; i < 200; ++i) {
    try {
      d.Predict({-torch::ones({1})});
    } catch (const ModelError&) {
      ++failures;
    }
  }
  EXPECT_EQ(canary->phase(), CanaryPolicy::Phase::kRolledBack);
  EXPECT_LT(failures, 100);
  d.TickPolicy();
  for (int i = 0; i < 500 && d.Events().empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(reg_->Get("m@prod").version, "v1");
  const auto history = reg_->History("m");
  ASSERT_EQ(history.back().action, "canary_rollback");
  EXPECT_NE(history.back().details.find("error_rate"), std::string::npos);
  ASSERT_EQ(d.Events().size(), 1u);
  EXPECT_EQ(Answer(d.Predict({torch::zeros({1})})), 1);
}

TEST_F(DeploymentTest, FeedbackReachesTheBanditOnceAndStateSurvivesARestart) {
  BanditOptions o;
  o.seed = 4;
  {
    Deployment d(reg_, "m", {"v1", "v2"}, Opts());
    d.SetPolicy(std::make_shared<BanditPolicy>(std::vector<std::string>{"v1", "v2"}, o));
    for (int i = 0; i < 100; ++i) {
      const Prediction p = d.Predict({torch::zeros({1})});
      d.Feedback(p.request_id, p.versions[0] == "v2" ? 1.0 : 0.0);
      if (i == 0) EXPECT_THROW(d.Feedback(p.request_id, 1.0), NotFound);
    }
    EXPECT_THROW(d.Feedback("nope", 1.0), NotFound);
  }
  Deployment again(reg_, "m", {"v1", "v2"}, Opts());
  auto bandit = std::make_shared<BanditPolicy>(std::vector<std::string>{"v1", "v2"}, o);
  again.SetPolicy(bandit);
  const auto arms = bandit->arms();
  EXPECT_EQ(arms[0].n + arms[1].n, 100);
}

TEST_F(DeploymentTest, ShadowComparesWithoutChangingTheAnswer) {
  Deployment d(reg_, "m", {"v1", "v2"}, Opts());
  d.SetPolicy(std::make_shared<ShadowPolicy>("v1", std::vector<std::string>{"v2"}));
  for (int i = 0; i < 20; ++i) EXPECT_EQ(Answer(d.Predict({torch::zeros({1})})), 1);
  for (int i = 0; i < 500; ++i) {
    const auto s = d.Shadows();
    if (!s.empty() && s[0].compared + s[0].dropped + s[0].failed == 20) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const auto s = d.Shadows();
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].compared + s[0].dropped, 20);
  EXPECT_GT(s[0].compared, 0);
  EXPECT_DOUBLE_EQ(s[0].max_abs_diff, 1.0);
}

}  // namespace
}  // namespace lepton

namespace lepton {
namespace {

TEST(DeploymentOptionsJson, AnEmptySpecIsTheDefaultsAndEveryFieldIsRead) {
  const DeploymentOptions d = DeploymentOptionsFromJson("{}");
  const DeploymentOptions defaults;
  EXPECT_EQ(d.threads, defaults.threads);
  EXPECT_EQ(d.servable.max_batch_size, defaults.servable.max_batch_size);
  EXPECT_EQ(d.drain_timeout_s, defaults.drain_timeout_s);
  EXPECT_EQ(d.feedback_window, defaults.feedback_window);
  const DeploymentOptions o = DeploymentOptionsFromJson(
      R"({"threads": 3, "intra_op_threads": 2, "max_batch_size": 8, "max_queue_delay_ms": 2.5,
          "max_queue": 10, "warmup_runs": 0, "idle_thread_timeout": 0.5, "version_threads": {"a": 2}, "priorities": {"b": -1},
          "adaptive": false, "min_threads": 2, "rebalance_interval": 1, "drain_timeout": 0,
          "alias_poll_interval": 0.5, "policy_tick": 0.1, "state_save_interval": 3,
          "feedback_window": 7, "shadow_queue": 0, "anomaly_interval": 4})");
  EXPECT_EQ(o.threads, 3);
  EXPECT_EQ(o.servable.intra_op_threads, 2);
  EXPECT_EQ(o.servable.max_batch_size, 8);
  EXPECT_DOUBLE_EQ(o.servable.max_queue_delay_s, 0.0025);
  EXPECT_EQ(o.servable.max_queue, 10);
  EXPECT_EQ(o.servable.warmup_runs, 0);
  EXPECT_EQ(o.servable.idle_thread_s, 0.5);
  EXPECT_EQ(o.version_threads, (std::map<std::string, int>{{"a", 2}}));
  EXPECT_EQ(o.version_priority, (std::map<std::string, int>{{"b", -1}}));
  EXPECT_FALSE(o.adaptive);
  EXPECT_EQ(o.min_threads, 2);
  EXPECT_EQ(o.rebalance_interval_s, 1);
  EXPECT_EQ(o.drain_timeout_s, 0);
  EXPECT_EQ(o.alias_poll_s, 0.5);
  EXPECT_EQ(o.policy_tick_s, 0.1);
  EXPECT_EQ(o.state_save_s, 3);
  EXPECT_EQ(o.feedback_window, 7u);
  EXPECT_EQ(o.shadow_queue, 0u);
  EXPECT_EQ(o.anomaly_interval_s, 4);
}

TEST(DeploymentOptionsJson, BadFieldsAreRefusedByName) {
  for (const char* bad :
       {R"({"threads": -1})", R"({"max_batch_size": 0})", R"({"max_batch_size": 1.5})",
        R"({"drain_timeout": -1})", R"({"alias_poll_interval": 0})",
        R"({"version_threads": {"a": 0}})", R"({"priorities": [1]})", R"({"adaptive": 1})",
        R"({"batch": 2})", R"([])", R"(not json)"}) {
    EXPECT_THROW(DeploymentOptionsFromJson(bad), InvalidArgument) << bad;
  }
}

}  // namespace
}  // namespace lepton
