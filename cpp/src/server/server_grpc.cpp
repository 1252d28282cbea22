// The protocol's gRPC service over the server's deployments. Inference decodes the message into
// the codec's request and goes the HTTP request's way from there (Server::Impl::InferDecoded);
// the other calls answer from the same endpoints as their HTTP twins, so that readiness,
// metadata and the repository mean one thing whichever way they are asked.
#include "server_grpc.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>

#include <atomic>
#include <climits>
#include <mutex>

#include "inference.grpc.pb.h"
#include "lepton/protocol/oip_grpc.h"
#include "server_impl.h"

namespace lepton {
namespace {

// An HTTP status as the gRPC code that means the same.
grpc::StatusCode CodeOf(int http_status) {
  switch (http_status) {
    case 400:
    case 415:
      return grpc::StatusCode::INVALID_ARGUMENT;
    case 401:
      return grpc::StatusCode::UNAUTHENTICATED;
    case 403:
      return grpc::StatusCode::PERMISSION_DENIED;
    case 404:
      return grpc::StatusCode::NOT_FOUND;
    case 405:
    case 501:
      return grpc::StatusCode::UNIMPLEMENTED;
    case 408:
    case 504:
      return grpc::StatusCode::DEADLINE_EXCEEDED;
    case 409:
      return grpc::StatusCode::FAILED_PRECONDITION;
    case 413:
    case 429:
      return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case 503:
      return grpc::StatusCode::UNAVAILABLE;
    default:
      return http_status >= 500 ? grpc::StatusCode::INTERNAL : grpc::StatusCode::UNKNOWN;
  }
}

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    default:
      return "UNKNOWN";
  }
}

// The message of an error reply ({"error": ...}), and its request id when it has one.
grpc::Status StatusOf(const Reply& r) {
  std::string message = r.body;
  const json j = json::parse(r.body, nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_string()) {
    message = j["error"].get<std::string>();
  }
  return grpc::Status(CodeOf(r.status), message);
}

// What lepton reads of a call's metadata: the token and the routing key.
Headers HeadersOf(const grpc::ServerContext& ctx) {
  Headers h;
  for (const auto& [k, v] : ctx.client_metadata()) {
    const std::string key(k.data(), k.size());
    if (key == "authorization" || key == "x-lepton-key") h[key] = std::string(v.data(), v.size());
  }
  return h;
}

// A repository parameter as the JSON the HTTP endpoint takes: "versions" may be comma-separated
// labels and "policy" a policy's JSON text, since parameter values are scalars here.
json RepositoryParameter(const std::string& key, const inference::ModelRepositoryParameter& p) {
  using P = inference::ModelRepositoryParameter;
  switch (p.parameter_choice_case()) {
    case P::kBoolParam:
      return p.bool_param();
    case P::kInt64Param:
      return p.int64_param();
    case P::kStringParam: {
      const std::string& s = p.string_param();
      if (key == "policy") {
        json policy = json::parse(s, nullptr, false);
        if (policy.is_discarded()) {
          throw InvalidArgument("parameter 'policy' must be a policy's JSON text");
        }
        return policy;
      }
      if (key == "versions") {
        json labels = json::array();
        size_t i = 0;
        while (i <= s.size()) {
          size_t j = s.find(',', i);
          if (j == std::string::npos) j = s.size();
          if (j > i) labels.push_back(s.substr(i, j - i));
          i = j + 1;
        }
        return labels;
      }
      return s;
    }
    case P::kBytesParam:
      throw InvalidArgument("parameter '" + key +
                            "' carries bytes (a model's files); lepton loads versions from its "
                            "registry only");
    case P::PARAMETER_CHOICE_NOT_SET:
      break;
  }
  return nullptr;
}

void GrpcLog(gpr_log_func_args* args) {
  if (args->severity != GPR_LOG_SEVERITY_ERROR) return;
  static std::atomic<int64_t> last_ms{-1000};
  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  int64_t previous = last_ms.load();
  if (now - previous < 1000 || !last_ms.compare_exchange_strong(previous, now)) return;
  EmitEvent("warning", "grpc", "", "", std::string("gRPC: ") + args->message);
}

}  // namespace

class GrpcFrontend::Service final : public inference::GRPCInferenceService::Service {
 public:
  explicit Service(Server::Impl& server) : s_(server) {}

  Server::Impl& s_;
  std::unique_ptr<grpc::Server> server_;
  mutable std::mutex mu_;
  std::map<std::pair<std::string, grpc::StatusCode>, uint64_t> counts_;
  std::map<std::string, std::unique_ptr<Histogram>> seconds_;

