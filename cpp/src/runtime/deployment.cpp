#include "lepton/runtime/deployment.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "deployment_impl.h"
#include "lepton/common/errors.h"
#include "lepton/common/names.h"
#include "lepton/common/process.h"
#include "lepton/observe/events.h"
#include "lepton/policy/policies.h"

namespace lepton {
namespace {

// The failure reason of the exception being handled, from the error table.
FailureReason CurrentFailure() { return KindOf(CurrentErrorOf().code).failure; }

DeploymentOptions Checked(DeploymentOptions o) {
  if (o.threads < 0) throw InvalidArgument("threads must be >= 0");
  if (o.threads == 0) o.threads = UsableCores();
  if (o.min_threads < 1) throw InvalidArgument("min_threads must be >= 1");
  if (!(o.drain_timeout_s >= 0)) throw InvalidArgument("drain_timeout must be >= 0");
  if (!(o.anomaly_interval_s > 0)) throw InvalidArgument("anomaly_interval must be > 0 seconds");
  if (o.load_threads < 1) throw InvalidArgument("load_threads must be >= 1");
  if (!(o.load_wait_s >= 0)) throw InvalidArgument("load_wait must be >= 0 seconds");
  if (!(o.load_retry_s >= 0)) throw InvalidArgument("load_retry must be >= 0 seconds");
  for (const auto& [v, t] : o.version_threads) {
    if (t < 1) throw InvalidArgument("threads for version '" + v + "' must be >= 1");
  }
  return o;
}

}  // namespace

Deployment::Impl::Impl(ArtifactSource source, std::optional<std::string> alias,
                       DeploymentOptions options)
    : model_(source.model()),
      alias_(std::move(alias)),
      options_(Checked(std::move(options))),
      planner_(options_.threads, options_.min_threads, options_.version_threads,
               options_.rebalance_interval_s),
      ledger_(model_, options_.feedback_window,
              [this](const Policy& p, const std::string& v, double reward,
                     const std::string& request_id) {
                if (sync_) return sync_->Feedback(p, v, reward, request_id);
                p.Feedback(v, reward);
              }),
      controller_(source.registry(), model_, alias_, ledger_,
                  [this](const Policy& p) { return sync_ && PolicySync::Shares(p); }),
      versions_(std::move(source), options_, planner_, alias_,
                [this](const Policy& out, const Policy& in) { controller_.Replacing(out, in); }),
      executor_(options_.threads),
      shadows_(options_.shadow_queue),
      anomalies_(model_) {
  if (alias_) follower_.emplace(model_, *alias_);
  const auto& registry = versions_.registry();
  if (registry && options_.share_policies.value_or(registry->networked())) {
    sync_ = std::make_unique<PolicySync>(
        registry, model_, options_.replica.empty() ? ReplicaName() : options_.replica,
        PolicySyncOptions{options_.policy_sync_s, options_.policy_lease_s});
  }
}

void Deployment::Impl::Start(const std::vector<std::string>& specs) {
  versions_.Start(specs);
  controller_.Restore(*versions_.Snapshot()->policy);
  // A replica that joins a shared policy routes by its stored state from the first request.
  if (sync_) sync_->Sync(versions_.Snapshot()->policy, Clock::now());
  StartControl();
  // A registry that pushes alias moves (PostgreSQL) wakes the chores to follow at once; the
  // poll stays, less often, for what a lost connection may have missed.
  if (follower_ && versions_.registry()) {
    alias_watch_ = versions_.registry()->WatchAliases([this](const std::string& model) {
      if (!model.empty() && model != model_) return;
      alias_pushed_ = true;
      Wake();
    });
    alias_watched_ = alias_watch_ != nullptr;
  }
}

Prediction Deployment::Impl::Predict(const Tensors& inputs, const PredictOptions& o) {
  const CountedRequest counted;
  const auto start = Clock::now();
  Touch();
  for (int attempt = 0;; ++attempt) {
    std::shared_ptr<const VersionState> st = versions_.Snapshot();
    if (!st || versions_.closed()) throw Unavailable("deployment of " + model_ + " is closed");
    try {
      return PredictOn(st, inputs, o, start);
    } catch (const Unavailable&) {
      // The version this request picked was swapped out and drained before it got there; the
      // new state has its replacement.
      if (attempt < 8 && versions_.Snapshot() != st && !versions_.closed()) continue;
      metrics_.Series({model_, "", alias_.value_or(""), ""})
          .Failed(FailureReason::kUnavailable, Seconds(Clock::now() - start));
      throw;
    }
  }
}

Prediction Deployment::Impl::PredictOn(const std::shared_ptr<const VersionState>& st,
                                       const Tensors& inputs, const PredictOptions& o,
                                       Clock::time_point start) {
  Route route;
  const Policy& policy = *st->policy;
  const bool routed = !o.context.version;
  if (!routed) {
    route.policy = policy.name();
    route.targets.push_back({*o.context.version, 1.0});
    route.reason = "version pinned by the request";
  } else {
    route = policy.Select(o.context, st->live);
  }
  if (route.targets.empty()) throw Unavailable("policy " + route.policy + " chose no version");
  std::optional<Clock::time_point> deadline;
  CheckRequest(
      [&] {
        if (o.timeout_s && !(*o.timeout_s > 0)) {
          throw InvalidArgument("timeout must be > 0 seconds");
        }
      },
      route, start);
  if (o.timeout_s) deadline = start + DeadlineIn(*o.timeout_s);
  // One series per answering version (an ensemble's members joined by '+'); a pinned version
  // that is not live counts under "" so that requests cannot mint label values.
  std::string joined;
  std::string_view label;
  if (std::all_of(route.targets.begin(), route.targets.end(),
                  [&](const Target& t) { return st->live.Has(t.version); })) {
    if (route.targets.size() == 1) {
      label = route.targets[0].version;
    } else {
      for (const auto& t : route.targets) joined += (joined.empty() ? "" : "+") + t.version;
      label = joined;
    }
  }
  RequestSeries& series =
      metrics_.Series(model_, label, alias_ ? std::string_view(*alias_) : "", route.policy);
  // The versions' loaded servables, held until the answer: a version in use is never evicted.
  // A version that is not loaded loads now, while this request waits until its deadline.
  c10::SmallVector<VersionSlot::Lease, 2> leases;
  Members members;
  try {
    for (const auto& t : route.targets) {
      leases.push_back(st->Slot(t.version)->Acquire(deadline, start));
      members.push_back(leases.back().servable().get());
    }
  } catch (const Unavailable&) {
    throw;  // a version that left: counted by Predict unless a retry answers it
  } catch (...) {
    series.Failed(CurrentFailure(), Seconds(Clock::now() - start));
    throw;
  }
  CheckRequest(
      [&] {
        const std::vector<std::string>* names = o.input_names.empty() ? nullptr : &o.input_names;
        for (const auto& m : members) m->CheckInputs(inputs, names, o.strings.get());
      },
      route, start);
  try {
    Prediction p = Routed(st, route, members, routed, inputs, o, start);
    for (const auto& l : leases) p.cold_start = p.cold_start || l.waited();
    int64_t rows = 1;
    if (o.strings && o.strings->count(0)) {
      rows = o.strings->at(0).shape.at(0);
    } else if (!inputs.empty() && inputs[0].defined() && inputs[0].dim() > 0) {
      rows = inputs[0].size(0);
    }
    series.Succeeded(p.queue_s, p.compute_s, p.latency_s, p.batch_rows, rows);
    return p;
  } catch (const Unavailable&) {
    throw;  // counted by Predict unless a retry answers it
  } catch (...) {
    const FailureReason reason = CurrentFailure();
    series.Failed(reason, Seconds(Clock::now() - start));
    if (reason == FailureReason::kModelError || reason == FailureReason::kInternal) {
      NoteModelError(std::string(label));
    }
    throw;
  }
}

void Deployment::Impl::NoteModelError(const std::string& version) {
  std::string what = "request failed";
  try {
    throw;
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
  }
  const double now = WallSeconds();
  {
    std::lock_guard<std::mutex> lk(error_event_mu_);
    double& last = last_error_event_[version];
    if (now - last < 1.0) return;
    last = now;
  }
  EmitEvent("error", "model_error", model_, version, what);
}

Prediction Deployment::Impl::Answer(const VersionState& st, const Route& route,
                                    const Members& members, const Tensors& inputs,
                                    const PredictOptions& o, Clock::time_point start) {
  Prediction p = executor_.Run(st, route, members, inputs, o, start);
  if (!route.mirrors.empty()) shadows_.Mirror(st, route, inputs, o.strings, p);
  return p;
}

Prediction Deployment::Impl::Routed(const std::shared_ptr<const VersionState>& st,
                                    const Route& route, const Members& members, bool routed,
                                    const Tensors& inputs, const PredictOptions& o,
                                    Clock::time_point start) {
  const Policy& policy = *st->policy;
  if (!routed || !policy.observes() || route.combine) {
    Prediction p = Answer(*st, route, members, inputs, o, start);
    if (routed && policy.takes_feedback()) ledger_.Remember(p.request_id, st->policy, p.versions);
    return p;
  }
  // The policy learns from how its requests end: every exit reports an outcome.
  const std::string& version = route.targets[0].version;
  try {
    Prediction p = Answer(*st, route, members, inputs, o, start);
    Observe(policy, {version, p.latency_s, false});
    if (policy.takes_feedback()) ledger_.Remember(p.request_id, st->policy, p.versions);
    return p;
  } catch (const ModelError&) {
    Observe(policy, {version, Seconds(Clock::now() - start), true});
    throw;
  } catch (const Timeout&) {
    Observe(policy, {version, Seconds(Clock::now() - start), true});
    throw;
  } catch (const BackendUnavailable&) {
    // Its worker crashed or is down: the version's own failure.
    Observe(policy, {version, Seconds(Clock::now() - start), true});
    throw;
  } catch (...) {
    // Bad input or a version that left: not the version's fault, but the request is over.
    Observe(policy, {version, Seconds(Clock::now() - start), false});
    throw;
  }
}

void Deployment::Impl::Observe(const Policy& policy, const Outcome& outcome) {
  if (sync_) return sync_->Observe(policy, outcome);
  policy.Observe(outcome);
}

void Deployment::Impl::Feedback(const std::string& request_id, double reward,
                                const std::string& source,
                                const std::optional<std::string>& version) {
  Touch();
  try {
    ledger_.Reward(request_id, reward, source);
  } catch (const NotFound&) {
    const auto st = versions_.Snapshot();
    if (!version || !sync_ || !st || !PolicySync::Shares(*st->policy) ||
        !st->policy->takes_feedback()) {
      throw;
    }
    ledger_.RewardElsewhere(request_id, reward, source, *st->policy, *version);
  }
  Wake();
}

void Deployment::Impl::Add(const std::string& spec, std::shared_ptr<const Policy> policy) {
  const bool new_policy = policy != nullptr;
  versions_.Add(spec, std::move(policy));
  if (new_policy) Wake();
}

void Deployment::Impl::Remove(const std::string& version, std::shared_ptr<const Policy> policy) {
  const bool new_policy = policy != nullptr;
  versions_.Remove(version, std::move(policy));
  if (new_policy) Wake();
}

void Deployment::Impl::SetPolicy(std::shared_ptr<const Policy> policy) {
  versions_.SetPolicy(std::move(policy));
  Wake();
}

Deployment::Deployment(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)), generation_(ForkGeneration()) {}

