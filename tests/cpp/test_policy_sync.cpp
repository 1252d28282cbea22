// Policies shared by replicas: the registry's leads and evidence (on both backends), and
// PolicySync between replicas that are here several PolicySync objects on one registry, each
// with its own copy of the policy, as separate processes would have.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "lepton/common/errors.h"
#include "lepton/control/policy_sync.h"
#include "lepton/policy/policies.h"
#include "lepton/registry/registry.h"
#include "pg_test_server.h"
#include "test_util.h"

namespace lepton {
namespace {

using json = nlohmann::json;
using testing::TempDir;
using Clock = PolicySync::Clock;

class PolicySyncTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::string Location() {
    if (GetParam() == "sqlite") return dir_ / "reg";
    return testing::NewPostgresDatabase() + "?blobs=" + (dir_ / "reg");
  }
  std::unique_ptr<PolicySync> Replica(const std::string& name) {
    return std::make_unique<PolicySync>(registry_, "clf", name, PolicySyncOptions{0.25, 3, 1000});
  }
  TempDir dir_;
  std::shared_ptr<Registry> registry_ = std::make_shared<Registry>(Location());
  const Clock::time_point t0_ = Clock::now();
};

INSTANTIATE_TEST_SUITE_P(Backends, PolicySyncTest, ::testing::Values("sqlite", "postgresql"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

std::shared_ptr<const CanaryPolicy> Canary() {
  CanaryOptions o;
  o.steps = {0.5, 1.0};
  o.step_requests = 10;
  o.guardrails.min_requests = 5;
  return std::make_shared<CanaryPolicy>("v1", "v2", o);
}

std::string Role(const PolicySync& s) { return json::parse(s.Report()).value("role", ""); }

TEST_P(PolicySyncTest, TheRegistryGivesOneLeadPerTermAndRefusesAReplacedLeadersWrites) {
  Registry& r = *registry_;
  EXPECT_FALSE(r.Lead("clf", "k"));
  const auto a = r.TakeLead("clf", "k", "a", std::nullopt);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->term, 1);
  // A second claim on a lead it believed vacant loses; one on a lead it saw stale wins.
  EXPECT_FALSE(r.TakeLead("clf", "k", "b", std::nullopt));
  EXPECT_TRUE(r.KeepLead("clf", "k", 1, 0, std::string("s1")));
  const auto seen = r.Lead("clf", "k");
  EXPECT_EQ(seen->beat, 1);
  EXPECT_FALSE(r.TakeLead("clf", "k", "b", *a));  // it beat since
  const auto b = r.TakeLead("clf", "k", "b", seen);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->term, 2);
  EXPECT_EQ(b->replica, "b");
  // The replaced leader's write changes nothing.
  EXPECT_FALSE(r.KeepLead("clf", "k", 1, 5, std::string("stale")));
  EXPECT_EQ(r.GetState("clf", "k"), "s1");

  // Evidence: numbered in order, dropped once a leader takes it in.
  r.AddEvidence("clf", "k", "a", R"({"ok":{"v1":[0.1]}})");
  r.AddEvidence("clf", "k", "c", R"({"ok":{"v1":[0.2]}})");
  auto batches = r.Evidence("clf", "k", 0, 10);
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_LT(batches[0].id, batches[1].id);
  EXPECT_EQ(batches[1].replica, "c");
  EXPECT_TRUE(r.KeepLead("clf", "k", 2, batches[0].id, std::nullopt));
  EXPECT_EQ(r.Evidence("clf", "k", 0, 10).size(), 1u);
  EXPECT_EQ(r.Lead("clf", "k")->cursor, batches[0].id);
  EXPECT_THROW(r.KeepLead("clf", "k", 2, 0, std::nullopt), InvalidArgument);
  EXPECT_THROW(r.AddEvidence("clf", "k", "a", "[1]"), InvalidArgument);
  EXPECT_THROW(r.AddEvidence("clf", "k", "", "{}"), InvalidArgument);

  // A leader that steps down leaves the lead vacant: anyone takes it, keeping the cursor.
  r.LeaveLead("clf", "k", 2);
  EXPECT_EQ(r.Lead("clf", "k")->replica, "");
  const auto c = r.TakeLead("clf", "k", "c", std::nullopt);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->term, 3);
  EXPECT_EQ(c->cursor, batches[0].id);
}

