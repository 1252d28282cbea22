// What a deployment reports: its status and its metrics.
#include <mutex>

#include "deployment_impl.h"
#include "lepton/common/errors.h"
#include "lepton/common/process.h"
#include "lepton/observe/events.h"
#include "lepton/policy/policies.h"

namespace lepton {

DeploymentStatus Deployment::Impl::Status() const {
  DeploymentStatus out;
  auto st = versions_.Snapshot();
  out.model = model_;
  out.alias = alias_;
  out.threads = options_.threads;
  out.adaptive = options_.adaptive;
  out.swaps = versions_.swaps();
  out.idle = dormancy_.asleep();
  {
    std::lock_guard<std::mutex> lk(error_mu_);
    out.last_error = last_error_;
  }
  if (follower_) {
    out.alias_follow_failures = follower_->failures();
    out.alias_pushed = alias_watched_ && versions_.registry()->AliasesPushed();
    out.registry_unreachable = follower_->registry_unreachable();
    out.alias_target_failed = follower_->failed_target();
  }
  if (!st) return out;
  if (sync_ && PolicySync::Shares(*st->policy)) out.policy_sync = sync_->Report();
  out.primary = st->live.primary;
  out.policy = st->policy->Describe();
  for (const auto& v : st->live.versions) {
    const auto& slot = st->slots.at(v);
    out.versions.push_back(slot->servable_stats());
    out.slots.push_back(slot->stats());
  }
  if (const auto& budget = versions_.budget()) out.memory = budget->stats();
  out.loader_threads = versions_.loader_threads();
  out.arrangements = executor_.arrangements();
  return out;
}

MetricsSnapshot Deployment::Impl::Metrics() const {
  MetricsSnapshot m;
  m.series = metrics_.Snapshot();
  m.model = model_;
  auto st = versions_.Snapshot();
  if (!st) return m;
  m.load_seconds = versions_.load_seconds()->snapshot();
  if (const auto& budget = versions_.budget()) {
    m.memory_limit_bytes = budget->limit();
    m.memory_used_bytes = budget->stats().used;
  }
  for (const auto& v : st->live.versions) {
    VersionGauges g = st->slots.at(v)->gauges();
    g.anomalous = anomalies_.Anomalous(v);
    m.versions.push_back(std::move(g));
  }
  return m;
}

}  // namespace lepton