Deployment::Deployment(std::shared_ptr<Registry> registry, std::string model,
                       std::vector<std::string> versions, DeploymentOptions options)
    : generation_(ForkGeneration()) {
  impl_ = std::make_unique<Impl>(ArtifactSource(std::move(registry), std::move(model)),
                                 std::nullopt, std::move(options));
  impl_->Start(versions);
}

std::unique_ptr<Deployment> Deployment::FollowAlias(std::shared_ptr<Registry> registry,
                                                    std::string model, std::string alias,
                                                    DeploymentOptions options) {
  ArtifactSource source(std::move(registry), std::move(model));
  ValidateName(alias, "alias");
  auto impl = std::make_unique<Impl>(std::move(source), alias, std::move(options));
  impl->Start({"@" + alias});
  return std::unique_ptr<Deployment>(new Deployment(std::move(impl)));
}

Deployment::Deployment(std::string model, std::vector<std::pair<std::string, std::string>> files,
                       DeploymentOptions options)
    : generation_(ForkGeneration()) {
  ArtifactSource source(std::move(model), files);
  const std::vector<std::string> labels = source.labels();
  impl_ = std::make_unique<Impl>(std::move(source), std::nullopt, std::move(options));
  impl_->Start(labels);
}
Deployment::~Deployment() {
  // The parent's threads do not exist in a forked child: joining them would hang, so a copy
  // inherited through fork is left as it is.
  if (generation_ != ForkGeneration()) (void)impl_.release();
}

