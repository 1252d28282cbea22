#include "lepton/policy/policies.h"

#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "lepton/common/errors.h"
#include "lepton/common/names.h"

namespace lepton {
namespace {

using json = nlohmann::json;

uint64_t SplitMix(uint64_t x);

std::atomic<uint64_t> g_seed{0};
std::atomic<uint64_t> g_seed_generation{0};
std::atomic<uint64_t> g_seeded_threads{0};

// Each thread draws from its own generator. After SeedRandom(s), a thread's next draw reseeds its
// generator from s and the order in which threads first draw, so a single-threaded run repeats.
std::mt19937_64& ThreadRng() {
  thread_local std::mt19937_64 rng;
  thread_local uint64_t generation = ~uint64_t{0};
  const uint64_t now = g_seed_generation.load(std::memory_order_acquire);
  if (generation != now) {
    generation = now;
    const uint64_t seed = g_seed.load(std::memory_order_acquire);
    if (seed == 0) {
      std::random_device rd;
      rng.seed((static_cast<uint64_t>(rd()) << 32) ^ rd());
    } else {
      rng.seed(SplitMix(seed + 0x51ed2701ULL * g_seeded_threads.fetch_add(1)));
    }
  }
  return rng;
}

double Uniform(std::mt19937_64& rng) { return double(rng() >> 11) * 0x1.0p-53; }

uint64_t SplitMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

std::string Percent(double share) {
  std::ostringstream s;
  s.precision(3);
  s << share * 100 << "%";
  return s.str();
}

void RequireLive(const std::string& version, const LiveVersions& live, const std::string& who) {
  if (!live.Has(version)) {
    throw NotFound(who + " names version '" + version +
                   "', which is not deployed (live: " + JoinNames(live.versions) + ")");
  }
}

void RequireDistinct(const std::vector<std::string>& versions, const std::string& who) {
  if (versions.empty()) throw InvalidArgument(who + " needs at least one version");
  for (size_t i = 0; i < versions.size(); ++i) {
    ValidateName(versions[i], "version label");
    for (size_t j = 0; j < i; ++j) {
      if (versions[i] == versions[j]) {
        throw InvalidArgument(who + " lists version '" + versions[i] + "' twice");
      }
    }
  }
}

std::vector<std::string> Replace(std::vector<std::string> v, const std::string& from,
                                 const std::string& to) {
  std::replace(v.begin(), v.end(), from, to);
  return v;
}

bool Contains(const std::vector<std::string>& v, const std::string& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

void RefuseRename(const std::string& policy, const std::string& from) {
  throw Conflict("version '" + from + "' is part of a running " + policy +
                 "; set another policy before swapping it");
}

Route OneTarget(const std::string& policy, const std::string& version, Reason reason) {
  Route r;
  r.policy = policy;
  r.targets.push_back({version, 1.0});
  r.reason = std::move(reason);
  return r;
}

json MomentsJson(const RunningMoments& m) {
  return {{"n", m.count()}, {"mean", m.mean()}, {"m2", m.m2()}};
}

RunningMoments MomentsFrom(const json& j) {
  return RunningMoments::FromParts(j.at("n").get<int64_t>(), j.at("mean").get<double>(),
                                   j.at("m2").get<double>());
}

json ResultJson(const SequentialTest::Result& r) {
  auto finite = [](double x) { return std::isfinite(x) ? json(x) : json(nullptr); };
  return {{"n_control", r.n_a},         {"n_treatment", r.n_b},
          {"mean_control", r.mean_a},   {"mean_treatment", r.mean_b},
          {"difference", r.difference}, {"likelihood_ratio", finite(r.likelihood_ratio)},
          {"p_value", r.p_value},       {"confidence", r.confidence},
          {"ci_low", finite(r.ci_low)}, {"ci_high", finite(r.ci_high)},
          {"decided", r.decided}};
}

void ValidateGuardrails(const Guardrails& g) {
  if (!(g.max_error_rate_increase >= 0) || !std::isfinite(g.max_error_rate_increase)) {
    throw InvalidArgument("guardrail max_error_rate_increase must be a finite value >= 0");
  }
  if (!(g.latency_slack_s >= 0) || !std::isfinite(g.latency_slack_s)) {
    throw InvalidArgument("guardrail latency_slack must be a finite number >= 0 (seconds)");
  }
  if (!(g.max_latency_ratio > 0)) {
    throw InvalidArgument("guardrail max_latency_ratio must be > 0");
  }
  if (g.min_requests < 1) throw InvalidArgument("guardrail min_requests must be >= 1");
  if (g.window < static_cast<size_t>(g.min_requests)) {
    throw InvalidArgument("guardrail window must hold at least min_requests requests");
  }
}

}  // namespace

void SeedRandom(uint64_t seed) {
  g_seed.store(seed, std::memory_order_release);
  g_seeded_threads.store(0, std::memory_order_release);
  g_seed_generation.fetch_add(1, std::memory_order_acq_rel);
}

double WallSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// --- WeightedChooser ---

WeightedChooser::WeightedChooser(std::vector<std::string> arms, std::vector<double> weights)
    : arms_(std::move(arms)) {
  RequireDistinct(arms_, "a weighted split");
  if (weights.size() != arms_.size()) {
    throw InvalidArgument("a weighted split has " + std::to_string(arms_.size()) +
                          " versions but " + std::to_string(weights.size()) + " weights");
  }
  ValidateWeights(weights, "weights");
  double total = 0;
  for (double w : weights) total += w;
  double cumulative = 0;
  for (size_t i = 0; i < arms_.size(); ++i) {
    weights_.push_back(weights[i] / total);
    cumulative += weights_.back();
    cumulative_.push_back(cumulative);
    inverse_.push_back(weights_.back() > 0 ? 1.0 / weights_.back() : 0.0);
    seeds_.push_back(XXH3_64bits(arms_[i].data(), arms_[i].size()));
  }
  cumulative_.back() = 1.0;
}

size_t WeightedChooser::Random() const {
  const double u = Uniform(ThreadRng());
  const size_t n = cumulative_.size();
  for (size_t i = 0; i + 1 < n; ++i) {
    if (u < cumulative_[i] && weights_[i] > 0) return i;
  }
  for (size_t i = n; i-- > 0;) {
    if (weights_[i] > 0) return i;
  }
  return 0;
}

size_t WeightedChooser::ForKey(std::string_view key) const {
  // Weighted rendezvous hashing: arm i scores ln(u_i) / w_i with u_i a hash of (key, arm) in
  // (0, 1); the highest score wins. Each arm wins with probability w_i, and raising w_i only
  // raises arm i's score, so keys move to it and never between the others.
  const uint64_t h = XXH3_64bits(key.data(), key.size());
  size_t best = 0;
  double best_score = -INFINITY;
  for (size_t i = 0; i < seeds_.size(); ++i) {
    if (inverse_[i] == 0) continue;
    const float u = (float(SplitMix(h ^ seeds_[i]) >> 40) + 0.5f) * 0x1.0p-24f;
    const double score = double(std::log(u)) * inverse_[i];
    if (score > best_score) {
      best_score = score;
      best = i;
    }
  }
  return best;
}

// --- WeightedPolicy ---

WeightedPolicy::WeightedPolicy(std::vector<std::string> versions, std::vector<double> weights,
                               bool sticky)
    : chooser_(std::move(versions), std::move(weights)), sticky_(sticky) {
  for (size_t i = 0; i < chooser_.arms().size(); ++i) {
    const std::string share = Percent(chooser_.weights()[i]);
    reasons_.push_back("weighted split: " + share + " of requests");
    key_reasons_.push_back("sticky key: consistent hash over a " + share + " share");
  }
}

Route WeightedPolicy::Select(const RequestContext& request, const LiveVersions& live) const {
  (void)live;
  Route r;
  r.policy = "weighted";
  size_t i;
  if (sticky_ && request.key) {
    i = chooser_.ForKey(*request.key);
    r.reason = key_reasons_[i];
  } else {
    i = chooser_.Random();
    r.reason = reasons_[i];
  }
  r.targets.push_back({chooser_.arms()[i], 1.0});
  return r;
}

void WeightedPolicy::Validate(const LiveVersions& live) const {
  for (const auto& v : chooser_.arms()) RequireLive(v, live, "the weighted policy");
}

std::shared_ptr<const Policy> WeightedPolicy::Renamed(const std::string& from,
                                                      const std::string& to) const {
  return std::make_shared<WeightedPolicy>(Replace(chooser_.arms(), from, to), chooser_.weights(),
                                          sticky_);
}

std::string WeightedPolicy::Describe() const {
  std::ostringstream s;
  s << (sticky_ ? "sticky weighted(" : "weighted(");
  for (size_t i = 0; i < chooser_.arms().size(); ++i) {
    s << (i ? ", " : "") << chooser_.arms()[i] << "=" << Percent(chooser_.weights()[i]);
  }
  s << ")";
  return s.str();
}

// --- GuardrailMonitor ---

GuardrailMonitor::GuardrailMonitor(std::string baseline, std::string candidate, Guardrails g)
    : baseline_(std::move(baseline)),
      candidate_(std::move(candidate)),
      g_(g),
      base_(g.window),
      cand_(g.window) {
  ValidateGuardrails(g_);
}

void GuardrailMonitor::Observe(const Outcome& o) {
  std::lock_guard<std::mutex> lk(mu_);
  if (o.version == candidate_) {
    cand_.Add(o.latency_s, o.error, ++stamp_);
  } else if (o.version == baseline_) {
    base_.Add(o.latency_s, o.error, ++stamp_);
  }
}

bool GuardrailMonitor::ready() const {
  std::lock_guard<std::mutex> lk(mu_);
  return base_.size() >= static_cast<size_t>(g_.min_requests) &&
         cand_.size() >= static_cast<size_t>(g_.min_requests);
}

std::optional<std::string> GuardrailMonitor::Breach() const {
  std::lock_guard<std::mutex> lk(mu_);
  const size_t need = static_cast<size_t>(g_.min_requests);
  if (cand_.size() < need || base_.size() < need) return std::nullopt;
  const double ce = cand_.error_rate(), be = base_.error_rate();
  if (ce > be + g_.max_error_rate_increase) {
    return "error rate " + Percent(ce) + " for " + candidate_ + " against " + Percent(be) +
           " for " + baseline_ + " (allowed: +" + Percent(g_.max_error_rate_increase) + ")";
  }
  // The baseline's p99 over the span of the candidate's window: a candidate at a small share
  // spreads its requests over a longer time, and comparing them with only the baseline's latest
  // (and so briefer) requests would hold every scheduler hiccup against the candidate alone.
  // Too few baseline requests in that span: the same number of its latest requests.
  size_t overlap = 0;
  const double cp = cand_.Quantile(0.99);
  double bp = base_.QuantileSince(0.99, cand_.oldest_stamp(), &overlap);
  if (overlap < need) bp = base_.Quantile(0.99, std::min(cand_.size(), base_.size()));
  if (bp > 0 && cp > g_.max_latency_ratio * bp && cp - bp > g_.latency_slack_s) {
    std::ostringstream s;
    s.precision(3);
    s << "p99 latency " << cp * 1e3 << " ms for " << candidate_ << " against " << bp * 1e3
      << " ms for " << baseline_ << " (allowed: x" << g_.max_latency_ratio << " or +"
      << g_.latency_slack_s * 1e3 << " ms)";
    return s.str();
  }
  return std::nullopt;
}

std::string GuardrailMonitor::EvidenceJson() const {
  std::lock_guard<std::mutex> lk(mu_);
  auto side = [](const OutcomeWindow& w) {
    return json{{"requests", w.total()},    {"errors", w.total_errors()},
                {"window", w.size()},       {"error_rate", w.error_rate()},
                {"p50_s", w.Quantile(0.5)}, {"p99_s", w.Quantile(0.99)}};
  };
  json j{{baseline_, side(base_)},
         {candidate_, side(cand_)},
         {"guardrails",
          {{"max_error_rate_increase", g_.max_error_rate_increase},
           {"max_latency_ratio", g_.max_latency_ratio},
           {"latency_slack_s", g_.latency_slack_s},
           {"min_requests", g_.min_requests}}}};
  return j.dump();
}

// --- CanaryPolicy ---

CanaryPolicy::CanaryPolicy(std::string stable, std::string candidate, CanaryOptions options)
    : stable_(std::move(stable)),
      candidate_(std::move(candidate)),
      options_(std::move(options)),
      monitor_(stable_, candidate_, options_.guardrails) {
  RequireDistinct({stable_, candidate_}, "a canary");
  if (options_.steps.empty()) throw InvalidArgument("a canary needs at least one step");
  double last = 0;
  for (double s : options_.steps) {
    if (!(s > 0 && s <= 1)) {
      throw InvalidArgument("canary step " + std::to_string(s) + " is outside (0, 1]");
    }
    if (s < last) throw InvalidArgument("canary steps must not decrease");
    last = s;
  }
  if (options_.steps.size() == 1 && options_.steps[0] >= 1.0) {
    throw InvalidArgument(
        "a canary whose only step sends the candidate all traffic gives the stable version none "
        "to judge the guardrails against; start with a smaller share, e.g. steps [0.1, 1.0]");
  }
  if (options_.step_requests < 0) throw InvalidArgument("step_requests must be >= 0");
  if (!(options_.step_seconds >= 0)) throw InvalidArgument("step_seconds must be >= 0");
  // Neither given: each step lasts the default number of requests (the one place it is set, for
  // Python, C++ and JSON alike).
  if (options_.step_requests == 0 && options_.step_seconds == 0) {
    options_.step_requests = CanaryOptions::kDefaultStepRequests;
  }
  if (options_.alias) ValidateName(*options_.alias, "alias");
  for (size_t k = 0; k < options_.steps.size(); ++k) {
    const double s = options_.steps[k];
    choosers_.push_back(std::make_shared<WeightedChooser>(
        std::vector<std::string>{stable_, candidate_}, std::vector<double>{1 - s, s}));
    const std::string text = "canary step " + std::to_string(k + 1) + "/" +
                             std::to_string(options_.steps.size()) + ": " + candidate_ + " at " +
                             Percent(s);
    reasons_.emplace_back(text);
    reasons_.emplace_back(text + " (sticky key)");
  }
}

Route CanaryPolicy::Select(const RequestContext& request, const LiveVersions& live) const {
  (void)live;
  switch (phase_.load()) {
    case Phase::kPromoted:
      return OneTarget("canary", candidate_, "canary promoted " + candidate_);
    case Phase::kRolledBack: {
      std::lock_guard<std::mutex> lk(mu_);
      return OneTarget("canary", stable_, "canary rolled back: " + breach_.value_or("breach"));
    }
    case Phase::kRamping:
      break;
  }
  const size_t step = std::min(step_.load(), choosers_.size() - 1);
  const WeightedChooser& c = *choosers_[step];
  const bool by_key = options_.sticky && request.key;
  const size_t i = by_key ? c.ForKey(*request.key) : c.Random();
  return OneTarget("canary", c.arms()[i], reasons_[step * 2 + (by_key ? 1 : 0)]);
}

void CanaryPolicy::Validate(const LiveVersions& live) const {
  RequireLive(stable_, live, "the canary");
  RequireLive(candidate_, live, "the canary");
}

std::shared_ptr<const Policy> CanaryPolicy::Renamed(const std::string& from,
                                                    const std::string& to) const {
  (void)to;
  if (from == stable_ || from == candidate_) RefuseRename("canary", from);
  return std::make_shared<CanaryPolicy>(stable_, candidate_, options_);
}

std::string CanaryPolicy::Describe() const {
  const Phase p = phase_.load();
  if (p == Phase::kPromoted) return "canary " + stable_ + " -> " + candidate_ + ": promoted";
  if (p == Phase::kRolledBack) return "canary " + stable_ + " -> " + candidate_ + ": rolled back";
  const size_t step = std::min(step_.load(), choosers_.size() - 1);
  return "canary " + stable_ + " -> " + candidate_ + ": step " + std::to_string(step + 1) + "/" +
         std::to_string(choosers_.size()) + " at " + Percent(options_.steps[step]);
}

void CanaryPolicy::Observe(const Outcome& outcome) const {
  monitor_.Observe(outcome);
  if (phase_.load() != Phase::kRamping) return;
  ++step_count_;
  if (outcome.error && outcome.version == candidate_) {
    // An error on the candidate is judged at once, so a failing candidate stops taking traffic
    // before the controller's next tick.
    if (auto breach = monitor_.Breach()) {
      std::lock_guard<std::mutex> lk(mu_);
      if (phase_.load() != Phase::kRamping) return;
      breach_ = breach;
      phase_ = Phase::kRolledBack;
      pending_.push_back({PolicyEvent::Kind::kRollback, "canary_rollback", candidate_, stable_,
                          "canary guardrail breached: " + *breach, monitor_.EvidenceJson(),
                          WallSeconds()});
    }
  }
}

void CanaryPolicy::Advance(double now, std::vector<PolicyEvent>& events) const {
  if (step_started_ == 0) step_started_ = now;
  const bool by_count = options_.step_requests > 0 && step_count_.load() >= options_.step_requests;
  const bool by_time = options_.step_seconds > 0 && now - step_started_ >= options_.step_seconds;
  if (!by_count && !by_time) return;
  const size_t step = step_.load();
  if (step + 1 < choosers_.size()) {
    // A step that gives the stable version no traffic would leave its side of the guardrails
    // without evidence for good: it is entered only once both sides can be judged.
    if (options_.steps[step + 1] >= 1.0 && !monitor_.ready()) {
      waiting_for_evidence_ = true;
      return;
    }
    waiting_for_evidence_ = false;
    step_ = step + 1;
    step_count_ = 0;
    step_started_ = now;
    return;
  }
  // The last step is done: promotion needs enough evidence that the guardrails hold.
  if (!monitor_.ready()) return;
  phase_ = Phase::kPromoted;
  json evidence = json::parse(monitor_.EvidenceJson());
  evidence["steps"] = options_.steps;
  events.push_back(
      {PolicyEvent::Kind::kPromote, "canary_promote", stable_, candidate_,
       "canary completed " + std::to_string(choosers_.size()) + " steps within its guardrails",
       evidence.dump(), now});
}

std::vector<PolicyEvent> CanaryPolicy::Tick(const LiveVersions& live, const LoadFn& load,
                                            double now) const {
  (void)live;
  (void)load;
  std::vector<PolicyEvent> events;
  std::lock_guard<std::mutex> lk(mu_);
  if (phase_.load() == Phase::kRamping) {
    if (auto breach = monitor_.Breach()) {
      breach_ = breach;
      phase_ = Phase::kRolledBack;
      pending_.push_back({PolicyEvent::Kind::kRollback, "canary_rollback", candidate_, stable_,
                          "canary guardrail breached: " + *breach, monitor_.EvidenceJson(), now});
    } else {
      Advance(now, events);
    }
  }
  events.insert(events.begin(), pending_.begin(), pending_.end());
  pending_.clear();
  return events;
}

std::string CanaryPolicy::Report() const {
  const Phase p = phase_.load();
  const size_t step = std::min(step_.load(), choosers_.size() - 1);
  json j{{"stable", stable_},
         {"candidate", candidate_},
         {"phase", p == Phase::kRamping    ? "ramping"
                   : p == Phase::kPromoted ? "promoted"
                                           : "rolled_back"},
         {"step", step + 1},
         {"steps", options_.steps},
         {"share", p == Phase::kPromoted     ? 1.0
                   : p == Phase::kRolledBack ? 0.0
                                             : options_.steps[step]},
         {"evidence", json::parse(monitor_.EvidenceJson())}};
  std::lock_guard<std::mutex> lk(mu_);
  if (breach_) j["breach"] = *breach_;
  if (waiting_for_evidence_ && p == Phase::kRamping) {
    j["waiting"] = "for " + std::to_string(options_.guardrails.min_requests) +
                   " requests on each side before the step that sends " + candidate_ +
                   " all traffic";
  }
  return j.dump();
}

// --- ShadowPolicy ---

ShadowPolicy::ShadowPolicy(std::string primary, std::vector<std::string> mirrors)
    : primary_(std::move(primary)), mirrors_(std::move(mirrors)) {
  RequireDistinct(mirrors_, "a shadow");
  if (!primary_.empty()) {
    ValidateName(primary_, "version label");
    if (Contains(mirrors_, primary_)) {
      throw InvalidArgument("version '" + primary_ + "' cannot mirror itself");
    }
  }
}

Route ShadowPolicy::Select(const RequestContext& request, const LiveVersions& live) const {
  (void)request;
  const std::string& primary = primary_.empty() ? live.primary : primary_;
  Route r = OneTarget("shadow", primary, "shadow: the primary answers, mirrors get a copy");
  for (const auto& m : mirrors_) {
    if (m != primary) r.mirrors.push_back(m);
  }
  return r;
}

void ShadowPolicy::Validate(const LiveVersions& live) const {
  if (!primary_.empty()) RequireLive(primary_, live, "the shadow policy");
  for (const auto& m : mirrors_) RequireLive(m, live, "the shadow policy");
}

std::shared_ptr<const Policy> ShadowPolicy::Renamed(const std::string& from,
                                                    const std::string& to) const {
  return std::make_shared<ShadowPolicy>(primary_ == from ? to : primary_,
                                        Replace(mirrors_, from, to));
}

std::string ShadowPolicy::Describe() const {
  return "shadow(" + (primary_.empty() ? std::string("primary") : primary_) + " mirrored to " +
         JoinNames(mirrors_) + ")";
}

// --- BanditPolicy ---

BanditPolicy::BanditPolicy(std::vector<std::string> versions, BanditOptions options)
    : versions_(std::move(versions)), options_(std::move(options)) {
  RequireDistinct(versions_, "a bandit");
  if (options_.algorithm == BanditAlgorithm::kEpsilonGreedy &&
      !(options_.epsilon >= 0 && options_.epsilon <= 1)) {
    throw InvalidArgument("epsilon must be in [0, 1]");
  }
  rng_.seed(options_.seed != 0 ? options_.seed : ThreadRng()());
  arms_.resize(versions_.size());
}

static const char* AlgorithmName(BanditAlgorithm a) {
  switch (a) {
    case BanditAlgorithm::kThompson:
      return "thompson";
    case BanditAlgorithm::kUcb1:
      return "ucb1";
    case BanditAlgorithm::kEpsilonGreedy:
      return "epsilon_greedy";
  }
  return "?";
}

size_t BanditPolicy::Choose() const {
  const size_t n = arms_.size();
  auto least_pulled_untried = [&]() -> std::optional<size_t> {
    std::optional<size_t> best;
    for (size_t i = 0; i < n; ++i) {
      if (arms_[i].n == 0 && (!best || arms_[i].pulls < arms_[*best].pulls)) best = i;
    }
    return best;
  };
  switch (options_.algorithm) {
    case BanditAlgorithm::kThompson: {
      size_t best = 0;
      double best_draw = -1;
      for (size_t i = 0; i < n; ++i) {
        const double s = std::clamp(arms_[i].sum, 0.0, double(arms_[i].n));
        std::gamma_distribution<double> ga(1 + s, 1), gb(1 + double(arms_[i].n) - s, 1);
        const double x = ga(rng_), y = gb(rng_);
        const double draw = x / (x + y);
        if (draw > best_draw) {
          best_draw = draw;
          best = i;
        }
      }
      return best;
    }
    case BanditAlgorithm::kUcb1: {
      if (auto untried = least_pulled_untried()) return *untried;
      int64_t total = 0;
      for (const auto& a : arms_) total += a.n;
      size_t best = 0;
      double best_bound = -INFINITY;
      for (size_t i = 0; i < n; ++i) {
        const double bound = arms_[i].sum / double(arms_[i].n) +
                             std::sqrt(2 * std::log(double(total)) / double(arms_[i].n));
        if (bound > best_bound) {
          best_bound = bound;
          best = i;
        }
      }
      return best;
    }
    case BanditAlgorithm::kEpsilonGreedy: {
      if (Uniform(rng_) < options_.epsilon) return static_cast<size_t>(rng_() % n);
      if (auto untried = least_pulled_untried()) return *untried;
      size_t best = 0;
      for (size_t i = 1; i < n; ++i) {
        if (arms_[i].sum / double(arms_[i].n) > arms_[best].sum / double(arms_[best].n)) best = i;
      }
      return best;
    }
  }
  return 0;
}

Route BanditPolicy::Select(const RequestContext& request, const LiveVersions& live) const {
  (void)request;
  (void)live;
  size_t i;
  {
    std::lock_guard<std::mutex> lk(mu_);
    i = Choose();
    ++arms_[i].pulls;
  }
  return OneTarget("bandit", versions_[i],
                   std::string("bandit (") + AlgorithmName(options_.algorithm) +
                       ") chose from the rewards so far");
}

void BanditPolicy::Validate(const LiveVersions& live) const {
  for (const auto& v : versions_) RequireLive(v, live, "the bandit");
}

std::shared_ptr<const Policy> BanditPolicy::Renamed(const std::string& from,
                                                    const std::string& to) const {
  (void)to;
  if (Contains(versions_, from)) RefuseRename("bandit", from);
  return std::make_shared<BanditPolicy>(versions_, options_);
}

std::string BanditPolicy::Describe() const {
  return std::string("bandit(") + AlgorithmName(options_.algorithm) + ": " + JoinNames(versions_) +
         ")";
}

void BanditPolicy::Feedback(const std::string& version, double reward) const {
  if (!std::isfinite(reward)) throw InvalidArgument("a reward must be a finite number");
  if (options_.algorithm != BanditAlgorithm::kEpsilonGreedy && (reward < 0 || reward > 1)) {
    throw InvalidArgument(std::string("the ") + AlgorithmName(options_.algorithm) +
                          " bandit takes rewards in [0, 1]; got " + std::to_string(reward));
  }
  auto it = std::find(versions_.begin(), versions_.end(), version);
  if (it == versions_.end()) {
    throw NotFound("version '" + version + "' is not an arm of the bandit");
  }
  std::lock_guard<std::mutex> lk(mu_);
  auto& arm = arms_[static_cast<size_t>(it - versions_.begin())];
  ++arm.n;
  arm.sum += reward;
}

std::string BanditPolicy::state_key() const {
  return "bandit/" + (options_.name.empty() ? std::string(AlgorithmName(options_.algorithm)) + ":" +
                                                  JoinNames(versions_)
                                            : options_.name);
}

std::string BanditPolicy::SaveState() const {
  std::lock_guard<std::mutex> lk(mu_);
  json arms = json::object();
  for (size_t i = 0; i < versions_.size(); ++i) {
    arms[versions_[i]] = {{"pulls", arms_[i].pulls}, {"n", arms_[i].n}, {"sum", arms_[i].sum}};
  }
  return json{{"algorithm", AlgorithmName(options_.algorithm)}, {"arms", arms}}.dump();
}

void BanditPolicy::LoadState(const std::string& state) const {
  std::vector<Arm> restored(versions_.size());
  try {
    const json j = json::parse(state);
    const json& arms = j.at("arms");
    for (size_t i = 0; i < versions_.size(); ++i) {
      if (!arms.contains(versions_[i])) continue;
      const json& a = arms.at(versions_[i]);
      restored[i] = {a.at("pulls").get<int64_t>(), a.at("n").get<int64_t>(),
                     a.at("sum").get<double>()};
      if (restored[i].n < 0 || restored[i].pulls < 0 || !std::isfinite(restored[i].sum)) {
        throw InvalidArgument("negative counts");
      }
    }
  } catch (const std::exception& e) {
    throw InvalidArgument("the stored state of " + state_key() + " is not valid: " + e.what());
  }
  std::lock_guard<std::mutex> lk(mu_);
  arms_ = std::move(restored);
}

std::vector<BanditPolicy::Arm> BanditPolicy::arms() const {
  std::lock_guard<std::mutex> lk(mu_);
  return arms_;
}

std::string BanditPolicy::Report() const {
  json j = json::parse(SaveState());
  for (auto& [v, a] : j["arms"].items()) {
    const double n = a["n"].get<double>();
    a["mean"] = n > 0 ? a["sum"].get<double>() / n : 0.0;
  }
  return j.dump();
}

// --- LeastLoadedPolicy ---

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

// --- ABTestPolicy ---

ABTestPolicy::ABTestPolicy(std::string control, std::string treatment, ABTestOptions options)
    : control_(std::move(control)),
      treatment_(std::move(treatment)),
      options_(std::move(options)),
      chooser_({control_, treatment_}, {1 - options_.split, options_.split}),
      test_(options_.alpha, options_.effect, options_.min_samples) {
  if (!(options_.split > 0 && options_.split < 1)) {
    throw InvalidArgument("an A/B test's split must be in (0, 1)");
  }
  if (options_.guardrails) monitor_.emplace(control_, treatment_, *options_.guardrails);
  if (options_.alias) ValidateName(*options_.alias, "alias");
}

Route ABTestPolicy::Select(const RequestContext& request, const LiveVersions& live) const {
  (void)live;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (winner_) return OneTarget("ab_test", *winner_, "A/B test concluded: " + *winner_ + " won");
  }
  const bool by_key = options_.sticky && request.key;
  const size_t i = by_key ? chooser_.ForKey(*request.key) : chooser_.Random();
  return OneTarget("ab_test", chooser_.arms()[i],
                   std::string("A/B test running: ") + (i ? "treatment" : "control") + " arm" +
                       (by_key ? " (sticky key)" : ""));
}

void ABTestPolicy::Validate(const LiveVersions& live) const {
  RequireLive(control_, live, "the A/B test");
  RequireLive(treatment_, live, "the A/B test");
}

std::shared_ptr<const Policy> ABTestPolicy::Renamed(const std::string& from,
                                                    const std::string& to) const {
  (void)to;
  if (from == control_ || from == treatment_) RefuseRename("A/B test", from);
  return std::make_shared<ABTestPolicy>(control_, treatment_, options_);
}

std::string ABTestPolicy::Describe() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::ostringstream s;
  s.precision(3);
  s << "ab_test(" << control_ << " vs " << treatment_ << ": ";
  if (winner_) {
    s << *winner_ << " won";
  } else {
    s << "confidence " << (1 - test_.p_value());
  }
  s << ")";
  return s.str();
}

