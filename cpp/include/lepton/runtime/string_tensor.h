// Tensors of strings (the protocol's BYTES) as the runtime carries them beside its tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lepton {

// A tensor of strings: its elements in row-major order and its shape. TorchScript has no string
// tensor: a model takes one as List[str], the elements in order, and a List[str] it returns
// becomes a one-dimensional string tensor.
struct StringTensor {
  std::vector<int64_t> shape;
  std::vector<std::string> values;
  bool operator==(const StringTensor& o) const { return shape == o.shape && values == o.values; }
};

// A request's string inputs, or an answer's string outputs, by position; the tensor in that
// position is undefined. Requests that carry strings are never batched or split by rows.
using StringTensors = std::map<size_t, StringTensor>;

}  // namespace lepton
