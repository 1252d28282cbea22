#include "lepton/runtime/forward_values.h"

#include <optional>

#include "lepton/common/errors.h"

namespace lepton {
namespace {

// A List[str] as a one-dimensional string tensor; nullopt for anything else.
std::optional<StringTensor> StringsOf(const c10::IValue& value) {
  if (!value.isList()) return std::nullopt;
  const auto list = value.toListRef();
  StringTensor out;
  out.values.reserve(list.size());
  for (const c10::IValue& e : list) {
    if (!e.isString()) return std::nullopt;
    out.values.push_back(e.toStringRef());
  }
  out.shape = {static_cast<int64_t>(out.values.size())};
  return out;
}

}  // namespace

std::vector<c10::IValue> ForwardArguments(const std::vector<at::Tensor>& inputs,
                                          const StringTensors* strings) {
  std::vector<c10::IValue> args(inputs.begin(), inputs.end());
  if (!strings) return args;
  for (const auto& [i, text] : *strings) {
    c10::List<std::string> list;
    list.reserve(text.values.size());
    for (const auto& v : text.values) list.push_back(v);
    args.at(i) = c10::IValue(std::move(list));
  }
  return args;
}

void ToOutputs(const c10::IValue& value, const std::string& who, std::vector<at::Tensor>& outputs,
               StringTensors& strings) {
  auto add = [&](const c10::IValue& e) {
    if (e.isTensor()) {
      outputs.push_back(e.toTensor());
    } else if (auto text = StringsOf(e)) {
      strings.emplace(outputs.size(), std::move(*text));
      outputs.emplace_back();
    } else {
      throw ModelError(
          who + " returned " + (value.isTuple() ? "a tuple holding " : "") + e.tagKind() +
          "; lepton serves models that return tensors or lists of strings (List[str]), "
          "alone or in a tuple");
    }
  };
  if (value.isTuple()) {
    for (const auto& e : value.toTupleRef().elements()) add(e);
  } else if (value.isTensorList()) {
    for (const at::Tensor& t : value.toTensorVector()) outputs.push_back(t);
  } else {
    add(value);
  }
}

}  // namespace lepton
