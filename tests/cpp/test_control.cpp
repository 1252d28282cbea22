// The torch-free units of a deployment: where artifacts come from, the feedback ledger, the CPU
// planner, the policy controller, the alias follower's bookkeeping and the anomaly watch.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "lepton/common/errors.h"
#include "lepton/control/alias_follower.h"
#include "lepton/control/artifact_source.h"
#include "lepton/control/cpu_planner.h"
#include "lepton/control/dormancy.h"
#include "lepton/control/feedback_ledger.h"
#include "lepton/control/policy_controller.h"
#include "lepton/observe/anomaly_watch.h"
#include "lepton/observe/events.h"

namespace lepton {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("lepton-control-" + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

RegisterOptions Label(const std::string& label) {
  RegisterOptions o;
  o.version = label;
  return o;
}

// A policy that records what it is given: its rewards, its saved and restored state.
class RecordingPolicy final : public Policy {
 public:
  explicit RecordingPolicy(std::optional<std::string> alias = std::nullopt, std::string key = "")
      : alias_(std::move(alias)), key_(std::move(key)) {}
  std::string name() const override { return "recording"; }
  Route Select(const RequestContext&, const LiveVersions& live) const override {
    Route r;
    r.targets.push_back({live.primary, 1.0});
    return r;
  }
  std::shared_ptr<const Policy> Renamed(const std::string&, const std::string&) const override {
    return std::make_shared<RecordingPolicy>(alias_, key_);
  }
  std::string Describe() const override { return "recording"; }
  bool takes_feedback() const override { return true; }
  void Feedback(const std::string& version, double reward) const override {
    if (reward < 0) throw InvalidArgument("rewards are >= 0 here");
    rewards[version] += reward;
  }
  std::optional<std::string> alias() const override { return alias_; }
  std::string state_key() const override { return key_; }
  std::string SaveState() const override { return state; }
  void LoadState(const std::string& s) const override { state = "restored:" + s; }

  mutable std::map<std::string, double> rewards;
  mutable std::string state;

 private:
  std::optional<std::string> alias_;
  std::string key_;
};

// --- ArtifactSource ---

TEST(Dormancy, ChoresSleepAfterQuietAndTheNextActivityWakesThemOnce) {
  using namespace std::chrono_literals;
  Dormancy d(3s, 60s);
  const auto t0 = Dormancy::Clock::now();
  EXPECT_FALSE(d.Settle(t0, false, true));  // just started: active
  EXPECT_FALSE(d.Settle(t0 + 2s, false, true));
  // Quiet for 3 s, but something must be polled: no sleep.
  EXPECT_FALSE(d.Settle(t0 + 4s, false, false));
  const auto until = d.Settle(t0 + 4s, false, true);
  ASSERT_TRUE(until);
  EXPECT_EQ(*until, t0 + 64s);
  EXPECT_TRUE(d.asleep());
  EXPECT_TRUE(d.Touch());  // the one request that wakes them
  EXPECT_FALSE(d.Touch());
  EXPECT_FALSE(d.asleep());
  // The activity counts: quiet starts again from the next round.
  EXPECT_FALSE(d.Settle(t0 + 5s, false, true));
  EXPECT_FALSE(d.Settle(t0 + 7s, false, true));
  EXPECT_TRUE(d.Settle(t0 + 8s, false, true));
  d.Touch();
  // A change that woke the chores counts as activity too.
  EXPECT_FALSE(d.Settle(t0 + 20s, true, true));
  EXPECT_FALSE(d.Settle(t0 + 22s, false, true));
}

TEST(Dormancy, ARequestRacingTheSleepIsNeverLeftBehind) {
  using namespace std::chrono_literals;
  for (int round = 0; round < 500; ++round) {
    Dormancy d(1h, 60s);
    std::atomic<bool> go{false};
    std::atomic<bool> woke{false};
    std::thread request([&] {
      while (!go.load()) {
      }
      woke = d.Touch();
    });
    go = true;
    const auto slept = d.Settle(Dormancy::Clock::now() + 2h, false, true);
    request.join();
    // Either the chores saw the request and stayed awake, or they slept and the request woke
    // them: never asleep with a request unseen.
    EXPECT_FALSE(d.asleep());
    if (slept) EXPECT_TRUE(woke.load());
  }
}

TEST(ArtifactSource, FilesAreReadByLabelAndRefusedWhenListedTwiceOrMissing) {
  TempDir dir;
  const std::string path = dir.str() + "/a.pt";
  std::ofstream(path, std::ios::binary) << "bytes of a";
  ArtifactSource files("clf", {{"a", path}, {"b", dir.str() + "/missing.pt"}});
  EXPECT_EQ(files.labels(), (std::vector<std::string>{"a", "b"}));
  const ArtifactInfo a = files.Resolve("a");
  EXPECT_EQ(a.label, "a");
  EXPECT_EQ(files.Read(a).bytes, "bytes of a");
  EXPECT_EQ(a.sha256, "");
  EXPECT_EQ(a.size, 10);
  EXPECT_THROW(files.Read(files.Resolve("b")), NotFound);
  EXPECT_THROW(files.Resolve("c"), NotFound);
  EXPECT_THROW(ArtifactSource("clf", {{"a", path}, {"a", path}}), InvalidArgument);
  EXPECT_THROW(ArtifactSource("clf", {{"bad label!", path}}), InvalidArgument);
  EXPECT_THROW(ArtifactSource("bad model!", {{"a", path}}), InvalidArgument);
}

TEST(ArtifactSource, RegistryVersionsAreFetchedByLabelAliasOrReference) {
  TempDir dir;
  auto registry = std::make_shared<Registry>(dir.str());
  const ModelVersion v1 = registry->RegisterBytes("clf", "one", Label("v1"));
  registry->RegisterBytes("clf", "two", Label("v2"));
  registry->SetAlias("clf", "prod", "v1", std::nullopt, "");
  ArtifactSource source(registry, "clf");
  EXPECT_EQ(source.Read(source.Resolve("v2")).bytes, "two");
  const ArtifactInfo a = source.Resolve("@prod");
  EXPECT_EQ(a.label, "v1");
  EXPECT_EQ(source.Read(a).bytes, "one");
  EXPECT_EQ(a.sha256, v1.sha256);
  EXPECT_EQ(a.size, 3);
  EXPECT_EQ(source.Resolve("clf:v2").label, "v2");
  EXPECT_THROW(source.Resolve("v3"), NotFound);
  EXPECT_THROW(ArtifactSource(nullptr, "clf"), InvalidArgument);
}

// --- FeedbackLedger ---

TEST(FeedbackLedger, ARewardReachesThePolicyOnceAndForgetsOldRequests) {
  auto policy = std::make_shared<RecordingPolicy>();
  FeedbackLedger ledger("clf", 2);
  ledger.Remember("r1", policy, {"v1"});
  ledger.Remember("r2", policy, {"v1", "v2"});
  ledger.Reward("r2", 1.5, "");
  EXPECT_EQ(policy->rewards["v1"], 1.5);
  EXPECT_EQ(policy->rewards["v2"], 1.5);
  EXPECT_THROW(ledger.Reward("r2", 1.0, ""), NotFound);  // once
  ledger.Remember("r3", policy, {"v2"});
  ledger.Remember("r4", policy, {"v2"});  // r1 is now older than the window
  EXPECT_THROW(ledger.Reward("r1", 1.0, ""), NotFound);
  ledger.Reward("r4", 0.5, "");
  EXPECT_EQ(policy->rewards["v2"], 2.0);
}

TEST(FeedbackLedger, ARefusedRewardCanBeSentAgain) {
  auto policy = std::make_shared<RecordingPolicy>();
  FeedbackLedger ledger("clf", 10);
  ledger.Remember("r1", policy, {"v1"});
  EXPECT_THROW(ledger.Reward("r1", std::numeric_limits<double>::quiet_NaN(), ""), InvalidArgument);
  EXPECT_THROW(ledger.Reward("r1", -1, ""), InvalidArgument);
  ledger.Reward("r1", 2, "");
  EXPECT_EQ(policy->rewards["v1"], 2);
}

TEST(FeedbackLedger, SendersAreCountedBoundedAndTakenOnce) {
  auto policy = std::make_shared<RecordingPolicy>();
  FeedbackLedger ledger("clf", 1000);
  for (int i = 0; i < 40; ++i) {
    const std::string id = "r" + std::to_string(i);
    ledger.Remember(id, policy, {"v1"});
    ledger.Reward(id, 1, i == 0 ? "" : "client-" + std::to_string(i));
  }
  ledger.Remember("again", policy, {"v1"});
  ledger.Reward("again", 1, "client-1");
  const auto sources = ledger.TakeSources();
  EXPECT_EQ(sources.size(), 33u);  // 32 names, then the rest together
  EXPECT_EQ(sources.at("in-process"), 1);
  EXPECT_EQ(sources.at("client-1"), 2);
  EXPECT_EQ(sources.at("(other sources)"), 8);
  EXPECT_TRUE(ledger.TakeSources().empty());
}

TEST(FeedbackLedger, ARequestRoutedElsewhereIsRewardedOnceThroughTheDeliverer) {
  auto policy = std::make_shared<RecordingPolicy>();
  std::vector<std::string> delivered;
  FeedbackLedger ledger(
      "clf", 2, [&](const Policy& p, const std::string& v, double r, const std::string& id) {
        delivered.push_back(v);
        EXPECT_FALSE(id.empty());
        p.Feedback(v, r);
      });
  ledger.RewardElsewhere("r1", 1, "peer", *policy, "v2");
  EXPECT_EQ(delivered, (std::vector<std::string>{"v2"}));
  EXPECT_EQ(policy->rewards["v2"], 1);
  EXPECT_THROW(ledger.RewardElsewhere("r1", 1, "peer", *policy, "v2"), NotFound);
  // A request rewarded the usual way is not taken again the other way.
  ledger.Remember("r2", policy, {"v1"});
  ledger.Reward("r2", 1, "");
  EXPECT_THROW(ledger.RewardElsewhere("r2", 1, "peer", *policy, "v1"), NotFound);
  EXPECT_THROW(ledger.RewardElsewhere("r3", std::nan(""), "peer", *policy, "v1"), InvalidArgument);
  // The memory of rewarded requests is as long as the window.
  ledger.RewardElsewhere("r4", 1, "peer", *policy, "v1");
  ledger.RewardElsewhere("r1", 1, "peer", *policy, "v1");
  EXPECT_EQ(ledger.TakeSources().at("peer"), 3);
}

// --- CpuPlanner ---

TEST(CpuPlanner, ApportionIsProportionalWithAFloorAndSumsToTheTotal) {
  EXPECT_EQ(Apportion({3, 1}, 8, 1), (std::vector<int>{6, 2}));
  EXPECT_EQ(Apportion({1, 0, 0}, 5, 1), (std::vector<int>{3, 1, 1}));
  EXPECT_EQ(Apportion({0, 0}, 5, 1), (std::vector<int>{3, 2}));  // ties go to the first
  EXPECT_EQ(Apportion({1, 1}, 1, 1), (std::vector<int>{1, 1}));  // the floor holds
  EXPECT_TRUE(Apportion({}, 4, 1).empty());
}

TEST(CpuPlanner, FixedBudgetsStayAndTheRestFollowsDemandSinceTheLastPlan) {
  CpuPlanner planner(8, 1, {{"pinned", 2}}, 0.5);
  EXPECT_EQ(planner.InitialThreads("pinned", 3), 2);
  EXPECT_EQ(planner.InitialThreads("a", 4), 2);
  EXPECT_EQ(planner.InitialThreads("a", 16), 1);
  // a was busy 1.5 s in the last 0.5 s interval (3 cores), b idle: a gets most of the 6 cores.
  auto plan = planner.Plan({{"pinned", 100, 0}, {"a", 1.5, 0}, {"b", 0, 0}});
  EXPECT_EQ(plan, (std::vector<std::pair<std::string, int>>{{"a", 5}, {"b", 1}}));
  // Busy time is counted from the previous plan: now only b works, and waiting work counts.
  plan = planner.Plan({{"pinned", 100, 0}, {"a", 1.5, 0}, {"b", 1.0, 4}});
  EXPECT_EQ(plan, (std::vector<std::pair<std::string, int>>{{"a", 1}, {"b", 5}}));
  EXPECT_TRUE(CpuPlanner(4, 1, {{"x", 4}}, 0.5).Plan({{"x", 1, 0}}).empty());
}

// --- PolicyController ---

TEST(PolicyController, APromotionMovesTheAliasByCompareAndSwapAndIsAudited) {
  TempDir dir;
  auto registry = std::make_shared<Registry>(dir.str());
  registry->RegisterBytes("clf", "one", Label("v1"));
  registry->RegisterBytes("clf", "two", Label("v2"));
  registry->SetAlias("clf", "prod", "v1", std::nullopt, "");
  FeedbackLedger ledger("clf", 10);
  auto policy = std::make_shared<RecordingPolicy>("prod");
  ledger.Remember("r1", policy, {"v2"});
  ledger.Reward("r1", 1, "tester");
  PolicyController controller(registry, "clf", std::nullopt, ledger);
  std::vector<std::string> primaries;
  PolicyEvent e{PolicyEvent::Kind::kPromote,
                "canary_promote",
                "v1",
                "v2",
                "healthy",
                R"({"requests":100})",
                0};
  controller.Apply(*policy, e, [&](const std::string& v) { primaries.push_back(v); });
  EXPECT_EQ(registry->Get("clf@prod").version, "v2");
  EXPECT_EQ(primaries, (std::vector<std::string>{"v2"}));
  const auto history = registry->History("clf");
  ASSERT_FALSE(history.empty());
  const AuditEntry& last =
      history.front().action == "canary_promote" ? history.front() : history.back();
  EXPECT_EQ(last.action, "canary_promote");
  const auto details = nlohmann::json::parse(last.details);
  EXPECT_EQ(details["requests"], 100);
  EXPECT_EQ(details["feedback_sources"]["tester"], 1);
  const auto events = controller.Events();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].alias, "prod");
  EXPECT_EQ(events[0].note, "moved clf@prod to v2");

