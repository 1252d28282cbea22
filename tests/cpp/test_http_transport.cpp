// The HTTP transport under the server, over real sockets: keep-alive and pipelining,
// 100-continue, limits, malformed and silent clients, blocked handlers, graceful stop.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "lepton/http/http_transport.h"

namespace lepton::http {
namespace {

using namespace std::chrono_literals;

class Client {
 public:
  explicit Client(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) ADD_FAILURE() << "connect";
    timeval tv{5, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~Client() { close(fd_); }
  int fd() const { return fd_; }
  void SetReceiveTimeout(double seconds) {
    timeval tv{static_cast<time_t>(seconds),
               static_cast<suseconds_t>((seconds - static_cast<time_t>(seconds)) * 1e6)};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }

  void Send(const std::string& s) {
    ASSERT_EQ(send(fd_, s.data(), s.size(), MSG_NOSIGNAL), static_cast<ssize_t>(s.size()));
  }

  // One response: its head and its body (by Content-Length). "" when the server closed first.
  std::string Receive() {
    for (;;) {
      const size_t end = buffer_.find("\r\n\r\n");
      if (end != std::string::npos) {
        size_t length = 0;
        const size_t cl = Lower(buffer_.substr(0, end)).find("content-length: ");
        if (cl != std::string::npos) length = std::stoul(buffer_.substr(cl + 16));
        if (buffer_.size() >= end + 4 + length) {
          std::string out = buffer_.substr(0, end + 4 + length);
          buffer_.erase(0, end + 4 + length);
          return out;
        }
      }
      char b[4096];
      const ssize_t n = recv(fd_, b, sizeof b, 0);
      if (n <= 0) return "";
      buffer_.append(b, static_cast<size_t>(n));
    }
  }

  // True when the server closes the connection within `seconds`.
  bool ClosedWithin(double seconds) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < until) {
      char b[256];
      const ssize_t n = recv(fd_, b, sizeof b, 0);
      if (n == 0 || (n < 0 && errno == ECONNRESET)) return true;
    }
    return false;
  }

  static std::string Lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  }

 private:
  int fd_;
  std::string buffer_;
};

std::string Body(const std::string& response) {
  return response.substr(response.find("\r\n\r\n") + 4);
}

std::string Get(const std::string& path, const std::string& extra = "") {
  return "GET " + path + " HTTP/1.1\r\nHost: x\r\n" + extra + "\r\n";
}

std::string Post(const std::string& path, const std::string& body) {
  return "POST " + path + " HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\n\r\n" + body;
}

// Echoes what it was asked, as "METHOD path?k=v,... body".
Response Echo(Request& r) {
  Response out;
  out.body = r.method + " " + r.path;
  for (const auto& [k, v] : r.query) out.body += " " + k + "=" + v;
  auto h = r.headers.find("x-test");
  if (h != r.headers.end()) out.body += " x-test:" + h->second;
  out.body += " " + r.body;
  out.headers["Content-Type"] = "text/plain";
  return out;
}

struct Served {
  explicit Served(TransportOptions o = {}, Transport::Handler h = Echo)
      : transport(o, std::move(h)), port(transport.Listen("127.0.0.1", 0)) {
    transport.Start();
  }
  Transport transport;
  int port;
};

TEST(HttpTransport, SplitsAndDecodesTargets) {
  std::string path;
  std::map<std::string, std::string> query;
  EXPECT_TRUE(SplitTarget("/v2/models/a%20b/infer?x=1&y=a+b%21&flag&=z", &path, &query));
  EXPECT_EQ(path, "/v2/models/a b/infer");
  EXPECT_EQ(query["x"], "1");
  EXPECT_EQ(query["y"], "a b!");
  EXPECT_EQ(query["flag"], "");
  EXPECT_EQ(query[""], "z");
  EXPECT_FALSE(SplitTarget("/bad%2", &path, &query));
  EXPECT_FALSE(SplitTarget("/bad%zz", &path, &query));
  EXPECT_FALSE(SplitTarget("/ok?x=%", &path, &query));
}

