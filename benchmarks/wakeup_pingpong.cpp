// Two processes handing one small message back and forth, the floor under any hop between a
// deployment and a worker of its own on this machine: what a round trip costs when each side
// sleeps until the other's message arrives.
//
//   wakeup_pingpong [SECONDS]
//
// Three ways of waiting, each for SECONDS (default 2):
//   socket  a Unix stream socket pair, a blocking send and recv of 64 bytes each way;
//   futex   a counter in shared memory, the waiting side asleep in FUTEX_WAIT until the other
//           stores the next value and calls FUTEX_WAKE;
//   spin    the same counter, the waiting side spinning on it (no sleep, no system call).
// Prints one JSON object: for each, round trips per second, the wall time of a round trip, and
// the CPU time (user + system, from getrusage) each side spent per round trip.
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

namespace {

using Clock = std::chrono::steady_clock;

struct Shared {
  alignas(64) std::atomic<int> ping{0};  // the parent's latest round, and -1 to stop
  alignas(64) std::atomic<int> pong{0};  // the child's answer to it
};

double CpuSeconds(int who) {
  rusage r{};
  getrusage(who, &r);
  return static_cast<double>(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
         static_cast<double>(r.ru_utime.tv_usec + r.ru_stime.tv_usec) * 1e-6;
}

long Futex(std::atomic<int>* word, int op, int value) {
  return syscall(SYS_futex, reinterpret_cast<int*>(word), op, value, nullptr, nullptr, 0);
}

// Waits until `word` differs from `seen`, sleeping in the kernel or spinning; returns its value.
int WaitChange(std::atomic<int>& word, int seen, bool spin) {
  for (;;) {
    const int v = word.load(std::memory_order_acquire);
    if (v != seen) return v;
    if (!spin) Futex(&word, FUTEX_WAIT, seen);
  }
}

void Post(std::atomic<int>& word, int value, bool spin) {
  word.store(value, std::memory_order_release);
  if (!spin) Futex(&word, FUTEX_WAKE, 1);
}

bool ReadAll(int fd, char* data, size_t n) {
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::recv(fd, data + got, n - got, 0);
    if (r <= 0) return false;
    got += static_cast<size_t>(r);
  }
  return true;
}

bool WriteAll(int fd, const char* data, size_t n) {
  size_t put = 0;
  while (put < n) {
    const ssize_t w = ::send(fd, data + put, n - put, MSG_NOSIGNAL);
    if (w <= 0) return false;
    put += static_cast<size_t>(w);
  }
  return true;
}

// The child's side: answers every message until told to stop, then exits.
[[noreturn]] void Answer(const std::string& mode, int fd, Shared* shared) {
  char message[64];
  if (mode == "socket") {
    while (ReadAll(fd, message, sizeof message) && message[0] != 'q') {
      if (!WriteAll(fd, message, sizeof message)) break;
    }
  } else {
    const bool spin = mode == "spin";
    int seen = 0;
    for (;;) {
      seen = WaitChange(shared->ping, seen, spin);
      if (seen < 0) break;
      Post(shared->pong, seen, spin);
    }
  }
  _exit(0);
}

struct Result {
  double round_trips_per_s = 0;
  double wall_us = 0;
  double caller_cpu_us = 0;
  double answerer_cpu_us = 0;
};

Result Measure(const std::string& mode, double seconds) {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) {
    std::perror("socketpair");
    std::exit(1);
  }
  void* mem =
      mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    std::perror("mmap");
    std::exit(1);
  }
  auto* shared = new (mem) Shared;
  const double children_before = CpuSeconds(RUSAGE_CHILDREN);
  const pid_t child = fork();
  if (child < 0) {
    std::perror("fork");
    std::exit(1);
  }
  if (child == 0) {
    close(fds[0]);
    Answer(mode, fds[1], shared);
  }
  close(fds[1]);
  const bool spin = mode == "spin";
  char message[64];
  std::memset(message, 'p', sizeof message);
  long rounds = 0;
  const auto until = Clock::now() + std::chrono::duration<double>(seconds);
  const double cpu_before = CpuSeconds(RUSAGE_SELF);
  const auto start = Clock::now();
  for (;;) {
    // The clock is read every 256 round trips, so that it adds little to what is measured.
    if ((rounds & 255) == 0 && Clock::now() >= until) break;
    ++rounds;
    if (mode == "socket") {
      if (!WriteAll(fds[0], message, sizeof message) || !ReadAll(fds[0], message, sizeof message)) {
        std::fprintf(stderr, "the answering process went away\n");
        std::exit(1);
      }
    } else {
      Post(shared->ping, static_cast<int>(rounds), spin);
      WaitChange(shared->pong, static_cast<int>(rounds - 1), spin);
    }
  }
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  const double cpu = CpuSeconds(RUSAGE_SELF) - cpu_before;
  if (mode == "socket") {
    message[0] = 'q';
    WriteAll(fds[0], message, sizeof message);
  } else {
    Post(shared->ping, -1, spin);
  }
  int status = 0;
  waitpid(child, &status, 0);
  const double child_cpu = CpuSeconds(RUSAGE_CHILDREN) - children_before;
  close(fds[0]);
  munmap(mem, sizeof(Shared));
  Result r;
  const double n = static_cast<double>(rounds);
  r.round_trips_per_s = n / wall;
  r.wall_us = wall / n * 1e6;
  r.caller_cpu_us = cpu / n * 1e6;
  r.answerer_cpu_us = child_cpu / n * 1e6;  // its start and exit included: a small bias upward
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  const double seconds = argc > 1 ? std::atof(argv[1]) : 2.0;
  if (!(seconds > 0)) {
    std::fprintf(stderr, "usage: wakeup_pingpong [SECONDS]\n");
    return 2;
  }
  std::printf("{");
  const char* modes[] = {"socket", "futex", "spin"};
  for (int i = 0; i < 3; ++i) {
    const Result r = Measure(modes[i], seconds);
    std::printf(
        "%s\"%s\": {\"round_trips_per_s\": %.0f, \"wall_us\": %.2f, \"caller_cpu_us\": %.2f, "
        "\"answerer_cpu_us\": %.2f}",
        i ? ", " : "", modes[i], r.round_trips_per_s, r.wall_us, r.caller_cpu_us,
        r.answerer_cpu_us);
  }
  std::printf("}\n");
  return 0;
}
