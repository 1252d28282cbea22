// The engine's added latency: a bare TorchScript forward against the same module behind
// Deployment::Predict (Fixed policy, batch 1, caller runs the request inline).
#include <benchmark/benchmark.h>
#include <torch/script.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

#include "lepton/runtime/deployment.h"

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

// A 512 -> 1024 -> 1024 -> 10 MLP, the model of engine_bench.py's batching run.
std::string MlpModel() {
  torch::manual_seed(0);
  torch::jit::Module m("Mlp");
  m.register_parameter("w1", torch::randn({512, 1024}) * 0.04, false);
  m.register_parameter("w2", torch::randn({1024, 1024}) * 0.03, false);
  m.register_parameter("w3", torch::randn({1024, 10}) * 0.03, false);
  m.define(
      "def forward(self, x):\n"
      "  h = torch.relu(x.matmul(self.w1))\n"
      "  h = torch.relu(h.matmul(self.w2))\n"
      "  return h.matmul(self.w3)\n");
  std::ostringstream out;
  m.save(out);
  return out.str();
}

lepton::Deployment& MlpDeployment(int max_batch_size) {
  static std::map<int, std::unique_ptr<lepton::Deployment>> deployments;
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  auto& d = deployments[max_batch_size];
  if (!d) {
    const std::string path = Shared().dir + "/mlp.pt";
    std::ofstream(path, std::ios::binary) << MlpModel();
    lepton::DeploymentOptions o;
    o.servable.max_batch_size = max_batch_size;
    o.servable.max_queue_delay_s = max_batch_size > 1 ? 0.002 : 0;
    d = std::make_unique<lepton::Deployment>(
        "mlp", std::vector<std::pair<std::string, std::string>>{{"v1", path}}, o);
  }
  return *d;
}

// 32 client threads sending batch-1 requests; items_per_second is the throughput.
void BM_Batching(benchmark::State& state) {
  auto& d = MlpDeployment(static_cast<int>(state.range(0)));
  const lepton::Tensors x = {torch::randn({1, 512})};
  for (auto _ : state) benchmark::DoNotOptimize(d.Predict(x));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Batching)
    ->Arg(1)
    ->Arg(16)
    ->Arg(32)
    ->Threads(32)
    ->UseRealTime()
    ->MinTime(2.0)
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
