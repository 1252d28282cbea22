// Process facts: random identifiers that never repeat, in this process or in a forked child, and
// the cores this process may use.
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <set>
#include <string>
#include <thread>

#include "lepton/common/process.h"

namespace lepton {
namespace {

bool IsHex(const std::string& s) {
  return s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

TEST(RandomHex, GivesFreshValuesOfTheLengthAsked) {
  std::set<std::string> seen;
  for (int i = 0; i < 2000; ++i) {
    const std::string id = RandomHex(16);
    ASSERT_EQ(id.size(), 32u);
    ASSERT_TRUE(IsHex(id)) << id;
    ASSERT_TRUE(seen.insert(id).second) << "repeated " << id;
  }
  // Longer than what a thread draws from the kernel at once.
  const std::string long_one = RandomHex(10000);
  EXPECT_EQ(long_one.size(), 20000u);
  EXPECT_TRUE(IsHex(long_one));
  EXPECT_EQ(RandomHex(0), "");
}

TEST(RandomHex, AForkedChildNeverRepeatsItsParent) {
  (void)RandomHex(16);  // this thread holds drawn bytes now
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string child = RandomHex(16);
    const ssize_t n = ::write(fds[1], child.data(), child.size());
    ::_exit(n == static_cast<ssize_t>(child.size()) ? 0 : 1);
  }
  ::close(fds[1]);
  const std::string parent = RandomHex(16);
  std::string child(32, '\0');
  size_t got = 0;
  while (got < child.size()) {
    const ssize_t n = ::read(fds[0], child.data() + got, child.size() - got);
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fds[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_EQ(got, child.size());
  EXPECT_NE(child, parent);
}

TEST(UsableCores, FollowsTheAffinityMaskNotTheMachine) {
  cpu_set_t all;
  CPU_ZERO(&all);
  ASSERT_EQ(sched_getaffinity(0, sizeof(all), &all), 0);
  EXPECT_EQ(UsableCores(), CPU_COUNT(&all));
  // Confined to its first CPU (as taskset or a cpuset would), a thread counts one core.
  int confined = 0;
  std::thread([&] {
    int first = 0;
    while (!CPU_ISSET(first, &all)) ++first;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
    confined = UsableCores();
  }).join();
  EXPECT_EQ(confined, 1);
  EXPECT_EQ(UsableCores(), CPU_COUNT(&all));
}

}  // namespace
}  // namespace lepton
