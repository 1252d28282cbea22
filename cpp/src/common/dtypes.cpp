#include "lepton/common/dtypes.h"

#include <iterator>

namespace lepton {
namespace {

constexpr DTypeInfo kDTypes[] = {
    {DType::kBool, "bool", "BOOL", 1, true},
    {DType::kUInt8, "uint8", "UINT8", 1, true},
    {DType::kInt8, "int8", "INT8", 1, true},
    {DType::kInt16, "int16", "INT16", 2, true},
    {DType::kInt32, "int32", "INT32", 4, true},
    {DType::kInt64, "int64", "INT64", 8, true},
    {DType::kFp16, "float16", "FP16", 2, true},
    {DType::kBf16, "bfloat16", "BF16", 2, true},
    {DType::kFp32, "float32", "FP32", 4, true},
    {DType::kFp64, "float64", "FP64", 8, true},
    {DType::kComplex64, "complex64", "", 8, false},
    {DType::kComplex128, "complex128", "", 16, false},
    {DType::kString, "string", "BYTES", 0, false},
};

}  // namespace

const DTypeInfo* DTypesBegin() { return std::begin(kDTypes); }
const DTypeInfo* DTypesEnd() { return std::end(kDTypes); }

const DTypeInfo& InfoOf(DType type) { return kDTypes[static_cast<size_t>(type)]; }

const DTypeInfo* DTypeNamed(std::string_view name) {
  for (const auto& d : kDTypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

const DTypeInfo* DTypeOnWire(std::string_view wire) {
  if (wire.empty()) return nullptr;
  for (const auto& d : kDTypes) {
    if (wire == d.wire) return &d;
  }
  return nullptr;
}

constexpr bool RowsInOrder() {
  for (size_t i = 0; i < std::size(kDTypes); ++i) {
    if (static_cast<size_t>(kDTypes[i].type) != i) return false;
  }
  return std::size(kDTypes) == static_cast<size_t>(DType::kString) + 1;
}
static_assert(RowsInOrder(), "one row per DType, in the enum's order");

}  // namespace lepton
