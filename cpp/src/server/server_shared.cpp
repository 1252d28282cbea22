// Management that replicas share. With a registry on a database server, every replica is an
// ordinary server opening it; a policy set through one replica's API is stored in the registry
// (with an audit entry naming the replica) and a chore on every replica sets it there within
// about a second, and on replicas started later. A policy in a replica's own configuration gives
// way to one set through the API afterwards.
#include "lepton/common/process.h"
#include "lepton/control/scheduler.h"
#include "lepton/observe/events.h"
#include "server_impl.h"

namespace lepton {
namespace {

// The registry's state key of a model's policy set through the API.
constexpr const char* kSharedPolicyKey = "served/policy";
constexpr auto kFollowEvery = std::chrono::seconds(1);

}  // namespace

void Server::Impl::SharePolicy(const std::string& model, const std::string& spec,
                               const std::string& actor) {
  const json policy = json::parse(spec);
  if (!registry_->networked()) {
    registry_->Record(model, "set_policy", std::nullopt, std::nullopt, std::nullopt,
                      "policy set through the server's API",
                      json{{"policy", policy}, {"by", actor}}.dump());
    return;
  }
  const std::string id = RandomHex(8);
  const json envelope = {{"id", id}, {"policy", policy}, {"replica", ReplicaName()}};
  registry_->PutState(model, kSharedPolicyKey, envelope.dump());
  registry_->Record(model, "set_policy", std::nullopt, std::nullopt, std::nullopt,
                    "policy set through replica " + ReplicaName() + "'s API",
                    json{{"policy", policy}, {"replica", ReplicaName()}, {"by", actor}}.dump());
  std::unique_lock<std::shared_mutex> w(models_mu_);
  auto it = models_.find(model);
  if (it != models_.end()) it->second.shared_policy_id = id;
}

std::chrono::steady_clock::time_point Server::Impl::FollowSharedPolicies() {
  for (const auto& name : Names()) {
    std::optional<std::string> stored;
    try {
      stored = registry_->GetState(name, kSharedPolicyKey);
    } catch (const std::exception&) {
      break;  // the registry is out of reach: the next round tries again
    }
    if (!stored) continue;
    const json envelope = json::parse(*stored, nullptr, false);
    if (!envelope.is_object() || !envelope.contains("id") || !envelope.contains("policy")) {
      continue;
    }
    const std::string id = envelope["id"].is_string() ? envelope["id"].get<std::string>() : "";
    std::shared_ptr<Deployment> deployment;
    {
      std::shared_lock<std::shared_mutex> r(models_mu_);
      auto it = models_.find(name);
      if (it == models_.end() || it->second.shared_policy_id == id) continue;
      deployment = it->second.deployment;
    }
    const std::string spec = envelope["policy"].dump();
    const std::string from = envelope.value("replica", "another replica");
    try {
      deployment->SetPolicy(PolicyFromJson(spec));
      EmitEvent("info", "policy_followed", name, "", "policy set through " + from + " followed");
    } catch (const std::exception& e) {
      // Said once; this replica keeps the policy it has until the next one is set.
      EmitEvent("error", "policy_not_followed", name, "",
                "the policy set through " + from + " cannot be set here: " + e.what());
    }
    std::unique_lock<std::shared_mutex> w(models_mu_);
    auto it = models_.find(name);
    if (it == models_.end()) continue;
    it->second.shared_policy_id = id;
    it->second.config.policy = spec;
  }
  return std::chrono::steady_clock::now() + kFollowEvery;
}

void Server::Impl::StartSharing() {
  if (!registry_->networked() || sharing_task_) return;
  sharing_task_ = Scheduler::Shared().Add([this] { return FollowSharedPolicies(); });
}

void Server::Impl::StopSharing() {
  if (!sharing_task_) return;
  Scheduler::Shared().Remove(sharing_task_);  // waits for a round in progress
  sharing_task_ = 0;
}

}  // namespace lepton
