// One HTTP/1.1 keep-alive connection, one request at a time, the client spinning on its socket
// rather than sleeping in the kernel: the round trip without the client's own wake-up latency.
//
//   http_pingpong HOST PORT TARGET SECONDS [BODY_FILE]
//
// With BODY_FILE the request is a POST of that file's contents as application/json, else a GET.
// Prints one JSON object: requests, non-2xx answers, and the p50/p90/p99 round trip in seconds.
// Responses are parsed with Boost.Beast.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

namespace http = boost::beast::http;
using Clock = std::chrono::steady_clock;

namespace {

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "http_pingpong: %s\n", what.c_str());
  std::exit(2);
}

int Connect(const std::string& host, int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) Fail(std::string("socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) Fail("bad IPv4 address " + host);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    Fail("connect: " + std::string(std::strerror(errno)));
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

// Sends the whole request, then reads (without blocking, spinning) until Beast has a complete
// response. Returns its status code.
unsigned RoundTrip(int fd, const std::string& request) {
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0) Fail(std::string("send: ") + std::strerror(errno));
    sent += static_cast<size_t>(n);
  }
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 << 20);
  std::string pending;
  char buf[65536];
  while (!parser.is_done()) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) Fail("the server closed the connection");
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      Fail(std::string("recv: ") + std::strerror(errno));
    }
    pending.append(buf, static_cast<size_t>(n));
    // The parser takes the header and the body in separate calls.
    while (!pending.empty() && !parser.is_done()) {
      boost::beast::error_code ec;
      const size_t used = parser.put(boost::asio::buffer(pending), ec);
      if (ec == http::error::need_more) break;
      if (ec) Fail("bad response: " + ec.message());
      pending.erase(0, used);
    }
  }
  return parser.get().result_int();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5 || argc > 6) {
    Fail("usage: http_pingpong HOST PORT TARGET SECONDS [BODY_FILE]");
  }
  const std::string host = argv[1], target = argv[3];
  const int port = std::atoi(argv[2]);
  const double seconds = std::atof(argv[4]);
  if (port <= 0 || port > 65535 || !(seconds > 0)) Fail("bad port or duration");
  std::string body;
  if (argc == 6) {
    std::ifstream f(argv[5], std::ios::binary);
    if (!f) Fail(std::string("cannot read ") + argv[5]);
    body.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  http::request<http::string_body> req(body.empty() ? http::verb::get : http::verb::post, target,
                                       11);
  req.set(http::field::host, host + ":" + std::to_string(port));
  if (!body.empty()) {
    req.set(http::field::content_type, "application/json");
    req.body() = body;
  }
  req.prepare_payload();
  std::ostringstream wire;
  wire << req;
  const std::string request = wire.str();

  const int fd = Connect(host, port);
  for (int i = 0; i < 100; ++i) RoundTrip(fd, request);  // warm-up
  std::vector<double> rtt;
  long non2xx = 0;
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < end) {
    const auto t0 = Clock::now();
    const unsigned status = RoundTrip(fd, request);
    rtt.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    non2xx += status < 200 || status >= 300;
  }
  ::close(fd);
  std::sort(rtt.begin(), rtt.end());
  auto q = [&](double p) {
    return rtt[std::min(rtt.size() - 1, static_cast<size_t>(p * rtt.size()))];
  };
  std::printf("{\"requests\": %zu, \"non2xx\": %ld, \"p50\": %.9f, \"p90\": %.9f, \"p99\": %.9f}\n",
              rtt.size(), non2xx, q(0.5), q(0.9), q(0.99));
  return 0;
}
