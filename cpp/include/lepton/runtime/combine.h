// How an ensemble turns its members' outputs into one answer: a weighted mean of floating outputs,
// or a weighted vote over class labels.
#pragma once

#include <functional>
#include <vector>

#include "lepton/policy/routing.h"
#include "lepton/runtime/servable.h"

namespace lepton {

// A caller-supplied combiner: member outputs (in route order) and their normalised weights.
using Combiner = std::function<Tensors(const std::vector<Tensors>&, const std::vector<double>&)>;

// `weights` need not be normalised. kAuto averages floating outputs and votes on integer or bool
// ones; kVote on floating outputs votes on their argmax over the last dimension.
Tensors CombineOutputs(const std::vector<Tensors>& outputs, const std::vector<double>& weights,
                       Combine mode);

}  // namespace lepton
