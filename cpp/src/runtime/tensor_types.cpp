#include "lepton/runtime/tensor_types.h"

#include <utility>

#include "lepton/common/errors.h"

namespace lepton {
namespace {

constexpr std::pair<DType, at::ScalarType> kScalarTypes[] = {
    {DType::kBool, at::kBool},
    {DType::kUInt8, at::kByte},
    {DType::kInt8, at::kChar},
    {DType::kInt16, at::kShort},
    {DType::kInt32, at::kInt},
    {DType::kInt64, at::kLong},
    {DType::kFp16, at::kHalf},
    {DType::kBf16, at::kBFloat16},
    {DType::kFp32, at::kFloat},
    {DType::kFp64, at::kDouble},
    {DType::kComplex64, at::kComplexFloat},
    {DType::kComplex128, at::kComplexDouble},
};

}  // namespace

at::ScalarType ScalarTypeOf(DType type) {
  for (const auto& [d, s] : kScalarTypes) {
    if (d == type) return s;
  }
  throw InvalidArgument("dtype '" + std::string(InfoOf(type).name) + "' has no tensor type");
}

std::optional<DType> DTypeOf(at::ScalarType type) {
  for (const auto& [d, s] : kScalarTypes) {
    if (s == type) return d;
  }
  return std::nullopt;
}

std::string DTypeName(at::ScalarType type) {
  if (auto d = DTypeOf(type)) return InfoOf(*d).name;
  return c10::toString(type);
}

}  // namespace lepton