TEST(HttpTransport, KeepsConnectionsAliveAndAnswersPipelinedRequestsInOrder) {
  Served s;
  Client c(s.port);
  c.Send(Get("/a?q=1", "X-Test: Yes\r\n") + Post("/b", "hello") + Get("/c"));
  const std::string r1 = c.Receive(), r2 = c.Receive(), r3 = c.Receive();
  EXPECT_EQ(r1.rfind("HTTP/1.1 200", 0), 0u) << r1;
  EXPECT_EQ(Body(r1), "GET /a q=1 x-test:Yes ");
  EXPECT_EQ(Body(r2), "POST /b hello");
  EXPECT_EQ(Body(r3), "GET /c ");
  EXPECT_NE(Client::Lower(r1).find("content-type: text/plain"), std::string::npos);
  // Still open: another request on the same connection.
  c.Send(Get("/d"));
  EXPECT_EQ(Body(c.Receive()), "GET /d ");
  // Connection: close is honoured.
  c.Send(Get("/e", "Connection: close\r\n"));
  EXPECT_NE(Client::Lower(c.Receive()).find("connection: close"), std::string::npos);
  EXPECT_TRUE(c.ClosedWithin(2));
}

TEST(HttpTransport, AnswersExpectContinueBeforeTheBody) {
  Served s;
  Client c(s.port);
  c.Send("POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
  EXPECT_EQ(c.Receive().rfind("HTTP/1.1 100 Continue", 0), 0u);
  c.Send("abcde");
  EXPECT_EQ(Body(c.Receive()), "POST /x abcde");
}

TEST(HttpTransport, RefusesOversizedAndMalformedRequestsAndKeepsServing) {
  TransportOptions o;
  o.max_body_bytes = 1000;
  o.max_header_bytes = 2000;
  Served s(o);
  {
    // The body is refused from its Content-Length; the answer arrives whole although the client
    // keeps sending.
    Client c(s.port);
    c.Send("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n" +
           std::string(100000, 'x'));
    const std::string r = c.Receive();
    EXPECT_EQ(r.rfind("HTTP/1.1 413", 0), 0u) << r;
    EXPECT_NE(Body(r).find("limit"), std::string::npos);
  }
  {
    Client c(s.port);
    c.Send("GET /x HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(5000, 'y') + "\r\n\r\n");
    EXPECT_EQ(c.Receive().rfind("HTTP/1.1 431", 0), 0u);
  }
  {
    Client c(s.port);
    c.Send("\x01\x02 garbage\r\n\r\n");
    const std::string r = c.Receive();
    EXPECT_EQ(r.rfind("HTTP/1.1 400", 0), 0u) << r;
    EXPECT_NE(Body(r).find("\"error\""), std::string::npos);
  }
  {
    Client c(s.port);
    c.Send(Get("/bad%zz"));
    EXPECT_EQ(c.Receive().rfind("HTTP/1.1 400", 0), 0u);
  }
  Client c(s.port);
  c.Send(Get("/fine"));
  EXPECT_EQ(Body(c.Receive()), "GET /fine ");
}

TEST(HttpTransport, CutsOffSilentClientsWithoutHoldingUpOthers) {
  TransportOptions o;
  o.read_timeout_s = 1.0;
  o.keep_alive_s = 1.5;
  o.io_threads = 1;
  Served s(o);
  Client half(s.port), idle(s.port);
  half.Send("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{\"partial");
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 20; ++i) {
    Client c(s.port);
    c.Send(Get("/ok"));
    EXPECT_EQ(Body(c.Receive()), "GET /ok ");
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 800ms);  // nobody waited for the timeout
  EXPECT_TRUE(half.ClosedWithin(3));                        // after its read timeout
  EXPECT_TRUE(idle.ClosedWithin(3));                        // after the keep-alive time
}

TEST(HttpTransport, AHandlerThatBlocksGetsItsLoopAHelper) {
  std::mutex mu;
  std::condition_variable cv;
  bool entered = false, release = false;
  TransportOptions o;
  o.io_threads = 1;  // one loop: without a helper, the blocked handler would stall everyone
  Served s(o, [&](Request& r) {
    if (r.path == "/block") {
      std::unique_lock<std::mutex> lk(mu);
      entered = true;
      cv.notify_all();
      cv.wait(lk, [&] { return release; });
    }
    return Echo(r);
  });
  Client blocked(s.port);
  blocked.Send(Get("/block"));
  {
    // The loop's only thread is inside the blocked handler before anyone else asks.
    std::unique_lock<std::mutex> lk(mu);
    EXPECT_TRUE(cv.wait_for(lk, 5s, [&] { return entered; }));
  }
  for (int i = 0; i < 5; ++i) {
    Client c(s.port);
    c.Send(Get("/quick"));
    EXPECT_EQ(Body(c.Receive()), "GET /quick ");
  }
  {
    std::lock_guard<std::mutex> lk(mu);
    release = true;
  }
  cv.notify_all();
  EXPECT_EQ(Body(blocked.Receive()), "GET /block ");
}

TEST(HttpTransport, ManyClientsAtOnceEachGetTheirOwnAnswers) {
  Served s;
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      Client c(s.port);
      for (int i = 0; i < 200; ++i) {
        const std::string body = std::to_string(t) + ":" + std::to_string(i);
        c.Send(Post("/p", body));
        if (Body(c.Receive()) != "POST /p " + body) ++wrong;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(HttpTransport, StopLetsRunningRequestsAnswerAndRefusesNewOnes) {
  std::promise<void> entered;
  auto served = std::make_unique<Served>(TransportOptions{}, [&](Request& r) {
    if (r.path == "/slow") {
      entered.set_value();
      std::this_thread::sleep_for(200ms);
    }
    return Echo(r);
  });
  const int port = served->port;
  Client slow(port), idle(port);
  slow.Send(Get("/slow"));
  entered.get_future().wait();
  std::thread stopper([&] { served->transport.Stop(); });
  const std::string r = slow.Receive();
  EXPECT_EQ(Body(r), "GET /slow ");
  EXPECT_NE(Client::Lower(r).find("connection: close"), std::string::npos);
  EXPECT_TRUE(idle.ClosedWithin(2));
  stopper.join();
  // Nothing listens any more.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_NE(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  close(fd);
}

TEST(HttpTransport, ABusyPortIsASystemError) {
  Served s;
  Transport other(TransportOptions{}, Echo);
  EXPECT_THROW(other.Listen("127.0.0.1", s.port), std::system_error);
}

// RFC 9112 section 6.3: a Transfer-Encoding whose final coding is not chunked (or one beside a
// Content-Length) is answered 400 and the connection closed, so that the bytes after it cannot
// be read as a second, smuggled request.
TEST(HttpTransport, RefusesAmbiguousFramingAndClosesTheConnection) {
  Served s;
  const std::string smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
  for (const std::string& framing :
       {std::string("Transfer-Encoding: chunked, identity\r\n"),
        std::string("Transfer-Encoding: identity\r\n"),
        std::string("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n"),
        std::string("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n")}) {
    Client c(s.port);
    c.Send("POST /x HTTP/1.1\r\nHost: x\r\n" + framing + "\r\n0\r\n\r\n" + smuggled);
    const std::string first = c.Receive();
    EXPECT_EQ(first.rfind("HTTP/1.1 400", 0), 0u) << framing << first;
    EXPECT_EQ(c.Receive(), "") << framing;  // no second answer: the connection is closed
  }
  Client ok(s.port);
  ok.Send("POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  EXPECT_EQ(Body(ok.Receive()), "POST /x abc");
}

// A client that trickles a request a byte at a time keeps nothing open past the read timeout,
// counted from the request's first byte.
TEST(HttpTransport, TheReadDeadlineRunsFromARequestsFirstByteToItsLast) {
  TransportOptions o;
  o.read_timeout_s = 1.0;
  Served s(o);
  Client c(s.port);
  const std::string request = Get("/slow") + std::string(200, ' ');
  const auto t0 = std::chrono::steady_clock::now();
  bool closed = false;
  for (size_t i = 0; i < request.size() && !closed; ++i) {
    if (send(c.fd(), request.data() + i, 1, MSG_NOSIGNAL) != 1) break;
    std::this_thread::sleep_for(100ms);
    char b[256];
    const ssize_t n = recv(c.fd(), b, sizeof b, MSG_DONTWAIT);
    closed = n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
  }
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_TRUE(closed || c.ClosedWithin(2));
  EXPECT_LT(took, 2.5) << "a trickling request was kept open past its deadline";
}

// The bytes of requests held across all connections stay within the budget: a request whose
// declared body would go over is answered 503 before its body is read.
TEST(HttpTransport, HoldsNoMoreRequestBytesThanItsBudget) {
  TransportOptions o;
  o.max_body_bytes = 512 << 10;
  o.max_buffered_bytes = 1 << 20;
  o.read_timeout_s = 10;
  Served s(o);
  const size_t declared = 400 << 10;
  std::vector<std::unique_ptr<Client>> clients;
  int refused = 0;
  for (int i = 0; i < 6; ++i) {
    clients.push_back(std::make_unique<Client>(s.port));
    clients.back()->Send("POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                         std::to_string(declared) + "\r\n\r\n" + std::string(100 << 10, 'a'));
    EXPECT_LE(s.transport.buffered_bytes(), o.max_buffered_bytes);
  }
  // Which two fit depends on the order the loops read them in; the other four are refused.
  std::vector<Client*> admitted;
  for (auto& c : clients) {
    c->SetReceiveTimeout(1.5);  // a refusal is sent as soon as the header is read
    const std::string r = c->Receive();
    if (r.empty()) {
      admitted.push_back(c.get());  // no answer yet: its body is awaited
    } else {
      refused += r.rfind("HTTP/1.1 503", 0) == 0;
      EXPECT_NE(r.find("Retry-After"), std::string::npos) << r;
    }
  }
  EXPECT_EQ(refused, 4);
  ASSERT_EQ(admitted.size(), 2u);
  EXPECT_LE(s.transport.buffered_bytes(), o.max_buffered_bytes);
  // The two that fit finish and are answered; then nothing is held.
  for (Client* c : admitted) {
    c->SetReceiveTimeout(5);
    c->Send(std::string(declared - (100 << 10), 'b'));
    EXPECT_EQ(Body(c->Receive()).size(), std::string("POST /big ").size() + declared);
  }
  clients.clear();
  const auto until = std::chrono::steady_clock::now() + 5s;
  while (s.transport.buffered_bytes() != 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(s.transport.buffered_bytes(), 0u);
}

int ThreadCount() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  }
  return -1;
}

// Waits up to `seconds` for `condition`; returns whether it held.
template <class F>
bool WaitUntil(F condition, double seconds) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (!condition()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

// Clients that ask for a large response and never read it cost no thread and hold up no one:
// responses are written without blocking the loop, and cut off at the write deadline.
TEST(HttpTransport, SlowReadersOfLargeResponsesHoldNoThreadAndBlockNoOne) {
  TransportOptions o;
  o.io_threads = 1;
  o.write_timeout_s = 5.0;
  Served s(o, [](Request& r) {
    Response out;
    out.body = r.path == "/big" ? std::string(4 << 20, 'x') : "small";
    return out;
  });
  const int threads_before = ThreadCount();
  std::vector<std::unique_ptr<Client>> readers;
  for (int i = 0; i < 20; ++i) {
    readers.push_back(std::make_unique<Client>(s.port));
    int small = 4096;
    setsockopt(readers.back()->fd(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    readers.back()->Send(Get("/big"));
  }
  // Every response is made, and stuck in a write its client does not read.
  ASSERT_TRUE(WaitUntil([&] { return s.transport.buffered_bytes() >= 20u * (4 << 20); }, 10));
  for (int i = 0; i < 5; ++i) {
    Client c(s.port);
    c.Send(Get("/ok"));
    EXPECT_EQ(Body(c.Receive()), "small");
  }
  // Helper threads that making the responses may have called for leave; the stuck writes hold
  // none (a blocking write would hold its thread until the 5 s deadline).
  EXPECT_TRUE(WaitUntil([&] { return ThreadCount() <= threads_before + 1; }, 3))
      << ThreadCount() << " threads, " << threads_before << " before";
  EXPECT_GE(s.transport.buffered_bytes(), 20u * (4 << 20));  // still stuck meanwhile
  EXPECT_LE(s.transport.buffered_bytes(), o.max_buffered_bytes);
  // Past the write deadline the stuck responses are dropped and their bytes released.
  EXPECT_TRUE(WaitUntil([&] { return s.transport.buffered_bytes() == 0; }, 10));
}

}  // namespace
}  // namespace lepton::http
