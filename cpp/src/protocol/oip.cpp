#include "lepton/protocol/oip.h"

#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <variant>

#include "lepton/common/errors.h"

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

using Element = simdjson::dom::element;
using ElementType = simdjson::dom::element_type;

std::string Text(Element x) { return simdjson::minify(x); }

bool IsString(Element x) { return x.type() == ElementType::STRING; }

std::string String(Element x) { return std::string(std::string_view(x)); }

// Where an element sits, spelt out only for an error message.
struct At {
  const std::string& tensor;
  int64_t index;
  std::string str() const { return tensor + " element " + std::to_string(index); }
};
std::string operator+(const At& at, const char* s) { return at.str() + s; }

template <typename T>
void AppendInteger(std::string& out, Element x, const At& where) {
  if (x.type() == ElementType::UINT64) {
    const uint64_t u = uint64_t(x);
    if (u > static_cast<uint64_t>(std::numeric_limits<T>::max())) {
      throw InvalidArgument(where + ": " + std::to_string(u) + " is out of range");
    }
    Append<T>(out, static_cast<T>(u));
  } else if (x.type() == ElementType::INT64) {
    const int64_t i = int64_t(x);
    if (i < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
        (i > 0 &&
         static_cast<uint64_t>(i) > static_cast<uint64_t>(std::numeric_limits<T>::max()))) {
      throw InvalidArgument(where + ": " + std::to_string(i) + " is out of range");
    }
    Append<T>(out, static_cast<T>(i));
  } else {
    throw InvalidArgument(where + ": expected an integer, got " + Text(x));
  }
}

// JSON has no NaN or infinity: they travel as the strings "NaN", "Infinity" and "-Infinity"
// (as JavaScript and Python spell them; "nan", "inf" and "-inf" are read too).
std::optional<double> NonFinite(std::string_view s) {
  std::string lower(s);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower == "nan") return std::numeric_limits<double>::quiet_NaN();
  if (lower == "infinity" || lower == "inf") return std::numeric_limits<double>::infinity();
  if (lower == "-infinity" || lower == "-inf") return -std::numeric_limits<double>::infinity();
  return std::nullopt;
}

void AppendElement(std::string& out, DataType t, Element x, const At& where) {
  switch (t) {
    case DataType::kBool:
      if (x.type() != ElementType::BOOL)
        throw InvalidArgument(where + ": expected true or false, got " + Text(x));
      Append<uint8_t>(out, bool(x) ? 1 : 0);
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
    case DataType::kFp16:
    case DataType::kBf16:
    case DataType::kFp32:
    case DataType::kFp64: {
      double d;
      if (x.is_number()) {
        d = double(x);
      } else if (auto special = IsString(x) ? NonFinite(std::string_view(x)) : std::nullopt) {
        d = *special;
      } else {
        throw InvalidArgument(where + ": expected a number, got " + Text(x));
      }
      if (t == DataType::kFp64) {
        Append<double>(out, d);
        return;
      }
      const double max = t == DataType::kFp16 ? 65504.0 : std::numeric_limits<float>::max();
      if (std::isfinite(d) && std::fabs(d) > max) {
        throw InvalidArgument(where + ": " + Text(x) + " is out of " + DataTypeName(t) + " range");
      }
      const float f = static_cast<float>(d);
      if (t == DataType::kFp16) {
        Append<uint16_t>(out, HalfFromFloat(f));
      } else if (t == DataType::kBf16) {
        Append<uint16_t>(out, Bf16FromFloat(f));
      } else {
        Append<float>(out, f);
      }
      return;
    }
    case DataType::kComplex64:
    case DataType::kComplex128:
    case DataType::kString:
      break;
  }
  throw InvalidArgument(where + ": datatype " + DataTypeName(t) + " is not carried");
}

void AppendCounted(std::string& out, const WireTensor& t, Element x, int64_t& count, int64_t limit,
                   const std::string& where) {
  if (++count > limit) throw InvalidArgument(where + ": more data than the shape holds");
  AppendElement(out, t.datatype, x, At{where, count - 1});
}

