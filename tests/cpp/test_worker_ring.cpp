// A worker's shared request slots (runtime/worker_ring.h), both sides in this process: slots in
// use and given back, the order the worker takes them in, answers in pieces, a caller that gives
// up, a side that goes away.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <numeric>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "worker_ring.h"

namespace lepton {
namespace {

// The deployment's side and the worker's, over one mapping, with a socket pair as the lifeline.
struct Pair {
  std::unique_ptr<WorkerRing> deployment = WorkerRing::Create();
  std::unique_ptr<WorkerRing> worker;
  int sockets[2] = {-1, -1};
  Pair() {
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sockets), 0);
    worker = WorkerRing::Attach(::dup(deployment->fd()));
    deployment->CloseDescriptor();
  }
  ~Pair() {
    for (int s : sockets) {
      if (s >= 0) ::close(s);
    }
  }
  int deployment_socket() const { return sockets[0]; }
  int worker_socket() const { return sockets[1]; }
  void Post(int slot, const std::string& request, int priority = 0) {
    std::memcpy(deployment->request_area(slot), request.data(), request.size());
    deployment->Post(slot, request.size(), priority);
  }
  std::string Request(int slot) const {
    size_t n = 0;
    const char* p = worker->request_bytes(slot, n);
    return std::string(p, n);
  }
  // The worker's side answers `slot` with `answer`, in pieces when it is larger than the area.
  bool Answer(int slot, const std::string& answer) {
    for (size_t at = 0;;) {
      const size_t piece = std::min(answer.size() - at, WorkerRing::kArea);
      std::memcpy(worker->answer_area(slot), answer.data() + at, piece);
      at += piece;
      const bool more = at < answer.size();
      if (!worker->Answer(slot, piece, more, answer.size(), worker_socket())) return false;
      if (!more) return true;
    }
  }
  // The deployment's side reads the whole answer, piece by piece.
  WireStatus Read(int slot, std::string& answer, std::optional<Clock::time_point> deadline) {
    answer.clear();
    for (;;) {
      const WireStatus s = deployment->WaitAnswer(slot, deployment_socket(), deadline, 0);
      if (s != WireStatus::kOk) return s;
      bool more = false;
      size_t total = 0;
      const size_t n = deployment->answer_bytes(slot, more, total);
      answer.append(deployment->answer_area(slot), n);
      if (!more) return WireStatus::kOk;
      deployment->NextPiece(slot);
    }
  }
};

TEST(WorkerRing, EverySlotCanBeInUseAndEachComesBackWhenReleased) {
  Pair p;
  ASSERT_TRUE(p.deployment && p.worker);
  std::set<int> slots;
  for (int i = 0; i < WorkerRing::kSlots; ++i) {
    const int s = p.deployment->Acquire();
    ASSERT_GE(s, 0);
    ASSERT_LT(s, WorkerRing::kSlots);
    slots.insert(s);
  }
  EXPECT_EQ(static_cast<int>(slots.size()), WorkerRing::kSlots);
  EXPECT_EQ(p.deployment->Acquire(), -1);
  p.deployment->Release(*slots.begin());
  EXPECT_EQ(p.deployment->Acquire(), *slots.begin());
}

TEST(WorkerRing, TheWorkerTakesByPriorityThenInTheOrderPosted) {
  Pair p;
  const int a = p.deployment->Acquire(), b = p.deployment->Acquire(), c = p.deployment->Acquire(),
            d = p.deployment->Acquire();
  p.Post(a, "a");
  p.Post(b, "b", /*priority=*/5);
  p.Post(c, "c");
  p.Post(d, "d", /*priority=*/5);
  std::string order;
  for (int i = 0; i < 4; ++i) {
    const int s = p.worker->Take(p.worker_socket(), 0);
    ASSERT_GE(s, 0);
    order += p.Request(s);
  }
  EXPECT_EQ(order, "bdac");
}

