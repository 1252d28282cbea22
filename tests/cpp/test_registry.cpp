#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "lepton/common/errors.h"
#include "lepton/registry/blob_store.h"
#include "lepton/registry/registry.h"
#include "pg_test_server.h"
#include "test_util.h"

namespace lepton {
namespace {

using testing::TempDir;

Registry::Options Opts() {
  Registry::Options o;
  o.actor = "tester";
  return o;
}

RegisterOptions Label(const std::string& label) {
  RegisterOptions o;
  o.version = label;
  return o;
}

// The conformance suite: every RegistryTest runs on both backends, a directory (SQLite) and a
// database on a real PostgreSQL server with its artifacts in a directory of the test's own.
class RegistryTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::string Location() {
    if (GetParam() == "sqlite") return dir_ / "reg";
    const std::string url = testing::NewPostgresDatabase() + "?blobs=" + (dir_ / "reg");
    return GetParam() == "postgresql" ? url : url + "&artifacts=database";
  }
  TempDir dir_;
  const std::string location_ = Location();
  Registry reg_{location_, Opts()};
};

INSTANTIATE_TEST_SUITE_P(Backends, RegistryTest,
                         ::testing::Values("sqlite", "postgresql", "postgresql_artifacts"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

TEST_P(RegistryTest, RegisterAssignsSeqAndDefaultLabels) {
  ModelVersion a = reg_.RegisterBytes("clf", "a", {});
  ModelVersion b = reg_.RegisterBytes("clf", "b", {});
  EXPECT_EQ(a.seq, 1);
  EXPECT_EQ(a.version, "v1");
  EXPECT_EQ(b.seq, 2);
  EXPECT_EQ(b.version, "v2");
  EXPECT_EQ(a.sha256, Sha256Hex("a"));
  EXPECT_EQ(a.size, 1);
  EXPECT_EQ(a.format, "opaque");
  EXPECT_GT(a.created_at, 1.6e9);
  EXPECT_EQ(a.created_at, a.updated_at);
}

TEST_P(RegistryTest, LabelsAreUniqueAndArtifactsImmutable) {
  reg_.RegisterBytes("clf", "a", Label("v1.0"));
  EXPECT_THROW(reg_.RegisterBytes("clf", "b", Label("v1.0")), Conflict);
  // The refused registration consumed no seq and left the store as it was.
  EXPECT_EQ(reg_.RegisterBytes("clf", "c", {}).seq, 2);
  EXPECT_EQ(reg_.Versions("clf").size(), 2u);
  EXPECT_EQ(reg_.Verify().orphan_blobs.size(), 0u);
}

TEST_P(RegistryTest, DefaultLabelAvoidsAUserLabel) {
  reg_.RegisterBytes("clf", "a", Label("v2"));
  EXPECT_EQ(reg_.RegisterBytes("clf", "b", {}).version, "v2-2");
}

TEST_P(RegistryTest, ReferencesResolveLatestLabelAndAlias) {
  reg_.RegisterBytes("clf", "a", Label("v1.0"));
  reg_.RegisterBytes("clf", "b", Label("v1.1"));
  reg_.SetAlias("clf", "production", "v1.0", std::nullopt, "first release");
  EXPECT_EQ(reg_.Get("clf").version, "v1.1");
  EXPECT_EQ(reg_.Get("clf@latest").version, "v1.1");
  EXPECT_EQ(reg_.Get("clf:v1.0").version, "v1.0");
  ModelVersion prod = reg_.Get("clf@production");
  EXPECT_EQ(prod.version, "v1.0");
  EXPECT_EQ(prod.aliases, std::vector<std::string>{"production"});
  EXPECT_THROW(reg_.Get("clf:v9"), NotFound);
  EXPECT_THROW(reg_.Get("nope"), NotFound);
  EXPECT_THROW(reg_.Get("clf@staging"), NotFound);
  EXPECT_THROW(reg_.Get("bad/name"), InvalidArgument);
  try {
    reg_.Get("clf@staging");
  } catch (const NotFound& e) {
    EXPECT_NE(std::string(e.what()).find("production"), std::string::npos) << e.what();
  }
}

TEST_P(RegistryTest, MetadataTagsMetricsSignatureAndLineage) {
  RegisterOptions o = Label("v1");
  o.description = "baseline";
  o.tags = {{"dataset", "digits"}, {"owner", "ml"}};
  o.metrics = {{"accuracy", 0.91}, {"loss", 0.3}};
  o.signature = Signature{{{"x", "float32", {-1, 64}}}, {{"y", "float32", {-1, 2}}}};
  reg_.RegisterBytes("clf", "a", o);
  RegisterOptions child = Label("v2");
  child.parent = "v1";
  ModelVersion v2 = reg_.RegisterBytes("clf", "b", child);
  EXPECT_EQ(v2.parent, std::optional<std::string>("clf:v1"));
  RegisterOptions other;
  other.parent = "clf@latest";
  EXPECT_EQ(reg_.RegisterBytes("distilled", "c", other).parent, "clf:v2");

  ModelVersion v1 = reg_.Get("clf:v1");
  EXPECT_EQ(v1.description, "baseline");
  EXPECT_EQ(v1.tags.at("dataset"), "digits");
  EXPECT_DOUBLE_EQ(v1.metrics.at("accuracy"), 0.91);
  ASSERT_TRUE(v1.signature);
  EXPECT_EQ(*v1.signature, *o.signature);

  RegisterOptions bad_parent;
  bad_parent.parent = "v9";
  EXPECT_THROW(reg_.RegisterBytes("clf", "d", bad_parent), NotFound);
  RegisterOptions bad_metric;
  bad_metric.metrics = {{"acc", std::nan("")}};
  EXPECT_THROW(reg_.RegisterBytes("clf", "d", bad_metric), InvalidArgument);
  RegisterOptions bad_sig;
  bad_sig.signature = Signature{{{"x", "float33", {-1}}}, {}};
  EXPECT_THROW(reg_.RegisterBytes("clf", "d", bad_sig), InvalidArgument);
  bad_sig.signature = Signature{{{"x", "float32", {-2}}}, {}};
  EXPECT_THROW(reg_.RegisterBytes("clf", "d", bad_sig), InvalidArgument);
  EXPECT_EQ(reg_.Versions("clf").size(), 2u);
}

TEST_P(RegistryTest, UpdateChangesMetadataAndUpdatedAt) {
  RegisterOptions o;
  o.tags = {{"a", "1"}, {"b", "2"}};
  o.metrics = {{"acc", 0.5}};
  ModelVersion before = reg_.RegisterBytes("clf", "a", o);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  MetadataUpdate u;
  u.tags = {{"a", "10"}, {"b", std::nullopt}, {"c", "3"}};
  u.metrics = {{"acc", 0.75}};
  u.description = "retuned";
  ModelVersion after = reg_.Update("clf:v1", u, "re-evaluated");
  EXPECT_EQ(after.tags, (std::map<std::string, std::string>{{"a", "10"}, {"c", "3"}}));
  EXPECT_DOUBLE_EQ(after.metrics.at("acc"), 0.75);
  EXPECT_EQ(after.description, "retuned");
  EXPECT_GT(after.updated_at, before.updated_at);
  EXPECT_EQ(after.created_at, before.created_at);
  EXPECT_EQ(after.sha256, before.sha256);
  EXPECT_EQ(reg_.History("clf").back().action, "update");
}

TEST_P(RegistryTest, AliasCompareAndSwap) {
  reg_.RegisterBytes("clf", "a", {});
  reg_.RegisterBytes("clf", "b", {});
  reg_.RegisterBytes("clf", "c", {});
  reg_.SetAlias("clf", "production", "v1", std::string(""), "create only if absent");
  EXPECT_THROW(reg_.SetAlias("clf", "production", "v2", std::string(""), ""), Conflict);
  EXPECT_THROW(reg_.SetAlias("clf", "production", "v2", std::string("v3"), ""), Conflict);
  EXPECT_EQ(reg_.Get("clf@production").version, "v1");
  reg_.SetAlias("clf", "production", "v2", std::string("v1"), "promote");
  EXPECT_EQ(reg_.Get("clf@production").version, "v2");
  reg_.SetAlias("clf", "staging", "@production", std::nullopt, "");
  EXPECT_EQ(reg_.Aliases("clf"),
            (std::map<std::string, std::string>{{"production", "v2"}, {"staging", "v2"}}));
  EXPECT_THROW(reg_.SetAlias("clf", "latest", "v1", std::nullopt, ""), InvalidArgument);
  EXPECT_THROW(reg_.SetAlias("clf", "bad alias", "v1", std::nullopt, ""), InvalidArgument);
  EXPECT_THROW(reg_.SetAlias("clf", "prod", "v9", std::nullopt, ""), NotFound);
  EXPECT_THROW(reg_.SetAlias("nope", "prod", "v1", std::nullopt, ""), NotFound);
}

TEST_P(RegistryTest, ConcurrentCompareAndSwapHasOneWinner) {
  reg_.RegisterBytes("clf", "a", {});
  reg_.RegisterBytes("clf", "b", {});
  reg_.SetAlias("clf", "production", "v1", std::nullopt, "");
  std::atomic<int> wins{0}, conflicts{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      Registry mine(location_, Opts());
      try {
        mine.SetAlias("clf", "production", "v2", std::string("v1"), "racer " + std::to_string(t));
        ++wins;
      } catch (const Conflict&) {
        ++conflicts;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wins.load(), 1);
  EXPECT_EQ(conflicts.load(), 5);
}

TEST_P(RegistryTest, RollbackWalksBackThroughPreviousTargets) {
  for (const char* b : {"a", "b", "c"}) reg_.RegisterBytes("clf", b, {});
  reg_.SetAlias("clf", "production", "v1", std::nullopt, "");
  reg_.SetAlias("clf", "production", "v2", std::nullopt, "");
  reg_.SetAlias("clf", "production", "v3", std::nullopt, "");
  EXPECT_EQ(reg_.Rollback("clf", "production", "bad v3").version, "v2");
  EXPECT_EQ(reg_.Rollback("clf", "production", "bad v2").version, "v1");
  EXPECT_THROW(reg_.Rollback("clf", "production", ""), Conflict);
  EXPECT_THROW(reg_.Rollback("clf", "staging", ""), NotFound);
  const auto history = reg_.History("clf");
  ASSERT_GE(history.size(), 2u);
  const AuditEntry& last = history.back();
  EXPECT_EQ(last.action, "rollback");
  EXPECT_EQ(last.from_version, "v2");
  EXPECT_EQ(last.to_version, "v1");
  EXPECT_EQ(last.reason, "bad v2");
  EXPECT_EQ(last.actor, "tester");
}

TEST_P(RegistryTest, HistoryRecordsEveryChange) {
  reg_.RegisterBytes("clf", "a", {});
  reg_.RegisterBytes("clf", "b", {});
  reg_.SetAlias("clf", "production", "v1", std::nullopt, "go");
  reg_.SetAlias("clf", "production", "v2", std::nullopt, "go again");
  reg_.Update("clf:v1", MetadataUpdate{{}, {}, std::string("x")}, "");
  reg_.RemoveAlias("clf", "production", "retire");
  reg_.Delete("clf:v1", false, "cleanup");
  std::vector<std::string> actions;
  for (const auto& e : reg_.History("clf")) actions.push_back(e.action);
  EXPECT_EQ(actions, (std::vector<std::string>{"register", "register", "set_alias", "set_alias",
                                               "update", "remove_alias", "delete"}));
  EXPECT_EQ(reg_.History("clf", 2).size(), 2u);
  EXPECT_EQ(reg_.History("clf", 2).back().action, "delete");
  EXPECT_THROW(reg_.History("never"), NotFound);
}

TEST_P(RegistryTest, ActingAsNamesWhoChangedWithinItsScopeOnItsThreadOnly) {
  reg_.RegisterBytes("clf", "a", {});
  {
    Registry::ActingAs alice("alice (http 10.0.0.1)");
    reg_.SetAlias("clf", "production", "v1", std::nullopt, "go");
    {
      Registry::ActingAs empty("");  // an empty actor keeps the enclosing one
      reg_.RegisterBytes("clf", "b", {});
    }
    // Another thread meanwhile is not alice.
    std::thread([&] {
      reg_.SetAlias("clf", "staging", "v1", std::nullopt, "other thread");
    }).join();
    Registry::ActingAs bob("bob");
    reg_.SetAlias("clf", "production", "v2", std::string("v1"), "nested");
  }
  reg_.Rollback("clf", "production", "after");
  std::vector<std::string> actors;
  for (const auto& e : reg_.History("clf")) actors.push_back(e.actor);
  EXPECT_EQ(actors, (std::vector<std::string>{"tester", "alice (http 10.0.0.1)",
                                              "alice (http 10.0.0.1)", "tester", "bob", "tester"}));
}

TEST_P(RegistryTest, DeleteRefusesAliasedUnlessForced) {
  ModelVersion a = reg_.RegisterBytes("clf", "a", {});
  reg_.RegisterBytes("clf", "b", {});
  reg_.SetAlias("clf", "production", "v1", std::nullopt, "");
  EXPECT_THROW(reg_.Delete("clf:v1", false, ""), Conflict);
  EXPECT_EQ(reg_.Versions("clf").size(), 2u);
  reg_.Delete("clf:v1", true, "forced");
  EXPECT_EQ(reg_.Versions("clf").size(), 1u);
  EXPECT_TRUE(reg_.Aliases("clf").empty());
  EXPECT_FALSE(std::filesystem::exists(BlobStore(dir_ / "reg/blobs").PathOf(a.sha256)));
  // Seqs are never reused after a deletion.
  EXPECT_EQ(reg_.RegisterBytes("clf", "c", {}).seq, 3);
}

TEST_P(RegistryTest, SharedBlobSurvivesDeletionOfOneVersion) {
  ModelVersion a = reg_.RegisterBytes("clf", "same", {});
  ModelVersion b = reg_.RegisterBytes("clf", "same", {});
  EXPECT_EQ(a.sha256, b.sha256);
  reg_.Delete("clf:v1", false, "");
  EXPECT_EQ(reg_.ReadArtifact("clf:v2"), "same");
}

TEST_P(RegistryTest, GcKeepsLatestAndAliased) {
  for (int i = 0; i < 6; ++i) reg_.RegisterBytes("clf", "blob" + std::to_string(i), {});
  reg_.RegisterBytes("other", "o1", {});
  reg_.SetAlias("clf", "production", "v2", std::nullopt, "");
  GcReport dry = reg_.Gc(2, std::nullopt, true);
  EXPECT_EQ(dry.deleted_versions, (std::vector<std::string>{"clf:v1", "clf:v3", "clf:v4"}));
  EXPECT_EQ(dry.blobs_removed, 3);
  EXPECT_EQ(reg_.Versions("clf").size(), 6u);
  GcReport report = reg_.Gc(2, std::nullopt, false);
  EXPECT_EQ(report.deleted_versions, dry.deleted_versions);
  EXPECT_EQ(report.blobs_removed, 3);
  EXPECT_EQ(report.bytes_freed, 15);
  std::vector<std::string> left;
  for (const auto& v : reg_.Versions("clf")) left.push_back(v.version);
  EXPECT_EQ(left, (std::vector<std::string>{"v2", "v5", "v6"}));
  EXPECT_EQ(reg_.Versions("other").size(), 1u);
  EXPECT_THROW(reg_.Gc(-1, std::nullopt, false), InvalidArgument);
  EXPECT_TRUE(reg_.Verify().ok());
}

TEST_P(RegistryTest, VerifyReportsMissingAndCorruptedArtifacts) {
  if (GetParam() == "postgresql_artifacts") {
    GTEST_SKIP() << "the artifacts live in the database; the directory is a cache (see "
                    "ArtifactsInTheDatabase*)";
  }
  ModelVersion a = reg_.RegisterBytes("clf", "alpha", {});
  ModelVersion b = reg_.RegisterBytes("clf", "beta", {});
  reg_.RegisterBytes("clf", "gamma", {});
  BlobStore store(dir_ / "reg/blobs");
  std::filesystem::remove(store.PathOf(a.sha256));
  std::filesystem::permissions(store.PathOf(b.sha256), std::filesystem::perms::owner_write,
                               std::filesystem::perm_options::add);
  testing::WriteFile(store.PathOf(b.sha256), "BETA");
  VerifyReport report = reg_.Verify();
  EXPECT_FALSE(report.ok());
  EXPECT_EQ(report.versions_checked, 3);
  ASSERT_EQ(report.problems.size(), 2u);
  EXPECT_EQ(report.problems[0].ref, "clf:v1");
  EXPECT_EQ(report.problems[0].problem, "missing");
  EXPECT_EQ(report.problems[1].ref, "clf:v2");
  EXPECT_EQ(report.problems[1].problem, "corrupted");
  EXPECT_THROW(reg_.ReadArtifact("clf:v2"), IntegrityError);
  EXPECT_THROW(reg_.ReadArtifact("clf:v1"), IntegrityError);
  EXPECT_EQ(reg_.ReadArtifact("clf:v3"), "gamma");
  // Nothing else was lost: metadata is intact.
  EXPECT_EQ(reg_.Versions("clf").size(), 3u);
}

TEST_P(RegistryTest, RejectsBadInputWithoutLosingAnything) {
  reg_.RegisterBytes("clf", "a", {});
  EXPECT_THROW(reg_.RegisterBytes("../evil", "x", {}), InvalidArgument);
  EXPECT_THROW(reg_.RegisterBytes("clf", "x", Label("a:b")), InvalidArgument);
  EXPECT_THROW(reg_.RegisterFile("clf", dir_ / "missing.pt", {}), NotFound);
  EXPECT_THROW(reg_.RegisterFile("clf", dir_.path(), {}), InvalidArgument);
  EXPECT_EQ(reg_.Versions("clf").size(), 1u);
  EXPECT_EQ(reg_.Models().size(), 1u);
  EXPECT_TRUE(reg_.Verify().ok());
  EXPECT_TRUE(reg_.Verify().orphan_blobs.empty());
}

TEST_P(RegistryTest, ModelsSummarises) {
  reg_.CreateModel("empty", "nothing yet", false);
  EXPECT_THROW(reg_.CreateModel("empty", "", false), Conflict);
  EXPECT_NO_THROW(reg_.CreateModel("empty", "", true));
  reg_.RegisterBytes("clf", "a", {});
  reg_.RegisterBytes("clf", "b", {});
  reg_.SetAlias("clf", "production", "v1", std::nullopt, "");
  const auto models = reg_.Models();
  ASSERT_EQ(models.size(), 2u);
  EXPECT_EQ(models[0].name, "clf");
  EXPECT_EQ(models[0].version_count, 2);
  EXPECT_EQ(models[0].latest, "v2");
  EXPECT_EQ(models[0].aliases.at("production"), "v1");
  EXPECT_EQ(models[1].name, "empty");
  EXPECT_EQ(models[1].description, "nothing yet");
  EXPECT_EQ(models[1].version_count, 0);
  EXPECT_FALSE(models[1].latest);
  EXPECT_THROW(reg_.Get("empty"), NotFound);
}

TEST(RegistryPaths, PathThatIsAFileIsRefused) {
  TempDir dir;
  testing::WriteFile(dir / "file", "x");
  EXPECT_THROW(Registry(dir / "file", Opts()), InvalidArgument);
}

TEST_P(RegistryTest, DataSurvivesReopen) {
  reg_.RegisterBytes("clf", "a", Label("keep"));
  reg_.SetAlias("clf", "production", "keep", std::nullopt, "");
  Registry again(location_, Opts());
  EXPECT_EQ(again.Get("clf@production").version, "keep");
  EXPECT_EQ(again.ReadArtifact("clf@production"), "a");
}

TEST_P(RegistryTest, ThreadsRegisteringConcurrentlyGetGapFreeSeqs) {
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) reg_.RegisterBytes("clf", std::to_string(t * 100 + i), {});
    });
  }
  for (auto& t : threads) t.join();
  const auto versions = reg_.Versions("clf");
  ASSERT_EQ(versions.size(), 100u);
  for (size_t i = 0; i < versions.size(); ++i) EXPECT_EQ(versions[i].seq, int64_t(i + 1));
}

