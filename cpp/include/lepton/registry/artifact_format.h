// The format of stored artifacts: a name recorded with each version and a check that a file really
// is of that format before it is admitted to the registry.
#pragma once

#include <memory>
#include <string>

namespace lepton {

class ArtifactFormat {
 public:
  virtual ~ArtifactFormat() = default;
  virtual std::string name() const = 0;
  // Throws InvalidArgument, saying what is wrong, when the file at `path` is not of this format.
  virtual void Validate(const std::string& path) const = 0;
};

// TorchScript archives as written by torch.jit.save / torch::jit::Module::save.
std::shared_ptr<const ArtifactFormat> TorchScriptFormat();

}  // namespace lepton
