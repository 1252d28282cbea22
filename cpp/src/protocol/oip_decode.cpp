// Decoding inference requests: JSON, and JSON followed by binary tensor data.
#include <simdjson.h>

#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>

#include "lepton/common/errors.h"
#include "lepton/protocol/oip.h"

namespace lepton::oip {
namespace {

constexpr int kMaxDepth = 32;

template <typename T>
void Append(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
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
    case DataType::kString:
      if (!IsString(x)) throw InvalidArgument(where + ": expected a string, got " + Text(x));
      AppendBytesElement(out, std::string_view(x));
      return;
    case DataType::kComplex64:
    case DataType::kComplex128:
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
                            "BF16, FP32, FP64, BYTES)");
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
      const bool bytes = t.datatype == DataType::kString;
      const int64_t want = expected * static_cast<int64_t>(ElementSize(t.datatype));
      if (!bytes && *binary_size != want) {
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
      if (bytes) SplitBytesElements(t.data, expected, where);  // well-formed, or refused here
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
}  // namespace lepton::oip
