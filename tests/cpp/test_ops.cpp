// Operators the engine tests' TorchScript models call: a sleep (a forward that hangs without
// burning a core), a check that raises from inside the forward, and one that aborts the process
// (a crashing custom operator, for versions placed in their own process). Built into the tests
// and, for their workers, as a library of its own.
#include <torch/library.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <thread>

namespace {

int64_t SleepMs(int64_t ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}

at::Tensor FailIfNegative(const at::Tensor& x) {
  TORCH_CHECK(!(x < 0).any().item<bool>(), "negative input");
  return x;
}

at::Tensor AbortIfNegative(const at::Tensor& x) {
  if ((x < 0).any().item<bool>()) std::abort();
  return x;
}

}  // namespace

TORCH_LIBRARY(lepton_test, m) {
  m.def("sleep_ms(int ms) -> int", SleepMs);
  m.def("fail_if_negative(Tensor x) -> Tensor", FailIfNegative);
  m.def("abort_if_negative(Tensor x) -> Tensor", AbortIfNegative);
}
