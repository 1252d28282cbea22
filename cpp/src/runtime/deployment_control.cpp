// A deployment's control chores: policy ticks and sync, alias following, rebalancing, state
// saves, the anomaly watch and version refreshes, run on the process's shared scheduler.
#include <mutex>

#include "deployment_impl.h"
#include "lepton/common/errors.h"
#include "lepton/common/process.h"
#include "lepton/observe/events.h"
#include "lepton/policy/policies.h"

namespace lepton {

void Deployment::Impl::Wake() {
  woken_ = true;
  if (scheduler_) scheduler_->Wake(control_id_);
}

void Deployment::Impl::Touch() {
  if (dormancy_.Touch()) Wake();
}

void Deployment::Impl::NoteError(std::string what) {
  std::lock_guard<std::mutex> lk(error_mu_);
  last_error_ = std::move(what);
}

void Deployment::Impl::TickPolicy() {
  auto st = versions_.Snapshot();
  if (!st || versions_.closed()) return;
  // A shared policy decides on the replica that leads it, which stores its state before what
  // it decided is applied.
  const bool shared = sync_ && PolicySync::Shares(*st->policy);
  if (shared && !sync_->Decides(*st->policy)) return;
  const LoadFn load = [&](const std::string& v) {
    VersionLoad l;
    auto it = st->slots.find(v);
    if (it == st->slots.end()) return l;
    auto loaded = it->second->loaded();
    if (!loaded) return l;
    const ServableStats s = loaded->stats();
    l.threads = s.threads;
    l.completed = s.succeeded;
    l.outstanding = s.in_flight + s.queued;
    l.busy_s = s.busy_s;
    return l;
  };
  std::vector<PolicyEvent> events;
  try {
    events = st->policy->Tick(st->live, load, WallSeconds());
  } catch (const std::exception& e) {
    NoteError(std::string("policy controller: ") + e.what());
    return;
  }
  if (shared && !events.empty()) events = sync_->Commit(std::move(events));
  ApplyEvents(*st, events);
}

void Deployment::Impl::ApplyEvents(const VersionState& st, const std::vector<PolicyEvent>& events) {
  for (const auto& e : events) {
    controller_.Apply(*st.policy, e, [this](const std::string& v) { versions_.SetPrimary(v); });
  }
}

void Deployment::Impl::SyncPolicy() {
  auto st = versions_.Snapshot();
  if (!st || versions_.closed()) return;
  sync_->Sync(st->policy, Clock::now());
  synced_ = st->policy.get();
  if (!PolicySync::Shares(*st->policy) || !sync_->Decides(*st->policy)) return;
  TickPolicy();
  ApplyEvents(*st, sync_->Commit({}));
}

bool Deployment::Impl::PolicyChanged() const {
  const auto st = versions_.Snapshot();
  return st && st->policy.get() != synced_;
}

bool Deployment::Impl::SharesPolicy() const {
  if (!sync_) return false;
  const auto st = versions_.Snapshot();
  return st && PolicySync::Shares(*st->policy);
}

void Deployment::Impl::StartControl() {
  const auto now0 = Clock::now();
  next_.poll = now0;
  next_.balance = now0 + DeadlineIn(options_.rebalance_interval_s);
  next_.tick = now0;
  next_.save = now0 + DeadlineIn(options_.state_save_s);
  next_.watch = now0 + DeadlineIn(options_.anomaly_interval_s);
  next_.refresh = now0 + DeadlineIn(options_.versions_poll_s);
  next_.sync = now0 + DeadlineIn(options_.policy_sync_s);
  scheduler_ = &Scheduler::Shared();
  control_id_ = scheduler_->Add([this] { return ControlOnce(); });
}

Clock::time_point Deployment::Impl::ControlOnce() {
  if (stopping_) return Clock::now() + std::chrono::hours(1);
  const bool woken = woken_.exchange(false);
  const auto now = Clock::now();
  if (follower_ && (now >= next_.poll || alias_pushed_.exchange(false))) {
    FollowAliasOnce();
    const bool pushed = alias_watched_ && versions_.registry()->AliasesPushed();
    next_.poll = now + DeadlineIn(pushed ? std::max(options_.alias_poll_s, kPushedPollS)
                                         : options_.alias_poll_s);
  }
  if (options_.all_versions && now >= next_.refresh) {
    try {
      versions_.Refresh();
    } catch (const std::exception& e) {
      NoteError(std::string("looking for new versions: ") + e.what());
    }
    next_.refresh = now + DeadlineIn(options_.versions_poll_s);
  }
  if (options_.adaptive && now >= next_.balance) {
    Rebalance();
    next_.balance = now + DeadlineIn(options_.rebalance_interval_s);
  }
  if (sync_ && (now >= next_.sync || PolicyChanged())) {
    SyncPolicy();
    next_.sync = now + DeadlineIn(options_.policy_sync_s);
  }
  if (woken || now >= next_.tick) {
    TickPolicy();
    next_.tick = now + DeadlineIn(options_.policy_tick_s);
  }
  if (now >= next_.watch) {
    if (auto st = versions_.Snapshot(); st && !versions_.closed()) {
      anomalies_.Check(metrics_.Snapshot(), [&](const std::string& v) { return st->live.Has(v); });
    }
    next_.watch = now + DeadlineIn(options_.anomaly_interval_s);
  }
  if (now >= next_.save) {
    SaveCurrentState(false);
    next_.save = now + DeadlineIn(options_.state_save_s);
  }
  // A policy that does not tick (fixed, a split, an ensemble) costs no wake-ups: many
  // deployments in one process sleep between their slower chores.
  bool ticking = true;
  if (const auto st = versions_.Snapshot()) ticking = st->policy->ticks();
  // A shared policy syncs whether or not this replica serves requests: its lead is kept, and
  // the others' decisions are followed.
  const bool sharing = SharesPolicy();
  // With no requests for a while the chores sleep until the next request or change wakes them,
  // unless something must be polled (a followed alias, new versions, a policy's clock).
  if (auto until = dormancy_.Settle(now, woken,
                                    !ticking && !sharing && !follower_ && !options_.all_versions)) {
    return *until;
  }
  auto wake = std::min(next_.save, next_.watch);
  if (ticking) wake = std::min(wake, next_.tick);
  if (sharing) wake = std::min(wake, next_.sync);
  if (follower_) wake = std::min(wake, next_.poll);
  if (options_.all_versions) wake = std::min(wake, next_.refresh);
  if (options_.adaptive) wake = std::min(wake, next_.balance);
  return wake;
}

void Deployment::Impl::SaveCurrentState(bool force) {
  auto st = versions_.Snapshot();
  if (!st) return;
  try {
    controller_.Save(*st->policy, force);
  } catch (const std::exception& e) {
    NoteError(std::string("saving policy state: ") + e.what());
  }
}

void Deployment::Impl::FollowAliasOnce() {
  std::optional<ModelVersion> target;
  std::string from;
  try {
    target = versions_.registry()->Get(model_ + "@" + follower_->alias());
    follower_->Reached();
    if (follower_->BackingOff(*target)) return;
    if (auto st = versions_.Snapshot()) from = st->live.primary;
    follower_->Attempting(*target);
    versions_.Follow(target->version);
    follower_->Followed();
    NoteError("");
  } catch (const std::exception& e) {
    NoteError(follower_->Failed(target, from, e.what()));
  }
}

void Deployment::Impl::Rebalance() {
  auto st = versions_.Snapshot();
  if (!st || versions_.closed()) return;
  // Over the versions loaded now: one that is not holds no cores.
  std::vector<VersionDemand> demand;
  std::map<std::string, std::shared_ptr<Servable>> loaded;
  for (const auto& v : st->live.versions) {
    auto s = st->slots.at(v)->loaded();
    if (!s) continue;
    const ServableStats stats = s->stats();
    demand.push_back({v, stats.busy_s, stats.queued + stats.in_flight});
    loaded.emplace(v, std::move(s));
  }
  if (demand.empty()) return;
  for (const auto& [v, threads] : planner_.Plan(demand)) loaded.at(v)->SetThreads(threads);
}

void Deployment::Impl::Close() {
  stopping_ = true;
  alias_watched_ = false;
  alias_watch_.reset();  // waits for a call in progress; none comes after
  // Waits for a chore in progress; none runs after.
  if (scheduler_) scheduler_->Remove(control_id_);
  shadows_.Stop();
  if (!versions_.closed()) SaveCurrentState(true);
  // A leader hands its shared policy on at once rather than after its lease.
  if (sync_) sync_->Leave();
  std::shared_ptr<const VersionState> st = versions_.Close();
  if (!st) return;
  for (const auto& [v, slot] : st->slots) slot->Retire(options_.drain_timeout_s);
  versions_.StopLoads();
  EmitEvent("info", "close", model_, "", "deployment of " + model_ + " closed");
}

}  // namespace lepton
