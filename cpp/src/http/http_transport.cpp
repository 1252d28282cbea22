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
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = net::ip::tcp;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t Ns(double seconds) { return static_cast<int64_t>(seconds * 1e9); }

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool PercentDecode(std::string_view in, bool plus_is_space, std::string* out) {
  out->clear();
  out->reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    const char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size()) return false;
      const int hi = HexValue(in[i + 1]), lo = HexValue(in[i + 2]);
      if (hi < 0 || lo < 0) return false;
      out->push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out->push_back(' ');
    } else {
      out->push_back(c);
    }
  }
  return true;
}

Response ErrorResponse(int status, const std::string& message) {
  Response r;
  r.status = status;
  r.body = nlohmann::json{{"error", message}}.dump();
  return r;
}

}  // namespace

bool SplitTarget(std::string_view target, std::string* path,
                 std::map<std::string, std::string>* query) {
  const size_t q = target.find('?');
  if (!PercentDecode(target.substr(0, q), false, path)) return false;
  if (q == std::string_view::npos) return true;
  std::string_view rest = target.substr(q + 1);
  std::string key, value;
  while (!rest.empty()) {
    const size_t amp = rest.find('&');
    const std::string_view kv = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
    if (kv.empty()) continue;
    const size_t eq = kv.find('=');
    if (!PercentDecode(kv.substr(0, eq), true, &key)) return false;
    if (eq == std::string_view::npos) {
      value.clear();
    } else if (!PercentDecode(kv.substr(eq + 1), true, &value)) {
      return false;
    }
    (*query)[key] = value;
  }
  return true;
}

