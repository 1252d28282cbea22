#include "lepton/control/cpu_planner.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace lepton {

std::vector<int> Apportion(const std::vector<double>& demand, int total, int minimum) {
  const size_t n = demand.size();
  std::vector<int> out(n, minimum);
  int left = total - minimum * static_cast<int>(n);
  if (left <= 0 || n == 0) return out;
  double sum = std::accumulate(demand.begin(), demand.end(), 0.0);
  std::vector<double> share(n);
  for (size_t i = 0; i < n; ++i) share[i] = sum > 0 ? demand[i] / sum * left : double(left) / n;
  std::vector<std::pair<double, size_t>> remainders;
  int given = 0;
  for (size_t i = 0; i < n; ++i) {
    const int whole = static_cast<int>(std::floor(share[i]));
    out[i] += whole;
    given += whole;
    remainders.emplace_back(share[i] - whole, i);
  }
  std::sort(remainders.begin(), remainders.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  for (size_t k = 0; given < left && k < remainders.size(); ++k, ++given)
    ++out[remainders[k].second];
  return out;
}

CpuPlanner::CpuPlanner(int threads, int min_threads, std::map<std::string, int> fixed,
                       double interval_s)
    : threads_(threads),
      min_threads_(min_threads),
      fixed_(std::move(fixed)),
      interval_s_(interval_s) {}

int CpuPlanner::InitialThreads(const std::string& version, size_t live_count) const {
  auto it = fixed_.find(version);
  if (it != fixed_.end()) return it->second;
  return std::max(min_threads_, threads_ / static_cast<int>(std::max<size_t>(1, live_count)));
}

std::vector<std::pair<std::string, int>> CpuPlanner::Plan(const std::vector<VersionDemand>& live) {
  std::vector<const VersionDemand*> flexible;
  int fixed = 0;
  for (const auto& v : live) {
    auto it = fixed_.find(v.version);
    if (it != fixed_.end()) {
      fixed += it->second;
    } else {
      flexible.push_back(&v);
    }
  }
  if (flexible.empty()) return {};
  std::vector<double> demand;
  for (const VersionDemand* v : flexible) {
    double& last = last_busy_[v->version];
    const double busy = std::max(0.0, v->busy_s - last) / interval_s_;
    last = v->busy_s;
    demand.push_back(busy + 0.5 * static_cast<double>(v->waiting));
  }
  const int pool = std::max(threads_ - fixed, min_threads_ * static_cast<int>(flexible.size()));
  const std::vector<int> budgets = Apportion(demand, pool, min_threads_);
  std::vector<std::pair<std::string, int>> out;
  for (size_t i = 0; i < flexible.size(); ++i) out.emplace_back(flexible[i]->version, budgets[i]);
  return out;
}

}  // namespace lepton
