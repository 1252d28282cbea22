#include "lepton/runtime/version_set.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>

#include "lepton/common/errors.h"
#include "lepton/common/names.h"
#include "lepton/observe/events.h"
#include "lepton/policy/policies.h"

namespace lepton {
namespace {

std::string Json(const nlohmann::json& j) { return j.dump(); }

// The source, knowing the labels of the versions served elsewhere.
ArtifactSource WithRemotes(ArtifactSource source, const DeploymentOptions& options) {
  for (const auto& [label, remote] : options.remotes) source.AddExternal(label);
  return source;
}

}  // namespace

const std::shared_ptr<VersionSlot>& VersionState::Slot(const std::string& version) const {
  auto it = slots.find(version);
  if (it == slots.end()) {
    throw NotFound("version '" + version + "' of " + model +
                   " is not deployed (live: " + JoinNames(live.versions) + ")");
  }
  return it->second;
}

VersionSet::VersionSet(ArtifactSource source, const DeploymentOptions& options,
                       const CpuPlanner& planner, std::optional<std::string> alias,
                       std::function<void(const Policy&, const Policy&)> on_policy_change)
    : source_(WithRemotes(std::move(source), options)),
      options_(options),
      planner_(planner),
      alias_(std::move(alias)),
      on_policy_change_(std::move(on_policy_change)),
      budget_(options.memory_budget),
      pool_(std::make_shared<LoadPool>(options.load_threads, options.servable.idle_thread_s)),
      cores_(std::make_shared<CorePool>(options.threads)),
      load_seconds_(std::make_shared<Histogram>(LatencyBuckets())) {}

std::shared_ptr<const VersionState> VersionSet::LiveState() const {
  auto st = Snapshot();
  if (!st || closed_) throw Unavailable("deployment of " + model() + " is closed");
  return st;
}

std::shared_ptr<Servable> VersionSet::LoadServable(const ArtifactInfo& a) {
  ServableOptions o = options_.servable;
  // The cores are shared by the versions loaded now (under a budget, a few of the live ones).
  size_t sharing = live_hint_.load();
  if (budget_) {
    sharing = 1;
    if (auto st = Snapshot()) {
      for (const auto& [v, slot] : st->slots) sharing += v != a.label && slot->loaded() != nullptr;
    }
  }
  o.threads = planner_.InitialThreads(a.label, sharing);
  // A version with a budget of its own (version_threads) keeps to it; the others may run on a
  // core that no version uses when their share is full.
  o.cores = cores_;
  o.borrow = options_.version_threads.count(a.label) == 0;
  auto p = options_.version_priority.find(a.label);
  if (p != options_.version_priority.end()) o.priority = p->second;
  const auto t0 = Clock::now();
  try {
    // Where it runs: at a remote endpoint, in a worker process, or here.
    std::string where;
    std::shared_ptr<Servable> s;
    if (auto r = options_.remotes.find(a.label); r != options_.remotes.end()) {
      where = " at " + r->second.url;
      s = StartRemote(model(), a.label, r->second, o);
    } else if (options_.PlacementOf(a.label) == Placement::kProcess) {
      where = " in its own process";
      WorkerOptions w = options_.worker;
      auto res = options_.resources.find(a.label);
      if (res != options_.resources.end()) w.resources = res->second;
      s = StartWorker(model(), a.label, source_.PathOf(a), a.sha256, a.signature, o, w);
    } else {
      // Under a budget, versions come and go: the artifact is read into a buffer the budget
      // keeps for reuse, rather than mapped, populated and unmapped at every load.
      const ArtifactSource::Bytes artifact =
          source_.Read(a, budget_ ? budget_->buffers().get() : nullptr);
      // The registry's blob store checked the bytes against their hash as it read them.
      s = Servable::Load(model(), a.label, artifact.bytes, a.sha256, a.signature, o,
                         /*verified=*/source_.registry() != nullptr, artifact.keep,
                         artifact.pooled);
    }
    const ServableStats loaded = s->stats();
    EmitEvent("info", "load", model(), a.label,
              "loaded and warmed up " + model() + ":" + a.label + where,
              Json({{"seconds", Seconds(Clock::now() - t0)},
                    {"threads", o.threads},
                    {"warmup_runs", o.warmup_runs},
                    {"placement", loaded.placement},
                    {"pid", loaded.worker ? loaded.worker->pid : 0},
                    {"weight_bytes", loaded.weight_bytes},
                    {"shared_code", loaded.shared_code},
                    {"mapped", loaded.mapped},
                    {"pooled", loaded.pooled},
                    {"sha256", s->sha256()}}));
    return s;
  } catch (const std::exception& e) {
    EmitEvent("error", "load_failed", model(), a.label,
              "could not load " + model() + ":" + a.label + ": " + e.what());
    throw;
  }
}

std::shared_ptr<VersionSlot> VersionSet::MakeSlot(const ArtifactInfo& a) {
  VersionSlot::Config c;
  c.model = model();
  c.version = a.label;
  c.signature = a.signature;
  c.estimate_bytes = a.size;
  c.budget = budget_;
  c.pool = pool_;
  c.load_wait_s = options_.load_wait_s;
  c.retry_s = options_.load_retry_s;
  c.load_seconds = load_seconds_;
  // The set outlives its slots' loads: Close retires every slot, then stops the loader threads.
  return std::make_shared<VersionSlot>(std::move(c), [this, a] { return LoadServable(a); });
}

void VersionSet::Prepare(const VersionState& next, const std::string& what) {
  live_hint_ = std::max<size_t>(1, next.live.versions.size());
  if (!budget_) {
    for (const auto& [v, slot] : next.slots) slot->Load();
    return;
  }
  std::set<std::string> needs;
  for (const auto& v : next.policy->Needs(next.live)) needs.insert(v);
  if (alias_) needs.insert(next.live.primary);  // the alias's target takes traffic whatever
  std::map<std::string, bool> before;
  for (const auto& [v, slot] : next.slots) {
    before[v] = slot->stats().required;
    slot->SetRequired(needs.count(v) > 0);
  }
  try {
    budget_->CheckRequired(what);
    for (const auto& [v, slot] : next.slots) {
      if (needs.count(v) || slot->pinned()) slot->Load();
    }
  } catch (...) {
    for (const auto& [v, slot] : next.slots) slot->SetRequired(before[v]);
    throw;
  }
}

void VersionSet::Start(const std::vector<std::string>& specs) {
  std::vector<ArtifactInfo> infos;
  if (options_.all_versions) {
    if (!specs.empty()) throw InvalidArgument("all_versions takes no list of versions");
    infos = source_.All();
    if (infos.empty()) throw NotFound("model '" + model() + "' has no versions");
  } else {
    if (specs.empty()) throw InvalidArgument("a deployment needs at least one version");
    for (const auto& spec : specs) infos.push_back(source_.Resolve(spec));
  }
  auto st = std::make_shared<VersionState>();
  st->model = model();
  for (const auto& a : infos) {
    if (st->slots.count(a.label)) {
      throw InvalidArgument("version '" + a.label + "' is listed twice");
    }
    if (budget_) budget_->CheckFits(model() + ":" + a.label, a.size);
    st->slots.emplace(a.label, MakeSlot(a));
    st->live.versions.push_back(a.label);
  }
  st->live.primary = options_.all_versions ? st->live.versions.back() : st->live.versions.front();
  st->policy = std::make_shared<FixedPolicy>();
  st->policy->Validate(st->live);
  for (const auto& v : options_.pinned) st->Slot(v)->SetPinned(true);
  live_hint_ = st->live.versions.size();
  Prepare(*st, "starting " + model());
  Publish(st);
}

bool VersionSet::Refresh() {
  std::vector<std::shared_ptr<VersionSlot>> gone;
  {
    std::lock_guard<std::mutex> admin(admin_mu_);
    auto st = LiveState();
    std::set<std::string> present;
    std::vector<ArtifactInfo> fresh;
    for (auto& a : source_.All()) {
      present.insert(a.label);
      if (st->slots.count(a.label) || oversized_.count(a.label)) continue;
      if (budget_ && a.size > budget_->limit()) {
        oversized_.insert(a.label);  // said once, not at every poll
        EmitEvent("warning", "register", model(), a.label,
                  model() + ":" + a.label + " is larger than the memory budget; not served");
        continue;
      }
      fresh.push_back(std::move(a));
    }
    // Deleted from the registry: leaves unless it is the primary or the policy routes to it.
    const auto needs = st->policy->Needs(st->live);
    std::vector<std::string> deleted;
    for (const auto& v : st->live.versions) {
      if (!present.count(v) && v != st->live.primary &&
          std::find(needs.begin(), needs.end(), v) == needs.end()) {
        deleted.push_back(v);
      }
    }
    if (fresh.empty() && deleted.empty()) return false;
    auto next = std::make_shared<VersionState>(*st);
    std::vector<std::string> added;
    for (const auto& a : fresh) {
      next->slots.emplace(a.label, MakeSlot(a));
      next->live.versions.push_back(a.label);
      added.push_back(a.label);
    }
    for (const auto& v : deleted) {
      gone.push_back(next->slots.at(v));
      next->slots.erase(v);
      auto& lv = next->live.versions;
      lv.erase(std::find(lv.begin(), lv.end(), v));
    }
    next->policy->Validate(next->live);
    if (!budget_) Prepare(*next, "new versions of " + model());
    Publish(next);
    if (!added.empty()) {
      EmitEvent("info", "add", model(), added.back(),
                JoinNames(added) + (added.size() == 1 ? " was" : " were") + " registered and " +
                    (budget_ ? "can be loaded on demand" : "took traffic") + " in " + model(),
                Json({{"added", added}}));
    }
  }
  for (const auto& slot : gone) slot->Retire(options_.drain_timeout_s);
  return true;
}

void VersionSet::Pin(const std::string& version) {
  std::lock_guard<std::mutex> admin(admin_mu_);
  auto st = LiveState();
  const auto& slot = st->Slot(version);
  if (slot->pinned()) return;
  slot->SetPinned(true);
  try {
    if (budget_) budget_->CheckRequired("pinning " + model() + ":" + version);
    slot->Load();
  } catch (...) {
    slot->SetPinned(false);
    throw;
  }
  EmitEvent("info", "pin", model(), version, model() + ":" + version + " is pinned (kept loaded)");
}

void VersionSet::Unpin(const std::string& version) {
  std::lock_guard<std::mutex> admin(admin_mu_);
  auto st = LiveState();
  const auto& slot = st->Slot(version);
  if (!slot->pinned()) return;
  slot->SetPinned(false);
  EmitEvent("info", "unpin", model(), version,
            model() + ":" + version + " is no longer pinned" +
                (budget_ ? "; it may be unloaded to make room" : ""));
}

void VersionSet::Add(const std::string& spec, std::shared_ptr<const Policy> policy) {
  std::lock_guard<std::mutex> admin(admin_mu_);
  auto st = LiveState();
  const ArtifactInfo a = source_.Resolve(spec);
  if (st->slots.count(a.label)) {
    throw Conflict("version '" + a.label + "' is already deployed");
  }
  if (budget_) budget_->CheckFits(model() + ":" + a.label, a.size);
  auto next = std::make_shared<VersionState>(*st);
  next->live.versions.push_back(a.label);
  const bool new_policy = policy != nullptr;
  if (policy) next->policy = std::move(policy);
  next->slots.emplace(a.label, MakeSlot(a));
  next->policy->Validate(next->live);
  Prepare(*next, "adding " + model() + ":" + a.label);
  if (new_policy) on_policy_change_(*st->policy, *next->policy);
  Publish(next);
  EmitEvent("info", "add", model(), a.label, a.label + " takes traffic in " + model(),
            Json({{"live", next->live.versions}, {"policy", next->policy->Describe()}}));
}

void VersionSet::Remove(const std::string& version, std::shared_ptr<const Policy> policy) {
  std::shared_ptr<VersionSlot> gone;
  {
    std::lock_guard<std::mutex> admin(admin_mu_);
    auto st = LiveState();
    gone = st->Slot(version);
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
    next->slots.erase(version);
    if (next->live.primary == version) next->live.primary = v.front();
    const bool new_policy = policy != nullptr;
    if (policy) next->policy = std::move(policy);
    try {
      next->policy->Validate(next->live);
    } catch (const Error& e) {
      throw Conflict("cannot remove '" + version + "': " + e.what() +
                     "; set a policy without it first or pass one along");
    }
    Prepare(*next, "removing " + model() + ":" + version);
    if (new_policy) on_policy_change_(*st->policy, *next->policy);
    Publish(next);
  }
  const bool drained = gone->Retire(options_.drain_timeout_s);
  EmitEvent(drained ? "info" : "warning", "remove", model(), version,
            version + " left " + model() +
                (drained ? ", every request answered" : ", drain deadline reached"));
}

void VersionSet::Swap(const std::string& from, const std::string& to_spec) {
  std::shared_ptr<VersionSlot> old;
  {
    std::lock_guard<std::mutex> admin(admin_mu_);
    SwapLocked(from, to_spec, &old);
  }
  if (old) DrainSwapped(old);
}

void VersionSet::DrainSwapped(const std::shared_ptr<VersionSlot>& old) {
  const bool drained = old->Retire(options_.drain_timeout_s);
  EmitEvent(drained ? "info" : "warning", "drained", model(), old->version(),
            drained ? old->version() + " finished its requests and was unloaded"
                    : old->version() + " reached its drain deadline; queued requests failed");
}

void VersionSet::SwapLocked(const std::string& from, const std::string& to_spec,
                            std::shared_ptr<VersionSlot>* old) {
  auto st = LiveState();
  *old = st->Slot(from);
  const ArtifactInfo a = source_.Resolve(to_spec);
  if (a.label == from) {
    old->reset();
    return;
  }
  if (st->slots.count(a.label)) {
    throw Conflict("version '" + a.label + "' is already deployed");
  }
  if (budget_) budget_->CheckFits(model() + ":" + a.label, a.size);
  auto next = std::make_shared<VersionState>(*st);
  std::replace(next->live.versions.begin(), next->live.versions.end(), from, a.label);
  if (next->live.primary == from) next->live.primary = a.label;
  next->slots.erase(from);
  next->slots.emplace(a.label, MakeSlot(a));
  next->policy = next->policy->Renamed(from, a.label);
  next->policy->Validate(next->live);
  // Loaded and warmed before anything changes: a failure here leaves the deployment as it was.
  Prepare(*next, "swapping " + from + " for " + a.label);
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
  auto next = std::make_shared<VersionState>(*st);
  next->policy = std::move(policy);
  // What the policy routes to is loaded before it takes over (a canary's candidate included).
  Prepare(*next, "policy " + next->policy->Describe());
  on_policy_change_(*st->policy, *next->policy);
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
    try {
      Prepare(*next, "making " + version + " the primary");
    } catch (const std::exception& e) {
      // The switch stands; the version loads when its first request comes.
      EmitEvent("warning", "load_failed", model(), version,
                "could not load " + model() + ":" + version + " ahead of its traffic: " + e.what());
    }
    Publish(next);
  }
}

bool VersionSet::Follow(const std::string& target) {
  std::shared_ptr<VersionSlot> old;
  std::string from;
  {
    std::lock_guard<std::mutex> admin(admin_mu_);
    auto st = Snapshot();
    if (!st || closed_ || st->live.primary == target) return false;
    from = st->live.primary;
    if (st->live.Has(target)) {
      // Already live (a canary's candidate, or any version of an all-versions deployment): it
      // becomes the primary once loaded, nothing else changes.
      auto next = std::make_shared<VersionState>(*st);
      next->live.primary = target;
      Prepare(*next, "following " + model() + "@" + alias_.value_or("") + " to " + target);
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