// Flattens `data` (flat, or nested row-major matching the shape) into `out`.
void Flatten(simdjson::dom::array data, const WireTensor& t, size_t depth, std::string& out,
             int64_t& count, int64_t limit, const std::string& where) {
  if (depth > kMaxDepth) throw InvalidArgument(where + ": data is nested too deeply");
  // A flat list holds every element; nested lists hold shape[depth] entries at each depth.
  const bool nested = depth > 0 || (data.begin() != data.end() && (*data.begin()).is_array());
  if (nested) {
    const size_t n = data.size();
    if (depth >= t.shape.size() || n != static_cast<size_t>(t.shape[depth])) {
      throw InvalidArgument(where + ": nested data has " + std::to_string(n) +
                            " entries at depth " + std::to_string(depth) +
                            " where the shape says " +
                            (depth < t.shape.size() ? std::to_string(t.shape[depth]) : "none"));
    }
  }
  for (Element x : data) {
    if (x.is_array()) {
      Flatten(simdjson::dom::array(x), t, depth + 1, out, count, limit, where);
    } else {
      AppendCounted(out, t, x, count, limit, where);
    }
  }
}

void CheckFields(simdjson::dom::object j, std::initializer_list<const char*> known,
                 const std::string& where) {
  for (auto field : j) {
    bool ok = false;
    for (const char* n : known) ok = ok || field.key == n;
    if (!ok)
      throw InvalidArgument(where + " has an unknown field '" + std::string(field.key) + "'");
  }
}

// The field `key` of `j`, if present.
std::optional<Element> Field(simdjson::dom::object j, std::string_view key) {
  Element e;
  if (j.at_key(key).get(e) != simdjson::SUCCESS) return std::nullopt;
  return e;
}

}  // namespace

uint16_t HalfFromFloat(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t abs = x & 0x7fffffff;
  if (abs >= 0x7f800000) {  // inf or NaN (a NaN keeps a payload bit)
    return sign | 0x7c00 | (abs > 0x7f800000 ? 0x200 : 0);
  }
  if (abs >= 0x477ff000) return sign | 0x7c00;  // rounds past 65504: inf
  if (abs < 0x38800000) {                       // a half subnormal, or zero
    if (abs < 0x33000000) return sign;          // under half the smallest subnormal
    const uint32_t mant = (abs & 0x7fffff) | 0x800000;
    const int shift = 126 - static_cast<int>(abs >> 23);  // 14..24
    uint32_t h = mant >> shift;
    const uint32_t rest = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (h & 1))) ++h;
    return sign | static_cast<uint16_t>(h);
  }
  uint32_t h = ((abs - 0x38000000) >> 13);  // rebias the exponent, keep 10 mantissa bits
  const uint32_t rest = abs & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
  return sign | static_cast<uint16_t>(h);
}

