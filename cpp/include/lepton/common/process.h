// Facts about the calling process that long-lived objects need: how many times it has forked (an
// object made before a fork must not use its parent's threads or database connections), fresh
// random identifiers that never repeat across forks, and deadlines that cannot overflow.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace lepton {

// Increases in a child each time the process forks; equal to the value an object saw when it was
// made as long as it still lives in the process that made it.
uint64_t ForkGeneration();

// TorchScript's compiler (scripting, tracing, and the compilation that loading a saved module
// performs) is not safe to run from several threads at once: every lepton path that compiles,
// in C++ and in Python, holds this one mutex while it does.
std::mutex& TorchScriptMutex();

// `bytes` random bytes from the kernel (getrandom, drawn 4 KiB at a time per thread), as
// lower-case hex. What a thread drew before a fork is thrown away in the child, so that a child
// never repeats its parent's values.
std::string RandomHex(size_t bytes);

// This process's name among the replicas that share a registry: $LEPTON_REPLICA (a Kubernetes
// pod's name), else "host:pid".
std::string ReplicaName();

// The CPUs this process may run on (its affinity mask, which taskset, a container's cpuset or
// a worker's `cpus` set), at least 1; the machine's count where the mask cannot be read.
int UsableCores();

// Counts one request this process is answering, over every deployment, for as long as it lives.
// `InFlight()` is how many there are now: how busy the process is, for a thread that would
// rather wait awake than sleep, but only while cores are to spare.
class CountedRequest {
 public:
  CountedRequest();
  ~CountedRequest();
  CountedRequest(const CountedRequest&) = delete;
  CountedRequest& operator=(const CountedRequest&) = delete;
  static int InFlight();
};

// The longest span turned into a deadline: a caller's "timeout=1e10" or "inf" is a deadline about
// a century away, not an overflow into the past.
constexpr double kMaxDeadlineSeconds = 100.0 * 365 * 24 * 3600;

// `seconds` as a clock duration, clamped to [0, kMaxDeadlineSeconds]; NaN counts as 0.
template <class Duration = std::chrono::steady_clock::duration>
Duration ClampedDuration(double seconds) {
  if (!(seconds > 0)) return Duration::zero();
  if (seconds > kMaxDeadlineSeconds) seconds = kMaxDeadlineSeconds;
  return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(seconds));
}

}  // namespace lepton
