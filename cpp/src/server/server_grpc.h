// The protocol's gRPC service (inference.GRPCInferenceService) over the server's deployments:
// the same models, policies, metrics and token as the HTTP API. Private to the server library.
#pragma once

#include <memory>
#include <string>

#include "lepton/server/server.h"

namespace lepton {

class GrpcFrontend {
 public:
  // Serves `server`'s models, which outlives the frontend.
  explicit GrpcFrontend(Server::Impl& server);
  ~GrpcFrontend();
  GrpcFrontend(const GrpcFrontend&) = delete;
  GrpcFrontend& operator=(const GrpcFrontend&) = delete;

  // Binds the server's host and gRPC port (0: any free port) and serves on gRPC's threads;
  // returns the port.
  int Start();
  // Stops accepting calls; calls in progress finish first (for up to the write timeout).
  void Stop();
  // lepton_grpc_requests_total and lepton_grpc_request_duration_seconds, as Prometheus text.
  std::string MetricsText() const;

 private:
  class Service;
  std::unique_ptr<Service> service_;
};

}  // namespace lepton
