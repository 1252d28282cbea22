// The bookkeeping of a deployment that follows an alias: a target that fails to load is tried
// again after a growing pause (1 s doubling to 1 min) and said once, as an error, rather than on
// every poll; the previous version keeps serving meanwhile. Thread-safe.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "lepton/common/process.h"
#include "lepton/registry/registry.h"

namespace lepton {

class AliasFollower {
 public:
  AliasFollower(std::string model, std::string alias);

  const std::string& alias() const { return alias_; }
  // Whether `target` failed to load and its pause has not ended.
  bool BackingOff(const ModelVersion& target) const;
  // Following `target` begins: a failure of another target is no longer the alias's (the
  // alias moved), and the status stops showing it before the new target is published.
  void Attempting(const ModelVersion& target);
  // The alias's target now serves: any failure is forgotten.
  void Followed();
  // The registry was read. After a time it could not be (said once, as an error event), that it
  // can again is said once too.
  void Reached();
  // Following failed: `target` is null when the registry could not be read. Returns the account
  // of it for the deployment's status.
  std::string Failed(const std::optional<ModelVersion>& target, const std::string& from,
                     const std::string& what);

  // The target that cannot be loaded while the alias points to it, and the failures so far.
  std::optional<std::string> failed_target() const;
  int64_t failures() const;
  // The registry could not be read at the last try (the versions loaded keep serving).
  bool registry_unreachable() const;

 private:
  struct Unfollowable {
    std::string version, sha256;
    double backoff_s;
    std::chrono::steady_clock::time_point retry_at;
  };
  const std::string model_, alias_;
  mutable std::mutex mu_;
  std::optional<Unfollowable> unfollowable_;
  std::optional<std::pair<std::string, std::string>> attempting_;  // version, sha256
  int64_t failures_ = 0;
  bool unreachable_ = false;
};

}  // namespace lepton
