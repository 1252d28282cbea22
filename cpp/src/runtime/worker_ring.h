// A worker's shared request slots: one shared mapping per incarnation of a worker, whose slots
// any of the deployment's threads fills with one request's frame and any of the worker's serving
// threads takes, runs and answers in the same slot. A caller sleeps on its own slot until the
// worker that ran it posts the answer and wakes it, and the worker's threads sleep only when no
// slot is posted: under load each request costs one wake-up, its caller's, where an exchange over
// a connection costs the worker's, the carrying caller's and the other callers'. The socket the
// mapping was sent over is the lifeline: a side that waits looks at it every few milliseconds for
// the other's end. Private to the runtime layer.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "worker_wire.h"

namespace lepton {

class WorkerRing {
 public:
  // Requests in flight at once; a request finding every slot taken goes over a connection.
  static constexpr int kSlots = 32;
  // The bytes of each slot's request, and of its answer. An answer that does not fit is carried
  // through the same area in pieces, each taken by the caller before the next is written.
  static constexpr size_t kArea = size_t{64} << 10;

  // The deployment's side: a new shared mapping, whose descriptor goes to the worker; nullptr
  // where the system cannot make one.
  static std::unique_ptr<WorkerRing> Create();
  // The worker's side, from the descriptor the deployment sent; nullptr when it cannot be mapped.
  static std::unique_ptr<WorkerRing> Attach(int fd);
  // The deployment's side tells the worker's threads that the ring is done.
  ~WorkerRing();
  WorkerRing(const WorkerRing&) = delete;
  WorkerRing& operator=(const WorkerRing&) = delete;

  int fd() const { return fd_; }
  void CloseDescriptor();

  // --- The deployment's side ---
  // A free slot for the calling thread, or -1 when every slot is in use.
  int Acquire();
  char* request_area(int slot);
  // Posts the request whose `bytes` are in the slot's area; the worker takes posted slots by
  // priority, then in the order posted.
  void Post(int slot, size_t bytes, int priority);
  // Waits for the slot's answer (or its next piece): kOk when posted, kTimeout at the deadline,
  // kClosed when the worker's end of `socket` closed. With `spin_s`, looks that long awake first.
  WireStatus WaitAnswer(int slot, int socket, std::optional<Clock::time_point> deadline,
                        double spin_s);
  // The answer's bytes in the slot (a piece of them when `more`), and its total size.
  const char* answer_area(int slot) const;
  size_t answer_bytes(int slot, bool& more, size_t& total) const;
  // Takes the piece read: the worker writes the next into the area.
  void NextPiece(int slot);
  // The answer was read: the slot is free again.
  void Release(int slot);
  // The caller gives up on the slot's request (its deadline passed, or its worker went away):
  // the worker skips it if it has not started it, and the slot is used again once the worker is
  // done with it.
  void Abandon(int slot);

  // --- The worker's side ---
  // The next posted slot, taken for the calling thread; -1 when the ring is done (the deployment
  // let it go, or `socket` closed). With `spin_s`, looks that long awake before sleeping.
  int Take(int socket, double spin_s);
  // The slot's request: its bytes (at most kArea).
  const char* request_bytes(int slot, size_t& bytes) const;
  char* answer_area(int slot);
  // Posts the answer's `bytes` in the area (the whole of it, or a piece of `total` when `more`).
  // For a piece, waits until the caller took it: false when the caller gave up or went away.
  bool Answer(int slot, size_t bytes, bool more, size_t total, int socket);

  struct Layout;

 private:
  WorkerRing(int fd, Layout* layout, bool owner);
  int fd_;
  Layout* layout_;
  bool owner_;
  // The deployment's bookkeeping of its slots.
  std::mutex mu_;
  std::vector<int> free_;
  std::vector<int> abandoned_;
};

}  // namespace lepton
