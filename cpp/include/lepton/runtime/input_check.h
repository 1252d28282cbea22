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

namespace lepton {

class InputCheck {
 public:
  InputCheck() = default;
  // `who` names the version in messages; `forward_names` and `forward_required` (those without a
  // default value) are used when the signature lists no inputs.
  InputCheck(std::string who, const std::optional<Signature>& signature,
             std::vector<std::string> forward_names, size_t forward_required);

  // InvalidArgument when `inputs` (named `names`, if given) do not fit.
  void Check(const std::vector<at::Tensor>& inputs, const std::vector<std::string>* names) const;
  const std::vector<std::string>& names() const { return names_; }

 private:
  std::string List() const;
  std::string Name(size_t i) const;

  std::string who_;
  std::optional<Signature> signature_;
  std::vector<at::ScalarType> types_;  // the signature's input dtypes, resolved once
  std::vector<std::string> names_;     // in order
  size_t required_ = 0;                // inputs without a default value
};

// "[2, 3]"
std::string ShapeString(at::IntArrayRef shape);
std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace lepton
