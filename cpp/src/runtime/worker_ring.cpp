#include "worker_ring.h"

#include <linux/futex.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <new>

#include "shared_memory.h"

namespace lepton {
namespace {

// A slot's state word: its phase in the low bits, and flags.
constexpr uint32_t kPhase = 0xf;
constexpr uint32_t kFree = 0;
constexpr uint32_t kPosted = 1;          // the caller's request is in the area
constexpr uint32_t kTaken = 2;           // a worker thread runs it
constexpr uint32_t kDone = 3;            // the answer is in the area, whole
constexpr uint32_t kPiece = 4;           // a piece of the answer is in the area; the worker waits
constexpr uint32_t kCallerWaits = 0x10;  // the caller sleeps on the word
constexpr uint32_t kCancelled = 0x20;    // the caller gave up
constexpr uint32_t kWorkerWaits = 0x40;  // the worker sleeps on the word for a piece to be taken

}  // namespace

struct RingSlot {
  alignas(64) std::atomic<uint32_t> state{kFree};
  std::atomic<uint32_t> request_bytes{0};
  std::atomic<uint32_t> answer_bytes{0};
  std::atomic<uint32_t> more{0};
  std::atomic<uint64_t> answer_total{0};
  std::atomic<uint64_t> seq{0};
  std::atomic<int32_t> priority{0};
};

struct WorkerRing::Layout {
  alignas(64) std::atomic<uint32_t> posted{0};  // moves on each post; worker threads sleep on it
  std::atomic<uint32_t> sleepers{0};            // worker threads asleep, or about to be
  std::atomic<uint32_t> spinners{0};            // worker threads looking for a post awake
  alignas(64) std::atomic<uint32_t> closed{0};  // the deployment let the ring go
  alignas(64) std::atomic<uint64_t> next_seq{0};
  RingSlot slots[kSlots];
  struct alignas(4096) Areas {
    char request[kArea];
    char answer[kArea];
  };
  Areas areas[kSlots];
};

std::unique_ptr<WorkerRing> WorkerRing::Create() {
  int fd = -1;
  void* mem = CreateShared("lepton-worker-ring", sizeof(Layout), fd);
  if (!mem) return nullptr;
  return std::unique_ptr<WorkerRing>(new WorkerRing(fd, new (mem) Layout, /*owner=*/true));
}

std::unique_ptr<WorkerRing> WorkerRing::Attach(int fd) {
  void* mem = AttachShared(fd, sizeof(Layout));
  if (!mem) return nullptr;
  return std::unique_ptr<WorkerRing>(
      new WorkerRing(-1, static_cast<Layout*>(mem), /*owner=*/false));
}

WorkerRing::WorkerRing(int fd, Layout* layout, bool owner)
    : fd_(fd), layout_(layout), owner_(owner) {
  if (owner_) {
    for (int i = kSlots - 1; i >= 0; --i) free_.push_back(i);
  }
}

WorkerRing::~WorkerRing() {
  if (owner_) {
    layout_->closed.store(1, std::memory_order_seq_cst);
    layout_->posted.fetch_add(1, std::memory_order_seq_cst);
    Futex(layout_->posted, FUTEX_WAKE, INT_MAX, nullptr);
    // A worker thread waiting for a piece to be taken stops waiting.
    for (RingSlot& s : layout_->slots) {
      if (s.state.fetch_or(kCancelled, std::memory_order_seq_cst) & kWorkerWaits) {
        Futex(s.state, FUTEX_WAKE, INT_MAX, nullptr);
      }
    }
  }
  ::munmap(layout_, sizeof(Layout));
  CloseDescriptor();
}

void WorkerRing::CloseDescriptor() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

int WorkerRing::Acquire() {
  std::lock_guard<std::mutex> lk(mu_);
  if (free_.empty()) {
    // Slots given up on come back once their worker thread is done with them.
    for (auto it = abandoned_.begin(); it != abandoned_.end();) {
      std::atomic<uint32_t>& state = layout_->slots[*it].state;
      if ((state.load(std::memory_order_acquire) & kPhase) == kDone) {
        state.store(kFree, std::memory_order_relaxed);
        free_.push_back(*it);
        it = abandoned_.erase(it);
      } else {
        ++it;
      }
    }
    if (free_.empty()) return -1;
  }
  const int slot = free_.back();
  free_.pop_back();
  return slot;
}

char* WorkerRing::request_area(int slot) { return layout_->areas[slot].request; }
const char* WorkerRing::answer_area(int slot) const { return layout_->areas[slot].answer; }
char* WorkerRing::answer_area(int slot) { return layout_->areas[slot].answer; }

void WorkerRing::Post(int slot, size_t bytes, int priority) {
  RingSlot& s = layout_->slots[slot];
  s.request_bytes.store(static_cast<uint32_t>(bytes), std::memory_order_relaxed);
  s.priority.store(priority, std::memory_order_relaxed);
  s.seq.store(layout_->next_seq.fetch_add(1, std::memory_order_relaxed), std::memory_order_relaxed);
  s.answer_bytes.store(0, std::memory_order_relaxed);
  s.more.store(0, std::memory_order_relaxed);
  s.answer_total.store(0, std::memory_order_relaxed);
  s.state.store(kPosted, std::memory_order_release);
  layout_->posted.fetch_add(1, std::memory_order_seq_cst);
  // A thread awake takes it without a system call; one asleep must be woken. A thread that stops
  // looking after this post still sees it: it sleeps only while `posted` is what it saw before.
  if (layout_->spinners.load(std::memory_order_seq_cst) == 0 &&
      layout_->sleepers.load(std::memory_order_seq_cst) != 0) {
    Futex(layout_->posted, FUTEX_WAKE, 1, nullptr);
  }
}

WireStatus WorkerRing::WaitAnswer(int slot, int socket, std::optional<Clock::time_point> deadline,
                                  double spin_s) {
  std::atomic<uint32_t>& state = layout_->slots[slot].state;
  const auto answered = [&state] {
    const uint32_t phase = state.load(std::memory_order_acquire) & kPhase;
    return phase == kDone || phase == kPiece;
  };
  if (answered() || Spin(spin_s, answered)) return WireStatus::kOk;
  const auto look = DeadlineIn(kAnswerLook_s);
  for (;;) {
    uint32_t s = state.load(std::memory_order_acquire);
    const uint32_t phase = s & kPhase;
    if (phase == kDone || phase == kPiece) return WireStatus::kOk;
    if (!(s & kCallerWaits)) {
      if (!state.compare_exchange_weak(s, s | kCallerWaits, std::memory_order_acq_rel)) continue;
      s |= kCallerWaits;
    }
    auto until = Clock::now() + look;
    if (deadline) until = std::min(until, *deadline);
    const timespec ts = TimespecOf(until - Clock::now());
    Futex(state, FUTEX_WAIT, s, &ts);
    if (answered()) return WireStatus::kOk;
    const auto now = Clock::now();
    if (now >= until) {
      if (PeerGone(socket)) return WireStatus::kClosed;
      if (deadline && now >= *deadline) return WireStatus::kTimeout;
    }
  }
}

size_t WorkerRing::answer_bytes(int slot, bool& more, size_t& total) const {
  const RingSlot& s = layout_->slots[slot];
  more = s.more.load(std::memory_order_relaxed) != 0;
  total = static_cast<size_t>(s.answer_total.load(std::memory_order_relaxed));
  return std::min<size_t>(s.answer_bytes.load(std::memory_order_relaxed), kArea);
}

void WorkerRing::NextPiece(int slot) {
  std::atomic<uint32_t>& state = layout_->slots[slot].state;
  uint32_t s = state.load(std::memory_order_relaxed);
  while (!state.compare_exchange_weak(s, kTaken | (s & kCancelled), std::memory_order_acq_rel)) {
  }
  if (s & kWorkerWaits) Futex(state, FUTEX_WAKE, INT_MAX, nullptr);
}

void WorkerRing::Release(int slot) {
  layout_->slots[slot].state.store(kFree, std::memory_order_relaxed);
  std::lock_guard<std::mutex> lk(mu_);
  free_.push_back(slot);
}

void WorkerRing::Abandon(int slot) {
  std::atomic<uint32_t>& state = layout_->slots[slot].state;
  if (state.fetch_or(kCancelled, std::memory_order_acq_rel) & kWorkerWaits) {
    Futex(state, FUTEX_WAKE, INT_MAX, nullptr);
  }
  std::lock_guard<std::mutex> lk(mu_);
  abandoned_.push_back(slot);
}

int WorkerRing::Take(int socket, double spin_s) {
  Layout& l = *layout_;
  // Claims the posted slot that comes first (highest priority, then posted first); -1 when none.
  const auto claim = [&l]() -> int {
    for (;;) {
      int best = -1;
      uint32_t best_state = 0;
      int32_t best_priority = 0;
      uint64_t best_seq = 0;
      for (int i = 0; i < kSlots; ++i) {
        RingSlot& s = l.slots[i];
        uint32_t st = s.state.load(std::memory_order_acquire);
        if ((st & kPhase) != kPosted) continue;
        if (st & kCancelled) {
          // Given up before it started: done with, never run.
          s.state.compare_exchange_strong(st, kDone | kCancelled, std::memory_order_acq_rel);
          continue;
        }
        const int32_t p = s.priority.load(std::memory_order_relaxed);
        const uint64_t q = s.seq.load(std::memory_order_relaxed);
        if (best < 0 || p > best_priority || (p == best_priority && q < best_seq)) {
          best = i;
          best_state = st;
          best_priority = p;
          best_seq = q;
        }
      }
      if (best < 0) return -1;
      if (l.slots[best].state.compare_exchange_strong(
              best_state, kTaken | (best_state & kCallerWaits), std::memory_order_acq_rel)) {
        return best;
      }
    }
  };
  const auto closed = [&l] { return l.closed.load(std::memory_order_acquire) != 0; };
  for (bool spun = false;;) {
    const uint32_t seen = l.posted.load(std::memory_order_seq_cst);
    if (closed()) return -1;
    const int slot = claim();
    if (slot >= 0) return slot;
    if (!spun && spin_s > 0) {
      spun = true;
      l.spinners.fetch_add(1, std::memory_order_seq_cst);
      const bool posted =
          Spin(spin_s, [&] { return l.posted.load(std::memory_order_acquire) != seen; });
      l.spinners.fetch_sub(1, std::memory_order_seq_cst);
      if (posted) continue;
    }
    l.sleepers.fetch_add(1, std::memory_order_seq_cst);
    const timespec ts = TimespecOf(DeadlineIn(kRequestLook_s));
    const long r = Futex(l.posted, FUTEX_WAIT, seen, &ts);
    l.sleepers.fetch_sub(1, std::memory_order_seq_cst);
    if (r != 0 && errno == ETIMEDOUT && PeerGone(socket)) return -1;
  }
}

const char* WorkerRing::request_bytes(int slot, size_t& bytes) const {
  bytes =
      std::min<size_t>(layout_->slots[slot].request_bytes.load(std::memory_order_relaxed), kArea);
  return layout_->areas[slot].request;
}

bool WorkerRing::Answer(int slot, size_t bytes, bool more, size_t total, int socket) {
  RingSlot& rs = layout_->slots[slot];
  std::atomic<uint32_t>& state = rs.state;
  rs.answer_bytes.store(static_cast<uint32_t>(bytes), std::memory_order_relaxed);
  rs.more.store(more ? 1 : 0, std::memory_order_relaxed);
  rs.answer_total.store(total, std::memory_order_relaxed);
  uint32_t s = state.load(std::memory_order_relaxed);
  for (;;) {
    if (s & kCancelled) {
      state.store(kDone | kCancelled, std::memory_order_release);
      return false;
    }
    if (state.compare_exchange_weak(s, more ? kPiece : kDone, std::memory_order_acq_rel)) break;
  }
  if (s & kCallerWaits) Futex(state, FUTEX_WAKE, INT_MAX, nullptr);
  if (!more) return true;
  // The caller takes the piece (the phase goes back to kTaken) before the next is written.
  for (;;) {
    s = state.load(std::memory_order_acquire);
    if (s & kCancelled) {
      state.store(kDone | kCancelled, std::memory_order_release);
      return false;
    }
    if ((s & kPhase) != kPiece) return true;
    if (!(s & kWorkerWaits)) {
      if (!state.compare_exchange_weak(s, s | kWorkerWaits, std::memory_order_acq_rel)) continue;
      s |= kWorkerWaits;
    }
    const timespec ts = TimespecOf(DeadlineIn(kAnswerLook_s));
    const long r = Futex(state, FUTEX_WAIT, s, &ts);
    if (r != 0 && errno == ETIMEDOUT && PeerGone(socket)) return false;
  }
}

}  // namespace lepton
