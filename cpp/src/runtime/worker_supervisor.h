// The life of a version's worker process, as its deployment sees it: starting an incarnation and
// waiting for its hello, then a thread that waits for it to end and starts the next one with
// back-off, until stopped or until repeated crashes make it give up. Connections to the worker
// are not its business (worker_client.cpp pools them); it says which incarnation is current, so
// that a connection to an earlier one is never used again. Private to the runtime layer.
#pragma once

#include <unistd.h>

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

#include "lepton/runtime/worker.h"
#include "lepton/runtime/worker_status.h"
#include "worker.pb.h"

namespace lepton {

// A file descriptor closed with its owner.
struct Fd {
  int fd = -1;
  Fd() = default;
  explicit Fd(int f) : fd(f) {}
  Fd(Fd&& o) noexcept : fd(o.fd) { o.fd = -1; }
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      Close();
      fd = o.fd;
      o.fd = -1;
    }
    return *this;
  }
  ~Fd() { Close(); }
  void Close() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

class WorkerSupervisor {
 public:
  // `dir` is a private folder for the incarnations' sockets, removed by Stop.
  WorkerSupervisor(worker::Start start, WorkerOptions options, std::string dir);
  ~WorkerSupervisor();
  WorkerSupervisor(const WorkerSupervisor&) = delete;
  WorkerSupervisor& operator=(const WorkerSupervisor&) = delete;

  // Starts the first incarnation and the thread that supervises it; LoadError when it does not
  // come up.
  worker::Hello Begin();

  // The running incarnation, to connect to.
  struct Running {
    uint64_t generation = 0;
    int pid = 0;
    std::string socket;
  };
  // Unavailable once stopped; BackendUnavailable while no incarnation runs (restarting, or given
  // up after repeated crashes), with its last exit.
  Running Current() const;
  // Whether `generation` is still the running incarnation (its connections may be kept).
  bool IsCurrent(uint64_t generation) const;
  // " (killed by signal 9 (Killed))" once the incarnation `generation` has been seen to end
  // (waiting a moment for it to be reaped), else "".
  std::string ExitOf(uint64_t generation);

  WorkerStatus status() const;
  const std::string& who() const { return who_; }
  const WorkerOptions& options() const { return options_; }

  // Makes the worker leave (SIGKILL when it has not within 5 s), reaps it and removes the
  // sockets' folder. Idempotent.
  void Stop();

 private:
  std::string SocketPath(uint64_t generation) const;
  worker::Hello Spawn();  // one incarnation, up to its hello; called without mu_
  void Supervise();

  // One running incarnation of the worker.
  struct Incarnation {
    pid_t pid = 0;
    uint64_t generation = 0;
    Fd lifeline;  // the write end: closing it makes the worker leave
  };

  const worker::Start start_;
  WorkerOptions options_;  // its program resolved
  const std::string dir_;
  const std::string who_;
  mutable std::mutex mu_;
  std::condition_variable changed_;
  Incarnation current_;
  uint64_t generations_ = 0;
  WorkerStatus status_;
  bool stopped_ = false;
  std::thread supervisor_;
};

}  // namespace lepton
