// lepton's HTTP server: the Open Inference Protocol v2 REST API (KServe / Triton clients work
// unchanged) over every model of a registry, plus lepton's management endpoints (aliases,
// rollback, policies, feedback, statistics, events) and Prometheus metrics. Built on
// Boost.Beast (HTTP/1.1 parsing) over Boost.Asio (event-driven sockets). Optionally the
// protocol's gRPC service too (grpc++), over the same models.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lepton/registry/registry.h"
#include "lepton/runtime/deployment.h"

namespace lepton {

struct ServedModel {
  std::string name;
  std::optional<std::string> alias;   // follow model@alias
  std::vector<std::string> versions;  // or serve these; neither: the latest version
  std::string policy;                 // JSON (see policy_config.h); "" for the default
  // This model's own "placement", "resources", "worker" and "remotes" (as in the deployment
  // options, which they override for it), as a JSON object; "" for none.
  std::string placement;
};

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port
  // Bearer token for management endpoints; "" generates one (read it from token()).
  std::string token;
  bool token_for_inference = false;  // inference needs the token too
  // Feedback needs the token unless this is set; even then, feedback that can move an alias (the
  // policy's own, or the one the deployment follows) needs the token.
  bool open_feedback = false;
  size_t max_body_bytes = 64 << 20;
  // Memory held for requests across all connections, at most: their bodies, what decoding a
  // large JSON body takes (a padded copy, the parser's tape, the tensors), and responses until
  // they are written. A request that would go over is refused with 503 and Retry-After, before
  // its body is read when its length is declared.
  size_t max_buffered_bytes = 512 << 20;
  double read_timeout_s = 5;   // from a request's first byte to its last
  double write_timeout_s = 5;  // to send one response
  double keep_alive_s = 5;
  // Event loops, each with one thread that reads, handles and answers its connections' requests.
  int io_threads = 2;
  // A loop polls this long after its last request before it sleeps: on loopback a request that
  // arrives meanwhile is answered without waking a thread. 0 turns polling off.
  double busy_poll_s = 100e-6;
  // Threads in all, at most: a loop whose handler has blocked it for 5 ms gets a helper thread
  // to serve its other connections meanwhile.
  int http_threads = 64;
  // Default deadline of an inference request; 0: none unless the request sets one. A request
  // without a deadline runs on its caller's thread when its version is idle, saving a hand-off.
  double request_timeout_s = 0;
  // The protocol's gRPC service (inference.GRPCInferenceService) on this port as well, on the
  // same host; 0: any free port; none: no gRPC.
  std::optional<int> grpc_port;
  // A folder of the dashboard's built files (index.html and what it loads), served at /ui/;
  // "" serves none. Read once when the server is made.
  std::string ui_dir;
  bool serve_all = true;            // serve every model of the registry
  std::vector<ServedModel> models;  // overrides (and, without serve_all, the whole list)
  DeploymentOptions deployment;
};

class Server {
 public:
  Server(std::shared_ptr<Registry> registry, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Loads the models, binds and starts serving on a background thread; returns the port.
  int Start();
  // Stops accepting, lets requests in progress finish, drains and closes every deployment.
  void Stop();
  // Blocks until Stop() has finished.
  void Wait();

  int port() const;
  // The gRPC port, or -1 when the server speaks no gRPC.
  int grpc_port() const;
  const std::string& host() const;
  const std::string& token() const;
  std::vector<std::string> models() const;
  // The deployment serving `model` (NotFound when it is not loaded).
  std::shared_ptr<Deployment> deployment(const std::string& model) const;

  // Handles one request without a socket: for tests and the fuzzer of the request path.
  struct Reply {
    int status = 200;
    std::string body;
    std::map<std::string, std::string> headers;
  };
  Reply Handle(const std::string& method, const std::string& path, const std::string& body,
               const std::map<std::string, std::string>& headers = {});

 private:
  class Impl;
  friend class GrpcFrontend;
  // The implementation, or Unavailable in a child forked after the server was made.
  Impl* Live() const;
  std::unique_ptr<Impl> impl_;
  uint64_t generation_;  // the process's fork generation when the server was made
};

}  // namespace lepton