  // Runs a call's body; an exception becomes the gRPC status of the HTTP reply it would give
  // (a server-side failure says only what failed, its details going to the event log).
  template <typename F>
  grpc::Status Call(const char* method, F&& body) {
    const auto start = std::chrono::steady_clock::now();
    grpc::Status status;
    try {
      body();
    } catch (...) {
      status = StatusOf(CurrentErrorReply());
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::lock_guard<std::mutex> lk(mu_);
    ++counts_[{method, status.error_code()}];
    auto it = seconds_.find(method);
    if (it == seconds_.end()) {
      it = seconds_.emplace(method, std::make_unique<Histogram>(LatencyBuckets())).first;
    }
    it->second->Observe(seconds);
    return status;
  }

  // An HTTP endpoint's JSON answer; other statuses than `ok` become errors.
  json Ask(const char* method, std::vector<std::string> parts, const std::string& body,
           const Headers& headers, int also_ok = 200) {
    std::string path;
    for (const auto& p : parts) path += "/" + p;
    const Reply r = s_.Route(method, path, parts, {}, body, headers, Client{});
    if (r.status != 200 && r.status != also_ok) {
      const grpc::Status st = StatusOf(r);
      throw HttpError{r.status, st.error_message()};
    }
    return json::parse(r.body);
  }

  static std::vector<std::string> ModelPath(const std::string& name, const std::string& version) {
    if (name.empty()) throw InvalidArgument("the request needs a model name");
    std::vector<std::string> p = {"v2", "models", name};
    if (!version.empty()) {
      p.push_back("versions");
      p.push_back(version);
    }
    return p;
  }

  grpc::Status ServerLive(grpc::ServerContext*, const inference::ServerLiveRequest*,
                          inference::ServerLiveResponse* out) override {
    return Call("ServerLive", [&] { out->set_live(true); });
  }

  grpc::Status ServerReady(grpc::ServerContext*, const inference::ServerReadyRequest*,
                           inference::ServerReadyResponse* out) override {
    return Call("ServerReady", [&] { out->set_ready(s_.running_ && s_.AllReady()); });
  }

  grpc::Status ModelReady(grpc::ServerContext* ctx, const inference::ModelReadyRequest* in,
                          inference::ModelReadyResponse* out) override {
    return Call("ModelReady", [&] {
      auto path = ModelPath(in->name(), in->version());
      // A model of the registry that is not served (unloaded) is not ready, as Triton answers;
      // a name the registry does not know is NOT_FOUND.
      if (!s_.Served(in->name()) && !s_.registry_->Versions(in->name()).empty()) {
        out->set_ready(false);
        return;
      }
      path.push_back("ready");
      const json j = Ask("GET", path, "", HeadersOf(*ctx), 503);
      out->set_ready(j.value("ready", false));
    });
  }

  grpc::Status ServerMetadata(grpc::ServerContext* ctx, const inference::ServerMetadataRequest*,
                              inference::ServerMetadataResponse* out) override {
    return Call("ServerMetadata", [&] {
      const json j = Ask("GET", {"v2"}, "", HeadersOf(*ctx));
      out->set_name(j["name"].get<std::string>());
      out->set_version(j["version"].get<std::string>());
      for (const auto& e : j["extensions"]) out->add_extensions(e.get<std::string>());
    });
  }

  static void Tensors(
      const json& specs,
      google::protobuf::RepeatedPtrField<inference::ModelMetadataResponse::TensorMetadata>* out) {
    for (const auto& s : specs) {
      auto* t = out->Add();
      t->set_name(s["name"].get<std::string>());
      t->set_datatype(s["datatype"].get<std::string>());
      if (s["shape"].is_array()) {
        for (const auto& d : s["shape"])
          t->add_shape(d.is_number_integer() ? d.get<int64_t>() : -1);
      }
    }
  }

  grpc::Status ModelMetadata(grpc::ServerContext* ctx, const inference::ModelMetadataRequest* in,
                             inference::ModelMetadataResponse* out) override {
    return Call("ModelMetadata", [&] {
      const json j = Ask("GET", ModelPath(in->name(), in->version()), "", HeadersOf(*ctx));
      out->set_name(j["name"].get<std::string>());
      out->set_platform(j["platform"].get<std::string>());
      for (const auto& v : j["versions"]) out->add_versions(v.get<std::string>());
      Tensors(j["inputs"], out->mutable_inputs());
      Tensors(j["outputs"], out->mutable_outputs());
    });
  }

  grpc::Status ModelInfer(grpc::ServerContext* ctx, const inference::ModelInferRequest* in,
                          inference::ModelInferResponse* out) override {
    return Call("ModelInfer", [&] {
      const Headers headers = HeadersOf(*ctx);
      if (s_.options_.token_for_inference) s_.RequireToken(headers);
      if (in->model_name().empty()) throw InvalidArgument("the request needs a model_name");
      const std::string model = in->model_name();
      const std::shared_ptr<Deployment> deployment = s_.FindDeployment(model);
      std::optional<std::string> version;
      if (!in->model_version().empty()) version = in->model_version();
      // The message is this call's own: its raw contents become the tensors without a copy.
      auto& message = const_cast<inference::ModelInferRequest&>(*in);
      oip::InferRequest req = oip::DecodeGrpcInferRequest(message);
      // The call's deadline is the request's when its parameters set none.
      std::optional<double> deadline_s;
      const auto deadline = ctx->deadline();
      if (deadline != std::chrono::system_clock::time_point::max()) {
        deadline_s =
            std::chrono::duration<double>(deadline - std::chrono::system_clock::now()).count();
        if (*deadline_s <= 0) throw Timeout("the call's deadline passed before it was served");
      }
      std::optional<std::string> key;
      if (auto k = headers.find("x-lepton-key"); k != headers.end()) key = k->second;
      Server::Impl::Inferred done =
          s_.InferDecoded(*deployment, model, version, req, key, deadline_s);
      oip::EncodeGrpcInferResponse(std::move(done.response), out);
    });
  }

  static void OneRepository(const std::string& name) {
    if (!name.empty()) {
      throw InvalidArgument(
          "lepton serves one repository, its registry: leave repository_name "
          "empty (got '" +
          name + "')");
    }
  }

  grpc::Status RepositoryIndex(grpc::ServerContext* ctx,
                               const inference::RepositoryIndexRequest* in,
                               inference::RepositoryIndexResponse* out) override {
    return Call("RepositoryIndex", [&] {
      OneRepository(in->repository_name());
      const json j = Ask("POST", {"v2", "repository", "index"}, json{{"ready", in->ready()}}.dump(),
                         HeadersOf(*ctx));
      for (const auto& m : j) {
        auto* x = out->add_models();
        x->set_name(m.value("name", ""));
        x->set_version(m.value("version", ""));
        x->set_state(m.value("state", ""));
        x->set_reason(m.value("reason", ""));
      }
    });
  }

  template <typename Request>
  void LoadOrUnload(grpc::ServerContext* ctx, const Request& in, const char* action) {
    OneRepository(in.repository_name());
    if (in.model_name().empty()) throw InvalidArgument("the request needs a model_name");
    json body = json::object();
    if (!in.parameters().empty()) {
      json params = json::object();
      for (const auto& [k, v] : in.parameters()) params[k] = RepositoryParameter(k, v);
      body["parameters"] = std::move(params);
    }
    Ask("POST", {"v2", "repository", "models", in.model_name(), action}, body.dump(),
        HeadersOf(*ctx));
  }

  grpc::Status RepositoryModelLoad(grpc::ServerContext* ctx,
                                   const inference::RepositoryModelLoadRequest* in,
                                   inference::RepositoryModelLoadResponse*) override {
    return Call("RepositoryModelLoad", [&] { LoadOrUnload(ctx, *in, "load"); });
  }

  static void Duration(const json& j, inference::StatisticDuration* out) {
    out->set_count(j.value("count", uint64_t{0}));
    out->set_ns(j.value("ns", uint64_t{0}));
  }

  grpc::Status ModelStatistics(grpc::ServerContext* ctx,
                               const inference::ModelStatisticsRequest* in,
                               inference::ModelStatisticsResponse* out) override {
    return Call("ModelStatistics", [&] {
      std::vector<std::string> path = {"v2", "models"};
      if (!in->name().empty()) path = ModelPath(in->name(), in->version());
      if (in->name().empty() && !in->version().empty()) {
        throw InvalidArgument("a version needs a model name");
      }
      path.push_back("stats");
      const json j = Ask("GET", path, "", HeadersOf(*ctx));
      for (const auto& m : j["model_stats"]) {
        auto* x = out->add_model_stats();
        x->set_name(m["name"].get<std::string>());
        x->set_version(m["version"].get<std::string>());
        x->set_last_inference(m["last_inference"].get<uint64_t>());
        x->set_inference_count(m["inference_count"].get<uint64_t>());
        x->set_execution_count(m["execution_count"].get<uint64_t>());
        const json& s = m["inference_stats"];
        auto* stats = x->mutable_inference_stats();
        Duration(s["success"], stats->mutable_success());
        Duration(s["fail"], stats->mutable_fail());
        Duration(s["queue"], stats->mutable_queue());
        Duration(s["compute_input"], stats->mutable_compute_input());
        Duration(s["compute_infer"], stats->mutable_compute_infer());
        Duration(s["compute_output"], stats->mutable_compute_output());
        Duration(s["cache_hit"], stats->mutable_cache_hit());
      }
    });
  }

  grpc::Status RepositoryModelUnload(grpc::ServerContext* ctx,
                                     const inference::RepositoryModelUnloadRequest* in,
                                     inference::RepositoryModelUnloadResponse*) override {
    return Call("RepositoryModelUnload", [&] { LoadOrUnload(ctx, *in, "unload"); });
  }
};

GrpcFrontend::GrpcFrontend(Server::Impl& server) : service_(std::make_unique<Service>(server)) {}

GrpcFrontend::~GrpcFrontend() { Stop(); }

int GrpcFrontend::Start() {
  // protobuf would log every message a client sends with a string that is not UTF-8 (the call
  // fails all the same): one line per message is a way to flood the server's log.
  // gRPC core's errors (a refused compressed call, say) go to the event log, at most one a
  // second for the same reason.
  static std::once_flag quiet;
  std::call_once(quiet, [] {
    google::protobuf::SetLogHandler(nullptr);
    gpr_set_log_function(GrpcLog);
  });
  const ServerOptions& o = service_->s_.options_;
  const std::string host = o.host.find(':') != std::string::npos ? "[" + o.host + "]" : o.host;
  const std::string address = host + ":" + std::to_string(o.grpc_port.value_or(0));
  // The standard health service (grpc.health.v1.Health) beside the protocol's, for probes such
  // as Kubernetes' gRPC ones: SERVING while the server runs, NOT_SERVING once it stops.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(service_.get());
  // The HTTP API's limits hold here too: a message (after decompression) up to max_body_bytes,
  // gRPC's buffers within max_buffered_bytes, at most http_threads threads.
  builder.SetMaxReceiveMessageSize(static_cast<int>(std::min<size_t>(o.max_body_bytes, INT_MAX)));
  builder.SetMaxSendMessageSize(INT_MAX);
  // Messages travel uncompressed: gRPC inflates a compressed message whole before it checks
  // its size, so a few megabytes of gzip could take gigabytes. A compressed call is refused
  // with UNIMPLEMENTED before its message is read (HTTP bodies inflate within max_body_bytes).
  builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_GZIP, false);
  builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_DEFLATE, false);
  grpc::ResourceQuota quota("lepton-grpc");
  quota.Resize(o.max_buffered_bytes);
  quota.SetMaxThreads(std::max(o.http_threads, 4));
  builder.SetResourceQuota(quota);
  service_->server_ = builder.BuildAndStart();
  if (!service_->server_ || port == 0) {
    service_->server_.reset();
    throw Unavailable("cannot listen for gRPC on " + address);
  }
  return port;
}

