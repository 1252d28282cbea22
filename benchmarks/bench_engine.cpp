// The engine's added latency: a bare TorchScript forward against the same module behind
// Deployment::Predict (Fixed policy, batch 1, caller runs the request inline).
#include <benchmark/benchmark.h>
#include <torch/script.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "lepton/deployment.h"

namespace {

std::string TinyModel() {
  torch::jit::Module m("Tiny");
  m.register_parameter("w", torch::randn({4, 2}), false);
  m.define("def forward(self, x):\n  return x.matmul(self.w)\n");
  std::ostringstream out;
  m.save(out);
  return out.str();
}

struct Fixture {
  std::string dir;
  std::unique_ptr<lepton::Deployment> deployment;
  torch::jit::Module module;
  Fixture() {
    dir = (std::filesystem::temp_directory_path() / "lepton-bench-engine").string();
    std::filesystem::create_directories(dir);
    const std::string path = dir + "/tiny.pt";
    const std::string bytes = TinyModel();
    {
      std::ofstream f(path, std::ios::binary);
      f << bytes;
    }
    lepton::DeploymentOptions o;
    o.adaptive = false;
    deployment = std::make_unique<lepton::Deployment>(
        "tiny", std::vector<std::pair<std::string, std::string>>{{"v1", path}}, o);
    std::istringstream in(bytes);
    module = torch::jit::load(in);
    module.eval();
  }
};

Fixture& Shared() {
  static Fixture f;
  return f;
}

void BM_BareForward(benchmark::State& state) {
  auto& m = Shared().module;
  const torch::Tensor x = torch::randn({1, 4});
  c10::InferenceMode guard;
  for (auto _ : state) benchmark::DoNotOptimize(m.forward({x}));
}
BENCHMARK(BM_BareForward)
    ->Repetitions(7)
    ->ReportAggregatesOnly(true)
    ->Unit(benchmark::kMicrosecond);

void BM_DeploymentPredict(benchmark::State& state) {
  auto& d = *Shared().deployment;
  const lepton::Tensors x = {torch::randn({1, 4})};
  for (auto _ : state) benchmark::DoNotOptimize(d.Predict(x));
}
BENCHMARK(BM_DeploymentPredict)
    ->Repetitions(7)
    ->ReportAggregatesOnly(true)
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
