// The options of a deployment, shared by its units.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lepton/control/memory_budget.h"
#include "lepton/runtime/remote.h"
#include "lepton/runtime/servable.h"
#include "lepton/runtime/worker.h"

namespace lepton {

struct DeploymentOptions {
  // Cores shared by the deployment's versions; 0: every core of the machine.
  int threads = 0;
  // Defaults for every version; `servable.threads` is set by the deployment (see below).
  ServableOptions servable;
  // Fixed CPU budgets per version label; the others share what is left.
  std::map<std::string, int> version_threads;
  // Default request priority per version label.
  std::map<std::string, int> version_priority;
  // Reassign cores among versions from their measured demand, never below `min_threads`.
  bool adaptive = true;
  int min_threads = 1;
  double rebalance_interval_s = 0.5;
  // How long a removed or swapped-out version may finish its requests.
  double drain_timeout_s = 30;
  // How often a deployment that follows an alias checks the registry.
  double alias_poll_s = 0.2;
  // How often the policy's controller runs (canary steps, A/B decisions, schedules).
  double policy_tick_s = 0.02;
  // How often a stateful policy's state is saved to the registry (and at close).
  double state_save_s = 1.0;
  // Whether a stateful policy (canary, A/B test, bandit) is shared with the other replicas that
  // serve the model from the same registry: they decide as one (control/PolicySync). Unset: when
  // the registry is on a database server (PostgreSQL).
  std::optional<bool> share_policies;
  // This replica's name among them (default: $LEPTON_REPLICA, else host:pid), how often it
  // syncs, and how long a silent leader keeps the lead.
  std::string replica;
  double policy_sync_s = 0.25;
  double policy_lease_s = 3.0;
  // How many recent requests can still take feedback.
  size_t feedback_window = 100000;
  // Mirrored requests waiting for comparison; more are dropped (and counted).
  size_t shadow_queue = 256;
  // How often each version's error rate and latency are checked against their recent band.
  double anomaly_interval_s = 1.0;

  // --- many versions ---
  // Serve every version of the model, including versions registered later (looked for every
  // versions_poll_s); the newest is the primary.
  bool all_versions = false;
  double versions_poll_s = 1.0;
  // Null: every version is loaded before it takes traffic and stays loaded. Otherwise versions
  // load when a request needs them and the least recently used idle version is unloaded when a
  // load needs room; several deployments may share one budget.
  std::shared_ptr<MemoryBudget> memory_budget;
  // Versions kept loaded whatever the budget needs.
  std::vector<std::string> pinned;
  // Threads that load versions for requests (they leave when idle).
  int load_threads = 2;
  // How long a load may wait for loaded versions to go idle and make room.
  double load_wait_s = 30;
  // After a failed load, requests for the version fail at once for this long, then it is tried
  // again.
  double load_retry_s = 5;

  // --- placement ---
  // Where each version runs: in this process (the default) or in a worker process of its own
  // (runtime/worker.h); `default_placement` for the versions not named.
  Placement default_placement = Placement::kInProcess;
  std::map<std::string, Placement> placement;
  // Limits of a version's worker (memory, CPUs).
  std::map<std::string, WorkerResources> resources;
  // How workers are started and restarted (their resources come from `resources`).
  WorkerOptions worker;
  // Versions served by an Open Inference Protocol endpoint, by their label in this deployment
  // (runtime/remote.h); a deployment lists them among its versions like any other.
  std::map<std::string, RemoteOptions> remotes;

  Placement PlacementOf(const std::string& version) const {
    auto it = placement.find(version);
    return it == placement.end() ? default_placement : it->second;
  }
};

// A deployment's options as JSON, the one specification that Python's Deployment, `lepton serve`
// and its config file write: {"threads": 4, "max_batch_size": 16, "max_queue_delay_ms": 2, ...}.
// Fields: threads, intra_op_threads, max_batch_size, max_queue_delay_ms, max_queue, warmup_runs,
// idle_thread_timeout,
// version_threads, priorities, adaptive, min_threads, rebalance_interval, drain_timeout,
// alias_poll_interval, policy_tick, state_save_interval, share_policies, replica,
// policy_sync_interval, policy_lease, feedback_window, shadow_queue,
// anomaly_interval, all_versions, versions_poll_interval, memory_budget (bytes, or a size such as
// "512MB"; a budget of this deployment's own), eviction ("lru" or "lfu", for that budget), pin,
// load_threads, load_wait, load_retry, placement ("process", or {version: "process" or
// "in_process"}), resources ({version: {"memory": size, "cpus": [ids]}}), worker ({"program",
// "libraries", "start_timeout", "restart_backoff", "restart_backoff_max", "max_restarts",
// "restart_window", "max_connections", "busy_poll_us", "shared_memory"}), remotes ({label: {"url", "model",
// "version", "headers", "timeout", "connect_timeout", "retries", "eject_after", "eject_for",
// "max_connections", "binary"}}) (durations in seconds unless named _ms). Absent or null
// fields keep their defaults above; unknown fields and wrong types raise InvalidArgument naming
// them.
DeploymentOptions DeploymentOptionsFromJson(const std::string& json_text);

}  // namespace lepton
