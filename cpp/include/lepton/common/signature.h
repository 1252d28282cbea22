// A model's signature: the names, dtypes and shapes of its inputs and outputs. The registry stores
// it with each version; the runtime checks requests against it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lepton {

struct TensorSpec {
  std::string name;
  std::string dtype;           // torch dtype name without the prefix: "float32", "int64", ...
  std::vector<int64_t> shape;  // -1 marks a dynamic dimension
  bool operator==(const TensorSpec& o) const {
    return name == o.name && dtype == o.dtype && shape == o.shape;
  }
};

struct Signature {
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  bool operator==(const Signature& o) const { return inputs == o.inputs && outputs == o.outputs; }
};

// Throws InvalidArgument when a dtype is not in the dtype table (common/dtypes.h), a dimension is
// below -1 or a name is empty.
void ValidateSignature(const Signature& signature);

}  // namespace lepton