TEST_P(RegistryTest, ProcessesRegisteringConcurrentlyGetGapFreeSeqs) {
  const std::string root = location_;
  std::vector<pid_t> children;
  for (int p = 0; p < 4; ++p) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      int rc = 0;
      try {
        Registry mine(root, Opts());
        for (int i = 0; i < 50; ++i) mine.RegisterBytes("clf", std::to_string(p * 1000 + i), {});
      } catch (...) {
        rc = 1;
      }
      ::_exit(rc);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  const auto versions = reg_.Versions("clf");
  ASSERT_EQ(versions.size(), 200u);
  std::set<std::string> shas;
  for (size_t i = 0; i < versions.size(); ++i) {
    EXPECT_EQ(versions[i].seq, int64_t(i + 1));
    shas.insert(versions[i].sha256);
  }
  EXPECT_EQ(shas.size(), 200u);
}

// Kills a registering process with SIGKILL at random moments, many times, and checks after each
// kill that the registry holds only whole versions, every row has its blob, every blob matches
// its hash, and reopening removes what the dead writer left.
// --- artifacts kept in the database: every machine has its own cache ---

// Runs SQL on the test's PostgreSQL database with psql.
void Psql(const std::string& url, const std::string& sql) {
  const std::string base = url.substr(0, url.find('?'));
  ASSERT_EQ(std::system(("psql -q -X '" + base + "' -c \"" + sql + "\" >/dev/null").c_str()), 0)
      << sql;
}