// One event loop: an io_context run by one thread, which handles its connections' requests
// where it parses them. While that thread is inside a handler for longer than the stall limit,
// a helper thread runs the loop, so a slow model cannot hold up the loop's other connections.
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
  // handler of the loop is running.
  void RunHelper(Loop& loop) {
    while (!loop.ioc.stopped()) {
      try {
        loop.ioc.run_one();
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
class Session : public std::enable_shared_from_this<Session> {
 public:
  enum Phase { kIdle, kReading, kHandling, kWriting };

  Session(Transport::Impl* owner, Loop* loop, tcp::socket socket)
      : owner_(owner), loop_(loop), socket_(std::move(socket)), fd_(socket_.native_handle()) {
    beast::error_code ec;
    const auto remote = socket_.remote_endpoint(ec);
    if (!ec) peer_ = remote.address().to_string() + ":" + std::to_string(remote.port());
  }

  ~Session() { Close(); }

  void Start() {
    owner_->Register(this);
    registered_ = true;
    NewRequest();
    Process();
  }

  // Called by the sweeper and by Stop, under the owner's session lock.
  void ShutDownIfExpired(int64_t now) {
    const int64_t d = deadline_.load();
    if (d != 0 && now > d) {
      deadline_.store(0);
      ::shutdown(fd_, SHUT_RDWR);
    }
  }
  void ShutDownUnlessHandling() {
    const int phase = phase_.load();
    if (phase != kHandling && phase != kWriting) ::shutdown(fd_, SHUT_RDWR);
  }

 private:
  void NewRequest() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(
        std::min<size_t>(owner_->options().max_header_bytes, UINT32_MAX)));
    parser_->body_limit(owner_->options().max_body_bytes);
    parser_->eager(true);
    continued_ = false;
    framing_checked_ = false;
    reserved_ = false;
    request_start_ = 0;
  }

  // Parses what is buffered; handles a complete request; reads when more is needed.
  void Process() {
    for (;;) {
      if (buffer_.size() == 0) return ReadMore();
      beast::error_code ec;
      const size_t used = parser_->put(buffer_.data(), ec);
      buffer_.consume(used);
      if (ec == bhttp::error::need_more) return ReadMore();
      if (ec) return Refuse(ec);
      if (parser_->is_header_done() && !framing_checked_) {
        framing_checked_ = true;
        if (std::optional<Response> refusal = CheckFraming()) return RefuseWith(*refusal);
        if (!ReserveBody()) return RefuseWith(BusyResponse());
      }
      if (parser_->is_done()) return Handle();
      if (parser_->is_header_done() && !continued_) {
        continued_ = true;
        auto& header = parser_->get();
        auto expect = header.find(bhttp::field::expect);
        if (expect != header.end() && beast::iequals(expect->value(), "100-continue")) {
          return WriteInterim(header.version());
        }
      }
      if (used == 0) return ReadMore();
    }
  }

  // RFC 9112 section 6: a Transfer-Encoding other than "chunked" alone, or one beside a
  // Content-Length, frames the body in a way that a proxy in front may read differently (request
  // smuggling), so it is answered with 400 and the connection closed.
  std::optional<Response> CheckFraming() const {
    const auto& header = parser_->get();
    const auto codings = header.equal_range(bhttp::field::transfer_encoding);
    if (codings.first == codings.second) return std::nullopt;
    std::string value;
    int count = 0;
    for (auto it = codings.first; it != codings.second; ++it, ++count) {
      value = std::string(it->value());
    }
    const auto first = value.find_first_not_of(" \t");
    const auto last = value.find_last_not_of(" \t");
    value = first == std::string::npos ? "" : value.substr(first, last - first + 1);
    if (count > 1 || !beast::iequals(value, "chunked")) {
      return ErrorResponse(400,
                           "Transfer-Encoding '" + value +
                               "' is not supported: only 'chunked' alone frames a request body");
    }
    if (header.find(bhttp::field::content_length) != header.end()) {
      return ErrorResponse(400,
                           "a request must not have both Transfer-Encoding and Content-Length");
    }
    if (header.version() < 11) {
      return ErrorResponse(400, "Transfer-Encoding is not allowed in an HTTP/1.0 request");
    }
    return std::nullopt;
  }

  // A body of known length is charged in full once its header is read, so that a client cannot
  // get the server to hold more than the budget by sending slowly; a chunked one as it arrives.
  bool ReserveBody() {
    const auto length = parser_->content_length();
    if (!length) return true;
    if (!owner_->Charge(*length)) return false;
    charged_ += *length;
    reserved_ = true;
    return true;
  }

  static Response BusyResponse() {
    Response r = ErrorResponse(503,
                               "the server is holding as many request and response bytes as it "
                               "may; retry shortly");
    r.headers["Retry-After"] = "1";
    return r;
  }

  void ReleaseCharge() {
    if (charged_ > 0) owner_->Release(charged_);
    charged_ = 0;
  }

  void ReadMore() {
    const bool idle = !parser_->got_some();
    phase_.store(idle ? kIdle : kReading);
    if (idle && owner_->stopping()) return Close();
    const auto& o = owner_->options();
    const int64_t now = NowNs();
    if (idle) {
      deadline_.store(now + Ns(o.keep_alive_s));
    } else {
      // The read deadline runs from a request's first byte to its last, however it trickles.
      if (request_start_ == 0) request_start_ = now;
      deadline_.store(request_start_ + Ns(o.read_timeout_s));
    }
    socket_.async_read_some(
        buffer_.prepare(kReadChunk),
        [self = shared_from_this()](beast::error_code ec, size_t n) { self->OnRead(ec, n); });
  }

  void OnRead(beast::error_code ec, size_t n) {
    if (ec) return Close();  // the peer left, or its deadline passed
    buffer_.commit(n);
    if (!reserved_) {
      if (!owner_->Charge(n)) return RefuseWith(BusyResponse());
      charged_ += n;
    }
    Process();
  }

  // Runs the handler for the parsed request, then answers it.
  void Handle() {
    phase_.store(kHandling);
    deadline_.store(0);
    const unsigned version = parser_->get().version();
    const bool keep_alive = parser_->get().keep_alive();
    Response response;
    {
      auto message = parser_->release();
      Request request;
      request.method = std::string(message.method_string());
      request.peer = peer_;
      const auto target = message.target();
      if (!SplitTarget(std::string_view(target.data(), target.size()), &request.path,
                       &request.query)) {
        response = ErrorResponse(400, "the request target has a malformed percent escape");
      } else {
        for (const auto& field : message) {
          std::string name(field.name_string());
          std::transform(name.begin(), name.end(), name.begin(),
                         [](unsigned char c) { return std::tolower(c); });
          request.headers[std::move(name)] = std::string(field.value());
        }
        request.body = std::move(message.body());
        request.reserve = [this](size_t n) {
          if (!owner_->Charge(n)) return false;
          charged_ += n;
          return true;
        };
        Transport::Impl::Enter(*loop_);
        response = owner_->Call(request);
        Transport::Impl::Leave(*loop_);
      }
    }
    // The request's bytes are gone; the response's are held until it is written.
    ReleaseCharge();
    if (owner_->Charge(response.body.size())) {
      charged_ = response.body.size();
    } else {
      response = BusyResponse();
    }
    const bool close = !keep_alive || owner_->stopping();
    Answer(std::move(response), version, close ? kClose : kKeepAlive);
  }

  // Requests that cannot be parsed are answered and their connection closed.
  void Refuse(beast::error_code ec) {
    if (ec == bhttp::error::body_limit) {
      return RefuseWith(ErrorResponse(413, "the request body is larger than the server's limit"));
    }
    if (ec == bhttp::error::header_limit) {
      return RefuseWith(ErrorResponse(431, "the request header is larger than the server's limit"));
    }
    RefuseWith(ErrorResponse(400, "malformed HTTP request: " + ec.message()));
  }

  void RefuseWith(Response r) {
    const unsigned version = parser_->is_header_done() ? parser_->get().version() : 11;
    parser_.reset();  // what was read of the request is dropped
    ReleaseCharge();
    Answer(std::move(r), version, kLinger);
  }

  enum After { kKeepAlive, kClose, kLinger };

  // Writes the response without blocking the loop; a client that does not read is cut off at
  // the write deadline.
  void Answer(Response response, unsigned version, After after) {
    auto m = std::make_shared<bhttp::response<bhttp::string_body>>();
    m->version(version);
    m->result(static_cast<unsigned>(response.status));
    bool typed = false;
    for (auto& [k, v] : response.headers) {
      typed = typed || beast::iequals(k, "content-type");
      m->set(k, v);
    }
    if (!typed) m->set(bhttp::field::content_type, "application/json");
    m->body() = std::move(response.body);
    m->keep_alive(after == kKeepAlive);
    m->prepare_payload();
    phase_.store(kWriting);
    deadline_.store(NowNs() + Ns(owner_->options().write_timeout_s));
    bhttp::async_write(socket_, *m,
                       [self = shared_from_this(), m, after](beast::error_code ec, size_t) {
                         self->deadline_.store(0);
                         self->ReleaseCharge();
                         if (ec) return self->Close();
                         if (after == kLinger) return self->LingeringClose();
                         if (after == kClose) return self->Close();
                         self->NewRequest();
                         self->Process();
                       });
  }

  void WriteInterim(unsigned version) {
    auto interim =
        std::make_shared<bhttp::response<bhttp::empty_body>>(bhttp::status::continue_, version);
    phase_.store(kWriting);
    deadline_.store(NowNs() + Ns(owner_->options().write_timeout_s));
    bhttp::async_write(socket_, *interim,
                       [self = shared_from_this(), interim](beast::error_code ec, size_t) {
                         self->deadline_.store(0);
                         if (ec) return self->Close();
                         self->Process();
                       });
  }

  // After refusing a request whose body is still arriving, reads and drops the rest for a while
  // so that closing does not reset the connection before the client has read the answer.
  void LingeringClose() {
    beast::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    phase_.store(kReading);
    deadline_.store(NowNs() + Ns(owner_->options().read_timeout_s));
    Drain();
  }

  void Drain() {
    buffer_.consume(buffer_.size());
    socket_.async_read_some(buffer_.prepare(kReadChunk),
                            [self = shared_from_this()](beast::error_code ec, size_t) {
                              if (ec) return self->Close();
                              self->Drain();
                            });
  }

  void Close() {
    ReleaseCharge();
    if (registered_) {
      // Unregistered first: the sweeper must never see a descriptor that was closed and reused.
      owner_->Unregister(this);
      registered_ = false;
    }
    beast::error_code ec;
    socket_.close(ec);
  }

  static constexpr size_t kReadChunk = 16 << 10;

  Transport::Impl* owner_;
  Loop* loop_;
  tcp::socket socket_;
  const int fd_;
  std::string peer_;  // "address:port" of the client
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  bool continued_ = false;
  bool framing_checked_ = false;
  bool reserved_ = false;      // the body's declared length is charged already
  size_t charged_ = 0;         // bytes charged against the transport's budget
  int64_t request_start_ = 0;  // when the current request's first byte was read (ns)
  bool registered_ = false;
  std::atomic<int64_t> deadline_{0};
  std::atomic<int> phase_{kIdle};
};

void Transport::Impl::Accept() {
  // Connections go to the loops in turn; each is then served by its loop alone.
  Loop* loop = loops_[next_loop_.fetch_add(1) % loops_.size()].get();
  acceptor_.async_accept(loop->ioc, [this, loop](beast::error_code ec, tcp::socket socket) {
    if (stopping_.load() || ec == net::error::operation_aborted) return;
    if (ec) {
      // Out of descriptors or a similar passing failure: try again shortly, without spinning.
      accept_retry_.expires_after(std::chrono::milliseconds(50));
      accept_retry_.async_wait([this](beast::error_code e) {
        if (!e && !stopping_.load()) Accept();
      });
      return;
    }
    beast::error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    // Nothing else knows the socket yet, so its first read may start from this thread.
    std::make_shared<Session>(this, loop, std::move(socket))->Start();
    Accept();
  });
}

void Transport::Impl::CloseIdleSessions() {
  std::lock_guard<std::mutex> lk(sessions_mu_);
  for (Session* s : sessions_) s->ShutDownUnlessHandling();
}

void Transport::Impl::Sweep() {
  std::unique_lock<std::mutex> lk(sweep_mu_);
  int64_t deadlines_checked = 0;
  while (!sweep_stop_) {
    sweep_cv_.wait_for(lk, std::chrono::duration<double>(options_.stall_s / 2));
    const int64_t now = NowNs();
    Unstall(now);
    if (now - deadlines_checked < Ns(0.05)) continue;  // deadlines: every 50 ms
    deadlines_checked = now;
    std::lock_guard<std::mutex> s(sessions_mu_);
    for (Session* session : sessions_) session->ShutDownIfExpired(now);
  }
}

Transport::Transport(TransportOptions options, Handler handler)
    : impl_(std::make_shared<Impl>(std::move(options), std::move(handler))) {}
Transport::~Transport() { impl_->Stop(); }
int Transport::Listen(const std::string& host, int port) { return impl_->Listen(host, port); }
void Transport::Start() { impl_->Start(); }
void Transport::Stop() { impl_->Stop(); }
size_t Transport::buffered_bytes() const { return impl_->buffered(); }

}  // namespace lepton::http
