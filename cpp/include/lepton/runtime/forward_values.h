// A forward's arguments and results as TorchScript values: tensors, and strings as List[str].
#pragma once

#include <ATen/core/ivalue.h>

#include <string>
#include <vector>

#include "lepton/runtime/string_tensor.h"

namespace lepton {

// The inputs as arguments: each tensor, and at the positions of `strings` (may be null) their
// values as a List[str].
std::vector<c10::IValue> ForwardArguments(const std::vector<at::Tensor>& inputs,
                                          const StringTensors* strings);

// A forward's result as outputs: a tensor, a List[str] (a one-dimensional string tensor, its
// position undefined in `outputs`), or a tuple or list of them. ModelError naming `who`
// otherwise.
void ToOutputs(const c10::IValue& value, const std::string& who, std::vector<at::Tensor>& outputs,
               StringTensors& strings);

}  // namespace lepton
