// The CPU planner: how many cores each version of a deployment gets. Versions with a fixed budget
// keep it; the others share the rest in proportion to their measured demand, never below a floor.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace lepton {

// Largest-remainder split of `total` cores in proportion to `demand`, each at least `minimum`.
std::vector<int> Apportion(const std::vector<double>& demand, int total, int minimum);

struct VersionDemand {
  std::string version;
  double busy_s = 0;    // the version's busy time so far (it only grows)
  int64_t waiting = 0;  // requests queued or running now
};

class CpuPlanner {
 public:
  // `threads`: the deployment's cores; `fixed`: budgets per version label.
  CpuPlanner(int threads, int min_threads, std::map<std::string, int> fixed, double interval_s);

  // A new version's budget when `live_count` versions will share the cores.
  int InitialThreads(const std::string& version, size_t live_count) const;
  // The budgets of the versions without a fixed one, from the busy time each used since the
  // previous plan (plus a push from waiting work, so that a starved version can grow). Called
  // from one thread at a time, every `interval_s`.
  std::vector<std::pair<std::string, int>> Plan(const std::vector<VersionDemand>& live);

 private:
  const int threads_;
  const int min_threads_;
  const std::map<std::string, int> fixed_;
  const double interval_s_;
  std::map<std::string, double> last_busy_;
};

}  // namespace lepton