TEST(ArtifactsInTheDatabase, AnotherMachineFetchesThemOnceIntoItsOwnCache) {
  TempDir dir;
  const std::string db = testing::NewPostgresDatabase();
  Registry writer(db + "?artifacts=database&blobs=" + (dir / "cache-a"), Opts());
  std::string big(9 << 20, '\0');  // three parts
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 2654435761u >> 13);
  const ModelVersion v = writer.RegisterBytes("clf", big, Label("v1"));
  writer.RegisterBytes("clf", "small", Label("v2"));
  EXPECT_NE(writer.location().find("artifacts=database"), std::string::npos);

  // Another machine: its own, empty cache.
  Registry reader(db + "?artifacts=database&blobs=" + (dir / "cache-b"), Opts());
  const std::string cached = reader.ArtifactPath("clf:v1");
  EXPECT_EQ(cached.rfind((dir / "cache-b"), 0), 0u);
  EXPECT_EQ(reader.ReadArtifact("clf:v1"), big);
  EXPECT_EQ(reader.MapArtifact("clf:v2")->bytes(), "small");
  EXPECT_TRUE(reader.Verify().ok());

  // A damaged cache is fetched again; the database is the truth.
  {
    std::ofstream out(cached, std::ios::binary | std::ios::trunc);
    out << "damaged";
  }
  EXPECT_EQ(reader.ReadArtifact("clf:v1"), big);

  // Damage in the database is found by verify and refused on fetch, never served.
  Psql(db, "UPDATE artifact_parts SET data = 'x'::bytea WHERE sha256 = '" + v.sha256 +
               "' AND part = 1");
  const VerifyReport report = reader.Verify();
  ASSERT_EQ(report.problems.size(), 1u);
  EXPECT_EQ(report.problems[0].problem, "corrupted");
  Registry third(db + "?artifacts=database&blobs=" + (dir / "cache-c"), Opts());
  EXPECT_THROW(third.ReadArtifact("clf:v1"), IntegrityError);
  Psql(db, "DELETE FROM artifact_parts WHERE sha256 = '" + v.sha256 + "'");
  EXPECT_THROW(third.ReadArtifact("clf:v1"), IntegrityError);
  EXPECT_EQ(third.Verify().problems.size(), 1u);

  // gc drops what no version refers to, in the database too.
  writer.Delete("clf:v2", false, "test");
  const GcReport gc = writer.Gc(10, std::nullopt, false);
  EXPECT_EQ(gc.blobs_removed, 1);
  EXPECT_THROW(Registry(db + "?artifacts=database&blobs=" + (dir / "cache-d"), Opts())
                   .ReadArtifact("clf:v2"),
               NotFound);
}