float FloatFromHalf(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  uint32_t x;
  if (exp == 0x1f) {
    x = sign | 0x7f800000 | (mant << 13);
  } else if (exp != 0) {
    x = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    x = sign;
  } else {  // subnormal: normalise
    int e = -1;
    uint32_t m = mant;
    do {
      ++e;
      m <<= 1;
    } while (!(m & 0x400));
    x = sign | (static_cast<uint32_t>(112 - e) << 23) | ((m & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t Bf16FromFloat(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((x >> 16) | 0x40);  // NaN
  x += 0x7fff + ((x >> 16) & 1);  // round to nearest even
  return static_cast<uint16_t>(x >> 16);
}

float FloatFromBf16(uint16_t b) {
  const uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

std::optional<DataType> ParseDataType(std::string_view n) {
  const DTypeInfo* d = DTypeOnWire(n);
  if (!d || !d->numeric_on_wire) return std::nullopt;
  return d->type;
}

const char* DataTypeName(DataType t) { return InfoOf(t).wire; }

size_t ElementSize(DataType t) { return InfoOf(t).size; }

int64_t WireTensor::elements() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

bool WantsBinary(const InferRequest& request, const std::string& name) {
  for (const auto& [n, binary] : request.binary_output) {
    if (n == name) return binary;
  }
  return request.binary_outputs;
}

// Binary tensor data is little-endian; tensors are copied to and from it byte for byte.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "binary tensor data is little-endian");

namespace {

// lepton's priorities run from -kTopPriority to kTopPriority, higher first.
constexpr int64_t kTopPriority = 1000000;

// A parameters object, absent, or null (as pydantic clients send): nullopt when absent or null.
std::optional<simdjson::dom::object> Parameters(simdjson::dom::object j, const std::string& where) {
  auto p = Field(j, "parameters");
  if (!p || p->is_null()) return std::nullopt;
  if (!p->is_object()) throw InvalidArgument(where + ": 'parameters' must be an object");
  return simdjson::dom::object(*p);
}

// Triton's shared-memory extension puts a tensor in a region named by parameters; lepton
// carries tensors in the request only, and says so rather than answer somewhere else.
void RefuseSharedMemory(simdjson::dom::object parameters, const std::string& where) {
  if (Field(parameters, "shared_memory_region")) {
    throw InvalidArgument(where +
                          " names a shared memory region; lepton carries tensors in the "
                          "request only");
  }
}

bool BoolParameter(Element v, const std::string& what) {
  if (v.type() != ElementType::BOOL)
    throw InvalidArgument("parameter '" + what + "' must be true or false");
  return bool(v);
}

}  // namespace

void ApplyRequestParameter(InferRequest& r, std::string_view key, const ParameterValue& v) {
  const auto* b = std::get_if<bool>(&v);
  const auto* i = std::get_if<int64_t>(&v);
  const auto* u = std::get_if<uint64_t>(&v);
  const auto* d = std::get_if<double>(&v);
  const auto* s = std::get_if<std::string_view>(&v);
  if (key == "key") {
    if (!s) throw InvalidArgument("parameter 'key' must be a string");
    r.key = std::string(*s);
  } else if (key == "timeout" || key == "lepton_timeout") {
    // Triton's clients send "timeout" in microseconds; lepton's own name takes seconds.
    const bool micros = key == "timeout";
    const double x = i ? double(*i) : u ? double(*u) : d ? *d : 0;
    if (!(x > 0) || !std::isfinite(x)) {
      throw InvalidArgument("parameter '" + std::string(key) + "' must be a positive number of " +
                            (micros ? "microseconds" : "seconds"));
    }
    r.timeout_s = micros ? x * 1e-6 : x;
  } else if (key == "priority") {
    // Triton's meaning: 0 is the default, 1 the highest, larger numbers lower. lepton serves
    // higher numbers first, so p becomes kTopPriority - p (1 the highest of all).
    if (!(u || (i && *i >= 0))) {
      throw InvalidArgument(
          "parameter 'priority' must be a non-negative integer (1 is the highest; 0 the "
          "default)");
    }
    const uint64_t p = u ? *u : uint64_t(*i);
    if (p > 0) {
      r.priority = static_cast<int>(kTopPriority -
                                    static_cast<int64_t>(std::min<uint64_t>(p, 2 * kTopPriority)));
    }
  } else if (key == "lepton_priority") {
    if (!i || std::abs(*i) > kTopPriority) {
      throw InvalidArgument("parameter 'lepton_priority' must be an integer in [-" +
                            std::to_string(kTopPriority) + ", " + std::to_string(kTopPriority) +
                            "] (higher is served first)");
    }
    r.priority = static_cast<int>(*i);
  } else if (key == "binary_data_output") {
    if (!b) throw InvalidArgument("parameter 'binary_data_output' must be true or false");
    r.binary_outputs = *b;
  }
  // Other parameters are the protocol's extension point and are ignored, as it asks.
}

InferRequest DecodeInferRequest(std::string_view body, const Limits& limits,
                                std::optional<size_t> json_length) {
  std::string_view binary;
  if (json_length) {
    if (*json_length > body.size()) {
      throw InvalidArgument("Inference-Header-Content-Length is " + std::to_string(*json_length) +
                            " but the body has " + std::to_string(body.size()) + " bytes");
    }
    binary = body.substr(*json_length);
    body = body.substr(0, *json_length);
  }
  size_t cursor = 0;  // into `binary`
  // One parser per thread keeps its buffers between requests; a large body gets a parser of its
  // own, so that no thread holds on to a large buffer afterwards.
  thread_local simdjson::dom::parser shared;
  std::optional<simdjson::dom::parser> own;
  simdjson::dom::parser& parser = body.size() <= (1 << 20) ? shared : own.emplace();
  Element root;
  const auto error = parser.parse(body.data(), body.size()).get(root);
  if (error == simdjson::DEPTH_ERROR) throw InvalidArgument("the request is nested too deeply");
  if (error) {
    throw InvalidArgument(json_length ? "the request's JSON header is not valid JSON"
                                      : "the request body is not valid JSON (a body with binary "
                                        "tensor data needs an Inference-Header-Content-Length "
                                        "header)");
  }
  if (!root.is_object()) throw InvalidArgument("the request body must be a JSON object");
  const simdjson::dom::object j(root);
  CheckFields(j, {"id", "model_name", "model_version", "inputs", "outputs", "parameters"},
              "the request");
  InferRequest r;
  if (auto id = Field(j, "id"); id && !id->is_null()) {
    if (!IsString(*id)) throw InvalidArgument("'id' must be a string");
    r.id = String(*id);
  }
  if (auto name = Field(j, "model_name"); name && !name->is_null()) {
    if (!IsString(*name)) throw InvalidArgument("'model_name' must be a string");
    r.model_name = String(*name);
  }
  if (auto p = Parameters(j, "the request")) {
    for (auto field : *p) {
      const Element v = field.value;
      ParameterValue value;
      switch (v.type()) {
        case ElementType::BOOL:
          value = bool(v);
          break;
        case ElementType::INT64:
          value = int64_t(v);
          break;
        case ElementType::UINT64:
          value = uint64_t(v);
          break;
        case ElementType::DOUBLE:
          value = double(v);
          break;
        case ElementType::STRING:
          value = std::string_view(v);
          break;
        default:
          break;  // an object, a list or null: some other meaning than lepton's
      }
      ApplyRequestParameter(r, field.key, value);
    }
  }
  auto inputs_field = Field(j, "inputs");
  if (!inputs_field || !inputs_field->is_array() ||
      simdjson::dom::array(*inputs_field).begin() == simdjson::dom::array(*inputs_field).end()) {
    throw InvalidArgument("'inputs' must be a non-empty list of tensors");
  }
  const simdjson::dom::array inputs(*inputs_field);
  if (inputs.size() > limits.max_inputs) {
    throw InvalidArgument("too many inputs (at most " + std::to_string(limits.max_inputs) + ")");
  }
  int64_t budget = limits.max_elements;
  size_t i = 0;
  for (Element element : inputs) {
    std::string where = "input " + std::to_string(i++);
    if (!element.is_object()) throw InvalidArgument(where + " must be an object");
    const simdjson::dom::object in(element);
    CheckFields(in, {"name", "shape", "datatype", "data", "parameters"}, where);
    WireTensor t;
    auto name = Field(in, "name");
    if (!name || !IsString(*name)) throw InvalidArgument(where + " needs a string 'name'");
    t.name = String(*name);
    where = "input '" + t.name + "'";
    auto datatype = Field(in, "datatype");
    if (!datatype || !IsString(*datatype)) {
      throw InvalidArgument(where + " needs a string 'datatype'");
    }
    const std::string dt = String(*datatype);
    auto parsed = ParseDataType(dt);
    if (!parsed) {
      throw InvalidArgument(where + ": datatype '" + dt +
                            "' is not supported (BOOL, UINT8, INT8, INT16, INT32, INT64, FP16, "
                            "BF16, FP32, FP64)");
    }
    t.datatype = *parsed;
    auto shape_field = Field(in, "shape");
    if (!shape_field || !shape_field->is_array()) {
      throw InvalidArgument(where + " needs a 'shape' list");
    }
    const simdjson::dom::array shape(*shape_field);
    if (shape.size() > limits.max_dims) {
      throw InvalidArgument(where + ": shape has more than " + std::to_string(limits.max_dims) +
                            " dimensions");
    }
    int64_t expected = 1;
    for (Element d : shape) {
      if (d.type() != ElementType::INT64 || int64_t(d) < 0) {
        if (d.type() == ElementType::UINT64) {
          throw InvalidArgument(where + ": shape " + Text(*shape_field) +
                                " is larger than the request limit of " +
                                std::to_string(limits.max_elements) + " elements");
        }
        throw InvalidArgument(where + ": shape must hold non-negative integers, got " +
                              Text(*shape_field));
      }
      const int64_t v = int64_t(d);
      if (v > 0 && expected > budget / v) {
        throw InvalidArgument(where + ": shape " + Text(*shape_field) +
                              " is larger than the request limit of " +
                              std::to_string(limits.max_elements) + " elements");
      }
      expected *= v;
      t.shape.push_back(v);
    }
    std::optional<int64_t> binary_size;
    if (auto p = Parameters(in, where)) {
      RefuseSharedMemory(*p, where);
      if (auto size = Field(*p, "binary_data_size")) {
        if (size->type() != ElementType::INT64 || int64_t(*size) < 0) {
          throw InvalidArgument(where + ": binary_data_size must be a non-negative integer");
        }
        binary_size = int64_t(*size);
      }
    }
    auto data = Field(in, "data");
    if (binary_size) {
      if (data) throw InvalidArgument(where + " has both 'data' and binary_data_size");
      if (!json_length) {
        throw InvalidArgument(where +
                              " has binary_data_size but the request has no "
                              "Inference-Header-Content-Length header");
      }
      const int64_t want = expected * static_cast<int64_t>(ElementSize(t.datatype));
      if (*binary_size != want) {
        throw InvalidArgument(where + ": binary_data_size is " + std::to_string(*binary_size) +
                              " bytes but shape " + Text(*shape_field) + " of " + dt + " takes " +
                              std::to_string(want));
      }
      if (static_cast<uint64_t>(*binary_size) > binary.size() - cursor) {
        throw InvalidArgument(where + ": binary_data_size " + std::to_string(*binary_size) +
                              " runs past the end of the body (" +
                              std::to_string(binary.size() - cursor) + " bytes left)");
      }
      t.data.assign(binary.substr(cursor, static_cast<size_t>(*binary_size)));
      cursor += static_cast<size_t>(*binary_size);
      if (t.datatype == DataType::kBool) {
        for (char& c : t.data) {
          if (c != 0 && c != 1) throw InvalidArgument(where + ": BOOL bytes must be 0 or 1");
        }
      }
    } else {
      if (!data) throw InvalidArgument(where + " needs 'data'");
      t.data.reserve(static_cast<size_t>(expected) * ElementSize(t.datatype));
      int64_t count = 0;
      if (data->is_array()) {
        Flatten(simdjson::dom::array(*data), t, 0, t.data, count, expected, where);
      } else {
        AppendCounted(t.data, t, *data, count, expected, where);
      }
      if (count != expected) {
        throw InvalidArgument(where + ": shape " + Text(*shape_field) + " holds " +
                              std::to_string(expected) + " elements but data has " +
                              std::to_string(count));
      }
    }
    budget -= expected;
    r.inputs.push_back(std::move(t));
  }
  if (auto outputs = Field(j, "outputs")) {
    if (!outputs->is_array()) throw InvalidArgument("'outputs' must be a list");
    for (Element o : simdjson::dom::array(*outputs)) {
      std::optional<Element> name;
      if (o.is_object()) name = Field(simdjson::dom::object(o), "name");
      if (!name || !IsString(*name)) {
        throw InvalidArgument("each requested output needs a string 'name'");
      }
      CheckFields(simdjson::dom::object(o), {"name", "parameters"}, "requested output");
      r.outputs.push_back(String(*name));
      if (auto p = Parameters(simdjson::dom::object(o), "requested output")) {
        RefuseSharedMemory(*p, "requested output '" + r.outputs.back() + "'");
        if (auto b = Field(*p, "binary_data")) {
          r.binary_output.emplace_back(r.outputs.back(), BoolParameter(*b, "binary_data"));
        }
      }
    }
  }
  if (cursor != binary.size()) {
    throw InvalidArgument("the body has " + std::to_string(binary.size() - cursor) +
                          " bytes of binary data that no input's binary_data_size claims");
  }
  return r;
}

namespace {

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

void AppendData(std::string& out, const WireTensor& t) {
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
