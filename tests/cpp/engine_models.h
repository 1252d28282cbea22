// TorchScript modules compiled from source for the engine tests.
#pragma once

#include <torch/csrc/jit/frontend/resolver.h>
#include <torch/csrc/jit/frontend/sugared_value.h>
#include <torch/script.h>

#include <sstream>
#include <string>

namespace lepton::testing {

// Lets test sources name the operators of test_ops.cpp as `lepton_test.NAME(...)`.
struct TestOpsResolver : torch::jit::Resolver {
  std::shared_ptr<torch::jit::SugaredValue> resolveValue(
      const std::string& name, torch::jit::GraphFunction& f,
      const torch::jit::SourceRange& loc) override {
    if (name == "lepton_test") return std::make_shared<torch::jit::BuiltinModule>("lepton_test");
    return torch::jit::nativeResolver()->resolveValue(name, f, loc);
  }
  c10::TypePtr resolveType(const std::string& name, const torch::jit::SourceRange& loc) override {
    return torch::jit::nativeResolver()->resolveType(name, loc);
  }
};

inline std::string ScriptBytes(const std::string& source, double n = 0) {
  torch::jit::Module m("M");
  m.register_attribute("n", c10::FloatType::get(), n);
  m.define(source, std::make_shared<TestOpsResolver>());
  std::ostringstream out;
  m.save(out);
  return out.str();
}

// x + n
inline std::string AddN(double n) {
  return ScriptBytes("def forward(self, x):\n  return x + self.n\n", n);
}

// Raises when any input value is negative.
inline std::string FailsOnNegative() {
  return ScriptBytes(
      "def forward(self, x):\n"
      "  return lepton_test.fail_if_negative(x) * 2\n");
}

// Sleeps `x[0, 0]` milliseconds, then answers x: a forward that takes as long as asked.
inline std::string Sleeps() {
  return ScriptBytes(
      "def forward(self, x):\n"
      "  slept = lepton_test.sleep_ms(int(x[0, 0].item()))\n"
      "  return x + slept * 0\n");
}

// Returns the row count of its batch in every row, so a test can see how requests were batched.
inline std::string BatchRows() {
  return ScriptBytes(
      "def forward(self, x):\n"
      "  return x * 0 + x.size(0)\n");
}

// Class labels: argmax over the last dimension of x + n.
inline std::string Labels(double n) {
  return ScriptBytes("def forward(self, x):\n  return (x + self.n).argmax(1)\n", n);
}

// Strings in, strings out: each string's length, and the strings in capitals.
inline std::string Shout() {
  return ScriptBytes(
      "def forward(self, text: List[str]) -> Tuple[Tensor, List[str]]:\n"
      "  return torch.tensor([len(t) for t in text]), [t.upper() for t in text]\n");
}

}  // namespace lepton::testing
