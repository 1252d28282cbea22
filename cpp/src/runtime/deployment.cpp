#include "lepton/runtime/deployment.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "lepton/common/errors.h"
#include "lepton/common/names.h"
#include "lepton/common/process.h"
#include "lepton/control/alias_follower.h"
#include "lepton/control/artifact_source.h"
#include "lepton/control/cpu_planner.h"
#include "lepton/control/dormancy.h"
#include "lepton/control/feedback_ledger.h"
#include "lepton/control/policy_sync.h"
#include "lepton/control/scheduler.h"
#include "lepton/observe/anomaly_watch.h"
#include "lepton/observe/events.h"
#include "lepton/policy/policies.h"
#include "lepton/runtime/version_set.h"

namespace lepton {
namespace {

// The failure reason of the exception being handled, from the error table.
FailureReason CurrentFailure() { return KindOf(CurrentErrorOf().code).failure; }

DeploymentOptions Checked(DeploymentOptions o) {
  if (o.threads < 0) throw InvalidArgument("threads must be >= 0");
  if (o.threads == 0)
    o.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
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

// The coordinator: the request path and the control chores. Lock order: a unit's lock is never
// held while another unit is called, except the VersionSet's admin lock around a policy change,
// under which the PolicyController saves and restores state.
class Deployment::Impl {
 public:
  Impl(ArtifactSource source, std::optional<std::string> alias, DeploymentOptions options)
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

  ~Impl() { Close(); }

  void Start(const std::vector<std::string>& specs) {
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
    }
  }

  const std::string& model() const { return model_; }
  std::shared_ptr<const VersionState> Snapshot() const { return versions_.Snapshot(); }
  const std::shared_ptr<MemoryBudget>& memory_budget() const { return versions_.budget(); }

  // --- requests ---

  Prediction Predict(const Tensors& inputs, const PredictOptions& o) {
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

  // A client's malformed request is refused before any version runs it: it counts under no
  // version (so never against a canary's guardrails, an A/B test or an anomaly flag), and no
  // policy observes it.
  void CheckRequest(const std::function<void()>& check, const Route& route,
                    Clock::time_point start) {
    try {
      check();
    } catch (const InvalidArgument&) {
      metrics_.Series({model_, "", alias_.value_or(""), route.policy})
          .Failed(FailureReason::kInvalidInput, Seconds(Clock::now() - start));
      throw;
    }
  }

  Prediction PredictOn(const std::shared_ptr<const VersionState>& st, const Tensors& inputs,
                       const PredictOptions& o, Clock::time_point start) {
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
    std::string label;
    for (const auto& t : route.targets) {
      if (!st->live.Has(t.version)) {
        label.clear();
        break;
      }
      label += (label.empty() ? "" : "+") + t.version;
    }
    RequestSeries& series = metrics_.Series({model_, label, alias_.value_or(""), route.policy});
    // The versions' loaded servables, held until the answer: a version in use is never evicted.
    // A version that is not loaded loads now, while this request waits until its deadline.
    std::vector<VersionSlot::Lease> leases;
    std::vector<std::shared_ptr<Servable>> members;
    try {
      for (const auto& t : route.targets) {
        leases.push_back(st->Slot(t.version)->Acquire(deadline));
        members.push_back(leases.back().servable());
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
        NoteModelError(label);
      }
      throw;
    }
  }

  // A model error is an event, at most one per version and second so that a failing version
  // cannot flood the log; the rest are counted in the metrics.
  void NoteModelError(const std::string& version) {
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

  Prediction Answer(const VersionState& st, const Route& route,
                    const std::vector<std::shared_ptr<Servable>>& members, const Tensors& inputs,
                    const PredictOptions& o, Clock::time_point start) {
    Prediction p = executor_.Run(st, route, members, inputs, o, start);
    if (!route.mirrors.empty()) shadows_.Mirror(st, route, inputs, o.strings, p);
    return p;
  }

  Prediction Routed(const std::shared_ptr<const VersionState>& st, const Route& route,
                    const std::vector<std::shared_ptr<Servable>>& members, bool routed,
                    const Tensors& inputs, const PredictOptions& o, Clock::time_point start) {
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
    } catch (...) {
      // Bad input or a version that left: not the version's fault, but the request is over.
      Observe(policy, {version, Seconds(Clock::now() - start), false});
      throw;
    }
  }

  // A shared policy's outcomes on a replica that does not lead wait for the next sync.
  void Observe(const Policy& policy, const Outcome& outcome) {
    if (sync_) return sync_->Observe(policy, outcome);
    policy.Observe(outcome);
  }

  // A request another replica routed is unknown here: given the version that answered it (the
  // answer's model_version), its reward goes to the policy that replicas share.
  void Feedback(const std::string& request_id, double reward, const std::string& source,
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

  // --- changes ---

  // A change that brings a policy wakes the control chores: a policy that ticks (a canary) is
  // ticked from now on.
  void Add(const std::string& spec, std::shared_ptr<const Policy> policy) {
    const bool new_policy = policy != nullptr;
    versions_.Add(spec, std::move(policy));
    if (new_policy) Wake();
  }
  void Remove(const std::string& version, std::shared_ptr<const Policy> policy) {
    const bool new_policy = policy != nullptr;
    versions_.Remove(version, std::move(policy));
    if (new_policy) Wake();
  }
  void Swap(const std::string& from, const std::string& to) { versions_.Swap(from, to); }
  void SetPolicy(std::shared_ptr<const Policy> policy) {
    versions_.SetPolicy(std::move(policy));
    Wake();
  }
  void SetCombiner(Combiner combiner) { versions_.SetCombiner(std::move(combiner)); }
  void Pin(const std::string& version) { versions_.Pin(version); }
  void Unpin(const std::string& version) { versions_.Unpin(version); }
  bool Refresh() { return versions_.Refresh(); }

  std::vector<ShadowStats> Shadows() const { return shadows_.Stats(); }
  std::vector<AppliedEvent> Events() const { return controller_.Events(); }

  // --- the control chores ---

  void Wake() {
    woken_ = true;
    if (scheduler_) scheduler_->Wake(control_id_);
  }

  // Activity (a request, feedback) for the control chores; wakes them when they sleep.
  void Touch() {
    if (dormancy_.Touch()) Wake();
  }

  void NoteError(std::string what) {
    std::lock_guard<std::mutex> lk(error_mu_);
    last_error_ = std::move(what);
  }

  void TickPolicy() {
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

  void ApplyEvents(const VersionState& st, const std::vector<PolicyEvent>& events) {
    for (const auto& e : events) {
      controller_.Apply(*st.policy, e, [this](const std::string& v) { versions_.SetPrimary(v); });
    }
  }

  // Sends or takes in a shared policy's evidence, keeps or seeks its lead; the leader then
  // decides and stores the state.
  void SyncPolicy() {
    auto st = versions_.Snapshot();
    if (!st || versions_.closed()) return;
    sync_->Sync(st->policy, Clock::now());
    synced_ = st->policy.get();
    if (!PolicySync::Shares(*st->policy) || !sync_->Decides(*st->policy)) return;
    TickPolicy();
    ApplyEvents(*st, sync_->Commit({}));
  }

  // A new policy is synced at once: joined, or its predecessor's lead handed on.
  bool PolicyChanged() const {
    const auto st = versions_.Snapshot();
    return st && st->policy.get() != synced_;
  }

  bool SharesPolicy() const {
    if (!sync_) return false;
    const auto st = versions_.Snapshot();
    return st && PolicySync::Shares(*st->policy);
  }

  // The control chores, run on the process's shared scheduler rather than a thread of the
  // deployment's own: what is due runs, and the time of the next chore is returned.
  void StartControl() {
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

  Clock::time_point ControlOnce() {
    if (stopping_) return Clock::now() + std::chrono::hours(1);
    const bool woken = woken_.exchange(false);
    const auto now = Clock::now();
    if (follower_ && (now >= next_.poll || alias_pushed_.exchange(false))) {
      FollowAliasOnce();
      const bool pushed = alias_watch_ && versions_.registry()->AliasesPushed();
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
        anomalies_.Check(metrics_.Snapshot(),
                         [&](const std::string& v) { return st->live.Has(v); });
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
    if (auto until = dormancy_.Settle(
            now, woken, !ticking && !sharing && !follower_ && !options_.all_versions)) {
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

  void SaveCurrentState(bool force) {
    auto st = versions_.Snapshot();
    if (!st) return;
    try {
      controller_.Save(*st->policy, force);
    } catch (const std::exception& e) {
      NoteError(std::string("saving policy state: ") + e.what());
    }
  }

  void FollowAliasOnce() {
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

  void Rebalance() {
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

  void Close() {
    stopping_ = true;
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

  // --- reading ---

  DeploymentStatus Status() const {
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
      out.alias_pushed = alias_watch_ && versions_.registry()->AliasesPushed();
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
    return out;
  }

  MetricsSnapshot Metrics() const {
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

 private:
  const std::string model_;
  const std::optional<std::string> alias_;
  const DeploymentOptions options_;
  CpuPlanner planner_;  // used by the control chore only, after start
  FeedbackLedger ledger_;
  PolicyController controller_;
  VersionSet versions_;
  Executor executor_;
  ShadowComparator shadows_;
  AnomalyWatch anomalies_;
  std::optional<AliasFollower> follower_;
  RequestMetrics metrics_;
  std::unique_ptr<PolicySync> sync_;  // when the deployment shares its stateful policy
  const Policy* synced_ = nullptr;    // the policy of the last sync (the chore's own)

  // The control chores' next times: touched only by the chore, which never runs twice at once.
  struct {
    Clock::time_point poll, balance, tick, save, watch, refresh, sync;
  } next_;
  Scheduler* scheduler_ = nullptr;
  uint64_t control_id_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> woken_{false};
  Dormancy dormancy_;  // whether the chores sleep until the next request
  // Alias moves pushed by the registry, and how often the alias is still polled meanwhile.
  std::shared_ptr<void> alias_watch_;
  std::atomic<bool> alias_pushed_{false};
  static constexpr double kPushedPollS = 5.0;

  mutable std::mutex error_mu_;
  std::string last_error_;  // the latest failure of the control chores
  std::mutex error_event_mu_;
  std::map<std::string, double> last_error_event_;
};

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