// Threads on both sides at once: every request is answered in its own slot, with its own answer,
// small ones whole and large ones in pieces.
TEST(WorkerRing, ManyCallersAndServersEachGetTheirOwnAnswer) {
  Pair p;
  constexpr int kCallers = 8, kRequests = 200, kServers = 2;
  std::vector<std::thread> servers;
  for (int i = 0; i < kServers; ++i) {
    servers.emplace_back([&] {
      for (;;) {
        const int s = p.worker->Take(p.worker_socket(), 0);
        if (s < 0) return;
        const std::string request = p.Request(s);
        // A request "n:k" is answered with k repeated n times (over the area when n is large).
        const size_t colon = request.find(':');
        const size_t n = std::stoul(request.substr(0, colon));
        p.Answer(s, std::string(n, request[colon + 1]));
      }
    });
  }
  std::atomic<int> wrong{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      for (int i = 0; i < kRequests; ++i) {
        int s;
        while ((s = p.deployment->Acquire()) < 0) std::this_thread::yield();
        const size_t n = i % 7 == 0 ? 3 * WorkerRing::kArea + 11 : static_cast<size_t>(i + 1);
        const char k = static_cast<char>('a' + (c + i) % 26);
        p.Post(s, std::to_string(n) + ":" + k);
        std::string answer;
        if (p.Read(s, answer, std::nullopt) != WireStatus::kOk || answer != std::string(n, k)) {
          ++wrong;
        }
        p.deployment->Release(s);
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(wrong.load(), 0);
  p.deployment.reset();  // lets the ring go: the servers stop
  for (auto& t : servers) t.join();
}

// A caller that gives up before its request is taken: the worker skips it. One that gives up
// while its answer is written in pieces: the worker stops writing. Either slot is used again only
// once the worker is done with it.
TEST(WorkerRing, ASlotGivenUpOnIsSkippedOrCutShortAndComesBackAfterwards) {
  Pair p;
  std::vector<int> held;
  int s;
  while ((s = p.deployment->Acquire()) >= 0) held.push_back(s);
  const int skipped = held.back(), cut = held.front();
  held.pop_back();
  p.Post(skipped, "never run");
  std::string answer;
  EXPECT_EQ(p.Read(skipped, answer, Clock::now() + std::chrono::milliseconds(20)),
            WireStatus::kTimeout);
  p.deployment->Abandon(skipped);
  EXPECT_EQ(p.deployment->Acquire(), -1);  // not yet looked at by the worker

  p.Post(cut, "big");
  const int taken = p.worker->Take(p.worker_socket(), 0);
  EXPECT_EQ(taken, cut);  // the given-up one is passed over
  std::thread writer([&] { EXPECT_FALSE(p.Answer(cut, std::string(4 * WorkerRing::kArea, 'x'))); });
  EXPECT_EQ(p.deployment->WaitAnswer(cut, p.deployment_socket(), std::nullopt, 0), WireStatus::kOk);
  p.deployment->Abandon(cut);  // after the first piece
  writer.join();
  // Both slots come back, and nothing else was freed.
  std::set<int> back;
  while ((s = p.deployment->Acquire()) >= 0) back.insert(s);
  EXPECT_EQ(back, (std::set<int>{skipped, cut}));
}

// The worker's side going away (its socket closes) reaches a caller asleep for its answer; the
// deployment letting the ring go reaches a worker thread asleep for work.
TEST(WorkerRing, EitherSideGoingAwayWakesTheOther) {
  Pair p;
  const int s = p.deployment->Acquire();
  p.Post(s, "x");
  std::thread gone([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    ::close(p.sockets[1]);
    p.sockets[1] = -1;
  });
  std::string answer;
  EXPECT_EQ(p.Read(s, answer, Clock::now() + std::chrono::seconds(30)), WireStatus::kClosed);
  gone.join();

  Pair q;
  std::atomic<int> took{0};
  std::thread server([&] { took = q.worker->Take(q.worker_socket(), 0); });
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  q.deployment.reset();
  server.join();
  EXPECT_EQ(took.load(), -1);
}

}  // namespace
}  // namespace lepton
