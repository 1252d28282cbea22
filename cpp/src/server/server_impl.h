// The server's implementation, shared by its files: server.cpp (models and lifecycle),
// server_http.cpp (authorisation, routing, HTTP metrics), server_inference.cpp (the protocol's
// model, inference and repository endpoints) and server_management.cpp (lepton's own endpoints).
// Private to the server library.
#pragma once

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <shared_mutex>
#include <sstream>
#include <thread>

#include "lepton/common/errors.h"
#include "lepton/common/names.h"
#include "lepton/common/process.h"
#include "lepton/http/compression.h"
#include "lepton/http/http_transport.h"
#include "lepton/observe/events.h"
#include "lepton/observe/metrics.h"
#include "lepton/observe/metrics_json.h"
#include "lepton/policy/policy_config.h"
#include "lepton/protocol/oip.h"
#include "lepton/runtime/deployment_json.h"
#include "lepton/runtime/tensor_types.h"
#include "lepton/server/server.h"
#include "server_grpc.h"

namespace lepton {
namespace server_detail {

using json = nlohmann::json;
using Reply = Server::Reply;
using Query = std::map<std::string, std::string>;
using Headers = std::map<std::string, std::string>;

// Who sent a request and what it may hold: the client's address, and a way to reserve bytes of
// the transport's memory budget for the request's handling (empty in-process).
struct Client {
  std::string peer;
  std::function<bool(size_t)> reserve;
};

// An HTTP error with its status; the body is {"error": message}.
struct HttpError {
  int status;
  std::string message;
  std::string allow = "";  // the methods a 405 names in its Allow header
};

inline Reply JsonReply(int status, const json& body) {
  Reply r;
  r.status = status;
  r.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  r.headers["Content-Type"] = "application/json";
  return r;
}

inline Reply ErrorReply(int status, const std::string& message) {
  return JsonReply(status, json{{"error", message}});
}

// A failure on the server's side (a model that raised, storage, a bug): the client gets a short
// message and an id to quote, while the details, which can hold a model's source lines, file paths
// and stack traces, go to the event log under that id.
inline Reply ServerFailure(const char* kind, const std::string& summary,
                           const std::string& details) {
  const std::string id = RandomHex(16);
  EmitEvent("error", kind, "", "", summary + " (request " + id + "): " + details);
  Reply r = JsonReply(500, json{{"error", summary +
                                              "; the details are in the server's event log "
                                              "under request id " +
                                              id},
                                {"request_id", id}});
  r.headers["X-Lepton-Request-Id"] = id;
  return r;
}

// The reply for the exception being handled: its status from the error table; server-side
// failures (5xx) say only what failed and leave the details to the event log.
inline Reply CurrentErrorReply() {
  try {
    throw;
  } catch (const HttpError& e) {
    Reply r = ErrorReply(e.status, e.message);
    if (!e.allow.empty()) r.headers["Allow"] = e.allow;
    return r;
  } catch (...) {
    const CurrentError error = CurrentErrorOf();
    const ErrorKind& kind = KindOf(error.code);
    if (kind.http_status >= 500 && *kind.summary) {
      return ServerFailure(kind.event, kind.summary, error.message);
    }
    return ErrorReply(kind.http_status, error.message);
  }
}

inline std::vector<std::string> SplitPath(const std::string& path) {
  std::vector<std::string> parts;
  size_t i = 0;
  while (i < path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    if (j > i) parts.push_back(path.substr(i, j - i));
    i = j + 1;
  }
  return parts;
}

inline std::string Sha256(const std::string& s) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d);
  return std::string(reinterpret_cast<char*>(d), sizeof d);
}

inline std::string RandomToken() {
  unsigned char b[24];
  if (RAND_bytes(b, sizeof b) != 1) throw StorageError("cannot draw a random token");
  static const char* kHex = "0123456789abcdef";
  std::string t;
  for (unsigned char c : b) {
    t += kHex[c >> 4];
    t += kHex[c & 15];
  }
  return t;
}

inline json ParseBody(const std::string& body, bool allow_empty = false) {
  if (body.empty() && allow_empty) return json::object();
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded()) throw InvalidArgument("the request body is not valid JSON");
  if (!j.is_object()) throw InvalidArgument("the request body must be a JSON object");
  return j;
}

template <typename T>
inline T Field(const json& j, const char* name, const char* type) {
  if (!j.contains(name)) throw InvalidArgument(std::string("the body needs '") + name + "'");
  try {
    return j.at(name).get<T>();
  } catch (const json::exception&) {
    throw InvalidArgument(std::string("'") + name + "' must be " + type);
  }
}

template <typename T>
inline std::optional<T> OptionalField(const json& j, const char* name, const char* type) {
  if (!j.contains(name) || j.at(name).is_null()) return std::nullopt;
  return Field<T>(j, name, type);
}

