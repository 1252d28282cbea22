#include "lepton/protocol/oip_grpc.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <type_traits>

#include "inference.pb.h"
#include "lepton/common/errors.h"

namespace lepton::oip {
namespace {

using Input = inference::ModelInferRequest::InferInputTensor;
using Contents = inference::InferTensorContents;

ParameterValue ValueOf(const inference::InferParameter& p) {
  switch (p.parameter_choice_case()) {
    case inference::InferParameter::kBoolParam:
      return p.bool_param();
    case inference::InferParameter::kInt64Param:
      return p.int64_param();
    case inference::InferParameter::kUint64Param:
      return p.uint64_param();
    case inference::InferParameter::kDoubleParam:
      return p.double_param();
    case inference::InferParameter::kStringParam:
      return std::string_view(p.string_param());
    case inference::InferParameter::PARAMETER_CHOICE_NOT_SET:
      break;
  }
  return std::monostate{};
}

std::string ShapeText(const Input& in) {
  std::string s = "[";
  for (int i = 0; i < in.shape_size(); ++i) s += (i ? "," : "") + std::to_string(in.shape(i));
  return s + "]";
}

// How many elements all of a tensor's contents fields hold together.
int64_t ContentCount(const Contents& c) {
  return int64_t{c.bool_contents_size()} + c.int_contents_size() + c.int64_contents_size() +
         c.uint_contents_size() + c.uint64_contents_size() + c.fp32_contents_size() +
         c.fp64_contents_size() + c.bytes_contents_size();
}

template <typename T, typename Field>
void Pack(const Field& values, const std::string& where, std::string& out) {
  out.resize(static_cast<size_t>(values.size()) * sizeof(T));
  char* p = out.data();
  for (const auto v : values) {
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool> && sizeof(T) < 4) {
      const int64_t w = static_cast<int64_t>(v);
      if (w < std::numeric_limits<T>::min() || w > std::numeric_limits<T>::max()) {
        throw InvalidArgument(where + ": " + std::to_string(v) + " is out of range");
      }
    }
    const T x = static_cast<T>(v);
    std::memcpy(p, &x, sizeof(T));
    p += sizeof(T);
  }
}

// The field that carries a datatype's elements, packed into native bytes; throws when the
// elements are elsewhere or there is a different number of them.
void FromContents(const Contents& c, int64_t expected, const std::string& where, WireTensor& t) {
  const char* field = "";
  int64_t count = 0;
  switch (t.datatype) {
    case DataType::kBool:
      field = "bool_contents";
      count = c.bool_contents_size();
      break;
    case DataType::kInt8:
    case DataType::kInt16:
    case DataType::kInt32:
      field = "int_contents";
      count = c.int_contents_size();
      break;
    case DataType::kInt64:
      field = "int64_contents";
      count = c.int64_contents_size();
      break;
    case DataType::kUInt8:
      field = "uint_contents";
      count = c.uint_contents_size();
      break;
    case DataType::kFp32:
      field = "fp32_contents";
      count = c.fp32_contents_size();
      break;
    case DataType::kFp64:
      field = "fp64_contents";
      count = c.fp64_contents_size();
      break;
    case DataType::kString:
      field = "bytes_contents";
      count = c.bytes_contents_size();
      break;
    default:
      throw InvalidArgument(where + ": " + DataTypeName(t.datatype) +
                            " elements travel only as raw_input_contents");
  }
  if (count != ContentCount(c)) {
    throw InvalidArgument(where + ": " + DataTypeName(t.datatype) + " elements go in " + field);
  }
  if (count != expected) {
    throw InvalidArgument(where + ": shape holds " + std::to_string(expected) + " elements but " +
                          field + " has " + std::to_string(count));
  }
  switch (t.datatype) {
    case DataType::kBool:
      Pack<bool>(c.bool_contents(), where, t.data);
      break;
    case DataType::kInt8:
      Pack<int8_t>(c.int_contents(), where, t.data);
      break;
    case DataType::kInt16:
      Pack<int16_t>(c.int_contents(), where, t.data);
      break;
    case DataType::kInt32:
      Pack<int32_t>(c.int_contents(), where, t.data);
      break;
    case DataType::kInt64:
      Pack<int64_t>(c.int64_contents(), where, t.data);
      break;
    case DataType::kUInt8:
      Pack<uint8_t>(c.uint_contents(), where, t.data);
      break;
    case DataType::kFp32:
      Pack<float>(c.fp32_contents(), where, t.data);
      break;
    case DataType::kFp64:
      Pack<double>(c.fp64_contents(), where, t.data);
      break;
    case DataType::kString:
      for (const std::string& e : c.bytes_contents()) AppendBytesElement(t.data, e);
      break;
    default:
      break;
  }
}

void RefuseSharedMemory(const google::protobuf::Map<std::string, inference::InferParameter>& p,
                        const std::string& where) {
  if (p.count("shared_memory_region")) {
    throw InvalidArgument(where +
                          " names a shared memory region; lepton carries tensors in "
                          "the message only");
  }
}

}  // namespace

