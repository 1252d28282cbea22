// The Open Inference Protocol v2 (KServe / Triton REST) JSON tensor format: decoding inference
// requests into typed buffers and encoding responses. No torch here, so that the decoder can be
// fuzzed on its own.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "lepton/common/dtypes.h"

namespace lepton::oip {

// The protocol's datatypes that lepton carries: BOOL, UINT8, INT8, INT16, INT32, INT64, FP16,
// BF16, FP32, FP64 and BYTES. FP16 and BF16 travel as their 2-byte bit patterns (binary data) or
// as JSON numbers rounded to the nearest representable value. BYTES elements are byte strings:
// JSON strings, or in binary data each a 4-byte little-endian length followed by its bytes.
// The datatypes are the dtype table's rows (common/dtypes.h) whose numeric_on_wire is set, and
// BYTES.
using DataType = ::lepton::DType;

// IEEE half and bfloat16 from and to float, rounding to nearest even.
uint16_t HalfFromFloat(float f);
float FloatFromHalf(uint16_t h);
uint16_t Bf16FromFloat(float f);
float FloatFromBf16(uint16_t b);
std::optional<DataType> ParseDataType(std::string_view name);
const char* DataTypeName(DataType t);
size_t ElementSize(DataType t);  // 0 for BYTES, whose elements vary

// BYTES data as the codec holds it (and as binary data and gRPC raw contents carry it): each
// element a 4-byte little-endian length followed by its bytes.
void AppendBytesElement(std::string& out, std::string_view element);
// The elements of BYTES data; InvalidArgument (naming `where`) unless `data` is exactly `count`
// well-formed elements.
std::vector<std::string_view> SplitBytesElements(std::string_view data, int64_t count,
                                                 const std::string& where);

struct WireTensor {
  std::string name;
  std::vector<int64_t> shape;
  DataType datatype = DataType::kFp32;
  // Elements in row-major order, native byte order, ElementSize each (BYTES: length-prefixed,
  // see AppendBytesElement).
  std::string data;
  // In a response: sent as binary data after the JSON (Triton's binary tensor data extension)
  // rather than as a JSON list.
  bool binary = false;
  int64_t elements() const;
};

struct InferRequest {
  std::string id;
  std::optional<std::string> model_name;  // KServe's clients name the model in the body too
  std::vector<WireTensor> inputs;
  std::vector<std::string> outputs;  // names asked for; empty: all
  // Binary outputs: every output ("binary_data_output"), unless an output says otherwise
  // ("binary_data" on a requested output).
  bool binary_outputs = false;
  std::vector<std::pair<std::string, bool>> binary_output;
  // The request parameters lepton reads: the routing key ("key"); the deadline ("timeout" in
  // microseconds, as Triton's clients send it, or "lepton_timeout" in seconds); the priority
  // ("priority" as Triton means it, 1 the highest, or "lepton_priority", higher first).
  std::optional<std::string> key;
  std::optional<double> timeout_s;
  std::optional<int> priority;
};

// A request parameter's value as a transport carries it; monostate for values lepton never
// reads (objects, lists, null).
using ParameterValue =
    std::variant<std::monostate, bool, int64_t, uint64_t, double, std::string_view>;

// Reads one request-level parameter into `r` when lepton knows its name (see InferRequest);
// others are ignored. Throws InvalidArgument for a known name with a value of the wrong kind.
void ApplyRequestParameter(InferRequest& r, std::string_view key, const ParameterValue& value);

struct Limits {
  size_t max_inputs = 64;
  size_t max_dims = 16;
  int64_t max_elements = int64_t{1} << 28;  // in all inputs together
};

// Throws InvalidArgument naming the field at fault: not JSON, unknown fields, a datatype that is
// not carried, a shape that disagrees with the data's length, data of the wrong type or out of
// the datatype's range, nested data that is not rectangular, limits exceeded.
// `json_length` (the Inference-Header-Content-Length header) says that the body is that many bytes
// of JSON followed by binary tensor data: inputs with a `binary_data_size` parameter take their
// bytes from it in order, and every byte of it must be claimed.
InferRequest DecodeInferRequest(std::string_view body, const Limits& limits = {},
                                std::optional<size_t> json_length = std::nullopt);

// Whether output `name` goes back as binary data, as the request asked.
bool WantsBinary(const InferRequest& request, const std::string& name);

struct InferResponse {
  std::string model, version, id;
  std::vector<WireTensor> outputs;
  std::string parameters = "{}";  // a serialised JSON object, written into the response as it is
};
// The JSON response, followed by the binary data of outputs marked `binary`; `json_length` (for
// the Inference-Header-Content-Length header) is set to the JSON's length when there is any.
std::string EncodeInferResponse(const InferResponse& response,
                                std::optional<size_t>* json_length = nullptr);

}  // namespace lepton::oip
