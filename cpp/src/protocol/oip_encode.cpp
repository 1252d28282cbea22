// Encoding inference responses: JSON, and JSON followed by binary tensor data.
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <iterator>
#include <nlohmann/json.hpp>

#include "lepton/common/errors.h"
#include "lepton/protocol/oip.h"

namespace lepton::oip {
namespace {

using json = nlohmann::json;

template <typename T>
T Read(const std::string& data, size_t i) {
  T v;
  std::memcpy(&v, data.data() + i * sizeof(T), sizeof(T));
  return v;
}

void AppendString(std::string& out, std::string_view s) {
  out += json(s).dump(-1, ' ', false, json::error_handler_t::replace);
}

template <typename T>
void AppendNumber(std::string& out, T v) {
  fmt::format_to(std::back_inserter(out), "{}", v);
}

// Finite floats in their shortest form that reads back exactly, and always as a float ("1.0",
// not "1", which clients would read as an integer); JSON has no NaN or infinity, which are
// written as the strings "NaN", "Infinity" and "-Infinity" (the protocol's tensor data may hold
// strings, and numpy reads these back as the values).
template <typename T>
void AppendFloat(std::string& out, T v) {
  if (!std::isfinite(v)) {
    out += std::isnan(v) ? "\"NaN\"" : v > 0 ? "\"Infinity\"" : "\"-Infinity\"";
    return;
  }
  const size_t start = out.size();
  AppendNumber(out, v);
  if (out.find_first_of(".e", start) == std::string::npos) out += ".0";
}

// JSON strings hold text: bytes that are not UTF-8 are refused rather than altered.
void AppendBytesData(std::string& out, const WireTensor& t) {
  const auto elements = SplitBytesElements(t.data, t.elements(), "output '" + t.name + "'");
  for (size_t i = 0; i < elements.size(); ++i) {
    if (i) out += ',';
    try {
      out += json(elements[i]).dump(-1, ' ', false, json::error_handler_t::strict);
    } catch (const json::exception&) {
      throw InvalidArgument("output '" + t.name + "' element " + std::to_string(i) +
                            " holds bytes that are not UTF-8, which JSON cannot carry; ask for "
                            "the output as binary data (parameter binary_data)");
    }
  }
}

void AppendData(std::string& out, const WireTensor& t) {
  if (t.datatype == DataType::kString) return AppendBytesData(out, t);
  if (!InfoOf(t.datatype).numeric_on_wire) {
    throw InvalidArgument(std::string("output datatype ") + DataTypeName(t.datatype) +
                          " is not carried");
  }
  const size_t n = t.data.size() / ElementSize(t.datatype);
  for (size_t i = 0; i < n; ++i) {
    if (i) out += ',';
    switch (t.datatype) {
      case DataType::kBool:
        out += Read<uint8_t>(t.data, i) != 0 ? "true" : "false";
        break;
      case DataType::kUInt8:
        AppendNumber(out, static_cast<unsigned>(Read<uint8_t>(t.data, i)));
        break;
      case DataType::kInt8:
        AppendNumber(out, static_cast<int>(Read<int8_t>(t.data, i)));
        break;
      case DataType::kInt16:
        AppendNumber(out, Read<int16_t>(t.data, i));
        break;
      case DataType::kInt32:
        AppendNumber(out, Read<int32_t>(t.data, i));
        break;
      case DataType::kInt64:
        AppendNumber(out, Read<int64_t>(t.data, i));
        break;
      case DataType::kFp16:
        AppendFloat(out, FloatFromHalf(Read<uint16_t>(t.data, i)));
        break;
      case DataType::kBf16:
        AppendFloat(out, FloatFromBf16(Read<uint16_t>(t.data, i)));
        break;
      case DataType::kFp32:
        AppendFloat(out, Read<float>(t.data, i));
        break;
      case DataType::kFp64:
        AppendFloat(out, Read<double>(t.data, i));
        break;
      case DataType::kComplex64:
      case DataType::kComplex128:
      case DataType::kString:
        break;  // refused above
    }
  }
}

}  // namespace

// Written straight into one string: strings are escaped by nlohmann-json, numbers formatted by
// {fmt}; no document tree is built for what can be megabytes of numbers.
std::string EncodeInferResponse(const InferResponse& response, std::optional<size_t>* json_length) {
  size_t size = 256 + response.parameters.size();
  for (const auto& t : response.outputs) size += 64 + t.name.size() + t.data.size() * 4;
  std::string out;
  out.reserve(size);
  out += "{\"model_name\":";
  AppendString(out, response.model);
  out += ",\"model_version\":";
  AppendString(out, response.version);
  if (!response.id.empty()) {
    out += ",\"id\":";
    AppendString(out, response.id);
  }
  if (!response.parameters.empty() && response.parameters != "{}") {
    out += ",\"parameters\":";
    out += response.parameters;
  }
  out += ",\"outputs\":[";
  for (size_t k = 0; k < response.outputs.size(); ++k) {
    const WireTensor& t = response.outputs[k];
    if (k) out += ',';
    out += "{\"name\":";
    AppendString(out, t.name);
    out += ",\"datatype\":\"";
    out += DataTypeName(t.datatype);
    out += "\",\"shape\":[";
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (d) out += ',';
      AppendNumber(out, t.shape[d]);
    }
    if (t.binary) {
      out += "],\"parameters\":{\"binary_data_size\":";
      AppendNumber(out, static_cast<int64_t>(t.data.size()));
      out += "}}";
    } else {
      out += "],\"data\":[";
      AppendData(out, t);
      out += "]}";
    }
  }
  out += "]}";
  const size_t json_size = out.size();
  bool any_binary = false;
  for (const auto& t : response.outputs) {
    if (!t.binary) continue;
    any_binary = true;
    out += t.data;  // little-endian, row-major: the tensor's own bytes
  }
  if (json_length) *json_length = any_binary ? std::optional<size_t>(json_size) : std::nullopt;
  return out;
}

}  // namespace lepton::oip