TEST_P(PolicySyncTest, ACanaryRampsOnEveryReplicasEvidenceAndFollowersRouteByTheLeadersStep) {
  auto a = Replica("a"), b = Replica("b");
  auto pa = Canary(), pb = Canary();
  a->Sync(pa, t0_);
  b->Sync(pb, t0_);
  EXPECT_EQ(Role(*a), "leader");
  EXPECT_EQ(Role(*b), "follower");
  EXPECT_TRUE(a->Decides(*pa));
  EXPECT_FALSE(b->Decides(*pb));

  // The follower's outcomes wait for its sync; its own copy of the policy sees none of them.
  for (int i = 0; i < 12; ++i) b->Observe(*pb, {i % 2 ? "v1" : "v2", 0.001, false});
  EXPECT_EQ(json::parse(b->Report())["pending"], 12);
  EXPECT_EQ(json::parse(pb->Report())["evidence"]["v2"]["requests"], 0);
  b->Sync(pb, t0_);
  EXPECT_EQ(json::parse(b->Report())["sent_batches"], 1);

  // The leader takes them in: 12 requests finish the first step (10).
  a->Sync(pa, t0_);
  EXPECT_EQ(json::parse(pa->Report())["evidence"]["v2"]["requests"], 6);
  auto events = a->Commit(pa->Tick({}, nullptr, 1.0));
  EXPECT_TRUE(events.empty());
  EXPECT_EQ(pa->step(), 1u);
  a->Commit({});  // stores the state

  // The follower routes by the stored step, and reports the leader's evidence.
  b->Sync(pb, t0_);
  EXPECT_EQ(pb->step(), 1u);
  EXPECT_EQ(json::parse(pb->Report())["evidence"]["v2"]["requests"], 6);
  EXPECT_EQ(json::parse(b->Report())["leader"], "a");

  // The last step completes on outcomes from both: one promotion, decided by the leader, with
  // whose evidence it rests on.
  for (int i = 0; i < 10; ++i) b->Observe(*pb, {i % 2 ? "v1" : "v2", 0.001, false});
  for (int i = 0; i < 4; ++i) a->Observe(*pa, {"v2", 0.001, false});
  b->Sync(pb, t0_);
  a->Sync(pa, t0_);
  events = a->Commit(pa->Tick({}, nullptr, 2.0));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].action, "canary_promote");
  const json evidence = json::parse(events[0].evidence);
  EXPECT_EQ(evidence["decided_by"], "a");
  EXPECT_EQ(evidence["term"], 1);
  EXPECT_EQ(evidence["evidence_from"]["b"]["ok"], 22);
  EXPECT_EQ(evidence["evidence_from"]["a"]["ok"], 4);
  b->Sync(pb, t0_);
  EXPECT_EQ(pb->phase(), CanaryPolicy::Phase::kPromoted);
}

TEST_P(PolicySyncTest, ASilentLeaderIsReplacedAfterItsLeaseAndItsLateDecisionIsDropped) {
  auto a = Replica("a"), b = Replica("b");
  auto pa = Canary(), pb = Canary();
  a->Sync(pa, t0_);
  for (int i = 0; i < 8; ++i) a->Observe(*pa, {"v2", 0.001, false});
  a->Commit({});
  b->Sync(pb, t0_);
  b->Sync(pb, t0_ + std::chrono::seconds(2));
  EXPECT_EQ(Role(*b), "follower");  // silent for less than the lease
  b->Sync(pb, t0_ + std::chrono::milliseconds(3100));
  EXPECT_EQ(Role(*b), "leader");
  EXPECT_EQ(registry_->Lead("clf", pb->state_key())->term, 2);
  // The new leader goes on from the stored state.
  EXPECT_EQ(json::parse(pb->SaveState())["step_requests"], 8);

  // The old leader wakes up and decides: refused, and it follows from then on.
  PolicyEvent late{PolicyEvent::Kind::kPromote, "canary_promote", "v1", "v2", "late", "{}", 0};
  EXPECT_TRUE(a->Commit({late}).empty());
  EXPECT_EQ(Role(*a), "follower");
  EXPECT_FALSE(a->Decides(*pa));
  for (int i = 0; i < 3; ++i) a->Observe(*pa, {"v1", 0.001, false});
  a->Sync(pa, t0_);
  b->Sync(pb, t0_ + std::chrono::seconds(4));
  EXPECT_EQ(json::parse(pb->SaveState())["step_requests"], 11);
}

