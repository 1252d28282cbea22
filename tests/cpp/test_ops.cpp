// Operators the engine tests' TorchScript models call: a sleep (a forward that hangs without
// burning a core) and a check that raises from inside the forward.
#include <torch/library.h>
#include <torch/torch.h>

#include <chrono>
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

}  // namespace

TORCH_LIBRARY(lepton_test, m) {
  m.def("sleep_ms(int ms) -> int", SleepMs);
  m.def("fail_if_negative(Tensor x) -> Tensor", FailIfNegative);
}
