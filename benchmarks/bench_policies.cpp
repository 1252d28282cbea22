// Routing decisions: a full Policy::Select (the Route a deployment acts on) and the bare choice.
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "lepton/policy/policies.h"

namespace {

std::vector<std::string> Versions(int n) {
  std::vector<std::string> v;
  for (int i = 0; i < n; ++i) v.push_back("v" + std::to_string(i + 1));
  return v;
}

std::vector<double> Weights(int n) {
  std::vector<double> w;
  for (int i = 0; i < n; ++i) w.push_back(1.0 + i);
  return w;
}

std::vector<std::string> Keys() {
  std::vector<std::string> keys;
  for (int i = 0; i < 1024; ++i) keys.push_back("user-" + std::to_string(i * 7919));
  return keys;
}

void BM_WeightedSelect(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  lepton::WeightedPolicy p(Versions(n), Weights(n));
  lepton::LiveVersions live{Versions(n), "v1"};
  lepton::RequestContext r;
  for (auto _ : state) benchmark::DoNotOptimize(p.Select(r, live));
}
BENCHMARK(BM_WeightedSelect)->Arg(2)->Arg(8);

void BM_StickySelect(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  lepton::WeightedPolicy p(Versions(n), Weights(n), true);
  lepton::LiveVersions live{Versions(n), "v1"};
  const auto keys = Keys();
  std::vector<lepton::RequestContext> requests(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) requests[i].key = keys[i];
  size_t i = 0;
  for (auto _ : state) benchmark::DoNotOptimize(p.Select(requests[i++ & 1023], live));
}
BENCHMARK(BM_StickySelect)->Arg(2)->Arg(8);

void BM_WeightedChoice(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  lepton::WeightedChooser c(Versions(n), Weights(n));
  for (auto _ : state) benchmark::DoNotOptimize(c.Random());
}
BENCHMARK(BM_WeightedChoice)->Arg(8);

void BM_StickyChoice(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  lepton::WeightedChooser c(Versions(n), Weights(n));
  const auto keys = Keys();
  size_t i = 0;
  for (auto _ : state) benchmark::DoNotOptimize(c.ForKey(keys[i++ & 1023]));
}
BENCHMARK(BM_StickyChoice)->Arg(8);

void BM_CanarySelect(benchmark::State& state) {
  lepton::CanaryOptions o;
  o.step_requests = 1 << 30;
  lepton::CanaryPolicy p("v1", "v2", o);
  lepton::LiveVersions live{{"v1", "v2"}, "v1"};
  lepton::RequestContext r;
  for (auto _ : state) benchmark::DoNotOptimize(p.Select(r, live));
}
BENCHMARK(BM_CanarySelect);

}  // namespace

BENCHMARK_MAIN();
