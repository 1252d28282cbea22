// What a version accepts from a request: its inputs' names (the signature's, else the forward's
// parameters), how many, and with a signature each one's dtype and shape. Checked before a
// request is queued, with a message that says which input is wrong and how.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "lepton/common/signature.h"
#include "lepton/runtime/string_tensor.h"

namespace lepton {

class InputCheck {
 public:
  InputCheck() = default;
  // `who` names the version in messages; `forward_names`, `forward_required` (those without a
  // default value) and `forward_strings` (which take List[str]) are used when the signature
  // lists no inputs.
  InputCheck(std::string who, const std::optional<Signature>& signature,
             std::vector<std::string> forward_names, size_t forward_required,
             std::vector<bool> forward_strings = {});

  // InvalidArgument when `inputs` (named `names`, if given) do not fit. `strings` holds the
  // string inputs by position (their tensors are undefined).
  void Check(const std::vector<at::Tensor>& inputs, const std::vector<std::string>* names,
             const StringTensors* strings = nullptr) const;
  const std::vector<std::string>& names() const { return names_; }
  size_t required() const { return required_; }
  const std::vector<bool>& strings() const { return strings_; }

 private:
  std::string List() const;
  std::string Name(size_t i) const;

  std::string who_;
  std::optional<Signature> signature_;
  // The signature's input dtypes, resolved once; Undefined for strings.
  std::vector<at::ScalarType> types_;
  std::vector<std::string> names_;  // in order
  size_t required_ = 0;             // inputs without a default value
  std::vector<bool> strings_;       // which inputs take strings, when known
};

// "[2, 3]"
std::string ShapeString(at::IntArrayRef shape);
std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace lepton
