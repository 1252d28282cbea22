#include "shared_memory.h"

#include <poll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

namespace lepton {
namespace {

void* Map(int fd, size_t size) {
  void* mem = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  return mem == MAP_FAILED ? nullptr : mem;
}

}  // namespace

void* CreateShared(const char* name, size_t size, int& fd) {
  fd = ::memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) return nullptr;
  void* mem = ::ftruncate(fd, static_cast<off_t>(size)) == 0 ? Map(fd, size) : nullptr;
  if (!mem) {
    ::close(fd);
    fd = -1;
  }
  return mem;
}

void* AttachShared(int fd, size_t size) {
  const bool fits = ::lseek(fd, 0, SEEK_END) == static_cast<off_t>(size);
  void* mem = fits ? Map(fd, size) : nullptr;
  ::close(fd);  // a mapping stays without it
  return mem;
}

long Futex(std::atomic<uint32_t>& word, int op, uint32_t value, const timespec* timeout) {
  return ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), op, value, timeout, nullptr, 0);
}

timespec TimespecOf(Clock::duration d) {
  d = std::max(Clock::duration::zero(), d);
  const auto secs = std::chrono::duration_cast<std::chrono::seconds>(d);
  return timespec{
      static_cast<time_t>(secs.count()),
      static_cast<long>(std::chrono::duration_cast<std::chrono::nanoseconds>(d - secs).count())};
}

bool PeerGone(int socket) {
  pollfd p{socket, POLLRDHUP, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

}  // namespace lepton
