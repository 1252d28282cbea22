// Many versions under a memory budget: loading on demand (once, however many wait), evicting
// the least recently used idle version, pins, what policies need, prefetch, and the failures.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "engine_models.h"
#include "engine_registry.h"
#include "lepton/common/errors.h"
#include "lepton/policy/policies.h"
#include "lepton/runtime/deployment.h"
#include "lepton/runtime/deployment_json.h"
#include "test_util.h"

namespace lepton {
namespace {

using testing::TempDir;

// x + n, with `floats` weights (all n) so that a loaded version holds 4 * floats bytes.
std::string Heavy(double n, int64_t floats) {
  torch::jit::Module m("M");
  m.register_parameter("w", torch::full({floats}, n), false);
  m.define("def forward(self, x):\n  return x + self.w[0]\n");
  std::ostringstream out;
  m.save(out);
  return out.str();
}

constexpr int64_t kFloats = 10000;  // 40 kB of weights a version

class ManyVersionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    reg_ = testing::EngineRegistry(dir_ / "reg");
    for (int n = 1; n <= 12; ++n) Register(n);
    size_ = reg_->Get("m:v1").size;
  }
  void Register(int n) {
    testing::RegisterLabelled(*reg_, "m", "v" + std::to_string(n), Heavy(n, kFloats));
  }
  // Room for `versions` loaded versions (by their artifacts' size, which is above what they hold).
  DeploymentOptions Budgeted(int versions) const {
    DeploymentOptions o;
    o.threads = 2;
    o.adaptive = false;
    o.drain_timeout_s = 5;
    o.all_versions = true;
    o.memory_budget = std::make_shared<MemoryBudget>(versions * size_ + size_ / 2);
    return o;
  }
  static int Ask(Deployment& d, const std::string& version, std::optional<double> timeout = {}) {
    PredictOptions p;
    p.context.version = version;
    p.timeout_s = timeout;
    return static_cast<int>(d.Predict({torch::zeros({1})}, p).outputs[0].item<float>());
  }
  static SlotStats Slot(Deployment& d, const std::string& version) {
    const DeploymentStatus s = d.Status();
    for (size_t i = 0; i < s.versions.size(); ++i) {
      if (s.versions[i].version == version) return s.slots[i];
    }
    ADD_FAILURE() << version << " is not in the status";
    return {};
  }

  TempDir dir_;
  std::shared_ptr<Registry> reg_;
  int64_t size_ = 0;
};

TEST_F(ManyVersionsTest, EveryVersionIsServedAndOnlyThePrimaryLoadsAtStart) {
  Deployment d(reg_, "m", {}, Budgeted(3));
  const DeploymentStatus s = d.Status();
  EXPECT_EQ(s.primary, "v12");  // the newest
  ASSERT_EQ(s.versions.size(), 12u);
  ASSERT_TRUE(s.memory);
  for (size_t i = 0; i < s.slots.size(); ++i) {
    EXPECT_EQ(s.slots[i].residency,
              s.versions[i].version == "v12" ? Residency::kLoaded : Residency::kRegistered)
        << s.versions[i].version;
  }
  EXPECT_EQ(s.slots.back().memory_bytes, kFloats * 4);
  EXPECT_EQ(Ask(d, "v5"), 5);
  EXPECT_EQ(Slot(d, "v5").misses, 1);
  EXPECT_EQ(Ask(d, "v5"), 5);
  EXPECT_EQ(Slot(d, "v5").hits, 1);
  EXPECT_EQ(Slot(d, "v5").loads, 1);
  EXPECT_EQ(static_cast<int>(d.Predict({torch::zeros({1})}).outputs[0].item<float>()), 12);
  const std::string prom = RenderPrometheus({d.Metrics()});
  EXPECT_NE(prom.find("lepton_version_loads_total{model=\"m\",version=\"v5\"} 1"),
            std::string::npos);
  EXPECT_NE(prom.find("lepton_model_load_seconds_count{model=\"m\"} 2"), std::string::npos);
  EXPECT_NE(prom.find("lepton_memory_budget_bytes{model=\"m\"}"), std::string::npos);
}