void ABTestPolicy::Observe(const Outcome& outcome) const {
  if (monitor_) monitor_->Observe(outcome);
}

void ABTestPolicy::Feedback(const std::string& version, double reward) const {
  int arm;
  if (version == control_) {
    arm = 0;
  } else if (version == treatment_) {
    arm = 1;
  } else {
    throw NotFound("version '" + version + "' is not an arm of the A/B test");
  }
  std::lock_guard<std::mutex> lk(mu_);
  test_.Add(arm, reward);
  dirty_ = true;
}

std::vector<PolicyEvent> ABTestPolicy::Tick(const LiveVersions& live, const LoadFn& load,
                                            double now) const {
  (void)live;
  (void)load;
  std::lock_guard<std::mutex> lk(mu_);
  if (winner_) {
    if (announced_) return {};
  } else {
    if (!dirty_) return {};
    dirty_ = false;
    const SequentialTest::Result r = test_.Evaluate();
    if (!r.decided) return {};
    winner_ = r.winner == 1 ? treatment_ : control_;
  }
  announced_ = true;
  // Re-evaluating after a decision does not change the running p-value's minimum.
  json evidence = ResultJson(test_.Evaluate());
  evidence["alpha"] = options_.alpha;
  evidence["winner"] = *winner_;
  if (*winner_ == treatment_ && monitor_) {
    evidence["guardrails"] = json::parse(monitor_->EvidenceJson());
    if (auto breach = monitor_->Breach()) {
      winner_ = control_;
      return {{PolicyEvent::Kind::kConclude, "ab_keep_control", treatment_, control_,
               "treatment won on the metric but breached a guardrail: " + *breach, evidence.dump(),
               now}};
    }
  }
  std::ostringstream reason;
  reason.precision(4);
  reason << *winner_ << " won the A/B test on the metric (difference "
         << evidence["difference"].get<double>() << ", p " << evidence["p_value"].get<double>()
         << " <= alpha " << options_.alpha << ")";
  if (*winner_ == treatment_) {
    return {{PolicyEvent::Kind::kPromote, "ab_promote", control_, treatment_, reason.str(),
             evidence.dump(), now}};
  }
  return {{PolicyEvent::Kind::kConclude, "ab_keep_control", treatment_, control_, reason.str(),
           evidence.dump(), now}};
}

