// A version served anywhere that speaks the Open Inference Protocol v2 over HTTP (another
// `lepton serve`, a pod, Triton, KServe), as a member of a deployment: the deployment's policies
// (canary, A/B, shadow, ensembles, bandits) route to it like to any version. Requests go over a
// pool of keep-alive connections with the request's deadline; a request that never reached the
// endpoint is tried again (up to `retries`); an endpoint that fails `eject_after` times in a row
// is ejected for `eject_s` (its requests fail at once with Unavailable) and then tried again.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "lepton/runtime/servable.h"

namespace lepton {

struct RemoteOptions {
  std::string url;      // "http://host:port" (and an optional path prefix)
  std::string model;    // the model's name there
  std::string version;  // its version there; "": whichever the endpoint serves by default
  std::map<std::string, std::string> headers;  // sent with every request (Authorization, ...)
  double timeout_s = 30;                       // for a request without a deadline of its own
  double connect_timeout_s = 5;
  int retries = 2;  // further tries of a request that never reached the endpoint
  int eject_after = 5;
  double eject_s = 10;
  int max_connections = 64;  // idle connections kept
  // Tensors travel as binary data after the JSON (Triton's binary tensor data extension);
  // false: as JSON lists, for endpoints without the extension.
  bool binary = true;
};

// Reads the endpoint's metadata for the model (its inputs) and checks that it is ready;
// LoadError saying why when it cannot. `label` is the version's name in this deployment.
std::shared_ptr<Servable> StartRemote(const std::string& deployment_model, const std::string& label,
                                      const RemoteOptions& remote, const ServableOptions& options);

}  // namespace lepton
