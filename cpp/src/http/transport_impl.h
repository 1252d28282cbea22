// The transport's event loops and sessions, shared by http_transport.cpp (the loops, listening,
// the helpers of blocked loops) and http_session.cpp (one connection's requests). Private to the
// http library.
#pragma once

#include "lepton/http/http_transport.h"

#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <system_error>
#include <thread>
#include <unordered_set>

namespace lepton::http {
namespace transport_detail {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = net::ip::tcp;

inline int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

inline int64_t Ns(double seconds) { return static_cast<int64_t>(seconds * 1e9); }

inline Response ErrorResponse(int status, const std::string& message) {
  Response r;
  r.status = status;
  r.body = nlohmann::json{{"error", message}}.dump();
  return r;
}

}  // namespace transport_detail

using namespace transport_detail;

class Session;

struct Loop {
  net::io_context ioc;
  std::atomic<int> busy{0};            // threads of this loop inside a handler or a write
  std::atomic<int> helpers{0};         // helper threads running now
  std::atomic<int64_t> busy_since{0};  // when the oldest handler still running began (ns)
};

class Transport::Impl {
 public:
  Impl(TransportOptions options, Handler handler)
      : options_(std::move(options)), handler_(std::move(handler)) {
    options_.io_threads = std::max(1, options_.io_threads);
    options_.max_threads = std::max(options_.io_threads, options_.max_threads);
    options_.stall_s = std::max(options_.stall_s, 1e-3);
    options_.busy_poll_s = std::max(options_.busy_poll_s, 0.0);
    for (int i = 0; i < options_.io_threads; ++i) loops_.push_back(std::make_unique<Loop>());
  }

  ~Impl() { Stop(); }

  int Listen(const std::string& host, int port) {
    tcp::resolver resolver(accept_ioc_);
    const auto results = resolver.resolve(host, std::to_string(port),
                                          tcp::resolver::numeric_service | tcp::resolver::passive);
    std::error_code last = std::make_error_code(std::errc::address_not_available);
    for (const auto& entry : results) {
      beast::error_code ec;
      acceptor_.open(entry.endpoint().protocol(), ec);
      // SO_REUSEADDR only: without SO_REUSEPORT a second server cannot silently share the port.
      if (!ec) acceptor_.set_option(net::socket_base::reuse_address(true), ec);
      if (!ec) acceptor_.bind(entry.endpoint(), ec);
      if (!ec) acceptor_.listen(net::socket_base::max_listen_connections, ec);
      if (!ec) return acceptor_.local_endpoint().port();
      last = ec;
      beast::error_code ignored;
      acceptor_.close(ignored);
    }
    throw std::system_error(last, "cannot listen on " + host + ":" + std::to_string(port));
  }

  void Start() {
    accept_work_.emplace(net::make_work_guard(accept_ioc_));
    for (auto& loop : loops_) works_.emplace_back(net::make_work_guard(loop->ioc));
    Accept();
    StartThread([this] { accept_ioc_.run(); });
    for (auto& loop : loops_) {
      Loop* l = loop.get();
      StartThread([this, l] { RunLoop(*l); });
    }
    sweeper_ = std::thread([this] { Sweep(); });
  }

  void Stop() {
    if (stopping_.exchange(true)) {
      std::unique_lock<std::mutex> lk(threads_mu_);
      threads_cv_.wait(lk, [&] { return stopped_; });
      return;
    }
    if (accept_work_) {
      net::post(accept_ioc_, [this] {
        beast::error_code ec;
        acceptor_.close(ec);
      });
      CloseIdleSessions();
      {
        // Requests being handled finish and answer; their connections then close.
        std::unique_lock<std::mutex> lk(sessions_mu_);
        sessions_cv_.wait(lk, [&] { return sessions_.empty(); });
      }
      accept_work_.reset();
      works_.clear();
      accept_ioc_.stop();
      for (auto& loop : loops_) loop->ioc.stop();
      std::unique_lock<std::mutex> lk(threads_mu_);
      threads_cv_.wait(lk, [&] { return threads_ == 0; });
    }
    {
      std::lock_guard<std::mutex> lk(sweep_mu_);
      sweep_stop_ = true;
    }
    sweep_cv_.notify_all();
    if (sweeper_.joinable()) sweeper_.join();
    std::lock_guard<std::mutex> lk(threads_mu_);
    stopped_ = true;
    threads_cv_.notify_all();
  }

  // --- used by sessions ---

  const TransportOptions& options() const { return options_; }
  bool stopping() const { return stopping_.load(); }

  void Register(Session* s) {
    std::lock_guard<std::mutex> lk(sessions_mu_);
    sessions_.insert(s);
  }

  void Unregister(Session* s) {
    std::lock_guard<std::mutex> lk(sessions_mu_);
    sessions_.erase(s);
    if (sessions_.empty()) sessions_cv_.notify_all();
  }

