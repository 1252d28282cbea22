// Versions placed in their own process: answers, limits, crashes under load, restarts, give-up.
#include <gtest/gtest.h>
#include <signal.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "engine_models.h"
#include "engine_registry.h"
#include "lepton/common/errors.h"
#include "lepton/common/process.h"
#include "lepton/policy/policies.h"
#include "lepton/runtime/deployment.h"
#include "test_util.h"

namespace lepton {
namespace {

using testing::AddN;
using testing::ScriptBytes;
using testing::TempDir;

// x + 2, but the process aborts inside the forward when any input is negative.
std::string AbortsOnNegative() {
  return ScriptBytes(
      "def forward(self, x):\n"
      "  return lepton_test.abort_if_negative(x) + 2\n");
}

class WorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    reg_ = testing::EngineRegistry(dir_ / "reg");
    testing::RegisterLabelled(*reg_, "m", "v1", AddN(1));
    testing::RegisterLabelled(*reg_, "m", "v2", AbortsOnNegative());
  }
  static DeploymentOptions Opts() {
    DeploymentOptions o;
    o.threads = 2;
    o.adaptive = false;
    o.drain_timeout_s = 5;
    o.placement["v2"] = Placement::kProcess;
    o.worker.program = LEPTON_TEST_WORKER;
    o.worker.libraries = {LEPTON_TEST_OPS_LIBRARY};
    o.worker.restart_backoff_s = 0.05;
    return o;
  }
  static PredictOptions Pin(const std::string& v) {
    PredictOptions p;
    p.context.version = v;
    return p;
  }
  static const ServableStats& Stats(const DeploymentStatus& st, const std::string& v) {
    for (const auto& s : st.versions) {
      if (s.version == v) return s;
    }
    throw std::runtime_error("no version " + v);
  }
  // Waits (up to 60 s) until the worker of `v` runs again with a pid other than `old_pid`.
  static int WaitForRestart(Deployment& d, const std::string& v, int old_pid) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < until) {
      const ServableStats s = Stats(d.Status(), v);
      if (s.worker && s.worker->state == "running" && s.worker->pid != old_pid) {
        return s.worker->pid;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return 0;
  }

  TempDir dir_;
  std::shared_ptr<Registry> reg_;
};

TEST_F(WorkerTest, AVersionInItsOwnProcessAnswersLikeAnyOther) {
  Deployment d(reg_, "m", {"v1", "v2"}, Opts());
  EXPECT_EQ(d.Predict({torch::zeros({3})}, Pin("v1")).outputs[0][0].item<float>(), 1);
  Prediction p = d.Predict({torch::ones({3})}, Pin("v2"));
  EXPECT_TRUE(torch::equal(p.outputs[0], torch::full({3}, 3.0)));
  EXPECT_EQ(p.versions, std::vector<std::string>{"v2"});
  const DeploymentStatus st = d.Status();
  EXPECT_EQ(Stats(st, "v1").placement, "in_process");
  EXPECT_FALSE(Stats(st, "v1").worker);
  const ServableStats& w = Stats(st, "v2");
  EXPECT_EQ(w.placement, "process");
  ASSERT_TRUE(w.worker);
  EXPECT_EQ(w.worker->state, "running");
  EXPECT_GT(w.worker->pid, 0);
  EXPECT_NE(w.worker->pid, getpid());
  EXPECT_EQ(::kill(w.worker->pid, 0), 0);
  EXPECT_EQ(w.health, Health::kReady);
  EXPECT_EQ(w.succeeded, 1);
  // Bad inputs are refused before they reach the worker, as for any version.
  EXPECT_THROW(d.Predict({torch::ones({3}), torch::ones({3})}, Pin("v2")), InvalidArgument);
  // A model error in the worker comes back as the same typed error.
  const int pid = w.worker->pid;
  d.Close();
  // Closing the deployment stops the worker.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (::kill(pid, 0) == 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_NE(::kill(pid, 0), 0);
}

