#include "lepton/oip.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "lepton/errors.h"

namespace lepton::oip {
namespace {

using json = nlohmann::json;

constexpr int kMaxDepth = 32;

template <typename T>
void Append(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

template <typename T>
T Read(const std::string& data, size_t i) {
  T v;
  std::memcpy(&v, data.data() + i * sizeof(T), sizeof(T));
  return v;
}

template <typename T>
void AppendInteger(std::string& out, const json& x, const std::string& where) {
  if (x.is_number_unsigned()) {
    const uint64_t u = x.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<T>::max())) {
      throw InvalidArgument(where + ": " + std::to_string(u) + " is out of range");
    }
    Append<T>(out, static_cast<T>(u));
  } else if (x.is_number_integer()) {
    const int64_t i = x.get<int64_t>();
    if (i < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
        (i > 0 &&
         static_cast<uint64_t>(i) > static_cast<uint64_t>(std::numeric_limits<T>::max()))) {
      throw InvalidArgument(where + ": " + std::to_string(i) + " is out of range");
    }
    Append<T>(out, static_cast<T>(i));
  } else {
    throw InvalidArgument(where + ": expected an integer, got " + x.dump());
  }
}

void AppendElement(std::string& out, DataType t, const json& x, const std::string& where) {
  switch (t) {
    case DataType::kBool:
      if (!x.is_boolean())
        throw InvalidArgument(where + ": expected true or false, got " + x.dump());
      Append<uint8_t>(out, x.get<bool>() ? 1 : 0);
      return;
    case DataType::kUInt8:
      return AppendInteger<uint8_t>(out, x, where);
    case DataType::kInt8:
      return AppendInteger<int8_t>(out, x, where);
    case DataType::kInt16:
      return AppendInteger<int16_t>(out, x, where);
    case DataType::kInt32:
      return AppendInteger<int32_t>(out, x, where);
    case DataType::kInt64:
      return AppendInteger<int64_t>(out, x, where);
    case DataType::kFp32:
    case DataType::kFp64: {
      if (!x.is_number()) throw InvalidArgument(where + ": expected a number, got " + x.dump());
      const double d = x.get<double>();
      if (t == DataType::kFp64) {
        Append<double>(out, d);
      } else {
        if (std::isfinite(d) && std::fabs(d) > std::numeric_limits<float>::max()) {
          throw InvalidArgument(where + ": " + x.dump() + " is out of FP32 range");
        }
        Append<float>(out, static_cast<float>(d));
      }
      return;
    }
  }
}

// Flattens `data` (flat, or nested row-major matching the shape) into `out`.
void Flatten(const json& data, const WireTensor& t, size_t depth, std::string& out, int64_t& count,
             int64_t limit, const std::string& where) {
  if (depth > kMaxDepth) throw InvalidArgument(where + ": data is nested too deeply");
  if (!data.is_array()) {
    if (++count > limit) throw InvalidArgument(where + ": more data than the shape holds");
    AppendElement(out, t.datatype, data, where + " element " + std::to_string(count - 1));
    return;
  }
  // Nested lists must follow the shape's dimensions.
  // A flat list holds every element; nested lists hold shape[depth] entries at each depth.
  const bool nested = depth > 0 || (!data.empty() && data.front().is_array());
  if (nested && (depth >= t.shape.size() || data.size() != static_cast<size_t>(t.shape[depth]))) {
    throw InvalidArgument(where + ": nested data has " + std::to_string(data.size()) +
                          " entries at depth " + std::to_string(depth) + " where the shape says " +
                          (depth < t.shape.size() ? std::to_string(t.shape[depth]) : "none"));
  }
  for (const auto& x : data) {
    if (depth == 0 || x.is_array()) {
      Flatten(x, t, depth + 1, out, count, limit, where);
    } else {
      if (++count > limit) throw InvalidArgument(where + ": more data than the shape holds");
      AppendElement(out, t.datatype, x, where + " element " + std::to_string(count - 1));
    }
  }
}

void CheckFields(const json& j, std::initializer_list<const char*> known,
                 const std::string& where) {
  for (const auto& [k, v] : j.items()) {
    bool ok = false;
    for (const char* n : known) ok = ok || k == n;
    if (!ok) throw InvalidArgument(where + " has an unknown field '" + k + "'");
  }
}

}  // namespace