TEST_F(ManyVersionsTest, TheLeastRecentlyUsedIdleVersionIsEvicted) {
  Deployment d(reg_, "m", {}, Budgeted(4));  // the primary v12 and three more
  for (const char* v : {"v1", "v2", "v3"}) Ask(d, v);
  Ask(d, "v1");  // v2 is now the least recently used
  Ask(d, "v4");
  EXPECT_EQ(Slot(d, "v2").residency, Residency::kEvicted);
  EXPECT_EQ(Slot(d, "v2").evictions, 1);
  for (const char* v : {"v1", "v3", "v4", "v12"}) {
    EXPECT_EQ(Slot(d, v).residency, Residency::kLoaded) << v;
  }
  Ask(d, "v5");  // then v3
  EXPECT_EQ(Slot(d, "v3").residency, Residency::kEvicted);
  EXPECT_EQ(Ask(d, "v2"), 2);  // loads again
  EXPECT_EQ(Slot(d, "v2").loads, 2);
  EXPECT_LE(d.Status().memory->peak, d.Status().memory->limit);
}

TEST_F(ManyVersionsTest, ConcurrentRequestsForColdVersionsLoadEachOnceAndStayUnderBudget) {
  Deployment d(reg_, "m", {}, Budgeted(4));
  // Many requests for one cold version at once: a single load.
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0}, go{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      ++go;
      while (go < 8) std::this_thread::yield();
      if (Ask(d, "v7") != 7) ++wrong;
    });
  }
  for (auto& t : threads) t.join();
  threads.clear();
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(Slot(d, "v7").loads, 1);
  EXPECT_EQ(Slot(d, "v7").hits + Slot(d, "v7").misses, 8);
  // Then every thread over every version, many rounds: every answer right, nothing lost.
  std::atomic<int> answered{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(1000 + t);
      for (int i = 0; i < 150; ++i) {
        const int n = 1 + static_cast<int>(rng() % 12);
        try {
          if (Ask(d, "v" + std::to_string(n)) == n) {
            ++answered;
          } else {
            ++wrong;
          }
        } catch (const std::exception& e) {
          ADD_FAILURE() << e.what();
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(answered, 8 * 150);
  const DeploymentStatus s = d.Status();
  // Never above the budget: reservations use the artifact's size, which is above what a
  // version holds, so there is no slack to state here.
  EXPECT_LE(s.memory->peak, s.memory->limit);
  EXPECT_GT(s.memory->evictions, 0);
  int loaded = 0;
  for (const auto& slot : s.slots) loaded += slot.residency == Residency::kLoaded;
  EXPECT_LE(loaded, 4);
}

TEST_F(ManyVersionsTest, PinsStayAndWhatCannotFitIsRefusedByName) {
  DeploymentOptions o = Budgeted(3);
  o.pinned = {"v2"};
  Deployment d(reg_, "m", {}, o);
  EXPECT_EQ(Slot(d, "v2").residency, Residency::kLoaded);
  EXPECT_TRUE(Slot(d, "v2").pinned);
  for (int round = 0; round < 2; ++round) {
    for (int n = 3; n <= 11; ++n) Ask(d, "v" + std::to_string(n));
  }
  EXPECT_EQ(Slot(d, "v2").evictions, 0);
  EXPECT_EQ(Slot(d, "v12").evictions, 0);  // the primary: the fixed policy routes to it
  d.Pin("v3");
  try {
    d.Pin("v4");
    FAIL() << "three pinned versions and the primary cannot fit in room for three";
  } catch (const InvalidArgument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("pinning m:v4"), std::string::npos) << what;
    EXPECT_NE(what.find("m:v2"), std::string::npos) << what;
  }
  EXPECT_FALSE(Slot(d, "v4").pinned);
  d.Unpin("v3");
  d.Pin("v4");
  EXPECT_EQ(Slot(d, "v4").residency, Residency::kLoaded);
  // A budget below one version is refused at configuration time, naming it.
  DeploymentOptions tiny = Budgeted(1);
  tiny.memory_budget = std::make_shared<MemoryBudget>(size_ / 2);
  try {
    Deployment small(reg_, "m", {}, tiny);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("m:v1"), std::string::npos) << e.what();
  }
}