TEST_F(WorkerTest, ModelErrorsAndDeadlinesComeBackTyped) {
  testing::RegisterLabelled(*reg_, "m", "v3", testing::FailsOnNegative());
  testing::RegisterLabelled(*reg_, "m", "v4", testing::Sleeps());
  DeploymentOptions o = Opts();
  o.placement["v3"] = Placement::kProcess;
  o.placement["v4"] = Placement::kProcess;
  o.worker.busy_poll_s = 0;  // both sides always sleep for frames: the same answers
  Deployment d(reg_, "m", {"v3", "v4"}, o);
  EXPECT_THROW(d.Predict({-torch::ones({2})}, Pin("v3")), ModelError);
  EXPECT_TRUE(
      torch::equal(d.Predict({torch::ones({2})}, Pin("v3")).outputs[0], torch::full({2}, 2.0)));
  PredictOptions slow = Pin("v4");
  slow.timeout_s = 0.2;
  EXPECT_THROW(d.Predict({torch::full({1, 1}, 3000.0)}, slow), Timeout);
  // The worker still answers after a request was given up on.
  EXPECT_TRUE(
      torch::equal(d.Predict({torch::zeros({1, 1})}, Pin("v4")).outputs[0], torch::zeros({1, 1})));
}

// Each side of the hop waits for the other awake only while the process has cores to spare,
// counted from the requests its deployments are answering: one while it runs, none after.
TEST_F(WorkerTest, TheProcessCountsTheRequestsItIsAnswering) {
  testing::RegisterLabelled(*reg_, "m", "v4", testing::Sleeps());
  DeploymentOptions o = Opts();
  o.placement["v4"] = Placement::kProcess;
  Deployment d(reg_, "m", {"v4"}, o);
  EXPECT_EQ(CountedRequest::InFlight(), 0);
  std::thread caller([&] { d.Predict({torch::full({1, 1}, 500.0)}, Pin("v4")); });
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (CountedRequest::InFlight() == 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(CountedRequest::InFlight(), 1);
  caller.join();
  EXPECT_EQ(CountedRequest::InFlight(), 0);
  // A request that fails is uncounted too.
  EXPECT_THROW(d.Predict({torch::ones({1, 1})}, Pin("v9")), Error);
  EXPECT_EQ(CountedRequest::InFlight(), 0);
}

// Under load, each request is its own forward in the worker, with its own answer, its own error
// and its own deadline. With shared memory, each caller sends its own request through a slot of
// the worker's ring. Without, requests queued for a worker go to it together in one exchange over
// a connection: those without a deadline are taken there by their callers, the others by the
// servable's executors, both kinds mixed in the queue, over one exchange at a time and over two.
TEST_F(WorkerTest, RequestsThatWaitTogetherTravelTogetherAndEachGetsItsOwnAnswer) {
  testing::RegisterLabelled(*reg_, "m", "v3", testing::FailsOnNegative());
  for (auto [threads, shared] : {std::pair{2, true}, std::pair{1, false}, std::pair{2, false}}) {
    SCOPED_TRACE("threads " + std::to_string(threads) + (shared ? ", ring" : ", connections"));
    DeploymentOptions o = Opts();
    o.threads = threads;  // exchanges at a time: the others queue behind them
    o.worker.shared_memory = shared;
    o.placement["v3"] = Placement::kProcess;
    Deployment d(reg_, "m", {"v3"}, o);
    constexpr int kClients = 8, kRequests = 300;
    std::atomic<int> wrong{0}, answered{0}, refused{0};
    std::vector<std::thread> clients;
    for (int c = 0; c < kClients; ++c) {
      clients.emplace_back([&, c] {
        for (int i = 0; i < kRequests; ++i) {
          const float value = static_cast<float>(c * 1000 + i);
          const bool negative = i % 5 == 3;
          PredictOptions p = Pin("v3");
          if (i % 3 == 0) p.timeout_s = 60;
          try {
            Prediction r = d.Predict({torch::full({2}, negative ? -value - 1 : value)}, p);
            if (negative || !torch::equal(r.outputs[0], torch::full({2}, value * 2))) ++wrong;
            ++answered;
          } catch (const ModelError&) {
            if (!negative) ++wrong;
            ++refused;
          } catch (...) {
            ++wrong;
          }
        }
      });
    }
    for (auto& t : clients) t.join();
    EXPECT_EQ(wrong.load(), 0);
    EXPECT_EQ(answered.load(), kClients * kRequests * 4 / 5);
    EXPECT_EQ(refused.load(), kClients * kRequests / 5);
    const ServableStats s = Stats(d.Status(), "v3");
    EXPECT_EQ(s.succeeded, answered.load());
    EXPECT_EQ(s.failed, refused.load());
    EXPECT_EQ(s.requests, kClients * kRequests);
  }
}

// A request goes through a slot of the worker's ring, or over a connection when it is too large
// for a slot (64 KiB), through the connection's shared mailbox, or over its socket when it is too
// large for the mailbox (256 KiB each way) or shared memory is turned off: the same answers
// whichever way, for small and large requests sent at once.
TEST_F(WorkerTest, ExchangesThroughSharedMemoryOrTheSocketGiveTheSameAnswers) {
  for (bool shared : {true, false}) {
    SCOPED_TRACE(shared ? "shared memory" : "socket only");
    DeploymentOptions o = Opts();
    o.worker.shared_memory = shared;
    Deployment d(reg_, "m", {"v2"}, o);
    // 3 floats; just under and just over the mailbox; 2 MB.
    const std::vector<int64_t> sizes = {3, 65000, 66000, 500000};
    std::atomic<int> wrong{0};
    std::vector<std::thread> clients;
    for (int c = 0; c < 4; ++c) {
      clients.emplace_back([&, c] {
        for (int i = 0; i < 40; ++i) {
          const int64_t n = sizes[static_cast<size_t>(c + i) % sizes.size()];
          const torch::Tensor x = torch::arange(n, torch::kFloat) + static_cast<float>(c);
          try {
            const Prediction p = d.Predict({x}, Pin("v2"));
            if (!torch::equal(p.outputs[0], x + 2)) ++wrong;
          } catch (...) {
            ++wrong;
          }
        }
      });
    }
    for (auto& t : clients) t.join();
    EXPECT_EQ(wrong.load(), 0);
    EXPECT_EQ(Stats(d.Status(), "v2").succeeded, 160);
  }
}

// A small request whose answer is larger than its slot: the answer comes back through the slot
// in pieces, for several callers at once, and the slots serve the requests after it.
TEST_F(WorkerTest, AnAnswerLargerThanItsSlotComesBackInPieces) {
  testing::RegisterLabelled(*reg_, "m", "v4",
                            ScriptBytes("def forward(self, x):\n"
                                        "  return x.repeat(100)\n"));
  DeploymentOptions o = Opts();
  o.placement["v4"] = Placement::kProcess;
  Deployment d(reg_, "m", {"v4"}, o);
  std::atomic<int> wrong{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; i < 30; ++i) {
        // 4 KB asked; 400 KB answered (7 pieces), or 40 bytes and 4 KB.
        const int64_t n = i % 3 == 0 ? 10 : 1000;
        const torch::Tensor x = torch::arange(n, torch::kFloat) + static_cast<float>(c * 100 + i);
        try {
          const Prediction p = d.Predict({x}, Pin("v4"));
          if (!torch::equal(p.outputs[0], x.repeat(100))) ++wrong;
        } catch (...) {
          ++wrong;
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(Stats(d.Status(), "v4").succeeded, 120);
}

// Callers sending their own requests through the ring take none of the version's slots: the
// requests its queue holds (a shadow's, here) are served while the callers keep the worker busy.
TEST_F(WorkerTest, QueuedRequestsAreServedWhileCallersKeepTheRingBusy) {
  DeploymentOptions o = Opts();
  o.threads = 1;
  Deployment d(reg_, "m", {"v1", "v2"}, o);
  d.SetPolicy(std::make_shared<ShadowPolicy>("v1", std::vector<std::string>{"v2"}));
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&] {
      while (!stop) {
        try {
          const Prediction p = d.Predict({torch::ones({4})}, Pin("v2"));
          if (!torch::equal(p.outputs[0], torch::full({4}, 3.0f))) ++wrong;
        } catch (...) {
          ++wrong;
        }
      }
    });
  }
  for (int i = 0; i < 20; ++i) {
    const Prediction p = d.Predict({torch::zeros({4})});
    EXPECT_TRUE(torch::equal(p.outputs[0], torch::ones({4})));
  }
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  int64_t seen = 0;
  while (std::chrono::steady_clock::now() < until) {
    const auto s = d.Shadows();
    seen = s.empty() ? 0 : s[0].compared + s[0].dropped + s[0].failed;
    if (seen == 20) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  stop = true;
  for (auto& t : clients) t.join();
  EXPECT_EQ(seen, 20);
  EXPECT_EQ(wrong.load(), 0);
  const auto s = d.Shadows();
  ASSERT_EQ(s.size(), 1u);
  EXPECT_GT(s[0].compared, 0);
  EXPECT_EQ(s[0].failed, 0);
}

TEST_F(WorkerTest, LimitsAreAppliedInTheWorkerAndReadBack) {
  DeploymentOptions o = Opts();
  o.resources["v2"].memory_bytes = int64_t{6} << 30;
  o.resources["v2"].cpus = {0};
  Deployment d(reg_, "m", {"v2"}, o);
  const ServableStats w = Stats(d.Status(), "v2");
  ASSERT_TRUE(w.worker);
  EXPECT_EQ(w.worker->applied.memory_bytes, int64_t{6} << 30);
  EXPECT_EQ(w.worker->applied.cpus, std::vector<int>{0});
  // The same from the kernel's side.
  std::ifstream limits("/proc/" + std::to_string(w.worker->pid) + "/limits");
  std::stringstream text;
  text << limits.rdbuf();
  EXPECT_NE(text.str().find(std::to_string(int64_t{6} << 30)), std::string::npos) << text.str();
  std::ifstream status("/proc/" + std::to_string(w.worker->pid) + "/status");
  std::string line, cpus;
  while (std::getline(status, line)) {
    if (line.rfind("Cpus_allowed_list:", 0) == 0) cpus = line;
  }
  EXPECT_EQ(cpus, "Cpus_allowed_list:\t0");
  // A limit the worker cannot load under is a load error that says so.
  DeploymentOptions tiny = Opts();
  tiny.resources["v2"].memory_bytes = 16 << 20;
  try {
    Deployment bad(reg_, "m", {"v2"}, tiny);
    FAIL() << "a 16 MB worker loaded";
  } catch (const LoadError& e) {
    EXPECT_NE(std::string(e.what()).find("m:v2 could not start in its own process"),
              std::string::npos)
        << e.what();
  }
}

// 8 clients on two versions; the process-placed one is killed (SIGKILL from outside, then an
// abort inside its own forward) several times. The in-process version answers every request;
// the other's requests either answer correctly or fail with Unavailable, and it serves again
// after each restart.
TEST_F(WorkerTest, ACrashFailsOnlyItsOwnRequestsAndTheWorkerComesBack) {
  for (int round = 0; round < 3; ++round) {
    Deployment d(reg_, "m", {"v1", "v2"}, Opts());
    std::atomic<bool> stop{false};
    std::atomic<int64_t> v1_ok{0}, v2_ok{0}, v2_unavailable{0}, wrong{0};
    std::vector<std::thread> clients;
    // Joins the clients however the round ends (a failed ASSERT returns early).
    struct Joiner {
      std::atomic<bool>& stop;
      std::vector<std::thread>& threads;
      ~Joiner() {
        stop = true;
        for (auto& t : threads) {
          if (t.joinable()) t.join();
        }
      }
    } joiner{stop, clients};
    for (int c = 0; c < 8; ++c) {
      clients.emplace_back([&, c] {
        const std::string v = c % 2 ? "v2" : "v1";
        while (!stop) {
          try {
            Prediction p = d.Predict({torch::ones({4})}, Pin(v));
            const float want = v == "v1" ? 2 : 3;
            if (!torch::equal(p.outputs[0], torch::full({4}, want))) ++wrong;
            ++(v == "v1" ? v1_ok : v2_ok);
          } catch (const Unavailable&) {
            if (v == "v1") ++wrong;
            ++v2_unavailable;
          } catch (...) {
            ++wrong;
          }
        }
      });
    }
    auto wait_for = [&](std::atomic<int64_t>& n, int64_t at_least) {
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      while (n < at_least && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      return n >= at_least;
    };
    ASSERT_TRUE(wait_for(v2_ok, 50));
    int pid = Stats(d.Status(), "v2").worker->pid;
    // Killed from outside.
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    pid = WaitForRestart(d, "v2", pid);
    ASSERT_GT(pid, 0);
    const int64_t after_restart = v2_ok + 50;
    ASSERT_TRUE(wait_for(v2_ok, after_restart));
    // Aborting inside its own forward: the request that crashed it fails with Unavailable.
    EXPECT_THROW(d.Predict({-torch::ones({4})}, Pin("v2")), Unavailable);
    pid = WaitForRestart(d, "v2", pid);
    ASSERT_GT(pid, 0);
    ASSERT_TRUE(wait_for(v2_ok, v2_ok + 50));
    stop = true;
    for (auto& t : clients) t.join();
    EXPECT_EQ(wrong, 0);
    EXPECT_GT(v1_ok, 100);
    const ServableStats w = Stats(d.Status(), "v2");
    EXPECT_EQ(w.worker->crashes, 2);
    EXPECT_EQ(w.worker->restarts, 2);
    EXPECT_NE(w.worker->last_exit.find("signal 6"), std::string::npos) << w.worker->last_exit;
    const ServableStats v1 = Stats(d.Status(), "v1");
    EXPECT_EQ(v1.failed, 0);
  }
}

TEST_F(WorkerTest, RepeatedCrashesStopTheRestartsAndSaySo) {
  DeploymentOptions o = Opts();
  o.worker.max_restarts = 2;
  Deployment d(reg_, "m", {"v2"}, o);
  int pid = Stats(d.Status(), "v2").worker->pid;
  for (int i = 0; i < 2; ++i) {
    EXPECT_THROW(d.Predict({-torch::ones({1})}, Pin("v2")), Unavailable);
    pid = WaitForRestart(d, "v2", pid);
    ASSERT_GT(pid, 0);
  }
  EXPECT_THROW(d.Predict({-torch::ones({1})}, Pin("v2")), Unavailable);
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (Stats(d.Status(), "v2").worker->state != "crashed" &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const ServableStats w = Stats(d.Status(), "v2");
  EXPECT_EQ(w.worker->state, "crashed");
  EXPECT_EQ(w.health, Health::kFailed);
  EXPECT_EQ(w.worker->crashes, 3);
  try {
    d.Predict({torch::ones({1})}, Pin("v2"));
    FAIL() << "a given-up worker answered";
  } catch (const Unavailable& e) {
    EXPECT_NE(std::string(e.what()).find("down for good after 3 crashes"), std::string::npos)
        << e.what();
  }
}

TEST(WorkerOptionsJson, PlacementResourcesAndWorkerAreRead) {
  DeploymentOptions o = DeploymentOptionsFromJson(
      R"({"placement": {"v2": "process", "v1": "in_process"},
          "resources": {"v2": {"memory": "2GB", "cpus": [1, 0]}},
          "worker": {"max_restarts": 3, "restart_backoff": 0.5, "libraries": ["/x.so"],
                     "busy_poll_us": 100, "shared_memory": false}})");
  EXPECT_EQ(o.PlacementOf("v2"), Placement::kProcess);
  EXPECT_EQ(o.PlacementOf("v1"), Placement::kInProcess);
  EXPECT_EQ(o.PlacementOf("v9"), Placement::kInProcess);
  EXPECT_EQ(o.resources["v2"].memory_bytes, 2000000000);
  EXPECT_EQ(o.resources["v2"].cpus, (std::vector<int>{1, 0}));
  EXPECT_EQ(o.worker.max_restarts, 3);
  EXPECT_EQ(o.worker.restart_backoff_s, 0.5);
  EXPECT_EQ(o.worker.libraries, std::vector<std::string>{"/x.so"});
  EXPECT_DOUBLE_EQ(o.worker.busy_poll_s, 100e-6);
  EXPECT_FALSE(o.worker.shared_memory);
  EXPECT_TRUE(DeploymentOptionsFromJson("{}").worker.shared_memory);
  EXPECT_THROW(DeploymentOptionsFromJson(R"({"worker": {"shared_memory": "yes"}})"),
               InvalidArgument);
  EXPECT_EQ(DeploymentOptionsFromJson(R"({"placement": "process"})").PlacementOf("v7"),
            Placement::kProcess);
  EXPECT_THROW(DeploymentOptionsFromJson(R"({"placement": "pod"})"), InvalidArgument);
  EXPECT_THROW(DeploymentOptionsFromJson(R"({"placement": {"v1": 3}})"), InvalidArgument);
  EXPECT_THROW(DeploymentOptionsFromJson(R"({"resources": {"v1": {"memory": "lots"}}})"),
               InvalidArgument);
  EXPECT_THROW(DeploymentOptionsFromJson(R"({"resources": {"v1": {"gpus": 1}}})"), InvalidArgument);
  EXPECT_THROW(DeploymentOptionsFromJson(R"({"resources": {"v1": {"cpus": [-1]}}})"),
               InvalidArgument);
  EXPECT_THROW(DeploymentOptionsFromJson(R"({"worker": {"max_restarts": -1}})"), InvalidArgument);
}

}  // namespace
}  // namespace lepton
