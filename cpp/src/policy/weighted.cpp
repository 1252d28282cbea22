// Weighted splits (random or sticky by rendezvous hashing) and the shadow policy.
#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "lepton/common/errors.h"
#include "lepton/common/names.h"
#include "lepton/policy/policies.h"
#include "policy_support.h"

namespace lepton {

using namespace policy_detail;

WeightedChooser::WeightedChooser(std::vector<std::string> arms, std::vector<double> weights)
    : arms_(std::move(arms)) {
  RequireDistinct(arms_, "a weighted split");
  if (weights.size() != arms_.size()) {
    throw InvalidArgument("a weighted split has " + std::to_string(arms_.size()) +
                          " versions but " + std::to_string(weights.size()) + " weights");
  }
  ValidateWeights(weights, "weights");
  double total = 0;
  for (double w : weights) total += w;
  double cumulative = 0;
  for (size_t i = 0; i < arms_.size(); ++i) {
    weights_.push_back(weights[i] / total);
    cumulative += weights_.back();
    cumulative_.push_back(cumulative);
    inverse_.push_back(weights_.back() > 0 ? 1.0 / weights_.back() : 0.0);
    seeds_.push_back(XXH3_64bits(arms_[i].data(), arms_[i].size()));
  }
  cumulative_.back() = 1.0;
}

size_t WeightedChooser::Random() const {
  const double u = Uniform(ThreadRng());
  const size_t n = cumulative_.size();
  for (size_t i = 0; i + 1 < n; ++i) {
    if (u < cumulative_[i] && weights_[i] > 0) return i;
  }
  for (size_t i = n; i-- > 0;) {
    if (weights_[i] > 0) return i;
  }
  return 0;
}

size_t WeightedChooser::ForKey(std::string_view key) const {
  // Weighted rendezvous hashing: arm i scores ln(u_i) / w_i with u_i a hash of (key, arm) in
  // (0, 1); the highest score wins. Each arm wins with probability w_i, and raising w_i only
  // raises arm i's score, so keys move to it and never between the others.
  const uint64_t h = XXH3_64bits(key.data(), key.size());
  size_t best = 0;
  double best_score = -INFINITY;
  for (size_t i = 0; i < seeds_.size(); ++i) {
    if (inverse_[i] == 0) continue;
    const float u = (float(SplitMix(h ^ seeds_[i]) >> 40) + 0.5f) * 0x1.0p-24f;
    const double score = double(std::log(u)) * inverse_[i];
    if (score > best_score) {
      best_score = score;
      best = i;
    }
  }
  return best;
}

// --- WeightedPolicy ---

WeightedPolicy::WeightedPolicy(std::vector<std::string> versions, std::vector<double> weights,
                               bool sticky)
    : chooser_(std::move(versions), std::move(weights)), sticky_(sticky) {
  for (size_t i = 0; i < chooser_.arms().size(); ++i) {
    const std::string share = Percent(chooser_.weights()[i]);
    reasons_.push_back("weighted split: " + share + " of requests");
    key_reasons_.push_back("sticky key: consistent hash over a " + share + " share");
  }
}

Route WeightedPolicy::Select(const RequestContext& request, const LiveVersions& live) const {
  (void)live;
  Route r;
  r.policy = "weighted";
  size_t i;
  if (sticky_ && request.key) {
    i = chooser_.ForKey(*request.key);
    r.reason = key_reasons_[i];
  } else {
    i = chooser_.Random();
    r.reason = reasons_[i];
  }
  r.targets.push_back({chooser_.arms()[i], 1.0});
  return r;
}

void WeightedPolicy::Validate(const LiveVersions& live) const {
  for (const auto& v : chooser_.arms()) RequireLive(v, live, "the weighted policy");
}

std::shared_ptr<const Policy> WeightedPolicy::Renamed(const std::string& from,
                                                      const std::string& to) const {
  return std::make_shared<WeightedPolicy>(Replace(chooser_.arms(), from, to), chooser_.weights(),
                                          sticky_);
}

std::string WeightedPolicy::Describe() const {
  std::ostringstream s;
  s << (sticky_ ? "sticky weighted(" : "weighted(");
  for (size_t i = 0; i < chooser_.arms().size(); ++i) {
    s << (i ? ", " : "") << chooser_.arms()[i] << "=" << Percent(chooser_.weights()[i]);
  }
  s << ")";
  return s.str();
}

// --- GuardrailMonitor ---

ShadowPolicy::ShadowPolicy(std::string primary, std::vector<std::string> mirrors)
    : primary_(std::move(primary)), mirrors_(std::move(mirrors)) {
  RequireDistinct(mirrors_, "a shadow");
  if (!primary_.empty()) {
    ValidateName(primary_, "version label");
    if (Contains(mirrors_, primary_)) {
      throw InvalidArgument("version '" + primary_ + "' cannot mirror itself");
    }
  }
}

Route ShadowPolicy::Select(const RequestContext& request, const LiveVersions& live) const {
  (void)request;
  const std::string& primary = primary_.empty() ? live.primary : primary_;
  Route r = OneTarget("shadow", primary, "shadow: the primary answers, mirrors get a copy");
  for (const auto& m : mirrors_) {
    if (m != primary) r.mirrors.push_back(m);
  }
  return r;
}

void ShadowPolicy::Validate(const LiveVersions& live) const {
  if (!primary_.empty()) RequireLive(primary_, live, "the shadow policy");
  for (const auto& m : mirrors_) RequireLive(m, live, "the shadow policy");
}

std::shared_ptr<const Policy> ShadowPolicy::Renamed(const std::string& from,
                                                    const std::string& to) const {
  return std::make_shared<ShadowPolicy>(primary_ == from ? to : primary_,
                                        Replace(mirrors_, from, to));
}

std::string ShadowPolicy::Describe() const {
  return "shadow(" + (primary_.empty() ? std::string("primary") : primary_) + " mirrored to " +
         JoinNames(mirrors_) + ")";
}

// --- BanditPolicy ---

}  // namespace lepton
