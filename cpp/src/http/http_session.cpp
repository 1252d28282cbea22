// One connection: reading requests with their deadlines and framing rules, charging the memory
// budget, handing requests to the handler and writing the answers without blocking the loop.
#include "transport_impl.h"

namespace lepton::http {

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

}  // namespace lepton::http