TEST_F(ManyVersionsTest, ACanaryKeepsBothSidesLoadedWhileOthersComeAndGo) {
  Deployment d(reg_, "m", {}, Budgeted(4));
  CanaryOptions c;
  c.steps = {0.5};
  c.step_requests = 1000000;
  d.SetPolicy(std::make_shared<CanaryPolicy>("v3", "v4", c));
  // Both sides are loaded before the policy takes a request.
  EXPECT_EQ(Slot(d, "v3").residency, Residency::kLoaded);
  EXPECT_EQ(Slot(d, "v4").residency, Residency::kLoaded);
  EXPECT_TRUE(Slot(d, "v4").required);
  for (int round = 0; round < 3; ++round) {
    for (int n : {1, 2, 5, 6, 7}) Ask(d, "v" + std::to_string(n));
    for (int i = 0; i < 10; ++i) {
      const int got = static_cast<int>(d.Predict({torch::zeros({1})}).outputs[0].item<float>());
      EXPECT_TRUE(got == 3 || got == 4) << got;
    }
  }
  EXPECT_EQ(Slot(d, "v3").evictions, 0);
  EXPECT_EQ(Slot(d, "v4").evictions, 0);
  EXPECT_EQ(Slot(d, "v4").misses, 0);
  // The primary is no longer required by the canary: it may go.
  EXPECT_FALSE(Slot(d, "v12").required);
  // A policy whose versions cannot all stay loaded is refused, and the canary stays.
  EXPECT_THROW(d.SetPolicy(std::make_shared<EnsemblePolicy>(
                   std::vector<std::string>{"v1", "v2", "v5", "v6", "v7"}, std::vector<double>{})),
               InvalidArgument);
  EXPECT_EQ(d.policy()->name(), "canary");
  EXPECT_TRUE(Slot(d, "v3").required);
  EXPECT_FALSE(Slot(d, "v1").required);
}

TEST_F(ManyVersionsTest, AFollowedAliasIsPrefetchedBeforeItTakesTraffic) {
  reg_->SetAlias("m", "prod", "v1", std::nullopt, "first");
  DeploymentOptions o = Budgeted(2);
  o.all_versions = false;
  o.alias_poll_s = 0.01;
  auto d = Deployment::FollowAlias(reg_, "m", "prod", o);
  EXPECT_EQ(Slot(*d, "v1").residency, Residency::kLoaded);
  reg_->SetAlias("m", "prod", "v2", std::nullopt, "second");
  while (d->Status().primary != "v2") std::this_thread::sleep_for(std::chrono::milliseconds(2));
  // Loaded before it became the primary: its first request finds it loaded.
  EXPECT_EQ(Slot(*d, "v2").residency, Residency::kLoaded);
  EXPECT_EQ(static_cast<int>(d->Predict({torch::zeros({1})}).outputs[0].item<float>()), 2);
  EXPECT_EQ(Slot(*d, "v2").misses, 0);
  EXPECT_EQ(Slot(*d, "v2").hits, 1);
}

TEST_F(ManyVersionsTest, VersionsRegisteredLaterAreServed) {
  DeploymentOptions o = Budgeted(3);
  o.versions_poll_s = 3600;  // refreshed by hand here
  Deployment d(reg_, "m", {}, o);
  Register(13);
  EXPECT_TRUE(d.RefreshVersions());
  EXPECT_FALSE(d.RefreshVersions());
  EXPECT_EQ(Ask(d, "v13"), 13);
  EXPECT_EQ(d.Status().primary, "v12");  // the primary moves only by policy or alias
}

TEST_F(ManyVersionsTest, AVersionThatCannotLoadFailsItsRequestsAloneWithATypedError) {
  // Corrupt v6's stored artifact: its checksum no longer matches.
  const std::string path = reg_->ArtifactPath("m:v6");
  std::filesystem::permissions(path, std::filesystem::perms::owner_all);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << "not a model";
  DeploymentOptions o = Budgeted(3);
  o.load_retry_s = 3600;
  Deployment d(reg_, "m", {}, o);
  EXPECT_THROW(Ask(d, "v6"), LoadError);
  EXPECT_THROW(Ask(d, "v6"), LoadError);  // at once, not loaded again
  EXPECT_EQ(Slot(d, "v6").load_failures, 1);
  EXPECT_EQ(Slot(d, "v6").residency, Residency::kFailed);
  EXPECT_NE(Slot(d, "v6").last_error.find("hashes to"), std::string::npos);
  EXPECT_EQ(Ask(d, "v5"), 5);
  EXPECT_EQ(Ask(d, "v7"), 7);
}