std::optional<DataType> ParseDataType(std::string_view n) {
  if (n == "BOOL") return DataType::kBool;
  if (n == "UINT8") return DataType::kUInt8;
  if (n == "INT8") return DataType::kInt8;
  if (n == "INT16") return DataType::kInt16;
  if (n == "INT32") return DataType::kInt32;
  if (n == "INT64") return DataType::kInt64;
  if (n == "FP32") return DataType::kFp32;
  if (n == "FP64") return DataType::kFp64;
  return std::nullopt;
}

const char* DataTypeName(DataType t) {
  switch (t) {
    case DataType::kBool:
      return "BOOL";
    case DataType::kUInt8:
      return "UINT8";
    case DataType::kInt8:
      return "INT8";
    case DataType::kInt16:
      return "INT16";
    case DataType::kInt32:
      return "INT32";
    case DataType::kInt64:
      return "INT64";
    case DataType::kFp32:
      return "FP32";
    case DataType::kFp64:
      return "FP64";
  }
  return "?";
}

size_t ElementSize(DataType t) {
  switch (t) {
    case DataType::kBool:
    case DataType::kUInt8:
    case DataType::kInt8:
      return 1;
    case DataType::kInt16:
      return 2;
    case DataType::kInt32:
    case DataType::kFp32:
      return 4;
    case DataType::kInt64:
    case DataType::kFp64:
      return 8;
  }
  return 1;
}

int64_t WireTensor::elements() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

InferRequest DecodeInferRequest(std::string_view body, const Limits& limits) {
  json j = json::parse(body.begin(), body.end(), nullptr, false);
  if (j.is_discarded()) throw InvalidArgument("the request body is not valid JSON");
  if (!j.is_object()) throw InvalidArgument("the request body must be a JSON object");
  CheckFields(j, {"id", "inputs", "outputs", "parameters"}, "the request");
  InferRequest r;
  if (j.contains("id")) {
    if (!j["id"].is_string()) throw InvalidArgument("'id' must be a string");
    r.id = j["id"].get<std::string>();
  }
  if (j.contains("parameters")) {
    const json& p = j["parameters"];
    if (!p.is_object()) throw InvalidArgument("'parameters' must be an object");
    for (const auto& [k, v] : p.items()) {
      if (k == "key") {
        if (!v.is_string()) throw InvalidArgument("parameter 'key' must be a string");
        r.key = v.get<std::string>();
      } else if (k == "timeout") {
        if (!v.is_number() || !(v.get<double>() > 0) || !std::isfinite(v.get<double>())) {
          throw InvalidArgument("parameter 'timeout' must be a positive number of seconds");
        }
        r.timeout_s = v.get<double>();
      } else if (k == "priority") {
        if (!v.is_number_integer() || std::abs(v.get<int64_t>()) > 1000000) {
          throw InvalidArgument("parameter 'priority' must be an integer");
        }
        r.priority = static_cast<int>(v.get<int64_t>());
      }
      // Other parameters are the protocol's extension point and are ignored, as it asks.
    }
  }
  if (!j.contains("inputs") || !j["inputs"].is_array() || j["inputs"].empty()) {
    throw InvalidArgument("'inputs' must be a non-empty list of tensors");
  }
  if (j["inputs"].size() > limits.max_inputs) {
    throw InvalidArgument("too many inputs (at most " + std::to_string(limits.max_inputs) + ")");
  }
  int64_t budget = limits.max_elements;
  for (size_t i = 0; i < j["inputs"].size(); ++i) {
    const json& in = j["inputs"][i];
    std::string where = "input " + std::to_string(i);
    if (!in.is_object()) throw InvalidArgument(where + " must be an object");
    CheckFields(in, {"name", "shape", "datatype", "data", "parameters"}, where);
    WireTensor t;
    if (!in.contains("name") || !in["name"].is_string()) {
      throw InvalidArgument(where + " needs a string 'name'");
    }
    t.name = in["name"].get<std::string>();
    where = "input '" + t.name + "'";
    if (!in.contains("datatype") || !in["datatype"].is_string()) {
      throw InvalidArgument(where + " needs a string 'datatype'");
    }
    const std::string dt = in["datatype"].get<std::string>();
    auto parsed = ParseDataType(dt);
    if (!parsed) {
      throw InvalidArgument(where + ": datatype '" + dt +
                            "' is not supported (BOOL, UINT8, INT8, INT16, INT32, INT64, FP32, "
                            "FP64)");
    }
    t.datatype = *parsed;
    if (!in.contains("shape") || !in["shape"].is_array()) {
      throw InvalidArgument(where + " needs a 'shape' list");
    }
    if (in["shape"].size() > limits.max_dims) {
      throw InvalidArgument(where + ": shape has more than " + std::to_string(limits.max_dims) +
                            " dimensions");
    }
    int64_t expected = 1;
    for (const auto& d : in["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) {
        throw InvalidArgument(where + ": shape must hold non-negative integers, got " +
                              in["shape"].dump());
      }
      const int64_t v = d.get<int64_t>();
      if (v > 0 && expected > budget / v) {
        throw InvalidArgument(where + ": shape " + in["shape"].dump() +
                              " is larger than the request limit of " +
                              std::to_string(limits.max_elements) + " elements");
      }
      expected *= v;
      t.shape.push_back(v);
    }
    if (!in.contains("data")) throw InvalidArgument(where + " needs 'data'");
    t.data.reserve(static_cast<size_t>(expected) * ElementSize(t.datatype));
    int64_t count = 0;
    const json& data = in["data"];
    if (data.is_array()) {
      Flatten(data, t, 0, t.data, count, expected, where);
    } else {
      Flatten(json::array({data}), t, 0, t.data, count, expected, where);
    }
    if (count != expected) {
      throw InvalidArgument(where + ": shape " + in["shape"].dump() + " holds " +
                            std::to_string(expected) + " elements but data has " +
                            std::to_string(count));
    }
    budget -= expected;
    r.inputs.push_back(std::move(t));
  }
  if (j.contains("outputs")) {
    if (!j["outputs"].is_array()) throw InvalidArgument("'outputs' must be a list");
    for (const auto& o : j["outputs"]) {
      if (!o.is_object() || !o.contains("name") || !o["name"].is_string()) {
        throw InvalidArgument("each requested output needs a string 'name'");
      }
      CheckFields(o, {"name", "parameters"}, "requested output");
      r.outputs.push_back(o["name"].get<std::string>());
    }
  }
  return r;
}