Deployment::Impl* Deployment::Live() const {
  if (generation_ != ForkGeneration()) {
    throw Unavailable("the deployment of " + impl_->model() +
                      " was made in the parent of this forked process, and its threads and "
                      "loaded versions do not exist here; create a new Deployment in this "
                      "process");
  }
  return impl_.get();
}

Prediction Deployment::Predict(const Tensors& inputs, const PredictOptions& options) {
  return Live()->Predict(inputs, options);
}
void Deployment::Add(const std::string& version, std::shared_ptr<const Policy> policy) {
  Live()->Add(version, std::move(policy));
}
void Deployment::Remove(const std::string& version, std::shared_ptr<const Policy> policy) {
  Live()->Remove(version, std::move(policy));
}
void Deployment::Swap(const std::string& from, const std::string& to) { Live()->Swap(from, to); }
void Deployment::SetPolicy(std::shared_ptr<const Policy> policy) {
  Live()->SetPolicy(std::move(policy));
}
void Deployment::SetCombiner(Combiner combiner) { Live()->SetCombiner(std::move(combiner)); }
void Deployment::Pin(const std::string& version) { Live()->Pin(version); }
void Deployment::Unpin(const std::string& version) { Live()->Unpin(version); }
bool Deployment::RefreshVersions() { return Live()->Refresh(); }
void Deployment::Feedback(const std::string& request_id, double reward, const std::string& source,
                          const std::optional<std::string>& version) {
  Live()->Feedback(request_id, reward, source, version);
}
std::vector<ShadowStats> Deployment::Shadows() const { return Live()->Shadows(); }
std::vector<AppliedEvent> Deployment::Events() const { return Live()->Events(); }
void Deployment::TickPolicy() { Live()->TickPolicy(); }
std::shared_ptr<const Policy> Deployment::policy() const {
  auto st = Live()->Snapshot();
  return st ? st->policy : nullptr;
}
std::vector<std::string> Deployment::versions() const {
  auto st = Live()->Snapshot();
  return st ? st->live.versions : std::vector<std::string>{};
}
std::string Deployment::primary() const {
  auto st = Live()->Snapshot();
  return st ? st->live.primary : "";
}
const std::shared_ptr<MemoryBudget>& Deployment::memory_budget() const {
  return Live()->memory_budget();
}
DeploymentStatus Deployment::Status() const { return Live()->Status(); }
MetricsSnapshot Deployment::Metrics() const { return Live()->Metrics(); }
const std::string& Deployment::model() const { return Live()->model(); }
void Deployment::Close() { Live()->Close(); }

}  // namespace lepton
