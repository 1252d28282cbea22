// What the policies share: their random draws, the checks they make of versions, and the JSON of
// running statistics. Private to the policy library.
#pragma once

#include <atomic>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "lepton/policy/policies.h"
#include "lepton/policy/stats.h"

namespace lepton::policy_detail {

using json = nlohmann::json;

// Each thread draws from its own generator. After SeedRandom(s), a thread's next draw reseeds its
// generator from s and the order in which threads first draw, so a single-threaded run repeats.
std::mt19937_64& ThreadRng();
double Uniform(std::mt19937_64& rng);
uint64_t SplitMix(uint64_t x);
std::string Percent(double share);
void RequireLive(const std::string& version, const LiveVersions& live, const std::string& who);
void RequireDistinct(const std::vector<std::string>& versions, const std::string& who);
std::vector<std::string> Replace(std::vector<std::string> v, const std::string& from,
                                 const std::string& to);
bool Contains(const std::vector<std::string>& v, const std::string& x);
[[noreturn]] void RefuseRename(const std::string& policy, const std::string& from);
Route OneTarget(const std::string& policy, const std::string& version, Reason reason);
json MomentsJson(const RunningMoments& m);
RunningMoments MomentsFrom(const json& j);
json ResultJson(const SequentialTest::Result& r);
void ValidateGuardrails(const Guardrails& g);

}  // namespace lepton::policy_detail