  // Brackets work that may block a loop's thread (a handler, a synchronous write).
  static void Enter(Loop& loop) {
    if (loop.busy.fetch_add(1) == 0) loop.busy_since.store(NowNs());
  }

  static void Leave(Loop& loop) {
    if (loop.busy.fetch_sub(1) == 1) loop.busy_since.store(0);
    // A helper waiting in the loop wakes, sees nothing is blocked any more, and leaves.
    if (loop.helpers.load() > 0) net::post(loop.ioc, [] {});
  }

  Response Call(Request& request) {
    try {
      return handler_(request);
    } catch (...) {
      return ErrorResponse(500, "internal error");  // the handler's own errors say more
    }
  }

  // The bytes of requests and responses held across all connections stay within the budget.
  bool Charge(size_t n) {
    size_t held = buffered_.load();
    do {
      if (held + n > options_.max_buffered_bytes) return false;
    } while (!buffered_.compare_exchange_weak(held, held + n));
    return true;
  }
  void Release(size_t n) { buffered_.fetch_sub(n); }
  size_t buffered() const { return buffered_.load(); }

 private:
  void Accept();
  void CloseIdleSessions();
  void Sweep();

  template <class F>
  void StartThread(F&& body) {
    {
      std::lock_guard<std::mutex> lk(threads_mu_);
      ++threads_;
    }
    std::thread([this, body = std::forward<F>(body)] {
      try {
        body();
      } catch (...) {
      }
      std::lock_guard<std::mutex> lk(threads_mu_);
      --threads_;
      threads_cv_.notify_all();
    }).detach();
  }

  // The loop's own thread: it polls for a while after its last piece of work before it sleeps
  // in the kernel, because waking a sleeping thread costs more than a request on loopback.
  void RunLoop(Loop& loop) {
    const int64_t spin = Ns(options_.busy_poll_s);
    int64_t last = NowNs();
    while (!loop.ioc.stopped()) {
      size_t n = 0;
      try {
        n = spin > 0 ? loop.ioc.poll() : loop.ioc.run_one();
        if (n == 0 && !loop.ioc.stopped() && NowNs() - last > spin) n = loop.ioc.run_one();
      } catch (...) {
        // A failing session has already been torn down; the loop goes on.
      }
      if (n) last = NowNs();
    }
  }

  // A helper runs the loop while its own thread is stuck in a handler, and leaves once no
  // handler of the loop is running. It looks at least every 50 ms: the wake-up Leave() posts can
  // be taken by another thread of the loop, and a loop with only stuck writes has nothing else
  // to run until their deadline.
  void RunHelper(Loop& loop) {
    while (!loop.ioc.stopped()) {
      try {
        loop.ioc.run_one_for(std::chrono::milliseconds(50));
      } catch (...) {
      }
      if (loop.busy.load() == 0) break;
    }
    loop.helpers.fetch_sub(1);
  }

  // Called by the sweeper: a loop whose handlers have all been running for longer than the stall
  // limit gets one more helper thread, up to `max_threads` in all.
  void Unstall(int64_t now) {
    for (auto& loop : loops_) {
      const int64_t since = loop->busy_since.load();
      if (since == 0 || now - since < Ns(options_.stall_s)) continue;
      if (loop->busy.load() <= loop->helpers.load()) continue;  // a helper is free to run it
      {
        // The accept thread is not one of the `max_threads` serving threads.
        std::lock_guard<std::mutex> lk(threads_mu_);
        if (threads_ - 1 >= options_.max_threads) continue;
      }
      loop->helpers.fetch_add(1);
      Loop* l = loop.get();
      StartThread([this, l] { RunHelper(*l); });
      loop->busy_since.store(now);  // the next helper only after another stall
    }
  }

  TransportOptions options_;
  Handler handler_;
  std::atomic<bool> stopping_{false};
  std::atomic<size_t> buffered_{0};

  std::mutex threads_mu_;
  std::condition_variable threads_cv_;
  int threads_ = 0;
  bool stopped_ = false;

  std::mutex sessions_mu_;
  std::condition_variable sessions_cv_;
  std::unordered_set<Session*> sessions_;

  std::mutex sweep_mu_;
  std::condition_variable sweep_cv_;
  bool sweep_stop_ = false;
  std::thread sweeper_;

  // Declared last so that they are destroyed first: pending handlers own sessions, which
  // unregister themselves from the members above.
  std::vector<std::unique_ptr<Loop>> loops_;
  std::vector<net::executor_work_guard<net::io_context::executor_type>> works_;
  std::atomic<size_t> next_loop_{0};
  net::io_context accept_ioc_;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> accept_work_;
  tcp::acceptor acceptor_{accept_ioc_};
  net::steady_timer accept_retry_{accept_ioc_};

  friend class Session;
};

// One connection. At most one socket operation is pending at a time, so its handlers never run
// concurrently; other threads touch it only through its deadline and the socket's descriptor.
// Reads and writes are asynchronous: a client that sends or reads slowly holds no thread, only
// the bytes it has been charged for against the transport's budget.

}  // namespace lepton::http
