// A shared-memory mailbox beside each connection between a deployment and its worker: an
// exchange's frames (the same bytes the socket would carry) are copied into the request area, the
// worker's answers into the response area, and each side sleeps on a futex until the other posts,
// which costs this machine about half of a round trip over the socket. An exchange too large for
// its area goes over the socket, announced in the mailbox. The socket stays the connection's
// lifeline: a side that waits looks at it every few milliseconds for its peer's end. Private to
// the runtime layer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>

#include "worker_wire.h"

namespace lepton {

class WorkerChannel {
 public:
  // The bytes each direction's area holds; larger exchanges go over the socket.
  static constexpr size_t kArea = size_t{256} << 10;

  // The deployment's side: a new shared mapping, whose descriptor goes to the worker; nullptr
  // where the system cannot make one (the connection then uses its socket alone).
  static std::unique_ptr<WorkerChannel> Create();
  // The worker's side, from the descriptor the deployment sent; nullptr when it cannot be mapped.
  static std::unique_ptr<WorkerChannel> Attach(int fd);
  // The deployment's side tells the worker that the connection is done.
  ~WorkerChannel();
  WorkerChannel(const WorkerChannel&) = delete;
  WorkerChannel& operator=(const WorkerChannel&) = delete;

  // The mapping's descriptor, to send to the worker, until CloseDescriptor (the mapping stays).
  int fd() const { return fd_; }
  void CloseDescriptor();

  // The deployment: posts an exchange of `count` requests whose `bytes` are already in
  // request_area(), or (with `on_socket`) that follow on the socket.
  char* request_area();
  void PostRequest(size_t bytes, int count, bool on_socket);
  // Waits for the worker's answers: kOk when they are posted, kTimeout at the deadline, kClosed
  // when the worker's end of `socket` closed. With `spin_s`, looks for them that long without
  // sleeping first.
  WireStatus WaitResponse(int socket, std::optional<Clock::time_point> deadline, double spin_s);
  const char* response_area() const;

  // The worker: waits for the next exchange; kClosed when the deployment let the connection go.
  WireStatus WaitRequest(int socket, double spin_s);
  const char* request_bytes() const;
  char* response_area();
  void PostResponse(size_t bytes, bool on_socket);

  // The last posted exchange's size in bytes (0 when it is on the socket), request count and
  // whether it is on the socket.
  size_t posted_bytes(bool request) const;
  int posted_count() const;
  bool posted_on_socket(bool request) const;

  struct Layout;

 private:
  WorkerChannel(int fd, Layout* layout, bool owner);
  int fd_;
  Layout* layout_;
  bool owner_;  // the deployment's side
  // Each side waits on one mailbox, which starts at 0 for both: a post that comes before the
  // other side has mapped the channel is still seen.
  uint32_t seen_request_ = 0;   // the worker's
  uint32_t seen_response_ = 0;  // the deployment's
};

// What a descriptor sent after the worker's hello is: a connection's mailbox, or a ring
// (worker_ring.h); a connection without either gets kNoDescriptor.
constexpr char kMailboxDescriptor = 'm';
constexpr char kRingDescriptor = 'r';
constexpr char kNoDescriptor = 's';

// Sends `fd` (or, when it is -1, nothing but the byte) over a Unix socket with one byte of data,
// which says what it is (`kind`).
bool SendDescriptor(int socket, int fd, char kind);
// Receives what SendDescriptor sent: the descriptor, or -1 when only the byte came; nullopt when
// the socket closed. `kind`, when given, receives the byte.
std::optional<int> ReceiveDescriptor(int socket, char* kind = nullptr);

}  // namespace lepton
