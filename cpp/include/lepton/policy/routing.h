// Routing: a Policy maps one request (its key, an optional pinned version, its headers) to a Route:
// the versions that answer it with their weights, the versions that get a mirrored copy, and why.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace lepton {

struct RequestContext {
  std::optional<std::string> key;      // sticky-routing key (a user id, a session)
  std::optional<std::string> version;  // a version the caller pinned
  std::map<std::string, std::string> headers;
};

struct Target {
  std::string version;
  double weight = 1.0;
};

// How an ensemble's member outputs become one answer.
enum class Combine {
  kAuto,    // weighted mean for floating outputs, weighted vote for integer or bool outputs
  kMean,    // weighted mean
  kVote,    // weighted vote per row over class labels
  kCustom,  // a caller-supplied combiner
};

// What an ensemble does when a member fails.
enum class OnError {
  kFail,  // the request fails with the member's error
  kSkip,  // the member is left out and the remaining weights are renormalised
};

// Why a route was chosen. Shared, so a policy hands out its precomputed reasons without copying.
class Reason {
 public:
  Reason() = default;
  Reason(std::string text) : text_(std::make_shared<const std::string>(std::move(text))) {}
  Reason(const char* text) : Reason(std::string(text)) {}
  const std::string& str() const {
    static const std::string kEmpty;
    return text_ ? *text_ : kEmpty;
  }
  operator const std::string&() const { return str(); }
  bool present() const { return text_ != nullptr; }

 private:
  std::shared_ptr<const std::string> text_;
};

struct Route {
  std::vector<Target> targets;       // one for a plain request, several for an ensemble
  std::vector<std::string> mirrors;  // copies sent off the request path; never change the answer
  bool combine = false;              // true: every target runs and outputs are combined
  Combine combine_mode = Combine::kAuto;
  OnError on_error = OnError::kFail;
  // An ensemble may balance its members over the cores in waves (see EnsemblePolicy).
  bool balance = false;
  std::string policy;  // the policy's name
  Reason reason;       // the rule that chose the targets, for the caller and the logs
};

// The versions a deployment has live, in the order they were added, and its primary: the version
// a plain request goes to (the followed alias's target, or the first version deployed).
struct LiveVersions {
  std::vector<std::string> versions;
  std::string primary;
  bool Has(const std::string& v) const;
};

// What a deployment knows of one live version's load, for policies that balance by it.
struct VersionLoad {
  int threads = 0;          // its CPU budget
  int64_t completed = 0;    // requests answered so far
  int64_t outstanding = 0;  // queued or running now
  double busy_s = 0;        // compute time so far
};
using LoadFn = std::function<VersionLoad(const std::string& version)>;

// How one routed request ended, reported back to the policy that routed it.
struct Outcome {
  std::string version;
  double latency_s = 0;
  bool error = false;  // the model failed or the request timed out (not bad input)
};

// An automatic switch a policy decided: the deployment applies it (the alias moves for
// kPromote/kRollback) and writes it to the registry's audit log with its evidence.
struct PolicyEvent {
  enum class Kind { kPromote, kRollback, kSwitch, kConclude };
  Kind kind = Kind::kSwitch;
  std::string action;  // audit action, e.g. canary_promote
  std::string from, to;
  std::string reason;
  std::string evidence;  // JSON object
  double time = 0;       // seconds since the epoch
};

class Policy {
 public:
  virtual ~Policy() = default;
  virtual std::string name() const = 0;
  // Thread-safe; called on every request.
  virtual Route Select(const RequestContext& request, const LiveVersions& live) const = 0;
  // Throws InvalidArgument/NotFound when the policy cannot work with these versions.
  virtual void Validate(const LiveVersions& live) const { (void)live; }
  // The same policy with version `from` replaced by `to` (after a swap); itself if unaffected.
  virtual std::shared_ptr<const Policy> Renamed(const std::string& from,
                                                const std::string& to) const = 0;
  // A one-line description for status output.
  virtual std::string Describe() const = 0;
  // The live versions this policy may send requests to (or mirror them to) by itself, not
  // counting versions a request names: under a memory budget they stay loaded. By default every
  // live version.
  virtual std::vector<std::string> Needs(const LiveVersions& live) const { return live.versions; }

