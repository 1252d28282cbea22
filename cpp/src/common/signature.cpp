#include "lepton/common/signature.h"

#include <set>

#include "lepton/common/dtypes.h"
#include "lepton/common/errors.h"

namespace lepton {

void ValidateSignature(const Signature& signature) {
  auto check = [](const std::vector<TensorSpec>& specs, const char* side) {
    std::set<std::string> seen;
    for (const auto& t : specs) {
      if (t.name.empty()) throw InvalidArgument(std::string("signature ") + side + " need names");
      if (!seen.insert(t.name).second) {
        throw InvalidArgument(std::string("signature ") + side + " name '" + t.name +
                              "' appears twice");
      }
      if (!DTypeNamed(t.dtype)) {
        throw InvalidArgument("signature " + std::string(side) + " '" + t.name +
                              "' has unknown dtype '" + t.dtype +
                              "' (expected float32, float64, int64, ...)");
      }
      for (int64_t d : t.shape) {
        if (d < -1) {
          throw InvalidArgument("signature " + std::string(side) + " '" + t.name +
                                "' has dimension " + std::to_string(d) +
                                "; dimensions are >= 0, or -1 for dynamic");
        }
      }
    }
  };
  check(signature.inputs, "inputs");
  check(signature.outputs, "outputs");
}

}  // namespace lepton
