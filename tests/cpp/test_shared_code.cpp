// Versions with the same code share it: the first load compiles, every later one is built over
// that code with its own weights, which point into the artifact's bytes rather than copies.
#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sstream>

#include "engine_models.h"
#include "engine_registry.h"
#include "lepton/common/errors.h"
#include "lepton/runtime/deployment.h"
#include "lepton/runtime/servable.h"
#include "test_util.h"

namespace lepton {
namespace {

// x @ w (4x4, every entry `w`), with a 64x64 buffer besides. `salt` makes a test's code its own
// (compiled code is kept for the whole process); it adds salt * 0. A model that `writes` adds 1 to
// its weights and counts its calls in a buffer before answering.
std::string Matmul(float w, int salt, bool writes = false) {
  torch::jit::Module m("M");
  m.register_buffer("big", torch::zeros({64, 64}));
  m.register_parameter("w", torch::full({4, 4}, w), false);
  m.register_buffer("calls", torch::zeros({1}));
  std::string src = "def forward(self, x):\n";
  if (writes) src += "  self.calls += 1\n  self.w.add_(1.0)\n";
  src += "  return torch.add(x.matmul(self.w), self.calls, alpha=" + std::to_string(salt) +
         ") - self.calls * " + std::to_string(salt) + "\n";
  m.define(src);
  std::ostringstream out;
  m.save(out);
  return out.str();
}

// Loads `bytes` as the servable's own buffer (tensors may point into it), or as a view only.
std::shared_ptr<Servable> Load(const std::string& bytes, bool owned = true) {
  ServableOptions o;
  o.example_inputs = {torch::ones({1, 4})};
  if (!owned) return Servable::Load("m", "v", bytes, "", std::nullopt, o);
  auto owner = std::make_shared<std::string>(bytes);
  return Servable::Load("m", "v", *owner, "", std::nullopt, o, false, owner);
}

float Answer(const std::shared_ptr<Servable>& s) {
  return s->Run({torch::ones({1, 4})}).outputs[0][0][0].item<float>();
}

TEST(SharedCode, VersionsWithTheSameCodeShareItAndKeepTheirOwnWeights) {
  auto first = Load(Matmul(1, 101));
  auto second = Load(Matmul(2, 101));
  auto third = Load(Matmul(3, 101));
  EXPECT_FALSE(first->stats().shared_code);
  EXPECT_TRUE(first->stats().mapped);
  EXPECT_TRUE(second->stats().shared_code);
  EXPECT_TRUE(second->stats().mapped);
  EXPECT_TRUE(third->stats().shared_code);
  EXPECT_EQ(Answer(first), 4);
  EXPECT_EQ(Answer(second), 8);
  EXPECT_EQ(Answer(third), 12);
  EXPECT_EQ(second->stats().weight_bytes, first->stats().weight_bytes);
  // The code outlives the version that compiled it.
  first.reset();
  EXPECT_EQ(Answer(second), 8);
  EXPECT_EQ(Answer(Load(Matmul(4, 101))), 16);
}

TEST(SharedCode, WithoutAnOwnerTheWeightsAreCopied) {
  auto first = Load(Matmul(1, 102), /*owned=*/false);
  auto second = Load(Matmul(5, 102), /*owned=*/false);
  EXPECT_FALSE(first->stats().mapped);
  EXPECT_FALSE(second->stats().mapped);
  EXPECT_TRUE(second->stats().shared_code);
  EXPECT_EQ(Answer(first), 4);
  EXPECT_EQ(Answer(second), 20);
}

TEST(SharedCode, OtherCodeOrOtherAttributesAreNotShared) {
  EXPECT_FALSE(Load(Matmul(1, 103))->stats().shared_code);
  EXPECT_FALSE(Load(Matmul(1, 104))->stats().shared_code);
  // Same code, a float attribute that differs (it is not a tensor: it lives in data.pkl).
  auto a = Load(testing::AddN(123.25));
  auto b = Load(testing::AddN(456.5));
  EXPECT_FALSE(b->stats().shared_code);
  EXPECT_EQ(a->Run({torch::zeros({1})}).outputs[0].item<float>(), 123.25f);
  EXPECT_EQ(b->Run({torch::zeros({1})}).outputs[0].item<float>(), 456.5f);
}

TEST(SharedCode, AModelThatWritesItsWeightsWritesItsOwnCopyNeverTheBlob) {
  testing::TempDir dir;
  auto reg = testing::EngineRegistry(dir / "reg");
  testing::RegisterLabelled(*reg, "m", "v1", Matmul(1, 105, /*writes=*/true));
  testing::RegisterLabelled(*reg, "m", "v2", Matmul(2, 105, /*writes=*/true));
  auto ask = [](Deployment& d, const std::string& v) {
    PredictOptions p;
    p.context.version = v;
    return d.Predict({torch::ones({1, 4})}, p).outputs[0][0][0].item<float>();
  };
  DeploymentOptions o;
  o.adaptive = false;
  {
    Deployment d(reg, "m", {"v1", "v2"}, o);
    // No signature: no warm-up forward writes before these.
    EXPECT_EQ(ask(d, "v1"), 8);  // (1 + 1) * 4
    EXPECT_EQ(ask(d, "v2"), 12);
    EXPECT_EQ(ask(d, "v1"), 12);
    EXPECT_EQ(ask(d, "v2"), 16);
    d.Close();
  }
  EXPECT_TRUE(reg->Verify().ok());
  Deployment again(reg, "m", {"v2"}, o);
  EXPECT_EQ(ask(again, "v2"), 12);
  again.Close();
}

// The archive of `bytes` with the tensor record `name` cut to `keep` bytes.
std::string CutRecord(const std::string& bytes, const std::string& name, size_t keep) {
  std::istringstream archive(bytes);
  caffe2::serialize::PyTorchStreamReader in(&archive);
  std::string out;
  {
    caffe2::serialize::PyTorchStreamWriter w([&](const void* p, size_t n) {
      out.append(static_cast<const char*>(p), n);
      return n;
    });
    for (const auto& r : in.getAllRecords()) {
      if (r == "version" || r == ".data/version") continue;  // the writer adds its own
      auto [data, size] = in.getRecord(r);
      w.writeRecord(r, data.get(), r == name ? std::min(size, keep) : size);
    }
    w.writeEndOfFile();
  }
  return out;
}

TEST(SharedCode, ATensorClaimingMoreThanItsRecordHoldsIsRefused) {
  // The 16 kB buffer's record cut to 8 bytes: its data.pkl entry still claims 16 kB.
  const std::string cut = CutRecord(Matmul(6, 106), "data/0", 8);
  // Before and after the intact archive's code is known, owned or not.
  EXPECT_THROW(Load(cut), InvalidArgument);
  EXPECT_THROW(Load(cut, /*owned=*/false), InvalidArgument);
  EXPECT_EQ(Answer(Load(Matmul(6, 106))), 24);
  EXPECT_THROW(Load(cut), InvalidArgument);
  EXPECT_THROW(Load(cut, /*owned=*/false), InvalidArgument);
}

TEST(SharedCode, AModuleThatKeepsItsOwnStateLoadsWithoutSharing) {
  auto bytes = [](double n) {
    torch::jit::Module m("S");
    m.register_attribute("n", c10::FloatType::get(), n);
    m.define(
        "def __getstate__(self):\n  return (self.n, 0)\n"
        "def __setstate__(self, state: Tuple[float, int]):\n"
        "  self.n = state[0] * 2\n"
        "def forward(self, x):\n  return x + self.n\n");
    std::ostringstream out;
    m.save(out);
    return out.str();
  };
  for (int round = 0; round < 2; ++round) {
    auto s = Load(bytes(1.5));
    EXPECT_FALSE(s->stats().shared_code);
    EXPECT_FALSE(s->stats().mapped);
    EXPECT_EQ(s->Run({torch::zeros({1})}).outputs[0].item<float>(), 3.0f);
  }
}

}  // namespace
}  // namespace lepton
