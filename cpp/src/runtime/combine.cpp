#include "lepton/runtime/combine.h"

#include <ATen/ATen.h>

#include <numeric>
#include <string>

#include "lepton/common/errors.h"

namespace lepton {
namespace {

std::string Shape(const at::Tensor& t) {
  std::string out = "[";
  for (int64_t d = 0; d < t.dim(); ++d) out += (d ? ", " : "") + std::to_string(t.size(d));
  return out + "]";
}

at::Tensor Mean(const std::vector<at::Tensor>& members, const std::vector<double>& w) {
  const at::ScalarType out_type =
      at::isFloatingType(members[0].scalar_type()) || at::isComplexType(members[0].scalar_type())
          ? members[0].scalar_type()
          : at::kDouble;
  at::Tensor sum = members[0].to(out_type) * w[0];
  for (size_t i = 1; i < members.size(); ++i) sum.add_(members[i].to(out_type), w[i]);
  return sum;
}

at::Tensor Vote(std::vector<at::Tensor> labels, const std::vector<double>& w) {
  const at::ScalarType original = labels[0].scalar_type();
  for (auto& l : labels) l = l.to(at::kLong);
  at::Tensor stacked = at::stack(labels, 0).reshape({static_cast<int64_t>(labels.size()), -1});
  if (stacked.numel() == 0) return labels[0].to(original);
  if (stacked.min().item<int64_t>() < 0) {
    throw ModelError("ensemble vote needs class labels >= 0");
  }
  const int64_t classes = stacked.max().item<int64_t>() + 1;
  const int64_t elements = stacked.size(1);
  at::Tensor tally = at::zeros({elements, classes}, at::kDouble);
  for (int64_t m = 0; m < stacked.size(0); ++m) {
    tally.scatter_add_(1, stacked[m].unsqueeze(1),
                       at::full({elements, 1}, w[static_cast<size_t>(m)], at::kDouble));
  }
  // Ties go to the smallest label, so the answer does not depend on member order.
  return tally.argmax(1).reshape(labels[0].sizes()).to(original);
}

}  // namespace

Tensors CombineOutputs(const std::vector<Tensors>& outputs, const std::vector<double>& weights,
                       Combine mode) {
  if (outputs.empty()) throw ModelError("ensemble has no member outputs to combine");
  if (outputs.size() != weights.size()) {
    throw InvalidArgument("ensemble has " + std::to_string(outputs.size()) + " outputs but " +
                          std::to_string(weights.size()) + " weights");
  }
  ValidateWeights(weights, "ensemble weights");
  const double total = std::accumulate(weights.begin(), weights.end(), 0.0);
  std::vector<double> w;
  for (double x : weights) w.push_back(x / total);

  const size_t n = outputs[0].size();
  for (size_t m = 1; m < outputs.size(); ++m) {
    if (outputs[m].size() != n) {
      throw ModelError("ensemble members return different numbers of outputs (" +
                       std::to_string(n) + " and " + std::to_string(outputs[m].size()) + ")");
    }
  }
  Tensors combined;
  for (size_t k = 0; k < n; ++k) {
    std::vector<at::Tensor> members;
    for (const auto& out : outputs) members.push_back(out[k]);
    for (size_t m = 1; m < members.size(); ++m) {
      if (!members[m].sizes().equals(members[0].sizes())) {
        throw ModelError("ensemble members disagree on output " + std::to_string(k) + ": shapes " +
                         Shape(members[0]) + " and " + Shape(members[m]));
      }
    }
    const bool floating =
        at::isFloatingType(members[0].scalar_type()) || at::isComplexType(members[0].scalar_type());
    Combine how = mode;
    if (how == Combine::kAuto) how = floating ? Combine::kMean : Combine::kVote;
    if (how == Combine::kMean) {
      combined.push_back(Mean(members, w));
    } else if (how == Combine::kVote) {
      if (floating) {
        for (auto& m : members) m = m.argmax(-1);
      }
      combined.push_back(Vote(members, w));
    } else {
      throw InvalidArgument("a custom combine mode needs a combiner");
    }
  }
  return combined;
}

}  // namespace lepton
