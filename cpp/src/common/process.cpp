#include "lepton/common/process.h"

#include <pthread.h>
#include <sys/random.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <system_error>

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

std::string RandomHex(size_t bytes) {
  std::string raw(bytes, '\0');
  size_t got = 0;
  while (got < bytes) {
    const ssize_t n = ::getrandom(raw.data() + got, bytes - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw StorageError("cannot read random bytes: " + std::system_category().message(errno));
    }
    got += static_cast<size_t>(n);
  }
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(bytes * 2);
  for (unsigned char c : raw) {
    out += kHex[c >> 4];
    out += kHex[c & 0xf];
  }
  return out;
}

std::string ReplicaName() {
  if (const char* env = std::getenv("LEPTON_REPLICA"); env && *env) return env;
  char host[256] = {0};
  if (::gethostname(host, sizeof(host) - 1) != 0 || !host[0]) std::snprintf(host, 8, "host");
  return std::string(host) + ":" + std::to_string(::getpid());
}

}  // namespace lepton