inline void OnlyFields(const json& j, std::initializer_list<const char*> known) {
  for (const auto& [k, v] : j.items()) {
    if (std::none_of(known.begin(), known.end(), [&](const char* n) { return k == n; })) {
      throw InvalidArgument("unknown field '" + k + "'");
    }
  }
}

// A signature's dtype as the protocol names it ("float32" -> "FP32").
inline std::string OipType(const std::string& dtype) {
  const DTypeInfo* d = DTypeNamed(dtype);
  return d && *d->wire ? d->wire : dtype;
}

inline json SpecsJson(const std::vector<TensorSpec>& specs) {
  json a = json::array();
  for (const auto& s : specs) {
    a.push_back({{"name", s.name}, {"datatype", OipType(s.dtype)}, {"shape", s.shape}});
  }
  return a;
}

// The response's parameters, written as JSON text straight away: this runs on every request.
inline std::string PredictionParameters(const Prediction& p) {
  auto str = [](const std::string& s) {
    return json(s).dump(-1, ' ', false, json::error_handler_t::replace);
  };
  // Parameter values are strings, numbers or booleans in the protocol: lists are comma-joined.
  auto list = [&](const std::vector<std::string>& v) {
    std::string joined;
    for (size_t i = 0; i < v.size(); ++i) joined += (i ? "," : "") + v[i];
    return str(joined);
  };
  return fmt::format(
      "{{\"lepton_request_id\":{},\"lepton_versions\":{},\"lepton_skipped\":{},"
      "\"lepton_policy\":{},\"lepton_route\":{},\"lepton_latency_ms\":{},"
      "\"lepton_queue_ms\":{},\"lepton_compute_ms\":{},\"lepton_cold_start\":{}}}",
      str(p.request_id), list(p.versions), list(p.skipped), str(p.policy), str(p.route),
      p.latency_s * 1e3, p.queue_s * 1e3, p.compute_s * 1e3, p.cold_start ? "true" : "false");
}

inline std::string HeaderSafe(std::string s) {
  for (char& c : s) {
    if (c == '\r' || c == '\n' || static_cast<unsigned char>(c) < 0x20) c = ' ';
  }
  return s;
}

}  // namespace server_detail

using namespace server_detail;

class Server::Impl {
 public:
  Impl(std::shared_ptr<Registry> registry, ServerOptions options);

  ~Impl() { Stop(); }

  // --- models ---

  struct Entry {
    std::shared_ptr<Deployment> deployment;
    ServedModel config;
    std::string shared_policy_id;  // the policy set through a replica's API that it follows
  };

  std::shared_ptr<Deployment> Deploy(const ServedModel& m);

  void Load(ServedModel m);

  void Unload(const std::string& name);

  // The deployment alone, without copying the model's configuration: for every request.
  std::shared_ptr<Deployment> FindDeployment(const std::string& name) const;
  // The deployment serving `name`, or null when it is not served.
  std::shared_ptr<Deployment> Served(const std::string& name) const;

  Entry Find(const std::string& name) const;

  std::vector<std::string> Names() const;

  // A version in a path is a label or an alias of the model.
  std::string ResolveVersion(const std::string& model, const std::string& v) const;

  // --- lifecycle ---

  int Start();

  void Stop();

  void Wait();

  void CloseAll();

  // --- requests ---

  static std::string Lower(std::string s);

  bool Authorized(const Headers& headers) const;

  void RequireToken(const Headers& headers) const;

  // A request from a socket: its body inflated when compressed (Content-Encoding), the reply
  // compressed when the client accepts it (Accept-Encoding) and it is worth it (larger than
  // kCompressFrom, and not data that barely shrinks, such as floats as binary data).
  Reply HandleHttp(http::Request& req);

  // Smaller replies go uncompressed: the header would eat the saving.
  static constexpr size_t kCompressFrom = 1024;

  Reply Dispatch(const std::string& method, const std::string& path, const Query& query,
                 const std::string& body, const Headers& headers, const Client& client = {});

  // Every HTTP request by endpoint kind and status, including those refused before a version
  // was chosen (bad JSON, unknown models, missing tokens), which the deployments never see.
  static const char* EndpointKind(const std::vector<std::string>& p);

  void CountHttp(const std::vector<std::string>& parts, int status, double seconds);

  // Deployments that follow an alias: whether its target cannot be loaded, and how often it
  // failed to.
  static std::string AliasMetricsText(const std::vector<Entry>& entries);

  std::string HttpMetricsText() const;

  // Refuses any method but `want` with 405; `allow` lists every method the endpoint takes when
  // the caller has already handled the others.
  static void Method(const std::string& got, const char* want, const char* allow = nullptr);

  Reply Route(const std::string& method, const std::string& path, const std::vector<std::string>& p,
              const Query& query, const std::string& body, const Headers& headers,
              const Client& client);

  bool AllReady() const;

