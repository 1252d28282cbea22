#include "lepton/runtime/input_check.h"

#include <sstream>

#include "lepton/common/dtypes.h"
#include "lepton/common/errors.h"
#include "lepton/runtime/tensor_types.h"

namespace lepton {

using Tensors = std::vector<at::Tensor>;

std::string ShapeString(at::IntArrayRef shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return ShapeString(at::IntArrayRef(shape));
}

InputCheck::InputCheck(std::string who, const std::optional<Signature>& signature,
                       std::vector<std::string> forward_names, size_t forward_required,
                       std::vector<bool> forward_strings)
    : who_(std::move(who)), signature_(signature) {
  if (signature_ && !signature_->inputs.empty()) {
    for (const auto& spec : signature_->inputs) {
      names_.push_back(spec.name);
      const DTypeInfo* d = DTypeNamed(spec.dtype);
      if (!d) throw InvalidArgument("dtype '" + spec.dtype + "' is not a dtype lepton knows");
      types_.push_back(d->type == DType::kString ? at::ScalarType::Undefined
                                                 : ScalarTypeOf(d->type));
      strings_.push_back(d->type == DType::kString);
    }
    required_ = names_.size();
    return;
  }
  names_ = std::move(forward_names);
  required_ = forward_required;
  strings_ = std::move(forward_strings);
}

std::string InputCheck::List() const {
  std::string out;
  for (const auto& n : names_) out += (out.empty() ? "'" : ", '") + n + "'";
  return out.empty() ? "none" : out;
}

std::string InputCheck::Name(size_t i) const {
  return signature_ && i < signature_->inputs.size() ? "input '" + signature_->inputs[i].name + "'"
                                                     : "input " + std::to_string(i);
}

// Messages are built only on failure: this runs on every request.
void InputCheck::Check(const Tensors& inputs, const std::vector<std::string>* names,
                       const StringTensors* strings) const {
  auto fail = [&](size_t i, const std::string& what) {
    throw InvalidArgument(who_ + ": " + Name(i) + " " + what);
  };
  if (inputs.empty()) throw InvalidArgument(who_ + ": no inputs given");
  if (!names_.empty() && (inputs.size() < required_ || inputs.size() > names_.size())) {
    throw InvalidArgument(who_ + " takes " +
                          (required_ == names_.size() ? std::to_string(names_.size())
                                                      : std::to_string(required_) + " to " +
                                                            std::to_string(names_.size())) +
                          " inputs (" + List() + "), got " + std::to_string(inputs.size()));
  }
  if (names) {
    if (names->size() != inputs.size()) {
      throw InvalidArgument(who_ + ": " + std::to_string(names->size()) + " input names for " +
                            std::to_string(inputs.size()) + " inputs");
    }
    for (size_t i = 0; i < names->size() && i < names_.size(); ++i) {
      if ((*names)[i] != names_[i]) {
        throw InvalidArgument(who_ + " has no input named '" + (*names)[i] + "' in position " +
                              std::to_string(i) + " (its inputs: " + List() + ")");
      }
    }
  }
  auto check_shape = [&](size_t i, at::IntArrayRef shape) {
    if (!signature_ || i >= signature_->inputs.size()) return;
    const TensorSpec& spec = signature_->inputs[i];
    if (spec.shape.empty()) return;
    bool fits = shape.size() == spec.shape.size();
    for (size_t d = 0; fits && d < spec.shape.size(); ++d) {
      fits = spec.shape[d] < 0 || spec.shape[d] == shape[d];
    }
    if (!fits) {
      fail(i, "has shape " + ShapeString(shape) + ", expected " + ShapeString(spec.shape) +
                  " (-1: any size)");
    }
  };
  auto typed = [&](size_t i) { return signature_ && i < signature_->inputs.size(); };
  for (size_t i = 0; i < inputs.size(); ++i) {
    const StringTensor* text = nullptr;
    if (strings) {
      if (auto it = strings->find(i); it != strings->end()) text = &it->second;
    }
    if (text) {
      const std::vector<int64_t>& shape = text->shape;
      if (shape.empty()) fail(i, "is a scalar; inputs need a batch dimension first");
      if (shape[0] == 0) fail(i, "is an empty batch (0 rows)");
      if (i < strings_.size() && !strings_[i]) {
        fail(i, "is a string tensor, expected " +
                    (typed(i) ? signature_->inputs[i].dtype : std::string("a tensor")));
      }
      check_shape(i, shape);
      continue;
    }
    const at::Tensor& t = inputs[i];
    if (i < strings_.size() && strings_[i]) {
      fail(i, "takes strings (List[str]), got " +
                  (t.defined() ? "a tensor of dtype " + DTypeName(t.scalar_type())
                               : std::string("an undefined tensor")));
    }
    if (!t.defined()) fail(i, "is an undefined tensor");
    if (!t.device().is_cpu()) {
      fail(i, "is on " + t.device().str() + "; lepton serves on CPU, move it with .cpu()");
    }
    if (t.dim() == 0) fail(i, "is a scalar; inputs need a batch dimension first");
    if (t.size(0) == 0) fail(i, "is an empty batch (0 rows)");
    if (!t.is_contiguous()) {
      fail(i,
           "of shape " + ShapeString(t.sizes()) + " is not contiguous; call .contiguous() first");
    }
    if (!typed(i)) continue;
    if (t.scalar_type() != types_[i]) {
      fail(i,
           "has dtype " + DTypeName(t.scalar_type()) + ", expected " + signature_->inputs[i].dtype);
    }
    check_shape(i, t.sizes());
  }
  if (strings) {
    for (const auto& [i, text] : *strings) {
      if (i >= inputs.size()) fail(i, "is a string tensor past the last input");
    }
  }
}

}  // namespace lepton
