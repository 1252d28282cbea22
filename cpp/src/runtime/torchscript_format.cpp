#include <caffe2/serialize/inline_container.h>

#include "lepton/common/errors.h"
#include "lepton/registry/artifact_format.h"

namespace lepton {
namespace {

class TorchScript final : public ArtifactFormat {
 public:
  std::string name() const override { return "torchscript"; }

  void Validate(const std::string& path) const override {
    std::vector<std::string> records;
    try {
      caffe2::serialize::PyTorchStreamReader reader(path);
      records = reader.getAllRecords();
    } catch (const std::exception&) {
      throw InvalidArgument("artifact is not a TorchScript archive: it is not a PyTorch zip file");
    }
    bool has_data = false, has_constants = false, has_code = false;
    for (const auto& r : records) {
      has_data |= r == "data.pkl";
      has_constants |= r == "constants.pkl";
      has_code |= r.rfind("code/", 0) == 0;
    }
    if (!has_data || !has_constants || !has_code) {
      throw InvalidArgument(
          "artifact is not a TorchScript archive: it has no compiled code (a torch.save() file or "
          "a "
          "state_dict is not TorchScript; save a scripted or traced module with torch.jit.save)");
    }
  }
};

}  // namespace

std::shared_ptr<const ArtifactFormat> TorchScriptFormat() {
  static const auto format = std::make_shared<const TorchScript>();
  return format;
}

}  // namespace lepton