std::string EncodeInferResponse(const InferResponse& response) {
  json j;
  j["model_name"] = response.model;
  j["model_version"] = response.version;
  if (!response.id.empty()) j["id"] = response.id;
  json params = json::parse(response.parameters, nullptr, false);
  if (!params.is_discarded() && !params.empty()) j["parameters"] = std::move(params);
  json outputs = json::array();
  for (const auto& t : response.outputs) {
    json o;
    o["name"] = t.name;
    o["datatype"] = DataTypeName(t.datatype);
    o["shape"] = t.shape;
    json data = json::array();
    const size_t n = t.data.size() / ElementSize(t.datatype);
    auto& arr = data.get_ref<json::array_t&>();
    arr.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      switch (t.datatype) {
        case DataType::kBool:
          arr.emplace_back(Read<uint8_t>(t.data, i) != 0);
          break;
        case DataType::kUInt8:
          arr.emplace_back(Read<uint8_t>(t.data, i));
          break;
        case DataType::kInt8:
          arr.emplace_back(Read<int8_t>(t.data, i));
          break;
        case DataType::kInt16:
          arr.emplace_back(Read<int16_t>(t.data, i));
          break;
        case DataType::kInt32:
          arr.emplace_back(Read<int32_t>(t.data, i));
          break;
        case DataType::kInt64:
          arr.emplace_back(Read<int64_t>(t.data, i));
          break;
        case DataType::kFp32: {
          const float f = Read<float>(t.data, i);
          arr.emplace_back(std::isfinite(f) ? json(f) : json(nullptr));
          break;
        }
        case DataType::kFp64: {
          const double d = Read<double>(t.data, i);
          arr.emplace_back(std::isfinite(d) ? json(d) : json(nullptr));
          break;
        }
      }
    }
    o["data"] = std::move(data);
    outputs.push_back(std::move(o));
  }
  j["outputs"] = std::move(outputs);
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace lepton::oip