TEST_F(ManyVersionsTest, ALoadLongerThanTheDeadlineTimesOutThatRequestAndServesTheNext) {
  // Each warm-up run sleeps 300 ms: loading takes 600 ms. The attribute makes s1's code its
  // own (a version whose code was loaded before in the process warms up once).
  for (int n = 1; n <= 2; ++n) {
    RegisterOptions r;
    r.version = "s" + std::to_string(n);
    const std::string bytes = testing::ScriptBytes(
        "def forward(self, x):\n"
        "  slept = lepton_test.sleep_ms(int(x[0, 0].item()))\n"
        "  return x + slept * 0\n",
        /*n=*/1000.5 + n);
    reg_->RegisterBytes("slow", bytes, r);
  }
  DeploymentOptions o = Budgeted(2);
  o.servable.example_inputs = {torch::full({1, 1}, 300.0)};
  Deployment d(reg_, "slow", {}, o);
  PredictOptions p;
  p.context.version = "s1";
  p.timeout_s = 0.05;
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(d.Predict({torch::zeros({1, 1})}, p), Timeout);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(400));
  while (Slot(d, "s1").residency != Residency::kLoaded) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  p.timeout_s = 5;
  EXPECT_NO_THROW(d.Predict({torch::zeros({1, 1})}, p));
  EXPECT_EQ(Slot(d, "s1").loads, 1);
  EXPECT_EQ(Slot(d, "s1").hits, 1);
}

TEST_F(ManyVersionsTest, AReloadRunsOnTheRequestsThreadAndReusesAnEvictedVersionsBuffer) {
  // Room for two: v12 (the primary, which the policy needs) and one other.
  Deployment d(reg_, "m", {}, Budgeted(2));
  EXPECT_EQ(Ask(d, "v1"), 1);  // a first load: on a loader thread
  EXPECT_EQ(Ask(d, "v2"), 2);  // no room: v1 goes, and v2 is read into v1's buffer
  const MemoryBudgetStats before = d.Status().memory.value();
  EXPECT_GE(before.buffers_reused, 1);
  EXPECT_EQ(Slot(d, "v1").residency, Residency::kEvicted);
  EXPECT_EQ(Slot(d, "v1").inline_loads, 0);
  // v1 loaded before, and fast: a request without a deadline loads it on its own thread.
  EXPECT_EQ(Ask(d, "v1"), 1);
  const SlotStats v1 = Slot(d, "v1");
  EXPECT_EQ(v1.loads, 2);
  EXPECT_EQ(v1.inline_loads, 1);
  EXPECT_EQ(v1.misses, 2);
  EXPECT_GT(d.Status().memory->buffers_reused, before.buffers_reused);
  // With a deadline far beyond four times the last load, a reload runs here too.
  EXPECT_EQ(Ask(d, "v2", 30.0), 2);
  EXPECT_EQ(Slot(d, "v2").inline_loads, 1);
  const DeploymentStatus st = d.Status();
  int loaded = 0;
  for (size_t i = 0; i < st.versions.size(); ++i) {
    if (st.slots[i].residency != Residency::kLoaded) continue;
    ++loaded;
    EXPECT_TRUE(st.versions[i].pooled) << st.versions[i].version;
    EXPECT_FALSE(st.versions[i].mapped) << st.versions[i].version;
  }
  EXPECT_EQ(loaded, 2);
}