  // A second promotion from v1 no longer matches where the alias is: it is not moved, and the
  // note says why.
  controller.Apply(*policy, e, [](const std::string&) {});
  EXPECT_EQ(registry->Get("clf@prod").version, "v2");
  EXPECT_NE(controller.Events().back().note.find("alias not moved"), std::string::npos);
}

TEST(PolicyController, ARollbackLeavesAnAliasSomeoneElseMoved) {
  TempDir dir;
  auto registry = std::make_shared<Registry>(dir.str());
  for (const char* v : {"v1", "v2", "v3"}) registry->RegisterBytes("clf", v, Label(v));
  registry->SetAlias("clf", "prod", "v3", std::nullopt, "");
  FeedbackLedger ledger("clf", 10);
  PolicyController controller(registry, "clf", "prod", ledger);
  RecordingPolicy policy;  // no alias of its own: the followed one
  bool moved = false;
  controller.Apply(policy, {PolicyEvent::Kind::kRollback, "canary_rollback", "v2", "v1", "errors"},
                   [&](const std::string&) { moved = true; });
  EXPECT_FALSE(moved);
  EXPECT_EQ(registry->Get("clf@prod").version, "v3");
  EXPECT_EQ(controller.Events().back().note, "clf@prod stays at v3");
}

TEST(PolicyController, StateIsSavedWhenItChangesAndRestoredForTheNextPolicy) {
  TempDir dir;
  auto registry = std::make_shared<Registry>(dir.str());
  FeedbackLedger ledger("clf", 10);
  PolicyController controller(registry, "clf", std::nullopt, ledger);
  RecordingPolicy old_policy(std::nullopt, "bandit");
  old_policy.state = "counts=1";
  controller.Save(old_policy, false);
  EXPECT_EQ(registry->GetState("clf", "bandit"), "counts=1");
  RecordingPolicy incoming(std::nullopt, "bandit");
  old_policy.state = "counts=2";
  controller.Replacing(old_policy, incoming);  // saves the outgoing, restores the incoming
  EXPECT_EQ(registry->GetState("clf", "bandit"), "counts=2");
  EXPECT_EQ(incoming.state, "restored:counts=2");
  RecordingPolicy stateless;
  controller.Save(stateless, true);  // no key: nothing written
  PolicyController without_registry(nullptr, "clf", std::nullopt, ledger);
  without_registry.Save(old_policy, true);
  without_registry.Apply(old_policy, {PolicyEvent::Kind::kSwitch, "switch", "a", "b", "time"},
                         [](const std::string&) {});
  EXPECT_EQ(without_registry.Events().size(), 1u);
}

