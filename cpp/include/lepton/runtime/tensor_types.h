// The dtype table's rows (common/dtypes.h) as LibTorch scalar types, both ways.
#pragma once

#include <c10/core/ScalarType.h>

#include <optional>
#include <string>

#include "lepton/common/dtypes.h"

namespace lepton {

// InvalidArgument for a dtype with no tensor type (string).
at::ScalarType ScalarTypeOf(DType type);
// nullopt for a scalar type the table lacks (quantized types, ...).
std::optional<DType> DTypeOf(at::ScalarType type);
// The signature name of a scalar type ("float32"), or LibTorch's own name when the table lacks it.
std::string DTypeName(at::ScalarType type);

}  // namespace lepton
