// Micro-benchmarks of the registry's read paths on a registry holding 10,000 versions.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

#include "lepton/registry/registry.h"

namespace {

constexpr int kVersions = 10000;

struct Fixture {
  std::string root;
  std::unique_ptr<lepton::Registry> reg;
  Fixture() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "lepton-bench-XXXXXX").string();
    root = ::mkdtemp(tmpl.data());
    lepton::Registry::Options o;
    o.actor = "bench";
    reg = std::make_unique<lepton::Registry>(root, o);
    for (int i = 0; i < kVersions; ++i) {
      lepton::RegisterOptions ro;
      ro.tags = {{"i", std::to_string(i)}};
      ro.metrics = {{"accuracy", i / double(kVersions)}};
      reg->RegisterBytes("model", "artifact " + std::to_string(i), ro);
    }
    reg->SetAlias("model", "production", "v5000", std::nullopt, "bench");
  }
  ~Fixture() { std::filesystem::remove_all(root); }
};

Fixture& Shared() {
  static Fixture f;
  return f;
}

void BM_ResolveAlias(benchmark::State& state) {
  auto& reg = *Shared().reg;
  for (auto _ : state) benchmark::DoNotOptimize(reg.Get("model@production"));
}
BENCHMARK(BM_ResolveAlias)->Unit(benchmark::kMicrosecond);

void BM_ResolveLabel(benchmark::State& state) {
  auto& reg = *Shared().reg;
  for (auto _ : state) benchmark::DoNotOptimize(reg.Get("model:v1234"));
}
BENCHMARK(BM_ResolveLabel)->Unit(benchmark::kMicrosecond);

void BM_ListVersions(benchmark::State& state) {
  auto& reg = *Shared().reg;
  for (auto _ : state) benchmark::DoNotOptimize(reg.Versions("model"));
}
BENCHMARK(BM_ListVersions)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
