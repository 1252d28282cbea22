#include "lepton/policy/routing.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "lepton/common/errors.h"
#include "lepton/common/names.h"

namespace lepton {
namespace {

void RequireLive(const std::string& version, const LiveVersions& live, const char* who) {
  if (!live.Has(version)) {
    throw NotFound(std::string(who) + " names version '" + version +
                   "', which is not deployed (live: " + JoinNames(live.versions) + ")");
  }
}

}  // namespace

bool LiveVersions::Has(const std::string& v) const {
  return std::find(versions.begin(), versions.end(), v) != versions.end();
}

void ValidateWeights(const std::vector<double>& weights, const char* what) {
  double total = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    const double w = weights[i];
    if (std::isnan(w))
      throw InvalidArgument(std::string(what) + "[" + std::to_string(i) + "] is NaN");
    if (!std::isfinite(w) || w < 0) {
      throw InvalidArgument(std::string(what) + "[" + std::to_string(i) + "] is " +
                            std::to_string(w) + "; weights must be finite and >= 0");
    }
    total += w;
  }
  if (!weights.empty() && total <= 0) {
    throw InvalidArgument(std::string(what) + " are all zero; at least one must be > 0");
  }
}

FixedPolicy::FixedPolicy(std::optional<std::string> version) : version_(std::move(version)) {
  if (version_ && version_->empty())
    throw InvalidArgument("Fixed policy version must not be empty");
  if (version_) fixed_reason_ = Reason("fixed to " + *version_);
}

Route FixedPolicy::Select(const RequestContext&, const LiveVersions& live) const {
  Route r;
  r.policy = name();
  if (version_) {
    r.targets.push_back({*version_, 1.0});
    r.reason = fixed_reason_;
  } else {
    r.targets.push_back({live.primary, 1.0});
    // The primary changes rarely: each thread keeps the reason it built for the last one.
    thread_local std::pair<std::string, Reason> last;
    if (!last.second.present() || last.first != live.primary) {
      last = {live.primary, Reason("primary version " + live.primary)};
    }
    r.reason = last.second;
  }
  return r;
}

void FixedPolicy::Validate(const LiveVersions& live) const {
  if (version_) RequireLive(*version_, live, "Fixed policy");
}

std::shared_ptr<const Policy> FixedPolicy::Renamed(const std::string& from,
                                                   const std::string& to) const {
  if (version_ && *version_ == from) return std::make_shared<FixedPolicy>(to);
  return shared_from_this();
}

std::string FixedPolicy::Describe() const {
  return version_ ? "Fixed(" + *version_ + ")" : "Fixed(primary)";
}

EnsemblePolicy::EnsemblePolicy(std::vector<std::string> versions, std::vector<double> weights,
                               Combine combine, OnError on_error, bool balance)
    : versions_(std::move(versions)),
      weights_(std::move(weights)),
      combine_(combine),
      on_error_(on_error),
      balance_(balance) {
  if (!versions_.empty() && !weights_.empty() && versions_.size() != weights_.size()) {
    throw InvalidArgument("Ensemble has " + std::to_string(versions_.size()) + " versions but " +
                          std::to_string(weights_.size()) + " weights");
  }
  ValidateWeights(weights_, "Ensemble weights");
  for (size_t i = 0; i < versions_.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (versions_[i] == versions_[j]) {
        throw InvalidArgument("Ensemble lists version '" + versions_[i] + "' twice");
      }
    }
  }
}

Route EnsemblePolicy::Select(const RequestContext&, const LiveVersions& live) const {
  Route r;
  r.policy = name();
  r.combine = true;
  r.combine_mode = combine_;
  r.on_error = on_error_;
  r.balance = balance_;
  const std::vector<std::string>& members = versions_.empty() ? live.versions : versions_;
  for (size_t i = 0; i < members.size(); ++i) {
    r.targets.push_back({members[i], weights_.empty() ? 1.0 : weights_[i]});
  }
  std::ostringstream reason;
  reason << "ensemble of " << members.size() << " versions";
  r.reason = reason.str();
  return r;
}

void EnsemblePolicy::Validate(const LiveVersions& live) const {
  if (versions_.empty()) {
    if (!weights_.empty() && weights_.size() != live.versions.size()) {
      throw InvalidArgument("Ensemble has " + std::to_string(weights_.size()) + " weights for " +
                            std::to_string(live.versions.size()) + " live versions (" +
                            JoinNames(live.versions) + ")");
    }
    return;
  }
  for (const auto& v : versions_) RequireLive(v, live, "Ensemble");
}

std::shared_ptr<const Policy> EnsemblePolicy::Renamed(const std::string& from,
                                                      const std::string& to) const {
  std::vector<std::string> renamed = versions_;
  std::replace(renamed.begin(), renamed.end(), from, to);
  return std::make_shared<EnsemblePolicy>(renamed, weights_, combine_, on_error_, balance_);
}

std::string EnsemblePolicy::Describe() const {
  std::ostringstream out;
  out << "Ensemble(";
  if (versions_.empty()) out << "all live";
  for (size_t i = 0; i < versions_.size(); ++i) {
    out << (i ? ", " : "") << versions_[i];
    if (!weights_.empty()) out << "=" << weights_[i];
  }
  out << ")";
  return out.str();
}

void Policy::Feedback(const std::string& version, double reward) const {
  (void)version;
  (void)reward;
  throw InvalidArgument("policy " + name() + " takes no feedback");
}

void Policy::CheckReward(const std::string& version, double reward) const {
  (void)version;
  (void)reward;
  if (!takes_feedback()) throw InvalidArgument("policy " + name() + " takes no feedback");
}

std::vector<PolicyEvent> Policy::Tick(const LiveVersions& live, const LoadFn& load,
                                      double now) const {
  (void)live;
  (void)load;
  (void)now;
  return {};
}

}  // namespace lepton
