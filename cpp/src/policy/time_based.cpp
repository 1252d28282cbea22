// Time-based switching and splitting by a schedule.
#include <algorithm>
#include <cmath>
#include <sstream>

#include "lepton/common/errors.h"
#include "lepton/common/names.h"
#include "lepton/policy/policies.h"
#include "policy_support.h"

namespace lepton {

using namespace policy_detail;

// --- TimeBasedPolicy ---

TimeBasedPolicy::TimeBasedPolicy(std::vector<TimeBasedEntry> entries, Mode mode,
                                 std::optional<std::string> alias, std::function<double()> clock)
    : entries_(std::move(entries)),
      mode_(mode),
      alias_(std::move(alias)),
      clock_(clock ? std::move(clock) : WallSeconds) {
  if (entries_.empty()) throw InvalidArgument("a time-based policy needs at least one entry");
  const bool weighted = entries_[0].cycle.has_value();
  for (const auto& e : entries_) {
    ValidateName(e.version, "version label");
    if (!std::isfinite(e.start)) throw InvalidArgument("start time must be finite");
    if (e.cycle.has_value() != weighted) {
      throw InvalidArgument("give a cycle for every scheduled version, or for none");
    }
    if (e.cycle && !e.validity) {
      throw InvalidArgument("version '" + e.version + "' has a cycle but no validity");
    }
    if (e.validity && !(*e.validity > 0)) {
      throw InvalidArgument("validity of '" + e.version + "' must be > 0 seconds");
    }
    if (e.cycle && !(*e.cycle >= 0)) {
      throw InvalidArgument("cycle of '" + e.version + "' must be >= 0 seconds");
    }
  }
  if (alias_) ValidateName(*alias_, "alias");
}

std::vector<Target> TimeBasedPolicy::Eligible(double now) const {
  std::vector<Target> out;
  std::vector<double> starts;
  for (const auto& e : entries_) {
    if (e.start > now || (e.validity && now >= e.start + *e.validity)) continue;
    const double w = e.cycle ? 1.0 / (*e.validity + *e.cycle) : 1.0;
    // One entry per version: a later start of the same version replaces an earlier one.
    auto it = std::find_if(out.begin(), out.end(),
                           [&](const Target& t) { return t.version == e.version; });
    if (it != out.end()) {
      it->weight = w;
      starts[static_cast<size_t>(it - out.begin())] = e.start;
      continue;
    }
    out.push_back({e.version, w});
    starts.push_back(e.start);
  }
  if (out.empty()) return out;
  // Order: heaviest first, newest start breaking ties.
  std::vector<size_t> order(out.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return out[a].weight > out[b].weight ||
           (out[a].weight == out[b].weight && starts[a] > starts[b]);
  });
  std::vector<Target> sorted;
  for (size_t i : order) sorted.push_back(out[i]);
  const bool weighted = entries_[0].cycle.has_value();
  if (!weighted || mode_ == Mode::kSwitch) sorted.resize(1);
  double total = 0;
  for (const auto& t : sorted) total += t.weight;
  for (auto& t : sorted) t.weight /= total;
  return sorted;
}

Route TimeBasedPolicy::Select(const RequestContext& request, const LiveVersions& live) const {
  const double now = clock_();
  const std::vector<Target> eligible = Eligible(now);
  if (eligible.empty()) {
    return OneTarget("time_based", live.primary,
                     "time-based: no scheduled version is valid now; the primary answers");
  }
  size_t i = 0;
  if (eligible.size() > 1) {
    std::vector<std::string> arms;
    std::vector<double> weights;
    for (const auto& t : eligible) {
      arms.push_back(t.version);
      weights.push_back(t.weight);
    }
    WeightedChooser c(arms, weights);
    i = request.key ? c.ForKey(*request.key) : c.Random();
  }
  const std::string& v = eligible[i].version;
  if (!live.Has(v)) {
    return OneTarget("time_based", live.primary,
                     "time-based: scheduled version " + v + " is not deployed; the primary");
  }
  return OneTarget("time_based", v,
                   eligible.size() > 1
                       ? "time-based split by 1/(T+C): " + Percent(eligible[i].weight)
                       : "time-based schedule: " + v + " is the version for now");
}

void TimeBasedPolicy::Validate(const LiveVersions& live) const {
  for (const auto& e : entries_) RequireLive(e.version, live, "the time-based policy");
}

std::shared_ptr<const Policy> TimeBasedPolicy::Renamed(const std::string& from,
                                                       const std::string& to) const {
  auto entries = entries_;
  for (auto& e : entries) {
    if (e.version == from) e.version = to;
  }
  return std::make_shared<TimeBasedPolicy>(entries, mode_, alias_, clock_);
}

std::string TimeBasedPolicy::Describe() const {
  const auto eligible = Eligible(clock_());
  return "time_based(" + std::to_string(entries_.size()) +
         " scheduled; now: " + (eligible.empty() ? std::string("none") : eligible[0].version) + ")";
}

std::vector<PolicyEvent> TimeBasedPolicy::Tick(const LiveVersions& live, const LoadFn& load,
                                               double now) const {
  (void)live;
  (void)load;
  (void)now;
  const double t = clock_();
  const auto eligible = Eligible(t);
  const std::string chosen = eligible.empty() ? "" : eligible[0].version;
  std::lock_guard<std::mutex> lk(mu_);
  if (chosen == last_chosen_ || chosen.empty()) return {};
  const std::string previous = last_chosen_;
  last_chosen_ = chosen;
  json weights = json::object();
  for (const auto& e : eligible) weights[e.version] = e.weight;
  json evidence{{"time", t}, {"weights", weights}};
  return {{PolicyEvent::Kind::kSwitch, "time_switch", previous, chosen,
           previous.empty() ? "time-based schedule starts with " + chosen
                            : "time-based schedule switched from " + previous + " to " + chosen,
           evidence.dump(), t}};
}

std::string TimeBasedPolicy::Report() const {
  const double t = clock_();
  json eligible = json::object();
  for (const auto& e : Eligible(t)) eligible[e.version] = e.weight;
  return json{{"time", t}, {"eligible", eligible}}.dump();
}

}  // namespace lepton