  // --- for policies that learn or act on their own; the defaults do nothing ---

  // Whether Observe should be called for the requests this policy routed.
  virtual bool observes() const { return false; }
  // Called once per routed request when it ends (thread-safe).
  virtual void Observe(const Outcome& outcome) const { (void)outcome; }
  // Whether the policy learns from rewards (Deployment::Feedback).
  virtual bool takes_feedback() const { return false; }
  // A reward for a request this policy routed to `version`; InvalidArgument for a bad reward.
  virtual void Feedback(const std::string& version, double reward) const;
  // Throws what Feedback would for this reward, without taking it (a replica that passes its
  // rewards on to the one that decides checks them first).
  virtual void CheckReward(const std::string& version, double reward) const;
  // Whether Tick does anything: a deployment whose policy does not tick never wakes for it.
  virtual bool ticks() const { return false; }
  // Called by the deployment's controller every few milliseconds with the time (seconds since
  // the epoch); returns the switches decided since the last call.
  virtual std::vector<PolicyEvent> Tick(const LiveVersions& live, const LoadFn& load,
                                        double now) const;
  // The alias an automatic promotion or rollback moves; none: the deployment's followed alias.
  virtual std::optional<std::string> alias() const { return std::nullopt; }
  // Durable state: a non-empty key makes the deployment save SaveState() to the registry and
  // restore it with LoadState() when the policy is installed again (after a restart). Replicas
  // that share a registry share such a policy: one decides from everyone's outcomes and rewards,
  // and the others route by the state it stores (control/PolicySync).
  virtual std::string state_key() const { return ""; }
  virtual std::string SaveState() const { return ""; }
  virtual void LoadState(const std::string& state) const { (void)state; }
  // A JSON object with what the policy knows now (counts, evidence, phase).
  virtual std::string Report() const { return "{}"; }
};

// Every request goes to one version: the given one, or the deployment's primary when none is given.
class FixedPolicy final : public Policy, public std::enable_shared_from_this<FixedPolicy> {
 public:
  explicit FixedPolicy(std::optional<std::string> version = std::nullopt);
  std::string name() const override { return "fixed"; }
  Route Select(const RequestContext& request, const LiveVersions& live) const override;
  void Validate(const LiveVersions& live) const override;
  std::shared_ptr<const Policy> Renamed(const std::string& from,
                                        const std::string& to) const override;
  std::string Describe() const override;
  std::vector<std::string> Needs(const LiveVersions& live) const override;
  const std::optional<std::string>& version() const { return version_; }

 private:
  std::optional<std::string> version_;
  Reason fixed_reason_;  // "fixed to <version>", built once
};

// Every listed version answers each request; their outputs are combined with the weights.
class EnsemblePolicy final : public Policy {
 public:
  // Empty `versions`: every live version, with `weights` in live order (empty: equal weights).
  // `balance`: when the members do not divide evenly over the cores (three on two), run them in
  // waves on the deployment's TBB arena: one member per core while whole waves last, then the
  // remaining members with their batches split by rows over the spare cores (rows must be
  // independent, as dynamic batching also assumes).
  EnsemblePolicy(std::vector<std::string> versions, std::vector<double> weights,
                 Combine combine = Combine::kAuto, OnError on_error = OnError::kFail,
                 bool balance = true);
  std::string name() const override { return "ensemble"; }
  Route Select(const RequestContext& request, const LiveVersions& live) const override;
  void Validate(const LiveVersions& live) const override;
  std::shared_ptr<const Policy> Renamed(const std::string& from,
                                        const std::string& to) const override;
  std::string Describe() const override;
  std::vector<std::string> Needs(const LiveVersions& live) const override;

  const std::vector<std::string>& versions() const { return versions_; }
  const std::vector<double>& weights() const { return weights_; }
  Combine combine() const { return combine_; }
  OnError on_error() const { return on_error_; }
  bool balance() const { return balance_; }

 private:
  std::vector<std::string> versions_;
  std::vector<double> weights_;
  Combine combine_;
  OnError on_error_;
  bool balance_;
};

// Throws InvalidArgument unless every weight is finite and >= 0 and at least one is > 0.
void ValidateWeights(const std::vector<double>& weights, const char* what);

}  // namespace lepton