TEST_F(ManyVersionsTest, AReloadTooSlowForTheDeadlineGoesToALoaderThread) {
  // Each warm-up run sleeps 300 ms, and each version has a code of its own (its attribute), so
  // a reload warms up too. Each holds as many weights as the others of this suite.
  for (int n = 1; n <= 3; ++n) {
    torch::jit::Module m("M");
    m.register_parameter("w", torch::full({kFloats}, static_cast<float>(n)), false);
    m.register_attribute("n", c10::FloatType::get(), 2000.5 + n);
    m.define(
        "def forward(self, x):\n"
        "  slept = lepton_test.sleep_ms(int(x[0, 0].item()))\n"
        "  return x + slept * 0\n",
        std::make_shared<testing::TestOpsResolver>());
    std::ostringstream out;
    m.save(out);
    RegisterOptions r;
    r.version = "s" + std::to_string(n);
    reg_->RegisterBytes("slow", out.str(), r);
  }
  DeploymentOptions o = Budgeted(2);  // s3, the primary, and one other
  o.servable.example_inputs = {torch::full({1, 1}, 300.0)};
  Deployment d(reg_, "slow", {}, o);
  PredictOptions p;
  p.timeout_s = 30;
  for (const char* v : {"s1", "s2"}) {
    p.context.version = v;
    EXPECT_NO_THROW(d.Predict({torch::zeros({1, 1})}, p));
  }
  ASSERT_EQ(Slot(d, "s1").residency, Residency::kEvicted);
  // s1's last load took over 300 ms: a request with 50 ms left does not run it itself; it times
  // out at its deadline while a loader thread goes on.
  p.context.version = "s1";
  p.timeout_s = 0.05;
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(d.Predict({torch::zeros({1, 1})}, p), Timeout);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(250));
  while (Slot(d, "s1").residency != Residency::kLoaded) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(Slot(d, "s1").loads, 2);
  EXPECT_EQ(Slot(d, "s1").inline_loads, 0);
}

TEST_F(ManyVersionsTest, RequestsStayRightWhilePoliciesAndPinsChangeUnderThem) {
  // Room for 5; requests to every version from 6 threads while another thread keeps setting
  // canaries and pinning and unpinning. Every answer is the version asked for; no request fails.
  DeploymentOptions o = Budgeted(5);
  o.policy_tick_s = 0.001;
  Deployment d(reg_, "m", {}, o);
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0}, failed{0}, answered{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 6; ++t) {
    clients.emplace_back([&, t] {
      std::mt19937 rng(7000 + t);
      while (!stop) {
        const int n = 1 + static_cast<int>(rng() % 12);
        try {
          (Ask(d, "v" + std::to_string(n), 10.0) == n ? answered : wrong)++;
        } catch (const std::exception& e) {
          ++failed;
          ADD_FAILURE() << e.what();
        }
      }
    });
  }
  std::mt19937 rng(99);
  CanaryOptions c;
  c.steps = {0.5};
  c.step_requests = 1000000;
  for (int round = 0; round < 40; ++round) {
    const int a = 1 + static_cast<int>(rng() % 12), b = 1 + (a % 12);
    switch (rng() % 4) {
      case 0:
        d.SetPolicy(
            std::make_shared<CanaryPolicy>("v" + std::to_string(a), "v" + std::to_string(b), c));
        break;
      case 1:
        d.SetPolicy(std::make_shared<FixedPolicy>("v" + std::to_string(a)));
        break;
      case 2:
        try {
          d.Pin("v" + std::to_string(a));
        } catch (const InvalidArgument&) {
          // with the policy's versions and earlier pins it would not fit: refused, as it should
        }
        break;
      default:
        for (int n = 1; n <= 12; ++n) d.Unpin("v" + std::to_string(n));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  stop = true;
  for (auto& t : clients) t.join();
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(failed, 0);
  EXPECT_GT(answered, 0);
  const DeploymentStatus s = d.Status();
  EXPECT_LE(s.memory->peak, s.memory->limit);
}

TEST_F(ManyVersionsTest, WithoutABudgetEveryVersionLoadsAtStartAndStays) {
  DeploymentOptions o = Budgeted(1);
  o.memory_budget = nullptr;
  o.all_versions = false;
  Deployment d(reg_, "m", {"v1", "v2", "v3"}, o);
  for (const char* v : {"v1", "v2", "v3"}) {
    EXPECT_EQ(Slot(d, v).residency, Residency::kLoaded) << v;
    EXPECT_EQ(Ask(d, v), std::stoi(std::string(v + 1)));
  }
  EXPECT_FALSE(d.Status().memory);
  EXPECT_TRUE(StatusJson(d.Status())["memory"].is_null());
  // Loaded for good: their tensors point into the blobs' mappings, not into reused buffers.
  for (const ServableStats& v : d.Status().versions) {
    EXPECT_TRUE(v.mapped) << v.version;
    EXPECT_FALSE(v.pooled) << v.version;
  }
}

}  // namespace
}  // namespace lepton
