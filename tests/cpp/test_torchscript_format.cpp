#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <torch/script.h>

#include "lepton/common/errors.h"
#include "lepton/registry/artifact_format.h"
#include "lepton/registry/registry.h"
#include "test_util.h"

namespace lepton {
namespace {

using testing::TempDir;

std::string SaveScriptedModule(const std::string& path) {
  torch::jit::Module m("AddOne");
  m.define("def forward(self, x):\n  return x + 1\n");
  m.save(path);
  return path;
}

TEST(TorchScriptFormat, AcceptsAScriptedModule) {
  TempDir dir;
  EXPECT_NO_THROW(TorchScriptFormat()->Validate(SaveScriptedModule(dir / "m.pt")));
  EXPECT_EQ(TorchScriptFormat()->name(), "torchscript");
}

TEST(TorchScriptFormat, RejectsOtherFiles) {
  TempDir dir;
  testing::WriteFile(dir / "text.pt", "not a model");
  EXPECT_THROW(TorchScriptFormat()->Validate(dir / "text.pt"), InvalidArgument);
  // An archive shaped like torch.save()'s output is a PyTorch zip file but carries no code.
  {
    caffe2::serialize::PyTorchStreamWriter writer(dir / "tensor.pt");
    const std::string pickle = "\x80\x02}q\x00.";
    writer.writeRecord("data.pkl", pickle.data(), pickle.size());
    writer.writeEndOfFile();
  }
  try {
    TorchScriptFormat()->Validate(dir / "tensor.pt");
    FAIL() << "a tensor archive passed as TorchScript";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("torch.jit.save"), std::string::npos) << e.what();
  }
}

TEST(TorchScriptFormat, RegistryRefusesNonTorchScriptAndKeepsWhatItHas) {
  TempDir dir;
  Registry::Options options;
  options.format = TorchScriptFormat();
  Registry reg(dir / "reg", options);
  ModelVersion v = reg.RegisterFile("adder", SaveScriptedModule(dir / "m.pt"), {});
  EXPECT_EQ(v.format, "torchscript");
  testing::WriteFile(dir / "bad.pt", "garbage");
  EXPECT_THROW(reg.RegisterFile("adder", dir / "bad.pt", {}), InvalidArgument);
  EXPECT_EQ(reg.Versions("adder").size(), 1u);
  EXPECT_TRUE(reg.Verify().ok());
  EXPECT_TRUE(reg.Verify().orphan_blobs.empty());
  // The stored bytes load back as the same module.
  std::istringstream in(reg.ReadArtifact("adder"));
  torch::jit::Module loaded = torch::jit::load(in);
  EXPECT_EQ(loaded.forward({torch::zeros({1})}).toTensor().item<float>(), 1.0f);
}

}  // namespace
}  // namespace lepton
