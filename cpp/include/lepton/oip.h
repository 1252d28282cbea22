// The Open Inference Protocol v2 (KServe / Triton REST) JSON tensor format: decoding inference
// requests into typed buffers and encoding responses. No torch here, so that the decoder can be
// fuzzed on its own.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lepton::oip {

// The protocol's datatypes that lepton carries: BOOL, UINT8, INT8, INT16, INT32, INT64, FP32, FP64.
enum class DataType { kBool, kUInt8, kInt8, kInt16, kInt32, kInt64, kFp32, kFp64 };
std::optional<DataType> ParseDataType(std::string_view name);
const char* DataTypeName(DataType t);
size_t ElementSize(DataType t);

struct WireTensor {
  std::string name;
  std::vector<int64_t> shape;
  DataType datatype = DataType::kFp32;
  std::string data;  // elements in row-major order, native byte order, ElementSize each
  int64_t elements() const;
};

struct InferRequest {
  std::string id;
  std::vector<WireTensor> inputs;
  std::vector<std::string> outputs;  // names asked for; empty: all
  // lepton's request parameters: routing key, deadline, priority.
  std::optional<std::string> key;
  std::optional<double> timeout_s;
  std::optional<int> priority;
};

struct Limits {
  size_t max_inputs = 64;
  size_t max_dims = 16;
  int64_t max_elements = int64_t{1} << 28;  // in all inputs together
};

// Throws InvalidArgument naming the field at fault: not JSON, unknown fields, a datatype that is
// not carried, a shape that disagrees with the data's length, data of the wrong type or out of
// the datatype's range, nested data that is not rectangular, limits exceeded.
InferRequest DecodeInferRequest(std::string_view body, const Limits& limits = {});

struct InferResponse {
  std::string model, version, id;
  std::vector<WireTensor> outputs;
  std::string parameters = "{}";  // a serialised JSON object, written into the response as it is
};
std::string EncodeInferResponse(const InferResponse& response);

}  // namespace lepton::oip
