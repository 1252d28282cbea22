// What a deployment knows of a version's worker process (runtime/worker.h), for its status.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lepton {

// Limits a worker runs under; each is applied by the worker to itself before it loads anything
// and read back from it once it is up.
struct WorkerResources {
  int64_t memory_bytes = 0;  // its address space (RLIMIT_AS); 0: no limit
  std::vector<int> cpus;     // the CPUs it may run on (its affinity); empty: the parent's
};

struct WorkerStatus {
  int pid = 0;              // 0 while down
  std::string state;        // "starting", "running", "restarting", "crashed" (given up), "stopped"
  int64_t restarts = 0;     // starts after the first
  int64_t crashes = 0;      // exits the deployment did not ask for
  std::string last_exit;    // "killed by signal 9 (Killed)", "exited with status 3", ""
  WorkerResources applied;  // as the worker read them back
};

}  // namespace lepton
