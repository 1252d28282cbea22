#include "lepton/control/alias_follower.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "lepton/observe/events.h"

namespace lepton {

using SteadyClock = std::chrono::steady_clock;

AliasFollower::AliasFollower(std::string model, std::string alias)
    : model_(std::move(model)), alias_(std::move(alias)) {}

bool AliasFollower::BackingOff(const ModelVersion& target) const {
  std::lock_guard<std::mutex> lk(mu_);
  if (!unfollowable_ || unfollowable_->version != target.version ||
      unfollowable_->sha256 != target.sha256) {
    return false;
  }
  return SteadyClock::now() < unfollowable_->retry_at;
}

void AliasFollower::Attempting(const ModelVersion& target) {
  std::lock_guard<std::mutex> lk(mu_);
  attempting_.emplace(target.version, target.sha256);
}

void AliasFollower::Followed() {
  std::lock_guard<std::mutex> lk(mu_);
  unfollowable_.reset();
}

std::string AliasFollower::Failed(const std::optional<ModelVersion>& target,
                                  const std::string& from, const std::string& what) {
  std::lock_guard<std::mutex> lk(mu_);
  if (!target) {  // the registry could not be read: tried again at the next poll
    if (!unreachable_) {
      unreachable_ = true;
      EmitEvent("error", "registry_unreachable", model_, "",
                model_ + "@" + alias_ + " cannot be read from the registry (" + what +
                    "); the loaded versions keep serving",
                nlohmann::json({{"alias", alias_}, {"error", what}}).dump());
    }
    return what;
  }
  const bool same = unfollowable_ && unfollowable_->version == target->version &&
                    unfollowable_->sha256 == target->sha256;
  if (!same) unfollowable_ = Unfollowable{target->version, target->sha256, 0.5, {}};
  unfollowable_->backoff_s = std::min(unfollowable_->backoff_s * 2, 60.0);
  unfollowable_->retry_at =
      SteadyClock::now() + ClampedDuration<SteadyClock::duration>(unfollowable_->backoff_s);
  ++failures_;
  const std::string account = model_ + "@" + alias_ + " points to " + target->version +
                              ", which cannot be served (" + what + "); still serving " +
                              (from.empty() ? std::string("the previous version") : from);
  if (!same) {
    EmitEvent("error", "alias_follow_failed", model_, target->version, account,
              nlohmann::json({{"alias", alias_}, {"to", target->version}, {"error", what}}).dump());
  }
  return account;
}

void AliasFollower::Reached() {
  std::lock_guard<std::mutex> lk(mu_);
  if (!unreachable_) return;
  unreachable_ = false;
  EmitEvent("info", "registry_reachable", model_, "",
            model_ + "@" + alias_ + " can be read from the registry again",
            nlohmann::json({{"alias", alias_}}).dump());
}

bool AliasFollower::registry_unreachable() const {
  std::lock_guard<std::mutex> lk(mu_);
  return unreachable_;
}

std::optional<std::string> AliasFollower::failed_target() const {
  std::lock_guard<std::mutex> lk(mu_);
  if (!unfollowable_) return std::nullopt;
  if (attempting_ && (attempting_->first != unfollowable_->version ||
                      attempting_->second != unfollowable_->sha256)) {
    return std::nullopt;  // the alias has moved on from the target that failed
  }
  return unfollowable_->version;
}

int64_t AliasFollower::failures() const {
  std::lock_guard<std::mutex> lk(mu_);
  return failures_;
}

}  // namespace lepton