// --- AliasFollower ---

ModelVersion Target(const std::string& version, const std::string& sha256) {
  ModelVersion v;
  v.model = "clf";
  v.version = version;
  v.sha256 = sha256;
  return v;
}

TEST(AliasFollower, AFailureStopsShowingOnceTheAliasMovesOn) {
  AliasFollower follower("clf", "prod");
  ModelVersion bad = Target("v9", "aa");
  follower.Attempting(bad);
  follower.Failed(bad, "v1", "corrupt archive");
  EXPECT_EQ(follower.failed_target(), "v9");
  follower.Attempting(bad);  // tried again: still the alias's target
  EXPECT_EQ(follower.failed_target(), "v9");
  const ModelVersion good = Target("v2", "bb");
  follower.Attempting(good);  // the alias moved; v2 is loading, not yet published
  EXPECT_EQ(follower.failed_target(), std::nullopt);
  follower.Failed(good, "v1", "out of memory");
  EXPECT_EQ(follower.failed_target(), "v2");
}

TEST(AliasFollower, AnUnloadableTargetIsSaidOnceAndRetriedAfterAGrowingPause) {
  AliasFollower follower("clf", "prod");
  const ModelVersion bad = Target("v2", "aa");
  const int64_t seq = EventLog::Global().last_seq();
  EXPECT_FALSE(follower.BackingOff(bad));
  const std::string account = follower.Failed(bad, "v1", "corrupt archive");
  EXPECT_NE(account.find("still serving v1"), std::string::npos);
  EXPECT_TRUE(follower.BackingOff(bad));
  follower.Failed(bad, "v1", "corrupt archive");
  EXPECT_EQ(follower.failures(), 2);
  EXPECT_EQ(follower.failed_target(), "v2");
  int said = 0;
  for (const auto& e : EventLog::Global().Since(seq)) said += e.kind == "alias_follow_failed";
  EXPECT_EQ(said, 1);
  ModelVersion fixed = bad;
  fixed.sha256 = "bb";  // the same label with other bytes is a new target
  EXPECT_FALSE(follower.BackingOff(fixed));
  EXPECT_EQ(follower.Failed(std::nullopt, "v1", "database is locked"), "database is locked");
  follower.Followed();
  EXPECT_FALSE(follower.BackingOff(bad));
  EXPECT_EQ(follower.failed_target(), std::nullopt);
}

