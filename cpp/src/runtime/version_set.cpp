#include "lepton/runtime/version_set.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "lepton/common/errors.h"
#include "lepton/common/names.h"
#include "lepton/observe/events.h"
#include "lepton/policy/policies.h"

namespace lepton {
namespace {

std::string Json(const nlohmann::json& j) { return j.dump(); }

}  // namespace

std::shared_ptr<Servable> VersionState::Lookup(const std::string& version) const {
  auto it = servables.find(version);
  if (it == servables.end()) {
    throw NotFound("version '" + version + "' of " + model +
                   " is not deployed (live: " + JoinNames(live.versions) + ")");
  }
  return it->second;
}

VersionSet::VersionSet(ArtifactSource source, const DeploymentOptions& options,
                       const CpuPlanner& planner, std::optional<std::string> alias,
                       std::function<void(const Policy&, const Policy&)> on_policy_change)
    : source_(std::move(source)),
      options_(options),
      planner_(planner),
      alias_(std::move(alias)),
      on_policy_change_(std::move(on_policy_change)) {}

std::shared_ptr<const VersionState> VersionSet::LiveState() const {
  auto st = Snapshot();
  if (!st || closed_) throw Unavailable("deployment of " + model() + " is closed");
  return st;
}

std::shared_ptr<Servable> VersionSet::LoadServable(const Artifact& a, size_t live_count) {
  ServableOptions o = options_.servable;
  o.threads = planner_.InitialThreads(a.label, live_count);
  auto p = options_.version_priority.find(a.label);
  if (p != options_.version_priority.end()) o.priority = p->second;
  const auto t0 = Clock::now();
  try {
    auto s = Servable::Load(model(), a.label, a.bytes, a.sha256, a.signature, o);
    EmitEvent("info", "load", model(), a.label, "loaded and warmed up " + model() + ":" + a.label,
              Json({{"seconds", Seconds(Clock::now() - t0)},
                    {"threads", o.threads},
                    {"warmup_runs", o.warmup_runs},
                    {"weight_bytes", s->stats().weight_bytes},
                    {"sha256", a.sha256}}));
    return s;
  } catch (const std::exception& e) {
    EmitEvent("error", "load_failed", model(), a.label,
              "could not load " + model() + ":" + a.label + ": " + e.what());
    throw;
  }
}

void VersionSet::Start(const std::vector<std::string>& specs) {
  if (specs.empty()) throw InvalidArgument("a deployment needs at least one version");
  auto st = std::make_shared<VersionState>();
  st->model = model();
  for (const auto& spec : specs) {
    Artifact a = source_.Fetch(spec);
    if (st->servables.count(a.label)) {
      throw InvalidArgument("version '" + a.label + "' is listed twice");
    }
    st->servables.emplace(a.label, LoadServable(a, specs.size()));
    st->live.versions.push_back(a.label);
  }
  st->live.primary = st->live.versions.front();
  st->policy = std::make_shared<FixedPolicy>();
  st->policy->Validate(st->live);
  Publish(st);
}

void VersionSet::Add(const std::string& spec, std::shared_ptr<const Policy> policy) {
  std::lock_guard<std::mutex> admin(admin_mu_);
  auto st = LiveState();
  Artifact a = source_.Fetch(spec);
  if (st->servables.count(a.label)) {
    throw Conflict("version '" + a.label + "' is already deployed");
  }
  auto next = std::make_shared<VersionState>(*st);
  next->live.versions.push_back(a.label);
  const bool new_policy = policy != nullptr;
  if (policy) next->policy = std::move(policy);
  auto servable = LoadServable(a, next->live.versions.size());
  next->servables.emplace(a.label, servable);
  next->policy->Validate(next->live);
  if (new_policy) on_policy_change_(*st->policy, *next->policy);
  Publish(next);
  EmitEvent("info", "add", model(), a.label, a.label + " takes traffic in " + model(),
            Json({{"live", next->live.versions}, {"policy", next->policy->Describe()}}));
}

void VersionSet::Remove(const std::string& version, std::shared_ptr<const Policy> policy) {
  std::shared_ptr<Servable> gone;
  {
    std::lock_guard<std::mutex> admin(admin_mu_);
    auto st = LiveState();
    gone = st->Lookup(version);
    if (st->live.versions.size() == 1) {
      throw Conflict("cannot remove '" + version + "', the only version deployed");
    }
    if (alias_ && st->live.primary == version) {
      throw Conflict("cannot remove '" + version + "': it is the target of the followed alias " +
                     *alias_);
    }
    auto next = std::make_shared<VersionState>(*st);
    auto& v = next->live.versions;
    v.erase(std::find(v.begin(), v.end(), version));
    next->servables.erase(version);
    if (next->live.primary == version) next->live.primary = v.front();
    const bool new_policy = policy != nullptr;
    if (policy) next->policy = std::move(policy);
    try {
      next->policy->Validate(next->live);
    } catch (const Error& e) {
      throw Conflict("cannot remove '" + version + "': " + e.what() +
                     "; set a policy without it first or pass one along");
    }
    if (new_policy) on_policy_change_(*st->policy, *next->policy);
    Publish(next);
  }
  const bool drained = gone->Drain(options_.drain_timeout_s);
  EmitEvent(drained ? "info" : "warning", "remove", model(), version,
            version + " left " + model() +
                (drained ? ", every request answered" : ", drain deadline reached"));
}

void VersionSet::Swap(const std::string& from, const std::string& to_spec) {
  std::shared_ptr<Servable> old;
  {
    std::lock_guard<std::mutex> admin(admin_mu_);
    SwapLocked(from, to_spec, &old);
  }
  if (old) DrainSwapped(old);
}

void VersionSet::DrainSwapped(const std::shared_ptr<Servable>& old) {
  const bool drained = old->Drain(options_.drain_timeout_s);
  EmitEvent(drained ? "info" : "warning", "drained", model(), old->version(),
            drained ? old->version() + " finished its requests and was unloaded"
                    : old->version() + " reached its drain deadline; queued requests failed");
}

void VersionSet::SwapLocked(const std::string& from, const std::string& to_spec,
                            std::shared_ptr<Servable>* old) {
  auto st = LiveState();
  *old = st->Lookup(from);
  Artifact a = source_.Fetch(to_spec);
  if (a.label == from) {
    old->reset();
    return;
  }
  if (st->servables.count(a.label)) {
    throw Conflict("version '" + a.label + "' is already deployed");
  }
  // Load and warm before anything changes: a failure here leaves the deployment as it was.
  auto fresh = LoadServable(a, st->live.versions.size());
  auto next = std::make_shared<VersionState>(*st);
  std::replace(next->live.versions.begin(), next->live.versions.end(), from, a.label);
  if (next->live.primary == from) next->live.primary = a.label;
  next->servables.erase(from);
  next->servables.emplace(a.label, fresh);
  next->policy = next->policy->Renamed(from, a.label);
  next->policy->Validate(next->live);
  Publish(next);
  ++swaps_;
  EmitEvent("info", "swap", model(), a.label, "swapped " + from + " for " + a.label,
            Json({{"from", from}, {"to", a.label}}));
}

void VersionSet::SetPolicy(std::shared_ptr<const Policy> policy) {
  if (!policy) throw InvalidArgument("policy must not be None");
  std::lock_guard<std::mutex> admin(admin_mu_);
  auto st = LiveState();
  policy->Validate(st->live);
  on_policy_change_(*st->policy, *policy);
  auto next = std::make_shared<VersionState>(*st);
  next->policy = std::move(policy);
  Publish(next);
  EmitEvent("info", "policy", model(), "", "policy set to " + next->policy->Describe());
}

void VersionSet::SetCombiner(Combiner combiner) {
  std::lock_guard<std::mutex> admin(admin_mu_);
  auto st = Snapshot();
  if (!st) throw Unavailable("deployment of " + model() + " is closed");
  auto next = std::make_shared<VersionState>(*st);
  next->combiner = std::move(combiner);
  Publish(next);
}

void VersionSet::SetPrimary(const std::string& version) {
  std::lock_guard<std::mutex> admin(admin_mu_);
  auto st = Snapshot();
  if (st && !closed_ && st->live.Has(version) && st->live.primary != version) {
    auto next = std::make_shared<VersionState>(*st);
    next->live.primary = version;
    Publish(next);
  }
}

bool VersionSet::Follow(const std::string& target) {
  std::shared_ptr<Servable> old;
  std::string from;
  {
    std::lock_guard<std::mutex> admin(admin_mu_);
    auto st = Snapshot();
    if (!st || closed_ || st->live.primary == target) return false;
    from = st->live.primary;
    if (st->live.Has(target)) {
      // Already live (a canary's candidate): it becomes the primary, nothing is loaded.
      auto next = std::make_shared<VersionState>(*st);
      next->live.primary = target;
      Publish(next);
    } else {
      SwapLocked(st->live.primary, target, &old);
    }
  }
  // Said once the move has happened, not each time it is attempted.
  EmitEvent("info", "alias", model(), target,
            model() + "@" + alias_.value_or("") + " moved from " + from + " to " + target,
            Json({{"alias", alias_.value_or("")}, {"from", from}, {"to", target}}));
  if (old) DrainSwapped(old);
  return true;
}

std::shared_ptr<const VersionState> VersionSet::Close() {
  std::lock_guard<std::mutex> admin(admin_mu_);
  if (closed_) return nullptr;
  closed_ = true;
  return Snapshot();
}

}  // namespace lepton
