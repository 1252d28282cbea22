// What the shared-memory transports to a worker (WorkerChannel, WorkerRing) have in common: a
// mapping made on one side and passed to the other, futex waits and wakes on words in it, waiting
// awake for a while first, and a look at the socket that is the mapping's lifeline. Private to
// the runtime layer.
#pragma once

#include <time.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "lepton/runtime/servable.h"

namespace lepton {

static_assert(std::atomic<uint32_t>::is_always_lock_free, "futex words must be plain words");

// How often a side asleep looks at the socket for the other's end: a deployment waiting for an
// answer soon after its worker died, a worker waiting for work rarely (the deployment says when
// it lets a connection or a ring go, and a worker whose deployment died is ended by its lifeline).
constexpr double kAnswerLook_s = 0.01;
constexpr double kRequestLook_s = 0.5;

// A new shared mapping of `size` bytes, its descriptor in `fd`; nullptr (and no descriptor) where
// the system cannot make one.
void* CreateShared(const char* name, size_t size, int& fd);
// The mapping behind a descriptor the other side sent, which must be `size` bytes; nullptr when
// it is not or cannot be mapped. The descriptor is closed either way.
void* AttachShared(int fd, size_t size);

// The futex system call on a word of a shared mapping (not private: the other process waits or
// wakes on it too).
long Futex(std::atomic<uint32_t>& word, int op, uint32_t value, const timespec* timeout);
// `d` (at least zero) as a futex timeout.
timespec TimespecOf(Clock::duration d);
// Whether the peer's end of the socket has closed.
bool PeerGone(int socket);

// Looks for `ready` awake for up to `spin_s`; false when it did not come.
template <typename Ready>
bool Spin(double spin_s, Ready ready) {
  if (!(spin_s > 0)) return false;
  const auto until = Clock::now() + DeadlineIn(spin_s);
  for (int n = 1;; ++n) {
    if (ready()) return true;
    if ((n & 63) == 0 && Clock::now() >= until) return false;
  }
}

}  // namespace lepton
