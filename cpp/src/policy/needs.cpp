// What each policy needs loaded: the versions it can route a request or a mirror to by itself.
#include <algorithm>

#include "lepton/policy/policies.h"
#include "lepton/policy/routing.h"

namespace lepton {
namespace {

// `wanted` that are live, each once, in order; empty `wanted`: every live version.
std::vector<std::string> LiveOf(const std::vector<std::string>& wanted, const LiveVersions& live) {
  if (wanted.empty()) return live.versions;
  std::vector<std::string> out;
  for (const auto& v : wanted) {
    if (live.Has(v) && std::find(out.begin(), out.end(), v) == out.end()) out.push_back(v);
  }
  return out;
}

}  // namespace

std::vector<std::string> FixedPolicy::Needs(const LiveVersions& live) const {
  return LiveOf({version_.value_or(live.primary)}, live);
}

std::vector<std::string> EnsemblePolicy::Needs(const LiveVersions& live) const {
  return LiveOf(versions_, live);
}

std::vector<std::string> WeightedPolicy::Needs(const LiveVersions& live) const {
  std::vector<std::string> arms;
  for (size_t i = 0; i < chooser_.arms().size(); ++i) {
    if (chooser_.weights()[i] > 0) arms.push_back(chooser_.arms()[i]);
  }
  return LiveOf(arms, live);
}

std::vector<std::string> CanaryPolicy::Needs(const LiveVersions& live) const {
  return LiveOf({stable_, candidate_}, live);
}

std::vector<std::string> ShadowPolicy::Needs(const LiveVersions& live) const {
  std::vector<std::string> v{primary_.empty() ? live.primary : primary_};
  v.insert(v.end(), mirrors_.begin(), mirrors_.end());
  return LiveOf(v, live);
}

std::vector<std::string> BanditPolicy::Needs(const LiveVersions& live) const {
  return LiveOf(versions_, live);
}

std::vector<std::string> LeastLoadedPolicy::Needs(const LiveVersions& live) const {
  return LiveOf(versions_, live);
}

std::vector<std::string> BalancedPolicy::Needs(const LiveVersions& live) const {
  return LiveOf(versions_, live);
}

std::vector<std::string> ABTestPolicy::Needs(const LiveVersions& live) const {
  return LiveOf({control_, treatment_}, live);
}

std::vector<std::string> TimeBasedPolicy::Needs(const LiveVersions& live) const {
  std::vector<std::string> v;
  for (const auto& e : entries_) v.push_back(e.version);
  return LiveOf(v, live);
}

}  // namespace lepton
