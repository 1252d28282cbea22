#include <cmath>
#include <nlohmann/json.hpp>

#include "lepton/common/errors.h"
#include "lepton/common/names.h"
#include "lepton/runtime/deployment_spec.h"

namespace lepton {
namespace {

int CountField(Fields& f, const std::string& k, int fallback, int minimum) {
  const int64_t v = f.get<int64_t>(k, "an integer", fallback);
  if (v < minimum || v > (int64_t{1} << 30)) {
    throw InvalidArgument(f.where() + ": '" + k + "' must be an integer >= " +
                          std::to_string(minimum) + ", got " + std::to_string(v));
  }
  return static_cast<int>(v);
}

double SecondsField(Fields& f, const std::string& k, double fallback, bool zero_ok) {
  const double v = f.get<double>(k, "a number", fallback);
  if (!std::isfinite(v) || v < 0 || (!zero_ok && v == 0)) {
    throw InvalidArgument(f.where() + ": '" + k + "' must be a finite number " +
                          (zero_ok ? ">= 0" : "> 0") + ", got " + std::to_string(v));
  }
  return v;
}

std::map<std::string, int> PerVersion(Fields& f, const std::string& k, int minimum) {
  std::map<std::string, int> out;
  if (!f.has(k)) return out;
  const nlohmann::json& j = f.raw(k);
  if (!j.is_object()) throw InvalidArgument(f.where() + ": '" + k + "' must be {version: integer}");
  for (const auto& [v, x] : j.items()) {
    if (!x.is_number_integer() || x.get<int64_t>() < minimum || x.get<int64_t>() > (1 << 30)) {
      throw InvalidArgument(f.where() + ": '" + k + "' of version '" + v +
                            "' must be an integer >= " + std::to_string(minimum));
    }
    out[v] = x.get<int>();
  }
  return out;
}

}  // namespace

void ReadDeploymentOptions(Fields& f, DeploymentOptions& o) {
  o.threads = CountField(f, "threads", o.threads, 0);
  o.servable.intra_op_threads = CountField(f, "intra_op_threads", o.servable.intra_op_threads, 1);
  o.servable.max_batch_size = CountField(f, "max_batch_size", o.servable.max_batch_size, 1);
  if (f.has("max_queue_delay_ms")) {
    o.servable.max_queue_delay_s = SecondsField(f, "max_queue_delay_ms", 0, true) / 1000;
  }
  o.servable.max_queue = CountField(f, "max_queue", o.servable.max_queue, 0);
  o.servable.warmup_runs = CountField(f, "warmup_runs", o.servable.warmup_runs, 0);
  o.servable.idle_thread_s =
      SecondsField(f, "idle_thread_timeout", o.servable.idle_thread_s, false);
  if (f.has("version_threads")) o.version_threads = PerVersion(f, "version_threads", 1);
  if (f.has("priorities")) {
    o.version_priority = PerVersion(f, "priorities", -(1 << 30));
  }
  o.adaptive = f.get<bool>("adaptive", "true or false", o.adaptive);
  o.min_threads = CountField(f, "min_threads", o.min_threads, 1);
  o.rebalance_interval_s = SecondsField(f, "rebalance_interval", o.rebalance_interval_s, false);
  o.drain_timeout_s = SecondsField(f, "drain_timeout", o.drain_timeout_s, true);
  o.alias_poll_s = SecondsField(f, "alias_poll_interval", o.alias_poll_s, false);
  o.policy_tick_s = SecondsField(f, "policy_tick", o.policy_tick_s, false);
  o.state_save_s = SecondsField(f, "state_save_interval", o.state_save_s, false);
  o.share_policies = f.maybe<bool>("share_policies", "true or false");
  o.replica = f.get<std::string>("replica", "a string", o.replica);
  o.policy_sync_s = SecondsField(f, "policy_sync_interval", o.policy_sync_s, false);
  o.policy_lease_s = SecondsField(f, "policy_lease", o.policy_lease_s, false);
  o.feedback_window =
      static_cast<size_t>(CountField(f, "feedback_window", static_cast<int>(o.feedback_window), 1));
  o.shadow_queue =
      static_cast<size_t>(CountField(f, "shadow_queue", static_cast<int>(o.shadow_queue), 0));
  o.anomaly_interval_s = SecondsField(f, "anomaly_interval", o.anomaly_interval_s, false);
  o.all_versions = f.get<bool>("all_versions", "true or false", o.all_versions);
  o.versions_poll_s = SecondsField(f, "versions_poll_interval", o.versions_poll_s, false);
  const auto eviction = f.maybe<std::string>("eviction", "\"lru\" or \"lfu\"");
  if (eviction) EvictionNamed(*eviction);  // refused even without a budget to apply it to
  if (f.has("memory_budget")) {
    const nlohmann::json& b = f.raw("memory_budget");
    if (!b.is_string() && !b.is_number()) {
      throw InvalidArgument(f.where() +
                            ": 'memory_budget' must be a number of bytes or a size such as "
                            "\"512MB\"");
    }
    o.memory_budget = MemoryBudget::Make(b.is_string() ? b.get<std::string>() : b.dump(), eviction);
  }
  if (f.has("pin")) {
    o.pinned = f.get<std::vector<std::string>>("pin", "a list of version labels", {});
  }
  o.load_threads = CountField(f, "load_threads", o.load_threads, 1);
  o.load_wait_s = SecondsField(f, "load_wait", o.load_wait_s, true);
  o.load_retry_s = SecondsField(f, "load_retry", o.load_retry_s, true);
  ReadPlacementOptions(f, o);
}

void ApplyPlacementJson(const std::string& json_text, DeploymentOptions& o) {
  const nlohmann::json j = nlohmann::json::parse(json_text, nullptr, false);
  if (j.is_discarded()) throw InvalidArgument("the placement options are not valid JSON");
  Fields f(j, "placement options");
  ReadPlacementOptions(f, o);
}

std::string PlacementSpecOf(const nlohmann::json& object) {
  nlohmann::json out = nlohmann::json::object();
  for (const char* k : {"placement", "resources", "worker", "remotes"}) {
    if (object.contains(k) && !object.at(k).is_null()) out[k] = object.at(k);
  }
  if (out.empty()) return "";
  DeploymentOptions check;
  ApplyPlacementJson(out.dump(), check);  // refused now, with the reason, rather than at load
  return out.dump();
}

void ReadPlacementOptions(Fields& f, DeploymentOptions& o) {
  if (f.has("placement")) {
    const nlohmann::json& p = f.raw("placement");
    if (p.is_string()) {
      o.default_placement = PlacementNamed(p.get<std::string>());
    } else if (p.is_object()) {
      for (const auto& [v, x] : p.items()) {
        if (!x.is_string()) {
          throw InvalidArgument(f.where() + ": 'placement' of version '" + v +
                                "' must be \"process\" or \"in_process\"");
        }
        o.placement[v] = PlacementNamed(x.get<std::string>());
      }
    } else {
      throw InvalidArgument(f.where() +
                            ": 'placement' must be \"process\", \"in_process\" or {version: "
                            "placement}");
    }
  }
  if (f.has("resources")) {
    const nlohmann::json& r = f.raw("resources");
    if (!r.is_object()) {
      throw InvalidArgument(f.where() +
                            ": 'resources' must be {version: {\"memory\": size, "
                            "\"cpus\": [ids]}}");
    }
    for (const auto& [v, x] : r.items()) {
      Fields rf(x, f.where() + ": resources of version '" + v + "'");
      WorkerResources wr;
      if (rf.has("memory")) {
        const nlohmann::json& m = rf.raw("memory");
        if (!m.is_string() && !m.is_number()) {
          throw InvalidArgument(rf.where() + ": 'memory' must be a size such as \"2GB\"");
        }
        wr.memory_bytes = ParseByteSize(m.is_string() ? m.get<std::string>() : m.dump());
      }
      if (rf.has("cpus")) {
        wr.cpus = rf.get<std::vector<int>>("cpus", "a list of CPU numbers", {});
        for (int c : wr.cpus) {
          if (c < 0 || c >= 1024) {
            throw InvalidArgument(rf.where() + ": no CPU " + std::to_string(c));
          }
        }
      }
      o.resources[v] = std::move(wr);
    }
  }
  if (f.has("worker")) {
    Fields w(f.raw("worker"), f.where() + ": worker");
    WorkerOptions& wo = o.worker;
    wo.program = w.get<std::string>("program", "a path", wo.program);
    if (w.has("libraries")) {
      wo.libraries = w.get<std::vector<std::string>>("libraries", "a list of paths", {});
    }
    wo.start_timeout_s = SecondsField(w, "start_timeout", wo.start_timeout_s, false);
    wo.restart_backoff_s = SecondsField(w, "restart_backoff", wo.restart_backoff_s, true);
    wo.restart_backoff_max_s =
        SecondsField(w, "restart_backoff_max", wo.restart_backoff_max_s, true);
    wo.max_restarts = CountField(w, "max_restarts", wo.max_restarts, 0);
    wo.restart_window_s = SecondsField(w, "restart_window", wo.restart_window_s, false);
    wo.max_connections = CountField(w, "max_connections", wo.max_connections, 1);
    if (w.has("busy_poll_us")) wo.busy_poll_s = SecondsField(w, "busy_poll_us", 0, true) * 1e-6;
    wo.shared_memory = w.get<bool>("shared_memory", "true or false", wo.shared_memory);
  }
  if (f.has("remotes")) {
    const nlohmann::json& r = f.raw("remotes");
    if (!r.is_object()) {
      throw InvalidArgument(f.where() +
                            ": 'remotes' must be {label: {\"url\": ..., \"model\": ...}}");
    }
    for (const auto& [label, x] : r.items()) {
      ValidateName(label, "remote version label");
      Fields rf(x, f.where() + ": remote version '" + label + "'");
      RemoteOptions ro;
      ro.url = rf.get<std::string>("url", "a string");
      ro.model = rf.get<std::string>("model", "a string");
      ro.version = rf.get<std::string>("version", "a string", "");
      if (rf.has("headers")) {
        ro.headers = rf.get<std::map<std::string, std::string>>("headers", "{name: value}", {});
      }
      ro.timeout_s = SecondsField(rf, "timeout", ro.timeout_s, false);
      ro.connect_timeout_s = SecondsField(rf, "connect_timeout", ro.connect_timeout_s, false);
      ro.retries = CountField(rf, "retries", ro.retries, 0);
      ro.eject_after = CountField(rf, "eject_after", ro.eject_after, 0);
      ro.eject_s = SecondsField(rf, "eject_for", ro.eject_s, true);
      ro.max_connections = CountField(rf, "max_connections", ro.max_connections, 0);
      ro.binary = rf.get<bool>("binary", "true or false", ro.binary);
      o.remotes[label] = std::move(ro);
    }
  }
}

DeploymentOptions DeploymentOptionsFromJson(const std::string& json_text) {
  const nlohmann::json j = nlohmann::json::parse(json_text, nullptr, false);
  if (j.is_discarded()) throw InvalidArgument("the deployment options are not valid JSON");
  DeploymentOptions o;
  Fields f(j, "deployment options");
  ReadDeploymentOptions(f, o);
  return o;
}

}  // namespace lepton
