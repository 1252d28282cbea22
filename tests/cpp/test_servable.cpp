#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <thread>

#include "engine_models.h"
#include "lepton/common/errors.h"
#include "lepton/runtime/servable.h"

namespace lepton {
namespace {

using testing::AddN;

// Waits until the servable has a request running; fails the test after ten seconds.
void AwaitRunning(const std::shared_ptr<Servable>& s) {
  const auto until = Clock::now() + std::chrono::seconds(10);
  while (s->stats().in_flight == 0) {
    ASSERT_LT(Clock::now(), until) << "no request started running";
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

ServableOptions Opts(int threads = 1) {
  ServableOptions o;
  o.threads = threads;
  return o;
}

Signature Sig(std::vector<int64_t> shape) {
  return Signature{{{"x", "float32", std::move(shape)}}, {{"y", "float32", {-1, 4}}}};
}

std::shared_ptr<Servable> Load(const std::string& bytes, ServableOptions o = Opts(),
                               std::optional<Signature> sig = std::nullopt) {
  return Servable::Load("m", "v1", bytes, "", std::move(sig), o);
}

TEST(Servable, RunsAndCounts) {
  auto s = Load(AddN(1), Opts(), Sig({-1, 4}));
  EXPECT_EQ(s->health(), Health::kReady);
  RunResult r = s->Run({torch::zeros({2, 4})});
  ASSERT_EQ(r.outputs.size(), 1u);
  EXPECT_TRUE(r.outputs[0].equal(torch::ones({2, 4})));
  const ServableStats st = s->stats();
  EXPECT_EQ(st.requests, 1);
  EXPECT_EQ(st.succeeded, 1);
  EXPECT_EQ(st.in_flight, 0);
}

TEST(Servable, ForwardsWithTensorParametersAndWithDefaultsOrOptionalsAnswerAlike) {
  // Every parameter a Tensor: called with a stack of the inputs as they are.
  auto two = Load(testing::ScriptBytes("def forward(self, a, b):\n  return a * b + self.n\n", 1));
  EXPECT_TRUE(two->Run({torch::full({2, 2}, 2.0f), torch::full({2, 2}, 3.0f)})
                  .outputs[0]
                  .equal(torch::full({2, 2}, 7.0f)));
  // A default the schema fills in, and an optional tensor left out: the schema's own path.
  auto defaults = Load(testing::ScriptBytes(
      "def forward(self, x, scale: float = 2.0, bias: Optional[Tensor] = None):\n"
      "  y = x * scale\n"
      "  if bias is not None:\n"
      "    y = y + bias\n"
      "  return y\n"));
  EXPECT_TRUE(defaults->Run({torch::ones({1, 3})}).outputs[0].equal(torch::full({1, 3}, 2.0f)));
  // The wrong count of tensors is refused before the forward, either way.
  EXPECT_THROW(two->Run({torch::ones({1, 1})}), InvalidArgument);
}

TEST(Servable, ChecksumIsVerified) {
  const std::string bytes = AddN(1);
  EXPECT_THROW(Servable::Load("m", "v1", bytes, std::string(64, '0'), std::nullopt, Opts()),
               IntegrityError);
  EXPECT_THROW(Load("not torchscript"), InvalidArgument);
}

TEST(Servable, BadInputsNameWhatWasExpected) {
  auto s = Load(AddN(1), Opts(), Sig({-1, 4}));
  auto message = [&](const Tensors& in) {
    try {
      s->Run(in);
    } catch (const InvalidArgument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({torch::zeros({2, 4}, torch::kInt64)}).find("expected float32"),
            std::string::npos);
  EXPECT_NE(message({torch::zeros({2, 5})}).find("expected [-1, 4]"), std::string::npos);
  EXPECT_NE(message({torch::zeros({2, 4, 1})}).find("expected [-1, 4]"), std::string::npos);
  EXPECT_NE(message({torch::zeros({0, 4})}).find("empty batch"), std::string::npos);
  EXPECT_NE(message({torch::zeros({4, 2}).t()}).find("not contiguous"), std::string::npos);
  EXPECT_NE(message({torch::zeros({2, 4}), torch::zeros({2, 4})}).find("takes 1 inputs"),
            std::string::npos);
  EXPECT_NE(message({}).find("no inputs"), std::string::npos);
  EXPECT_NE(message({torch::tensor(1.0f)}).find("scalar"), std::string::npos);
  // Still serving after every refusal.
  EXPECT_TRUE(s->Run({torch::zeros({1, 4})}).outputs[0].equal(torch::ones({1, 4})));
}

TEST(Servable, ModelErrorReachesTheCallerAndServingContinues) {
  auto s = Load(testing::FailsOnNegative(), Opts(2));
  EXPECT_THROW(s->Run({-torch::ones({1, 2})}), ModelError);
  // The same failure inside a TBB worker (the asynchronous path) is rethrown on the caller.
  RunOptions async;
  async.force_async = true;
  auto ticket = s->Submit({-torch::ones({1, 2})}, async);
  try {
    s->Wait(ticket);
    FAIL() << "no error";
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("negative input"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(s->Run({torch::ones({1, 2})}).outputs[0].equal(2 * torch::ones({1, 2})));
  EXPECT_EQ(s->stats().failed, 2);
}

TEST(Servable, ManyThreadsThrowingInsideWorkersLoseNothing) {
  auto s = Load(testing::FailsOnNegative(), Opts(2));
  std::atomic<int> model_errors{0}, answers{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        RunOptions o;
        o.force_async = true;
        const float sign = (i + t) % 2 ? -1.f : 1.f;
        try {
          s->Wait(s->Submit({sign * torch::ones({1, 2})}, o));
          ++answers;
        } catch (const ModelError&) {
          ++model_errors;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(model_errors.load(), 200);
  EXPECT_EQ(answers.load(), 200);
}

ServableOptions Sharing(std::shared_ptr<CorePool> cores, bool borrow) {
  ServableOptions o = Opts(1);
  o.cores = std::move(cores);
  o.borrow = borrow;
  return o;
}

TEST(Servable, AWaiterRunsTheQueueOnACoreNoVersionUsesWhenTheBudgetIsFull) {
  auto cores = std::make_shared<CorePool>(2);
  auto s = Load(testing::Sleeps(), Sharing(cores, true));
  RunOptions async;
  async.force_async = true;
  // The budget's one slot is busy for three seconds; one of the deployment's two cores is idle.
  auto running = s->Submit({torch::full({1, 1}, 3000.0f)}, async);
  AwaitRunning(s);
  EXPECT_EQ(cores->running(), 1);
  auto queued = s->Submit({torch::full({1, 1}, 0.0f)}, async);
  // Its waiter runs it at once on its own thread instead of waiting behind the slow one.
  EXPECT_TRUE(s->Wait(queued).outputs[0].equal(torch::zeros({1, 1})));
  const ServableStats st = s->stats();
  EXPECT_EQ(st.borrowed, 1);
  EXPECT_EQ(st.in_flight, 1);  // the slow one still runs
  EXPECT_EQ(st.succeeded, 1);
  s->Wait(running);
  EXPECT_EQ(cores->running(), 0);
  EXPECT_EQ(s->stats().in_flight, 0);
  // The slot is free again: the next request runs within the budget, not on a borrowed core.
  s->Run({torch::zeros({1, 1})});
  EXPECT_EQ(s->stats().borrowed, 1);
}

TEST(Servable, NoCoreIsBorrowedWhenAllAreBusyForAFixedBudgetOrWithADeadline) {
  struct Case {
    int cores;
    bool borrow;
    bool deadline;
  };
  for (const Case c : {Case{1, true, false}, Case{2, false, false}, Case{2, true, true}}) {
    SCOPED_TRACE(std::to_string(c.cores) + " core(s), borrow " + std::to_string(c.borrow) +
                 ", deadline " + std::to_string(c.deadline));
    auto cores = std::make_shared<CorePool>(c.cores);
    auto s = Load(testing::Sleeps(), Sharing(cores, c.borrow));
    RunOptions async;
    async.force_async = true;
    auto running = s->Submit({torch::full({1, 1}, 200.0f)}, async);
    AwaitRunning(s);
    RunOptions later = async;
    if (c.deadline) later.deadline = Clock::now() + std::chrono::seconds(60);
    auto queued = s->Submit({torch::zeros({1, 1})}, later);
    // The waiter waits for the slot: when its answer comes, the slow one has finished first.
    s->Wait(queued);
    EXPECT_EQ(s->stats().succeeded, 2);
    EXPECT_EQ(s->stats().borrowed, 0);
    s->Wait(running);
    EXPECT_EQ(cores->running(), 0);
  }
}

TEST(Servable, HangingRequestIsCutOffByItsDeadline) {
  auto hang = Load(testing::Sleeps(), Opts(1));
  auto other = Servable::Load("m", "v2", AddN(1), "", std::nullopt, Opts(1));
  RunOptions o;
  o.deadline = Clock::now() + std::chrono::milliseconds(100);
  const auto start = Clock::now();
  EXPECT_THROW(hang->Run({torch::full({1, 1}, 1000.0f)}, o), Timeout);
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(2));
  // Another version is unaffected.
  EXPECT_TRUE(other->Run({torch::zeros({1, 1})}).outputs[0].equal(torch::ones({1, 1})));
  EXPECT_EQ(hang->stats().timed_out, 1);
}

TEST(Servable, FullQueueIsRefusedAtOnce) {
  ServableOptions o = Opts(1);
  o.max_queue = 2;
  auto s = Load(testing::Sleeps(), o);
  RunOptions async;
  async.force_async = true;
  // One runs (about a second of spinning), two wait; the fourth is refused.
  auto running = s->Submit({torch::full({1, 1}, 300.0f)}, async);
  AwaitRunning(s);
  auto a = s->Submit({torch::zeros({1, 1})}, async);
  auto b = s->Submit({torch::zeros({1, 1})}, async);
  const auto start = Clock::now();
  EXPECT_THROW(s->Submit({torch::zeros({1, 1})}, async), Overloaded);
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(50));
  EXPECT_EQ(s->stats().rejected, 1);
  s->Wait(running);
  s->Wait(a);
  s->Wait(b);
}

TEST(Servable, HigherPriorityIsServedFirstAndRefusedLast) {
  ServableOptions o = Opts(1);
  o.max_queue = 2;
  auto s = Load(testing::Sleeps(), o);
  RunOptions low, high;
  low.force_async = high.force_async = true;
  low.priority = 0;
  high.priority = 10;
  auto running = s->Submit({torch::full({1, 1}, 200.0f)}, low);
  AwaitRunning(s);
  auto low1 = s->Submit({torch::zeros({1, 1})}, low);
  auto low2 = s->Submit({torch::zeros({1, 1})}, low);
  auto high1 = s->Submit({torch::zeros({1, 1})}, high);  // evicts low2
  EXPECT_THROW(s->Wait(low2), Overloaded);
  EXPECT_THROW(s->Submit({torch::zeros({1, 1})}, low), Overloaded);
  s->Wait(running);
  const RunResult h = s->Wait(high1);
  const RunResult l = s->Wait(low1);
  EXPECT_LT(h.queue_s, l.queue_s);
}

TEST(Servable, DynamicBatchingJoinsRequestsAndSplitsAnswers) {
  ServableOptions o = Opts(1);
  o.max_batch_size = 8;
  o.max_queue_delay_s = 0.02;
  auto s = Load(testing::BatchRows(), o);
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  std::atomic<int64_t> max_rows{0};
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        const int64_t rows = 1 + (t % 2);
        RunResult r = s->Run({torch::zeros({rows, 3})});
        const int64_t batch = r.outputs[0][0][0].item<int64_t>();
        if (r.outputs[0].size(0) != rows || batch != r.batch_rows || batch > 8) ++wrong;
        int64_t seen = max_rows.load();
        while (batch > seen && !max_rows.compare_exchange_weak(seen, batch)) {
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(max_rows.load(), 1);
  const ServableStats st = s->stats();
  EXPECT_EQ(st.succeeded, 160);
  EXPECT_LT(st.batches, 160);
  EXPECT_EQ(st.batched_rows, 8 * 10 * 1 + 8 * 10 * 2);
}

TEST(Servable, ShapesThatCannotBatchRunApart) {
  ServableOptions o = Opts(1);
  o.max_batch_size = 16;
  o.max_queue_delay_s = 0.02;
  auto s = Load(AddN(1), o);
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      const int64_t width = 2 + t % 3;
      for (int i = 0; i < 10; ++i) {
        RunResult r = s->Run({torch::zeros({1, width})});
        if (!r.outputs[0].equal(torch::ones({1, width}))) ++wrong;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(Servable, DrainWaitsForRunningRequestsThenUnloads) {
  auto s = Load(testing::Sleeps(), Opts(1));
  RunOptions async;
  async.force_async = true;
  auto running = s->Submit({torch::full({1, 1}, 100.0f)}, async);
  AwaitRunning(s);
  EXPECT_TRUE(s->Drain(30));
  EXPECT_NO_THROW(s->Wait(running));
  EXPECT_EQ(s->health(), Health::kUnloaded);
  EXPECT_THROW(s->Run({torch::zeros({1, 1})}), Unavailable);
}

TEST(Servable, FailedWarmupFailsTheLoad) {
  ServableOptions o = Opts(1);
  o.example_inputs = {-torch::ones({1, 2})};
  EXPECT_THROW(Load(testing::FailsOnNegative(), o), ModelError);
}

TEST(Servable, ThreadsCanChangeWhileServing) {
  auto s = Load(AddN(1), Opts(1));
  std::atomic<bool> stop{false};
  std::atomic<int> errors{0};
  std::thread client([&] {
    RunOptions o;
    o.force_async = true;
    while (!stop) {
      try {
        s->Wait(s->Submit({torch::zeros({1, 2})}, o));
      } catch (...) {
        ++errors;
      }
    }
  });
  for (int i = 0; i < 20; ++i) s->SetThreads(1 + i % 3);
  stop = true;
  client.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_THROW(s->SetThreads(0), InvalidArgument);
}

// Waits until the servable's executor threads number `n`; fails the test after ten seconds.
void AwaitExecutors(const std::shared_ptr<Servable>& s, int n) {
  const auto until = Clock::now() + std::chrono::seconds(10);
  while (s->stats().executors != n) {
    ASSERT_LT(Clock::now(), until) << "executors: " << s->stats().executors << ", expected " << n;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

TEST(Servable, AnIdleVersionHoldsNoThreadAndQueuedWorkStartsThem) {
  ServableOptions o = Opts(3);
  o.idle_thread_s = 0.05;
  auto s = Load(AddN(1), o);
  EXPECT_EQ(s->stats().executors, 0);  // loaded and warmed, but idle
  // A request that runs on its caller's thread needs no executor.
  EXPECT_TRUE(s->Run({torch::zeros({1, 2})}).outputs[0].equal(torch::ones({1, 2})));
  EXPECT_EQ(s->stats().executors, 0);
  for (int round = 0; round < 20; ++round) {
    RunOptions async;
    async.force_async = true;
    std::vector<std::shared_ptr<Servable::Ticket>> tickets;
    for (int i = 0; i < 8; ++i) tickets.push_back(s->Submit({torch::full({1, 2}, i)}, async));
    EXPECT_GE(s->stats().executors, 1);
    EXPECT_LE(s->stats().executors, 3);
    for (int i = 0; i < 8; ++i) {
      EXPECT_TRUE(s->Wait(tickets[i]).outputs[0].equal(torch::full({1, 2}, i + 1)));
    }
    AwaitExecutors(s, 0);  // idle again: every executor leaves
  }
  ServableOptions bad = Opts();
  bad.idle_thread_s = 0;
  EXPECT_THROW(Load(AddN(1), bad), InvalidArgument);
}

std::shared_ptr<const StringTensors> Strings(std::vector<std::string> values) {
  auto s = std::make_shared<StringTensors>();
  (*s)[0] = StringTensor{{static_cast<int64_t>(values.size())}, std::move(values)};
  return s;
}

TEST(Servable, StringsInAndStringsOut) {
  // A signature with a string input: the warm-up gives it empty strings.
  const Signature sig{{{"text", "string", {-1}}}, {{"n", "int64", {-1}}, {"up", "string", {-1}}}};
  auto s = Load(testing::Shout(), Opts(), sig);
  RunOptions o;
  o.strings = Strings({"ab", "xyz"});
  const RunResult r = s->Run({at::Tensor()}, o);
  ASSERT_EQ(r.outputs.size(), 2u);
  EXPECT_TRUE(torch::equal(r.outputs[0], torch::tensor({2, 3})));
  EXPECT_FALSE(r.outputs[1].defined());
  ASSERT_EQ(r.strings.count(1), 1u);
  EXPECT_EQ(r.strings.at(1).values, (std::vector<std::string>{"AB", "XYZ"}));
  EXPECT_EQ(r.strings.at(1).shape, (std::vector<int64_t>{2}));
  // A tensor where the signature says strings, and strings where the model takes a tensor.
  EXPECT_THROW(s->Run({torch::ones({2})}), InvalidArgument);
  auto add = Load(AddN(1));
  EXPECT_THROW(add->Run({at::Tensor()}, o), InvalidArgument);
  // Without a signature, the forward's types decide.
  auto plain = Load(testing::Shout());
  EXPECT_THROW(plain->Run({torch::ones({2})}), InvalidArgument);
  EXPECT_EQ(plain->Run({at::Tensor()}, o).strings.at(1).values[0], "AB");
}

TEST(Servable, RequestsWithStringsAreNeverBatched) {
  ServableOptions opts = Opts(1);
  opts.max_batch_size = 8;
  opts.max_queue_delay_s = 0.02;
  auto s = Load(testing::Shout(), opts);
  std::vector<std::shared_ptr<Servable::Ticket>> tickets;
  for (int i = 0; i < 8; ++i) {
    RunOptions o;
    o.strings =
        Strings(std::vector<std::string>(static_cast<size_t>(1 + i % 3), "w" + std::to_string(i)));
    tickets.push_back(s->Submit({at::Tensor()}, o));
  }
  for (int i = 0; i < 8; ++i) {
    const RunResult r = s->Wait(tickets[static_cast<size_t>(i)]);
    EXPECT_EQ(r.strings.at(1).values,
              std::vector<std::string>(static_cast<size_t>(1 + i % 3), "W" + std::to_string(i)));
    EXPECT_EQ(r.batch_rows, 1 + i % 3);
  }
  EXPECT_EQ(s->stats().batches, 8);
}

}  // namespace
}  // namespace lepton
