// The HTTP/1.1 transport under lepton's server: Boost.Beast's parser over Boost.Asio sockets,
// event-driven, with keep-alive, pipelining, `Expect: 100-continue`, body and header limits, and
// read (per request), write and idle deadlines enforced by one sweeper, and one budget for the
// bytes held across all connections.
//
// Threads: `io_threads` event loops (one io_context and one thread each) take the connections in
// turn, and each runs its requests' handlers where it parsed them, so a request costs no thread
// hand-off. A handler may block (a model computing, a queue wait): when one has blocked its loop
// for longer than `stall_s`, a helper thread runs that loop's other connections meanwhile, and
// leaves when the handler returns. Slow or silent clients hold no thread at all: they wait in
// the reactor until their deadline, and writes never block a loop. A separate thread accepts
// connections.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

namespace lepton::http {

struct Request {
  std::string method;
  std::string path;  // percent-decoded, without the query
  std::map<std::string, std::string> query;
  std::map<std::string, std::string> headers;  // names in lower case
  std::string body;
  std::string peer;  // the client's "address:port"
  // Charges bytes the handler is about to hold (decoding a large body) against the transport's
  // budget until the handler returns; false, charging nothing, when that would go over.
  std::function<bool(size_t)> reserve;
};

struct Response {
  int status = 200;
  std::string body;
  std::map<std::string, std::string> headers;  // Content-Type defaults to application/json
};

struct TransportOptions {
  size_t max_body_bytes = 64 << 20;
  size_t max_header_bytes = 64 << 10;
  // Request and response bytes held across all connections, at most. A request whose declared
  // body would go over is answered 503 before its body is read; a response that would is
  // replaced by a 503.
  size_t max_buffered_bytes = 512 << 20;
  double read_timeout_s = 5;   // from a request's first byte to its last
  double write_timeout_s = 5;  // to send one response
  double keep_alive_s = 5;     // idle time between requests on one connection
  // Event loops, each run by one thread that handles its connections' requests itself.
  int io_threads = 2;
  // After its last piece of work a loop polls this long before it sleeps in the kernel: a
  // request arriving meanwhile is picked up without waking a thread. 0 never polls.
  double busy_poll_s = 100e-6;
  // A loop whose thread has been inside a handler this long gets a helper thread to serve its
  // other connections meanwhile, up to `max_threads` threads in all.
  double stall_s = 0.005;
  int max_threads = 64;
};

// Splits a request target into its decoded path and query parameters ('+' is a space in the
// query). Returns false when a percent escape is malformed.
bool SplitTarget(std::string_view target, std::string* path,
                 std::map<std::string, std::string>* query);

class Session;

class Transport {
 public:
  using Handler = std::function<Response(Request&)>;

  Transport(TransportOptions options, Handler handler);
  ~Transport();  // Stop()
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  // Binds host:port (0: any free port) with a full listen backlog; returns the port. Throws
  // std::system_error when the address cannot be bound.
  int Listen(const std::string& host, int port);
  // Starts the I/O threads.
  void Start();
  // Stops accepting, closes idle connections, lets requests being handled finish and send their
  // responses (with `Connection: close`), then stops the threads.
  void Stop();
  // Request and response bytes held now, across all connections.
  size_t buffered_bytes() const;

 private:
  class Impl;
  friend class Session;
  std::shared_ptr<Impl> impl_;
};

}  // namespace lepton::http