void GrpcFrontend::Stop() {
  if (!service_->server_) return;
  const double wait_s = service_->s_.options_.write_timeout_s;
  if (auto* health = service_->server_->GetHealthCheckService()) health->Shutdown();
  service_->server_->Shutdown(std::chrono::system_clock::now() +
                              std::chrono::microseconds(static_cast<int64_t>(wait_s * 1e6)));
  service_->server_->Wait();
  service_->server_.reset();
}

std::string GrpcFrontend::MetricsText() const {
  std::ostringstream o;
  o << "# HELP lepton_grpc_requests_total gRPC calls by method and status code.\n"
       "# TYPE lepton_grpc_requests_total counter\n";
  std::lock_guard<std::mutex> lk(service_->mu_);
  for (const auto& [key, n] : service_->counts_) {
    o << "lepton_grpc_requests_total{method=\"" << key.first << "\",code=\"" << CodeName(key.second)
      << "\"} " << n << '\n';
  }
  o << "# HELP lepton_grpc_request_duration_seconds Time lepton spent on a gRPC call, from its "
       "parsed message to its reply.\n"
       "# TYPE lepton_grpc_request_duration_seconds histogram\n";
  for (const auto& [method, h] : service_->seconds_) {
    o << PrometheusHistogram("lepton_grpc_request_duration_seconds", "method=\"" + method + "\"",
                             h->snapshot());
  }
  return o.str();
}

}  // namespace lepton
