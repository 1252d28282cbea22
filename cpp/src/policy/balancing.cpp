// Policies that follow the versions' load: least loaded (two choices) and balanced weights.
#include <algorithm>
#include <cmath>
#include <sstream>

#include "lepton/common/errors.h"
#include "lepton/common/names.h"
#include "lepton/policy/policies.h"
#include "policy_support.h"

namespace lepton {

using namespace policy_detail;

LeastLoadedPolicy::LeastLoadedPolicy(std::vector<std::string> versions)
    : versions_(std::move(versions)) {
  if (!versions_.empty()) RequireDistinct(versions_, "least-loaded balancing");
  counters_ = std::make_unique<Counter[]>(versions_.size());
}

LeastLoadedPolicy::Counter* LeastLoadedPolicy::Find(const std::string& version) const {
  for (size_t i = 0; i < versions_.size(); ++i) {
    if (versions_[i] == version) return &counters_[i];
  }
  std::lock_guard<std::mutex> lk(extra_mu_);
  for (auto& [v, c] : extra_) {
    if (v == version) return c.get();
  }
  extra_.emplace_back(version, std::make_unique<Counter>());
  return extra_.back().second.get();
}

Route LeastLoadedPolicy::Select(const RequestContext& request, const LiveVersions& live) const {
  (void)request;
  const std::vector<std::string>& arms = versions_.empty() ? live.versions : versions_;
  if (arms.size() == 1) {
    ++Find(arms[0])->n;
    return OneTarget("least_loaded", arms[0], "least loaded: the only version");
  }
  auto& rng = ThreadRng();
  const size_t a = static_cast<size_t>(rng() % arms.size());
  size_t b = static_cast<size_t>(rng() % (arms.size() - 1));
  if (b >= a) ++b;
  Counter* ca = Find(arms[a]);
  Counter* cb = Find(arms[b]);
  const int64_t la = ca->n.load(std::memory_order_relaxed);
  const int64_t lb = cb->n.load(std::memory_order_relaxed);
  const bool pick_a = la <= lb;
  ++(pick_a ? ca : cb)->n;
  const std::string& winner = pick_a ? arms[a] : arms[b];
  const std::string& loser = pick_a ? arms[b] : arms[a];
  return OneTarget("least_loaded", winner,
                   "least loaded of two: " + winner + " (" + std::to_string(pick_a ? la : lb) +
                       " outstanding) over " + loser + " (" + std::to_string(pick_a ? lb : la) +
                       ")");
}

void LeastLoadedPolicy::Observe(const Outcome& outcome) const {
  Counter* c = Find(outcome.version);
  int64_t n = c->n.load();
  while (n > 0 && !c->n.compare_exchange_weak(n, n - 1)) {
  }
}

int64_t LeastLoadedPolicy::outstanding(const std::string& version) const {
  return Find(version)->n.load();
}

void LeastLoadedPolicy::Validate(const LiveVersions& live) const {
  for (const auto& v : versions_) RequireLive(v, live, "least-loaded balancing");
}

std::shared_ptr<const Policy> LeastLoadedPolicy::Renamed(const std::string& from,
                                                         const std::string& to) const {
  return std::make_shared<LeastLoadedPolicy>(Replace(versions_, from, to));
}

std::string LeastLoadedPolicy::Describe() const {
  return "least_loaded(" +
         (versions_.empty() ? std::string("every version") : JoinNames(versions_)) + ")";
}

// --- BalancedPolicy ---

BalancedPolicy::BalancedPolicy(By by, std::vector<std::string> versions, double interval_s,
                               bool sticky)
    : by_(by), versions_(std::move(versions)), interval_s_(interval_s), sticky_(sticky) {
  if (!versions_.empty()) RequireDistinct(versions_, "balancing");
  if (!(interval_s_ > 0)) throw InvalidArgument("interval must be > 0 seconds");
}

std::vector<std::string> BalancedPolicy::Arms(const LiveVersions& live) const {
  if (versions_.empty()) return live.versions;
  std::vector<std::string> out;
  for (const auto& v : versions_) {
    if (live.Has(v)) out.push_back(v);
  }
  return out;
}

Route BalancedPolicy::Select(const RequestContext& request, const LiveVersions& live) const {
  std::shared_ptr<const WeightedChooser> c = std::atomic_load(&chooser_);
  const char* by = by_ == By::kRequests ? "requests" : "resources";
  if (!c) {
    const auto arms = Arms(live);
    if (arms.empty()) throw Unavailable("no version to balance over is live");
    c = std::make_shared<WeightedChooser>(arms, std::vector<double>(arms.size(), 1.0));
    std::shared_ptr<const WeightedChooser> expected;
    std::atomic_compare_exchange_strong(&chooser_, &expected, c);
  }
  const bool by_key = sticky_ && request.key;
  const size_t i = by_key ? c->ForKey(*request.key) : c->Random();
  if (!live.Has(c->arms()[i])) {
    return OneTarget("balanced", live.primary, "balanced: chosen version left; the primary");
  }
  return OneTarget("balanced", c->arms()[i],
                   std::string("balanced by ") + by + ": " + Percent(c->weights()[i]) + " share" +
                       (by_key ? " (sticky key)" : ""));
}

std::vector<PolicyEvent> BalancedPolicy::Tick(const LiveVersions& live, const LoadFn& load,
                                              double now) const {
  std::lock_guard<std::mutex> lk(mu_);
  if (!load || now - last_tick_ < interval_s_) return {};
  last_tick_ = now;
  const auto arms = Arms(live);
  if (arms.empty()) return {};
  std::vector<double> w;
  for (const auto& v : arms) {
    const VersionLoad l = load(v);
    if (by_ == By::kResources) {
      w.push_back(l.threads);
    } else {
      // Q_i: the requests per second version i can complete: its measured service rate (requests
      // per busy second) times its cores. Before it has answered anything: its cores alone.
      const double rate = l.busy_s > 0 ? double(l.completed) / l.busy_s : 0;
      w.push_back(rate > 0 ? rate * std::max(1, l.threads) : 0);
    }
  }
  double total = 0;
  for (double x : w) total += x;
  if (!(total > 0)) return {};
  std::atomic_store(&chooser_, std::shared_ptr<const WeightedChooser>(
                                   std::make_shared<WeightedChooser>(arms, w)));
  return {};
}

void BalancedPolicy::Validate(const LiveVersions& live) const {
  for (const auto& v : versions_) RequireLive(v, live, "balancing");
}

std::shared_ptr<const Policy> BalancedPolicy::Renamed(const std::string& from,
                                                      const std::string& to) const {
  return std::make_shared<BalancedPolicy>(by_, Replace(versions_, from, to), interval_s_, sticky_);
}

std::string BalancedPolicy::Describe() const {
  return std::string("balanced by ") + (by_ == By::kRequests ? "requests" : "resources") + "(" +
         (versions_.empty() ? std::string("every version") : JoinNames(versions_)) + ")";
}

std::string BalancedPolicy::Report() const {
  auto c = std::atomic_load(&chooser_);
  json weights = json::object();
  if (c) {
    for (size_t i = 0; i < c->arms().size(); ++i) weights[c->arms()[i]] = c->weights()[i];
  }
  return json{{"by", by_ == By::kRequests ? "requests" : "resources"}, {"weights", weights}}.dump();
}

}  // namespace lepton
