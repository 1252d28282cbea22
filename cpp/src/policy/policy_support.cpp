#include "policy_support.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <sstream>

#include "lepton/common/errors.h"
#include "lepton/common/names.h"

namespace lepton {
namespace policy_detail {
namespace {

std::atomic<uint64_t> g_seed{0};
std::atomic<uint64_t> g_seed_generation{0};
std::atomic<uint64_t> g_seeded_threads{0};

}  // namespace

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

}  // namespace policy_detail

using namespace policy_detail;

void SeedRandom(uint64_t seed) {
  g_seed.store(seed, std::memory_order_release);
  g_seeded_threads.store(0, std::memory_order_release);
  g_seed_generation.fetch_add(1, std::memory_order_acq_rel);
}

double WallSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// --- WeightedChooser ---

}  // namespace lepton
