// The shared scheduler of periodic chores.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "lepton/control/scheduler.h"

namespace lepton {
namespace {

using Clock = Scheduler::Clock;
using std::chrono::milliseconds;

template <typename F>
bool WaitFor(F condition, milliseconds timeout = milliseconds(10000)) {
  const auto deadline = Clock::now() + timeout;
  while (!condition()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(milliseconds(1));
  }
  return true;
}

TEST(Scheduler, RunsEachTaskWhenDueAndWakesItOnDemand) {
  Scheduler s(2, 8);
  std::atomic<int> often{0}, rarely{0};
  const uint64_t a = s.Add([&] {
    ++often;
    return Clock::now() + milliseconds(1);
  });
  const uint64_t b = s.Add([&] {
    ++rarely;
    return Clock::now() + std::chrono::hours(1);
  });
  EXPECT_TRUE(WaitFor([&] { return often >= 20; }));
  EXPECT_EQ(rarely, 1);
  s.Wake(b);
  EXPECT_TRUE(WaitFor([&] { return rarely == 2; }));
  s.Remove(a);
  const int after = often;
  s.Wake(a);  // removed: nothing
  std::this_thread::sleep_for(milliseconds(20));
  EXPECT_EQ(often, after);
  s.Remove(b);
}

TEST(Scheduler, ABlockingTaskHoldsUpOnlyItselfAndRemoveWaitsForIt) {
  Scheduler s(1, 4);
  std::atomic<bool> release{false}, blocked{false}, finished{false};
  std::atomic<int> ticks{0};
  const uint64_t slow = s.Add([&] {
    blocked = true;
    while (!release) std::this_thread::sleep_for(milliseconds(1));
    finished = true;
    return Clock::now() + std::chrono::hours(1);
  });
  ASSERT_TRUE(WaitFor([&] { return blocked.load(); }));
  const uint64_t quick = s.Add([&] {
    ++ticks;
    return Clock::now() + milliseconds(1);
  });
  EXPECT_TRUE(WaitFor([&] { return ticks >= 10; }));  // a helper runs it meanwhile
  std::thread remover([&] { s.Remove(slow); });
  std::this_thread::sleep_for(milliseconds(20));
  EXPECT_FALSE(finished);
  release = true;
  remover.join();
  EXPECT_TRUE(finished);
  s.Remove(quick);
}

TEST(Scheduler, AWakeDuringARunRunsItAgainOnce) {
  Scheduler s(2, 4);
  std::atomic<int> runs{0};
  std::atomic<bool> inside{false}, go{false};
  const uint64_t id = s.Add([&] {
    if (++runs == 1) {
      inside = true;
      while (!go) std::this_thread::sleep_for(milliseconds(1));
    }
    return Clock::now() + std::chrono::hours(1);
  });
  ASSERT_TRUE(WaitFor([&] { return inside.load(); }));
  s.Wake(id);
  s.Wake(id);
  go = true;
  EXPECT_TRUE(WaitFor([&] { return runs == 2; }));
  std::this_thread::sleep_for(milliseconds(20));
  EXPECT_EQ(runs, 2);
  s.Remove(id);
}

}  // namespace
}  // namespace lepton