std::string ABTestPolicy::state_key() const {
  return "ab_test/" + (options_.name.empty() ? control_ + ":" + treatment_ : options_.name);
}

std::string ABTestPolicy::SaveState() const {
  std::lock_guard<std::mutex> lk(mu_);
  json j{{"control", MomentsJson(test_.arm(0))},
         {"treatment", MomentsJson(test_.arm(1))},
         {"p_value", test_.p_value()},
         {"winner", winner_ ? json(*winner_) : json(nullptr)},
         {"announced", announced_}};
  return j.dump();
}

void ABTestPolicy::LoadState(const std::string& state) const {
  try {
    const json j = json::parse(state);
    RunningMoments a = MomentsFrom(j.at("control")), b = MomentsFrom(j.at("treatment"));
    const double p = j.at("p_value").get<double>();
    std::optional<std::string> winner;
    if (!j.at("winner").is_null()) winner = j.at("winner").get<std::string>();
    if (winner && *winner != control_ && *winner != treatment_) {
      throw InvalidArgument("winner '" + *winner + "' is not an arm");
    }
    std::lock_guard<std::mutex> lk(mu_);
    test_.Restore(a, b, p);
    winner_ = winner;
    announced_ = j.value("announced", winner.has_value());
  } catch (const std::exception& e) {
    throw InvalidArgument("the stored state of " + state_key() + " is not valid: " + e.what());
  }
}

std::string ABTestPolicy::Report() const {
  std::lock_guard<std::mutex> lk(mu_);
  json j = ResultJson(test_.Evaluate());
  j["control"] = control_;
  j["treatment"] = treatment_;
  j["alpha"] = options_.alpha;
  j["winner"] = winner_ ? json(*winner_) : json(nullptr);
  return j.dump();
}

SequentialTest::Result ABTestPolicy::Result() const {
  std::lock_guard<std::mutex> lk(mu_);
  return test_.Evaluate();
}

std::optional<std::string> ABTestPolicy::winner() const {
  std::lock_guard<std::mutex> lk(mu_);
  return winner_;
}

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
