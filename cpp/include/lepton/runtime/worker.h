// A version placed in its own process: a worker runs the same engine pinned to that one version
// and serves it to its deployment over a local socket with binary frames. A crash in the worker
// (a custom op, a corrupted library, an out-of-memory kill) fails only the requests it was
// running, with Unavailable; the worker is started again with back-off while the version reports
// itself unhealthy, and repeated crashes stop the restarts and say so.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lepton/common/errors.h"
#include "lepton/common/signature.h"
#include "lepton/runtime/servable.h"
#include "lepton/runtime/worker_status.h"

namespace lepton {

// Where a version runs.
enum class Placement { kInProcess, kProcess };
const char* PlacementName(Placement p);
// InvalidArgument for anything but "in_process" or "process".
Placement PlacementNamed(const std::string& name);

struct WorkerOptions {
  // The worker program; empty: $LEPTON_WORKER, else `lepton-worker` beside the library that
  // holds this code (the Python package's folder).
  std::string program;
  // Shared libraries the worker loads before the model (custom operators).
  std::vector<std::string> libraries;
  WorkerResources resources;
  double start_timeout_s = 120;  // to load and warm up
  // Restarts after a crash wait `restart_backoff_s`, doubling up to `restart_backoff_max_s`;
  // after `max_restarts` crashes within `restart_window_s`, the worker is left down.
  double restart_backoff_s = 0.1;
  double restart_backoff_max_s = 5;
  int max_restarts = 5;
  double restart_window_s = 60;
  // Connections to the worker, one per request running there at a time.
  int max_connections = 64;
  // How long each side looks for the other's next frame without sleeping (the deployment for an
  // answer, the worker for the next request): a wake-up costs tens of microseconds on some
  // machines, more than a small forward. Only while the process has a core to spare for it
  // (requests it is answering and exchanges with workers, two cores each, within its CPUs):
  // under load both sides sleep at once. 0: always sleep at once.
  double busy_poll_s = 100e-6;
  // Each connection carries its exchanges through a shared-memory mailbox, each side asleep on a
  // futex until the other posts (those over 256 KiB go over the socket): on this kind of machine
  // about half of what a round trip over the socket costs. false: over the socket only.
  bool shared_memory = true;
};

// Starts a worker for one version and waits until it has loaded and warmed up; LoadError (with
// what the worker said) when it cannot start. The returned servable queues, batches and counts
// requests like any other; its forwards run in the worker.
// `artifact` is the path of the TorchScript archive, checked against `sha256` by the worker;
// `options` are the servable's (its CPU budget is the worker's too).
std::shared_ptr<Servable> StartWorker(const std::string& model, const std::string& version,
                                      const std::string& artifact, const std::string& sha256,
                                      const std::optional<Signature>& signature,
                                      const ServableOptions& options, const WorkerOptions& worker);

// The worker program's entry point (`lepton-worker --help` lists its arguments).
int WorkerMain(int argc, char** argv);

}  // namespace lepton