InferRequest DecodeGrpcInferRequest(inference::ModelInferRequest& m, const Limits& limits) {
  InferRequest r;
  r.id = m.id();
  if (!m.model_name().empty()) r.model_name = m.model_name();
  for (const auto& [key, value] : m.parameters()) ApplyRequestParameter(r, key, ValueOf(value));
  if (m.inputs_size() == 0) throw InvalidArgument("'inputs' must be a non-empty list of tensors");
  if (static_cast<size_t>(m.inputs_size()) > limits.max_inputs) {
    throw InvalidArgument("too many inputs (at most " + std::to_string(limits.max_inputs) + ")");
  }
  const bool raw = m.raw_input_contents_size() > 0;
  if (raw && m.raw_input_contents_size() != m.inputs_size()) {
    throw InvalidArgument("the request has " + std::to_string(m.inputs_size()) + " inputs but " +
                          std::to_string(m.raw_input_contents_size()) +
                          " raw_input_contents; either every input has raw contents or none");
  }
  int64_t budget = limits.max_elements;
  r.inputs.reserve(static_cast<size_t>(m.inputs_size()));
  for (int i = 0; i < m.inputs_size(); ++i) {
    Input& in = *m.mutable_inputs(i);
    WireTensor t;
    t.name = in.name();
    const std::string where = "input '" + t.name + "'";
    if (t.name.empty()) throw InvalidArgument("input " + std::to_string(i) + " needs a name");
    auto parsed = ParseDataType(in.datatype());
    if (!parsed) {
      throw InvalidArgument(where + ": datatype '" + in.datatype() +
                            "' is not supported (BOOL, UINT8, INT8, INT16, INT32, INT64, FP16, "
                            "BF16, FP32, FP64, BYTES)");
    }
    t.datatype = *parsed;
    RefuseSharedMemory(in.parameters(), where);
    if (static_cast<size_t>(in.shape_size()) > limits.max_dims) {
      throw InvalidArgument(where + ": shape has more than " + std::to_string(limits.max_dims) +
                            " dimensions");
    }
    int64_t expected = 1;
    for (const int64_t d : in.shape()) {
      if (d < 0) {
        throw InvalidArgument(where + ": shape must hold non-negative integers, got " +
                              ShapeText(in));
      }
      if (d > 0 && expected > budget / d) {
        throw InvalidArgument(where + ": shape " + ShapeText(in) +
                              " is larger than the request limit of " +
                              std::to_string(limits.max_elements) + " elements");
      }
      expected *= d;
      t.shape.push_back(d);
    }
    if (raw) {
      if (in.has_contents() && ContentCount(in.contents()) > 0) {
        throw InvalidArgument(where + " has both contents and raw_input_contents");
      }
      std::string* bytes = m.mutable_raw_input_contents(i);
      const int64_t want = expected * static_cast<int64_t>(ElementSize(t.datatype));
      if (t.datatype == DataType::kString) {
        SplitBytesElements(*bytes, expected, where);  // length-prefixed elements, as Triton's
      } else if (static_cast<int64_t>(bytes->size()) != want) {
        throw InvalidArgument(where + ": raw_input_contents has " + std::to_string(bytes->size()) +
                              " bytes but shape " + ShapeText(in) + " of " + in.datatype() +
                              " takes " + std::to_string(want));
      }
      t.data.swap(*bytes);
      if (t.datatype == DataType::kBool) {
        for (char c : t.data) {
          if (c != 0 && c != 1) throw InvalidArgument(where + ": BOOL bytes must be 0 or 1");
        }
      }
    } else {
      FromContents(in.contents(), expected, where, t);
    }
    budget -= expected;
    r.inputs.push_back(std::move(t));
  }
  for (const auto& o : m.outputs()) {
    if (o.name().empty()) throw InvalidArgument("each requested output needs a name");
    RefuseSharedMemory(o.parameters(), "requested output '" + o.name() + "'");
    r.outputs.push_back(o.name());
  }
  return r;
}

void EncodeGrpcInferResponse(InferResponse&& response, inference::ModelInferResponse* m) {
  m->set_model_name(std::move(response.model));
  m->set_model_version(std::move(response.version));
  m->set_id(std::move(response.id));
  if (!response.parameters.empty() && response.parameters != "{}") {
    const auto j = nlohmann::json::parse(response.parameters);
    auto& params = *m->mutable_parameters();
    for (const auto& [k, v] : j.items()) {
      inference::InferParameter& p = params[k];
      if (v.is_boolean()) {
        p.set_bool_param(v.get<bool>());
      } else if (v.is_number_unsigned()) {
        p.set_uint64_param(v.get<uint64_t>());
      } else if (v.is_number_integer()) {
        p.set_int64_param(v.get<int64_t>());
      } else if (v.is_number()) {
        p.set_double_param(v.get<double>());
      } else if (v.is_string()) {
        p.set_string_param(v.get<std::string>());
      } else {
        p.set_string_param(v.dump());
      }
    }
  }
  for (WireTensor& t : response.outputs) {
    auto* out = m->add_outputs();
    out->set_name(std::move(t.name));
    out->set_datatype(DataTypeName(t.datatype));
    for (const int64_t d : t.shape) out->add_shape(d);
    m->add_raw_output_contents(std::move(t.data));
  }
}

}  // namespace lepton::oip
