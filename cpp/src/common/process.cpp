#include "lepton/common/process.h"

#include <pthread.h>
#include <sched.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <system_error>
#include <thread>

#include "lepton/common/errors.h"

namespace lepton {
namespace {

std::atomic<uint64_t> g_fork_generation{0};

std::mutex& CompileMutex() {
  static std::mutex* mu = new std::mutex();  // never destroyed: replaced in a forked child
  return *mu;
}

void AfterForkInChild() {
  g_fork_generation.fetch_add(1, std::memory_order_relaxed);
  // A thread of the parent may have been compiling: the child, which has no such thread, starts
  // with the mutex free. The fork is not held back for it, since a compiling Python thread needs
  // the GIL that the forking thread holds.
  new (&CompileMutex()) std::mutex();
}

// Registered when the library is loaded, before any object can record a generation.
const bool kAtForkRegistered = [] {
  return ::pthread_atfork(nullptr, nullptr, &AfterForkInChild) == 0;
}();

}  // namespace

uint64_t ForkGeneration() {
  (void)kAtForkRegistered;
  return g_fork_generation.load(std::memory_order_relaxed);
}

std::mutex& TorchScriptMutex() { return CompileMutex(); }

namespace {

// Random bytes drawn from the kernel a page at a time rather than a system call per request id,
// kept per thread and thrown away in a forked child (whose generation differs), so that a child
// never repeats its parent's values.
void RandomBytes(unsigned char* out, size_t n) {
  struct Pool {
    uint64_t generation = ~uint64_t{0};
    size_t used = sizeof(bytes);
    unsigned char bytes[4096];
  };
  thread_local Pool pool;
  while (n > 0) {
    if (pool.generation != ForkGeneration() || pool.used == sizeof(pool.bytes)) {
      size_t got = 0;
      while (got < sizeof(pool.bytes)) {
        const ssize_t r = ::getrandom(pool.bytes + got, sizeof(pool.bytes) - got, 0);
        if (r < 0) {
          if (errno == EINTR) continue;
          throw StorageError("cannot read random bytes: " + std::system_category().message(errno));
        }
        got += static_cast<size_t>(r);
      }
      pool.generation = ForkGeneration();
      pool.used = 0;
    }
    const size_t take = std::min(n, sizeof(pool.bytes) - pool.used);
    std::memcpy(out, pool.bytes + pool.used, take);
    // Bytes handed out are not kept.
    std::memset(pool.bytes + pool.used, 0, take);
    pool.used += take;
    out += take;
    n -= take;
  }
}

}  // namespace

int UsableCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

namespace {
std::atomic<int> g_requests_in_flight{0};
}  // namespace

CountedRequest::CountedRequest() { g_requests_in_flight.fetch_add(1, std::memory_order_relaxed); }

CountedRequest::~CountedRequest() { g_requests_in_flight.fetch_sub(1, std::memory_order_relaxed); }

int CountedRequest::InFlight() { return g_requests_in_flight.load(std::memory_order_relaxed); }

std::string RandomHex(size_t bytes) {
  static const char kHex[] = "0123456789abcdef";
  std::string out(bytes * 2, '\0');
  unsigned char raw[64];
  for (size_t done = 0; done < bytes;) {
    const size_t n = std::min(bytes - done, sizeof(raw));
    RandomBytes(raw, n);
    for (size_t i = 0; i < n; ++i) {
      out[2 * (done + i)] = kHex[raw[i] >> 4];
      out[2 * (done + i) + 1] = kHex[raw[i] & 0xf];
    }
    done += n;
  }
  std::memset(raw, 0, sizeof(raw));
  return out;
}

std::string ReplicaName() {
  if (const char* env = std::getenv("LEPTON_REPLICA"); env && *env) return env;
  char host[256] = {0};
  if (::gethostname(host, sizeof(host) - 1) != 0 || !host[0]) std::snprintf(host, 8, "host");
  return std::string(host) + ":" + std::to_string(::getpid());
}

}  // namespace lepton