// --- AnomalyWatch ---

TEST(AnomalyWatch, AVersionWhoseErrorsJumpIsFlaggedAndOnlyLiveVersionsAreWatched) {
  RequestMetrics metrics;
  AnomalyWatch watch("clf");
  auto live = [](const std::string& v) { return v == "v1"; };
  RequestSeries& v1 = metrics.Series({"clf", "v1", "", "fixed"});
  RequestSeries& gone = metrics.Series({"clf", "v0", "", "fixed"});
  for (int interval = 0; interval < 8; ++interval) {
    for (int i = 0; i < 100; ++i) v1.Succeeded(0, 0.001, 0.001, 1);
    for (int i = 0; i < 100; ++i) gone.Failed(FailureReason::kModelError, 0.001);
    watch.Check(metrics.Snapshot(), live);
  }
  EXPECT_FALSE(watch.Anomalous("v1"));
  for (int i = 0; i < 50; ++i) v1.Succeeded(0, 0.001, 0.001, 1);
  for (int i = 0; i < 50; ++i) v1.Failed(FailureReason::kModelError, 0.001);
  watch.Check(metrics.Snapshot(), live);
  EXPECT_TRUE(watch.Anomalous("v1"));
  EXPECT_FALSE(watch.Anomalous("v0"));
}

}  // namespace
}  // namespace lepton
