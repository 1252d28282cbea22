// Every tensor element type lepton knows, in one table: its name in signatures (torch's dtype name
// without the "torch." prefix), its Open Inference Protocol datatype and its size. The registry
// checks signatures against it, the protocol codec reads and writes it, and the runtime maps it to
// LibTorch's scalar types (runtime/tensor_types.h).
#pragma once

#include <cstddef>
#include <string_view>

namespace lepton {

enum class DType {
  kBool,
  kUInt8,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kFp16,
  kBf16,
  kFp32,
  kFp64,
  kComplex64,
  kComplex128,
  kString,
};

struct DTypeInfo {
  DType type;
  const char* name;      // in signatures: "float32", "int64", ...
  const char* wire;      // the protocol's datatype: "FP32", "INT64", ...; "" where it has none
  size_t size;           // bytes per element; 0 for strings, whose elements vary
  bool numeric_on_wire;  // carried by the protocol codec as fixed-size elements
};

// Every row, in the order of DType.
const DTypeInfo* DTypesBegin();
const DTypeInfo* DTypesEnd();
const DTypeInfo& InfoOf(DType type);
// nullptr when no row has that name.
const DTypeInfo* DTypeNamed(std::string_view name);
const DTypeInfo* DTypeOnWire(std::string_view wire);

}  // namespace lepton