TEST(ArtifactsInTheDatabase, OnlyForPostgresqlAndNamedPlainly) {
  TempDir dir;
  Registry::Options o = Opts();
  o.artifacts_in_database = true;
  EXPECT_THROW(Registry(dir / "reg", o), InvalidArgument);
  EXPECT_THROW(
      Registry(testing::NewPostgresDatabase() + "?artifacts=elsewhere&blobs=" + (dir / "c")),
      InvalidArgument);
}

class RegistryCrash : public ::testing::TestWithParam<std::string> {};

INSTANTIATE_TEST_SUITE_P(Backends, RegistryCrash,
                         ::testing::Values("sqlite", "postgresql", "postgresql_artifacts"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

TEST_P(RegistryCrash, SigkillNeverLeavesPartialState) {
  TempDir dir;
  std::string root = GetParam() == "sqlite"
                         ? dir / "reg"
                         : testing::NewPostgresDatabase() + "?blobs=" + (dir / "reg");
  if (GetParam() == "postgresql_artifacts") root += "&artifacts=database";
  std::mt19937 rng(1234);
  int64_t last_count = 0;
  Registry(root, Opts()).CreateModel("crash", "killed while registering", true);
  for (int round = 0; round < 50; ++round) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::execl(LEPTON_TEST_CRASHER, LEPTON_TEST_CRASHER, root.c_str(), "100000",
              std::to_string(round).c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    if (round % 10 == 9) {
      // Every tenth round lets the crasher commit at least once more before the kill, however
      // slow the machine, so that the rounds kill a registry with versions in it.
      Registry probe(root, Opts());
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      while (static_cast<int64_t>(probe.Versions("crash").size()) <= last_count &&
             std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 120));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "crasher exited early with " << WEXITSTATUS(status);

    Registry reg(root, Opts());
    const auto versions = reg.Versions("crash");
    EXPECT_GE(static_cast<int64_t>(versions.size()), last_count);
    last_count = static_cast<int64_t>(versions.size());
    for (size_t i = 0; i < versions.size(); ++i) ASSERT_EQ(versions[i].seq, int64_t(i + 1));
    const VerifyReport report = reg.Verify();
    EXPECT_TRUE(report.ok()) << report.problems.size() << " problems after round " << round;
    EXPECT_TRUE(report.orphan_blobs.empty()) << report.orphan_blobs.size() << " orphans";
    EXPECT_TRUE(std::filesystem::is_empty(reg.root() + "/blobs/tmp"));
  }
  EXPECT_GT(last_count, 0);
}

// Several processes opening a registry that does not exist yet race to create its database and
// switch it to WAL; every one of them must open it.
TEST(RegistryProcesses, ABrandNewRegistryOpensFromEightProcessesAtOnce) {
  TempDir dir;
  for (int round = 0; round < 40; ++round) {
    const std::string path = dir / ("reg" + std::to_string(round));
    int start[2];
    ASSERT_EQ(::pipe(start), 0);
    std::vector<pid_t> children;
    for (int i = 0; i < 8; ++i) {
      const pid_t pid = ::fork();
      ASSERT_GE(pid, 0);
      if (pid == 0) {
        // Every child waits until the parent closes the pipe, then all open at once.
        ::close(start[1]);
        char c;
        while (::read(start[0], &c, 1) > 0) {
        }
        int code = 0;
        try {
          Registry reg(path, Opts());
          reg.CreateModel("m", "", true);
        } catch (const std::exception& e) {
          std::fprintf(stderr, "child: %s\n", e.what());
          code = 1;
        }
        ::_exit(code);
      }
      children.push_back(pid);
    }
    ::close(start[0]);
    ::close(start[1]);
    for (pid_t pid : children) {
      int status = 0;
      ASSERT_EQ(::waitpid(pid, &status, 0), pid);
      ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "round " << round;
    }
  }
}

// The metadata of a registry whose database was deleted or emptied is gone: opening it must not
// make it look like a new, empty registry whose artifacts gc would then delete.
TEST(RegistryIntegrity, ALostDatabaseBesideBlobsIsRefusedUntilRecovered) {
  TempDir dir;
  const std::string path = dir / "reg";
  {
    Registry reg(path, Opts());
    reg.RegisterBytes("m", "one", Label("a"));
    reg.RegisterBytes("m", "two", Label("b"));
  }
  for (const char* suffix : {"", "-wal", "-shm"}) {
    std::filesystem::remove(path + "/registry.db" + suffix);
  }
  EXPECT_THROW(Registry(path, Opts()), IntegrityError);
  EXPECT_THROW(Registry(path, Opts()), IntegrityError);
  const RecoverReport report = Registry::Recover(path, "recovered", Opts());
  EXPECT_EQ(report.recovered.size(), 2u);
  EXPECT_TRUE(report.skipped.empty());
  Registry reg(path, Opts());
  std::set<std::string> bytes;
  for (const auto& v : reg.Versions("recovered")) bytes.insert(reg.ReadArtifact(v.ref()));
  EXPECT_EQ(bytes, (std::set<std::string>{"one", "two"}));
  EXPECT_TRUE(reg.Verify().ok());
}

TEST_P(RegistryTest, VerifyFailsOnBlobsNoVersionRefersTo) {
  if (GetParam() == "postgresql_artifacts") {
    GTEST_SKIP() << "the artifacts live in the database; the directory is a cache (see "
                    "ArtifactsInTheDatabase*)";
  }
  reg_.RegisterBytes("m", "kept", {});
  EXPECT_TRUE(reg_.Verify().ok());
  {
    // A second registry's blob copied in: stored bytes whose metadata this registry lost.
    TempDir other;
    Registry elsewhere(other / "reg", Opts());
    const ModelVersion v = elsewhere.RegisterBytes("x", "lost", {});
    const std::string from = elsewhere.ArtifactPath(v.ref());
    const std::string to = dir_ / ("reg/blobs/sha256/" + v.sha256.substr(0, 2) + "/" + v.sha256);
    std::filesystem::create_directories(std::filesystem::path(to).parent_path());
    std::filesystem::copy_file(from, to);
  }
  const VerifyReport report = reg_.Verify();
  EXPECT_EQ(report.orphan_blobs.size(), 1u);
  EXPECT_FALSE(report.ok());
}

TEST(RegistryNames, NonAsciiNamesGiveWholeCharactersInTheMessage) {
  TempDir dir;
  Registry reg(dir / "reg", Opts());
  const std::vector<std::string> names = {
      "\xe3\x83\xa2\xe3\x83\x87\xe3\x83\xab",
      std::string(31, 'a') + "\xc3\xa9\xc3\xa9" + std::string(100, 'b')};
  for (const std::string& name : names) {
    try {
      reg.RegisterBytes(name, "x", {});
      FAIL() << "accepted " << name;
    } catch (const InvalidArgument& e) {
      const std::string what = e.what();
      ASSERT_FALSE(what.empty());
      // Every multi-byte sequence in the message is whole.
      for (size_t i = 0; i < what.size();) {
        const unsigned char c = static_cast<unsigned char>(what[i]);
        const size_t n = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
        ASSERT_LE(i + n, what.size()) << what;
        for (size_t k = 1; k < n; ++k) {
          ASSERT_EQ(static_cast<unsigned char>(what[i + k]) & 0xc0, 0x80) << what;
        }
        i += n;
      }
    }
  }
}

TEST(RegistryErrors, StorageErrorsCarryTheOsErrno) {
  TempDir dir;
  testing::WriteFile(dir / "file", "x");
  try {
    Registry reg(dir / "file/reg", Opts());
    FAIL() << "opened a registry under a file";
  } catch (const StorageError& e) {
    EXPECT_EQ(e.os_errno(), ENOTDIR);
  }
}

}  // namespace
}  // namespace lepton