TEST_P(PolicySyncTest, ALeaderThatStepsDownIsReplacedAtOnce) {
  auto a = Replica("a"), b = Replica("b");
  auto pa = Canary(), pb = Canary();
  a->Sync(pa, t0_);
  b->Sync(pb, t0_);
  a->Leave();
  b->Sync(pb, t0_);
  EXPECT_EQ(Role(*b), "leader");
  EXPECT_EQ(registry_->Lead("clf", pb->state_key())->replica, "b");
}

TEST_P(PolicySyncTest, ABanditLearnsFromRewardsSentToAnyReplica) {
  auto a = Replica("a"), b = Replica("b");
  BanditOptions o;
  o.seed = 7;
  auto pa = std::make_shared<BanditPolicy>(std::vector<std::string>{"v1", "v2"}, o);
  auto pb = std::make_shared<BanditPolicy>(std::vector<std::string>{"v1", "v2"}, o);
  a->Sync(pa, t0_);
  b->Sync(pb, t0_);
  // A follower checks a reward before passing it on: the sender hears of a bad one.
  EXPECT_THROW(b->Feedback(*pb, "v1", 2.0, "r"), InvalidArgument);
  EXPECT_THROW(b->Feedback(*pb, "v9", 1.0, "r"), NotFound);
  for (int i = 0; i < 10; ++i) b->Feedback(*pb, "v2", 1.0, "b" + std::to_string(i));
  for (int i = 0; i < 5; ++i) a->Feedback(*pa, "v1", 0.0, "a" + std::to_string(i));
  // One reward per request, whichever replicas it was sent to: the leader refuses a repeat at
  // once, and drops one a follower passed on.
  a->Feedback(*pa, "v2", 1.0, "b3");  // b has it too, not yet sent: the one from b is dropped
  EXPECT_THROW(a->Feedback(*pa, "v1", 0.0, "a1"), NotFound);
  b->Feedback(*pb, "v1", 0.0, "a1");
  b->Sync(pb, t0_);
  a->Sync(pa, t0_);
  EXPECT_EQ(json::parse(a->Report())["duplicate_rewards"], 2);
  a->Commit({});
  b->Sync(pb, t0_);
  for (const auto* p : {pa.get(), pb.get()}) {
    const auto arms = p->arms();
    EXPECT_EQ(arms[0].n, 5);
    EXPECT_EQ(arms[1].n, 10);
    EXPECT_DOUBLE_EQ(arms[1].sum, 10.0);
  }
}

TEST_P(PolicySyncTest, APolicyWithoutStateIsNotShared) {
  auto a = Replica("a");
  auto fixed = std::make_shared<FixedPolicy>();
  a->Sync(fixed, t0_);
  EXPECT_TRUE(a->Decides(*fixed));
  EXPECT_EQ(json::parse(a->Report()).count("role"), 0u);
  // A policy that replaces a shared one it led hands the lead on.
  auto canary = Canary();
  a->Sync(canary, t0_);
  EXPECT_EQ(Role(*a), "leader");
  a->Sync(fixed, t0_);
  EXPECT_EQ(registry_->Lead("clf", canary->state_key())->replica, "");
}

}  // namespace
}  // namespace lepton