  // /v2/models/{m}[/versions/{v}][/ready|/infer]
  Reply ModelRoute(const std::string& method, const std::vector<std::string>& p,
                   const std::string& body, const Headers& headers, const Client& client);

  Reply Infer(const std::string& model, const std::optional<std::string>& version,
              const std::string& body, const Headers& headers, const Client& client);

  // Triton's model configuration, GET /v2/models/{m}[/versions/{v}]/config.
  Reply ConfigRoute(const std::string& model, const std::optional<std::string>& version);

  // A decoded request (HTTP or gRPC) through its deployment; outputs as the request asked.
  struct Inferred {
    oip::InferResponse response;
    std::string request_id, route;
  };
  Inferred InferDecoded(Deployment& deployment, const std::string& model,
                        const std::optional<std::string>& version, oip::InferRequest& req,
                        const std::optional<std::string>& key, std::optional<double> deadline_s);

  // Decoding a large JSON body holds several times its size for a while: a padded copy, the
  // parser's tape (16 bytes a number) and the tensors (up to 8 bytes a number). That is reserved
  // against the transport's budget first, so that the budget bounds what requests cost, not only
  // what they buffer. Small bodies use a parser kept per thread and are not counted.
  static void ReserveForDecoding(const std::string& body, const Client& client);

  std::vector<std::string> OutputNames(const std::string& model, const std::string& version);

  static std::string JoinVersions(const std::vector<std::string>& v);

  // /v2/repository/index, /v2/repository/models/{m}/load|unload
  Reply RepositoryRoute(const std::string& method, const std::vector<std::string>& p,
                        const std::string& body, const Headers& headers);

  // Repository load/unload of a model served under a memory budget: pin/unpin a version.
  std::optional<Reply> PinRoute(const std::string& model, bool load, const std::string& body);

  // Triton's statistics extension (server_statistics.cpp): GET
  // /v2/models[/{m}[/versions/{v}]]/stats.
  Reply StatisticsRoute(const std::optional<std::string>& model,
                        const std::optional<std::string>& version, const Headers& headers);
  json ModelStatistics(const std::string& model, const std::optional<std::string>& version) const;

  // /v2/lepton/...
  Reply LeptonRoute(const std::string& method, const std::vector<std::string>& p,
                    const Query& query, const std::string& body, const Headers& headers,
                    const Client& client);

  json PolicyJson(const Entry& e) const;

  // /v2/lepton/registry/models[/{m}/versions|/{m}/history]: what the registry holds, for the
  // dashboard and other clients that read it over HTTP.
  Reply RegistryRoute(const std::string& method, const std::vector<std::string>& p,
                      const Query& query);

  // Who a management request acts as in the audit log: the X-Lepton-Actor header's name and
  // the client's address; none without the header (the registry's own actor).
  static std::optional<std::string> ActorOf(const Headers& headers, const Client& client);

  // --- the dashboard (server_ui.cpp): its built files, read once from options_.ui_dir and
  // served from memory at /ui/, never from the file system per request ---
  struct UiFile {
    std::string content_type;
    std::string body;
  };
  void LoadUi();
  Reply UiRoute(const std::string& method, const std::vector<std::string>& p) const;
  std::map<std::string, UiFile> ui_files_;

  // --- management that replicas share (server_shared.cpp): with a registry on a database
  // server, a policy set through any replica's API is kept in the registry and set on every
  // replica that serves the model ---
  // After `spec` was set here over the API: audits it and, on a shared registry, keeps it for
  // the other replicas.
  void SharePolicy(const std::string& model, const std::string& spec, const std::string& actor);
  // The chore: sets the policies set through other replicas; returns when it is next due.
  std::chrono::steady_clock::time_point FollowSharedPolicies();
  void StartSharing();
  void StopSharing();
  uint64_t sharing_task_ = 0;  // the chore on the shared scheduler; 0: none

  // A served model's status, and with `full` its request series, anomaly flags and shadow
  // comparisons: the JSON that Python's Deployment.status(), metrics() and shadow_report() give.
  json ModelStats(const std::string& model, bool full) const;

  std::shared_ptr<Registry> registry_;
  ServerOptions options_;
  bool generated_token_ = false;
  std::string token_digest_;
  mutable std::shared_mutex models_mu_;
  std::map<std::string, Entry> models_;
  std::mutex load_mu_;
  std::mutex names_mu_;
  mutable std::mutex http_mu_;
  std::map<std::pair<std::string, int>, uint64_t> http_counts_;
  std::map<std::string, std::unique_ptr<Histogram>> http_seconds_;
  std::map<std::string, std::vector<std::string>> output_names_;
  std::unique_ptr<http::Transport> http_;
  int port_ = -1;
  std::unique_ptr<GrpcFrontend> grpc_;
  int grpc_port_ = -1;
  std::atomic<bool> running_{false};
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stopped_ = false;

  friend class Server;
};

}  // namespace lepton
