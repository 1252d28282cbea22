#include "worker_channel.h"

#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>

#include "shared_memory.h"

namespace lepton {

// One direction's mailbox: `seq` moves on each post; `sleeping` says its reader is, or is about
// to be, asleep on `seq`, so that a post calls into the kernel only when someone must be woken.
struct Mailbox {
  alignas(64) std::atomic<uint32_t> seq{0};
  std::atomic<uint32_t> sleeping{0};
  std::atomic<uint32_t> bytes{0};
  std::atomic<uint32_t> count{0};
  std::atomic<uint32_t> on_socket{0};
};

struct WorkerChannel::Layout {
  Mailbox request;
  Mailbox response;
  alignas(64) std::atomic<uint32_t> closed{0};  // the deployment let the connection go
  alignas(64) char request_area[kArea];
  char response_area[kArea];
};

namespace {

void Post(Mailbox& m, size_t bytes, int count, bool on_socket) {
  m.bytes.store(static_cast<uint32_t>(bytes), std::memory_order_relaxed);
  m.count.store(static_cast<uint32_t>(count), std::memory_order_relaxed);
  m.on_socket.store(on_socket ? 1 : 0, std::memory_order_relaxed);
  m.seq.fetch_add(1, std::memory_order_seq_cst);
  if (m.sleeping.load(std::memory_order_seq_cst) != 0) Futex(m.seq, FUTEX_WAKE, 1, nullptr);
}

// Waits until `m.seq` moves past `seen`; `gone` is asked each `look_s` and after each wake-up.
template <typename Gone>
WireStatus Wait(Mailbox& m, uint32_t& seen, std::optional<Clock::time_point> deadline,
                double spin_s, double look_s, Gone gone) {
  const auto moved = [&] {
    const uint32_t now = m.seq.load(std::memory_order_seq_cst);
    if (now == seen) return false;
    seen = now;
    return true;
  };
  if (moved() || Spin(spin_s, moved)) return WireStatus::kOk;
  const auto look = DeadlineIn(look_s);
  for (;;) {
    auto until = Clock::now() + look;
    if (deadline) until = std::min(until, *deadline);
    const timespec ts = TimespecOf(until - Clock::now());
    m.sleeping.store(1, std::memory_order_seq_cst);
    const bool posted = moved() || (Futex(m.seq, FUTEX_WAIT, seen, &ts), moved());
    m.sleeping.store(0, std::memory_order_relaxed);
    if (posted) return WireStatus::kOk;
    if (gone()) return WireStatus::kClosed;
    if (deadline && Clock::now() >= *deadline) return WireStatus::kTimeout;
  }
}

}  // namespace

std::unique_ptr<WorkerChannel> WorkerChannel::Create() {
  int fd = -1;
  void* mem = CreateShared("lepton-worker-channel", sizeof(Layout), fd);
  if (!mem) return nullptr;
  // The descriptor stays until it has been sent (CloseDescriptor).
  return std::unique_ptr<WorkerChannel>(new WorkerChannel(fd, new (mem) Layout, /*owner=*/true));
}

std::unique_ptr<WorkerChannel> WorkerChannel::Attach(int fd) {
  void* mem = AttachShared(fd, sizeof(Layout));
  if (!mem) return nullptr;
  return std::unique_ptr<WorkerChannel>(
      new WorkerChannel(-1, static_cast<Layout*>(mem), /*owner=*/false));
}

WorkerChannel::WorkerChannel(int fd, Layout* layout, bool owner)
    : fd_(fd), layout_(layout), owner_(owner) {}

WorkerChannel::~WorkerChannel() {
  if (owner_) {
    layout_->closed.store(1, std::memory_order_seq_cst);
    Mailbox& m = layout_->request;
    m.seq.fetch_add(1, std::memory_order_seq_cst);
    Futex(m.seq, FUTEX_WAKE, 1, nullptr);
  }
  ::munmap(layout_, sizeof(Layout));
  CloseDescriptor();
}

void WorkerChannel::CloseDescriptor() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

char* WorkerChannel::request_area() { return layout_->request_area; }
const char* WorkerChannel::request_bytes() const { return layout_->request_area; }
char* WorkerChannel::response_area() { return layout_->response_area; }
const char* WorkerChannel::response_area() const { return layout_->response_area; }

void WorkerChannel::PostRequest(size_t bytes, int count, bool on_socket) {
  Post(layout_->request, bytes, count, on_socket);
}

void WorkerChannel::PostResponse(size_t bytes, bool on_socket) {
  Post(layout_->response, bytes, 0, on_socket);
}

WireStatus WorkerChannel::WaitResponse(int socket, std::optional<Clock::time_point> deadline,
                                       double spin_s) {
  return Wait(layout_->response, seen_response_, deadline, spin_s, kAnswerLook_s,
              [socket] { return PeerGone(socket); });
}

WireStatus WorkerChannel::WaitRequest(int socket, double spin_s) {
  const WireStatus s = Wait(
      layout_->request, seen_request_, std::nullopt, spin_s, kRequestLook_s,
      [&] { return layout_->closed.load(std::memory_order_acquire) != 0 || PeerGone(socket); });
  if (s == WireStatus::kOk && layout_->closed.load(std::memory_order_acquire) != 0) {
    return WireStatus::kClosed;
  }
  return s;
}

size_t WorkerChannel::posted_bytes(bool request) const {
  const Mailbox& m = request ? layout_->request : layout_->response;
  return std::min<size_t>(m.bytes.load(std::memory_order_acquire), kArea);
}

int WorkerChannel::posted_count() const {
  return static_cast<int>(layout_->request.count.load(std::memory_order_acquire));
}

bool WorkerChannel::posted_on_socket(bool request) const {
  const Mailbox& m = request ? layout_->request : layout_->response;
  return m.on_socket.load(std::memory_order_acquire) != 0;
}

bool SendDescriptor(int socket, int fd, char kind) {
  char byte = fd >= 0 ? kind : kNoDescriptor;
  iovec iov{&byte, 1};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (fd >= 0) {
    m.msg_control = control;
    m.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
  }
  for (;;) {
    const ssize_t w = ::sendmsg(socket, &m, MSG_NOSIGNAL);
    if (w == 1) return true;
    if (w < 0 && errno == EINTR) continue;
    return false;
  }
}

std::optional<int> ReceiveDescriptor(int socket, char* kind) {
  char byte = 0;
  iovec iov{&byte, 1};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  for (;;) {
    const ssize_t r = ::recvmsg(socket, &m, MSG_CMSG_CLOEXEC);
    if (r < 0 && errno == EINTR) continue;
    if (r != 1) return std::nullopt;
    break;
  }
  if (kind) *kind = byte;
  int fd = -1;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
        c->cmsg_len == CMSG_LEN(sizeof(int))) {
      std::memcpy(&fd, CMSG_DATA(c), sizeof(int));
    }
  }
  return fd;
}

}  // namespace lepton
