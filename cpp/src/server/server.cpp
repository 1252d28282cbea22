#include "lepton/server/server.h"

#include <ATen/ATen.h>
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

namespace lepton {
namespace {

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

Reply JsonReply(int status, const json& body) {
  Reply r;
  r.status = status;
  r.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  r.headers["Content-Type"] = "application/json";
  return r;
}

Reply ErrorReply(int status, const std::string& message) {
  return JsonReply(status, json{{"error", message}});
}

// A failure on the server's side (a model that raised, storage, a bug): the client gets a short
// message and an id to quote, while the details, which can hold a model's source lines, file paths
// and stack traces, go to the event log under that id.
Reply ServerFailure(const char* kind, const std::string& summary, const std::string& details) {
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
Reply CurrentErrorReply() {
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

std::vector<std::string> SplitPath(const std::string& path) {
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

std::string Sha256(const std::string& s) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d);
  return std::string(reinterpret_cast<char*>(d), sizeof d);
}

std::string RandomToken() {
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

json ParseBody(const std::string& body, bool allow_empty = false) {
  if (body.empty() && allow_empty) return json::object();
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded()) throw InvalidArgument("the request body is not valid JSON");
  if (!j.is_object()) throw InvalidArgument("the request body must be a JSON object");
  return j;
}

template <typename T>
T Field(const json& j, const char* name, const char* type) {
  if (!j.contains(name)) throw InvalidArgument(std::string("the body needs '") + name + "'");
  try {
    return j.at(name).get<T>();
  } catch (const json::exception&) {
    throw InvalidArgument(std::string("'") + name + "' must be " + type);
  }
}

template <typename T>
std::optional<T> OptionalField(const json& j, const char* name, const char* type) {
  if (!j.contains(name) || j.at(name).is_null()) return std::nullopt;
  return Field<T>(j, name, type);
}

void OnlyFields(const json& j, std::initializer_list<const char*> known) {
  for (const auto& [k, v] : j.items()) {
    if (std::none_of(known.begin(), known.end(), [&](const char* n) { return k == n; })) {
      throw InvalidArgument("unknown field '" + k + "'");
    }
  }
}

// --- tensors on the wire ---

at::ScalarType ScalarOf(oip::DataType t) { return ScalarTypeOf(t); }

// The decoded bytes become the tensor's storage, without a copy.
at::Tensor ToTensor(oip::WireTensor&& w) {
  const auto options = at::TensorOptions().dtype(ScalarOf(w.datatype));
  if (w.data.empty()) return at::empty(w.shape, options);
  auto* owner = new std::string(std::move(w.data));
  return at::from_blob(
      owner->data(), w.shape, [owner](void*) { delete owner; }, options);
}

oip::WireTensor FromTensor(std::string name, at::Tensor t) {
  oip::WireTensor w;
  w.name = std::move(name);
  if (!t.device().is_cpu()) t = t.to(at::kCPU);
  // Types the protocol lacks (complex) are refused rather than shown as something they are not.
  const std::optional<DType> type = DTypeOf(t.scalar_type());
  if (!type || !InfoOf(*type).numeric_on_wire) {
    throw ModelError("output '" + w.name + "' has dtype " + DTypeName(t.scalar_type()) +
                     ", which the Open Inference Protocol has no datatype for");
  }
  w.datatype = *type;
  t = t.contiguous();
  w.shape = t.sizes().vec();
  w.data.assign(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  return w;
}

// A signature's dtype as the protocol names it ("float32" -> "FP32").
std::string OipType(const std::string& dtype) {
  const DTypeInfo* d = DTypeNamed(dtype);
  return d && *d->wire ? d->wire : dtype;
}

json SpecsJson(const std::vector<TensorSpec>& specs) {
  json a = json::array();
  for (const auto& s : specs) {
    a.push_back({{"name", s.name}, {"datatype", OipType(s.dtype)}, {"shape", s.shape}});
  }
  return a;
}

// The response's parameters, written as JSON text straight away: this runs on every request.
std::string PredictionParameters(const Prediction& p) {
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
      "\"lepton_queue_ms\":{},\"lepton_compute_ms\":{}}}",
      str(p.request_id), list(p.versions), list(p.skipped), str(p.policy), str(p.route),
      p.latency_s * 1e3, p.queue_s * 1e3, p.compute_s * 1e3);
}

std::string HeaderSafe(std::string s) {
  for (char& c : s) {
    if (c == '\r' || c == '\n' || static_cast<unsigned char>(c) < 0x20) c = ' ';
  }
  return s;
}

}  // namespace

class Server::Impl {
 public:
  Impl(std::shared_ptr<Registry> registry, ServerOptions options)
      : registry_(std::move(registry)), options_(std::move(options)) {
    if (!registry_) throw InvalidArgument("a server needs a registry");
    if (options_.io_threads < 1) {
      throw InvalidArgument("io_threads must be at least 1, got " +
                            std::to_string(options_.io_threads));
    }
    if (!(options_.busy_poll_s >= 0)) {
      throw InvalidArgument("the busy-poll time (busy_poll_us) must not be negative");
    }
    if (options_.port < 0 || options_.port > 65535) {
      throw InvalidArgument("port must be in [0, 65535]");
    }
    if (options_.http_threads < 1) throw InvalidArgument("http_threads must be >= 1");
    if (options_.max_buffered_bytes < options_.max_body_bytes) {
      throw InvalidArgument("max_buffered_bytes (" + std::to_string(options_.max_buffered_bytes) +
                            ") must be at least max_body_bytes (" +
                            std::to_string(options_.max_body_bytes) +
                            "), or no request of the largest size could ever be read");
    }
    if (!(options_.request_timeout_s >= 0)) throw InvalidArgument("request_timeout must be >= 0");
    if (options_.token.empty()) {
      options_.token = RandomToken();
      generated_token_ = true;
    }
    token_digest_ = Sha256(options_.token);
  }

  ~Impl() { Stop(); }

  // --- models ---

  struct Entry {
    std::shared_ptr<Deployment> deployment;
    ServedModel config;
  };

  std::shared_ptr<Deployment> Deploy(const ServedModel& m) {
    std::shared_ptr<const Policy> policy;
    if (!m.policy.empty()) policy = PolicyFromJson(m.policy);
    std::shared_ptr<Deployment> d;
    if (m.alias) {
      d = std::shared_ptr<Deployment>(
          Deployment::FollowAlias(registry_, m.name, *m.alias, options_.deployment));
      if (policy) d->SetPolicy(policy);
    } else {
      std::vector<std::string> versions = m.versions;
      if (versions.empty()) {
        const auto all = registry_->Versions(m.name);
        if (all.empty()) throw NotFound("model '" + m.name + "' has no versions");
        versions.push_back(all.back().version);
      }
      d = std::make_shared<Deployment>(registry_, m.name, versions, options_.deployment);
      if (policy) d->SetPolicy(policy);
    }
    return d;
  }

  void Load(ServedModel m) {
    ValidateName(m.name, "model name");
    {
      std::lock_guard<std::mutex> lk(load_mu_);
      {
        std::shared_lock<std::shared_mutex> r(models_mu_);
        if (models_.count(m.name)) {
          throw Conflict("model '" + m.name + "' is already loaded; unload it first");
        }
      }
      auto d = Deploy(m);
      std::unique_lock<std::shared_mutex> w(models_mu_);
      models_[m.name] = Entry{d, m};
    }
  }

  void Unload(const std::string& name) {
    std::shared_ptr<Deployment> d;
    {
      std::unique_lock<std::shared_mutex> w(models_mu_);
      auto it = models_.find(name);
      if (it == models_.end()) throw NotFound("model '" + name + "' is not loaded");
      d = it->second.deployment;
      models_.erase(it);
    }
    d->Close();
  }

  // The deployment alone, without copying the model's configuration: for every request.
  std::shared_ptr<Deployment> FindDeployment(const std::string& name) const {
    {
      std::shared_lock<std::shared_mutex> r(models_mu_);
      auto it = models_.find(name);
      if (it != models_.end()) return it->second.deployment;
    }
    return Find(name).deployment;
  }

  Entry Find(const std::string& name) const {
    std::shared_lock<std::shared_mutex> r(models_mu_);
    auto it = models_.find(name);
    if (it == models_.end()) {
      // Tell an unknown model from one that exists but is not loaded.
      bool known = false;
      try {
        for (const auto& m : registry_->Models()) known = known || m.name == name;
      } catch (const std::exception&) {
      }
      throw NotFound(known ? "model '" + name + "' is not loaded"
                           : "model '" + name + "' is not in the registry");
    }
    return it->second;
  }

  std::vector<std::string> Names() const {
    std::shared_lock<std::shared_mutex> r(models_mu_);
    std::vector<std::string> out;
    for (const auto& [n, e] : models_) out.push_back(n);
    return out;
  }

  // A version in a path is a label or an alias of the model.
  std::string ResolveVersion(const std::string& model, const std::string& v) const {
    const auto aliases = registry_->Aliases(model);
    auto it = aliases.find(v);
    if (it != aliases.end()) return it->second;
    return v;
  }

  // --- lifecycle ---

  int Start() {
    std::vector<ServedModel> wanted;
    std::map<std::string, ServedModel> overrides;
    for (const auto& m : options_.models) overrides[m.name] = m;
    if (options_.serve_all) {
      for (const auto& s : registry_->Models()) {
        if (s.version_count == 0) continue;
        auto it = overrides.find(s.name);
        wanted.push_back(it != overrides.end() ? it->second : ServedModel{s.name, {}, {}, ""});
        if (it != overrides.end()) overrides.erase(it);
      }
    }
    for (const auto& [n, m] : overrides) wanted.push_back(m);
    for (const auto& m : wanted) {
      const bool asked = std::any_of(options_.models.begin(), options_.models.end(),
                                     [&](const ServedModel& x) { return x.name == m.name; });
      try {
        Load(m);
      } catch (const std::exception& e) {
        // A model named on purpose must load; one found in the registry may be left out.
        if (asked) throw;
        EmitEvent("error", "load_failed", m.name, "", "not serving " + m.name + ": " + e.what());
      }
    }

    http::TransportOptions t;
    t.max_body_bytes = options_.max_body_bytes;
    t.read_timeout_s = options_.read_timeout_s;
    t.write_timeout_s = options_.write_timeout_s;
    t.keep_alive_s = options_.keep_alive_s;
    t.io_threads = options_.io_threads;
    t.busy_poll_s = options_.busy_poll_s;
    t.max_threads = options_.http_threads;
    t.max_buffered_bytes = options_.max_buffered_bytes;
    http_ = std::make_unique<http::Transport>(t, [this](http::Request& req) {
      Reply r = HandleHttp(req);
      http::Response out;
      out.status = r.status;
      out.body = std::move(r.body);
      out.headers = std::move(r.headers);
      return out;
    });
    try {
      port_ = http_->Listen(options_.host, options_.port);
    } catch (const std::system_error& e) {
      http_.reset();
      CloseAll();
      throw Unavailable(e.what());
    }
    http_->Start();
    running_ = true;
    EmitEvent("info", "serve", "", "",
              "serving " + std::to_string(Names().size()) + " models on http://" + options_.host +
                  ":" + std::to_string(port_));
    return port_;
  }

  void Stop() {
    std::lock_guard<std::mutex> lk(stop_mu_);
    if (stopped_) return;
    stopped_ = true;
    // Stops accepting; requests being handled finish and answer first.
    if (http_) http_->Stop();
    CloseAll();
    running_ = false;
    stop_cv_.notify_all();
    EmitEvent("info", "stop", "", "", "server stopped");
  }

  void Wait() {
    std::unique_lock<std::mutex> lk(stop_mu_);
    stop_cv_.wait(lk, [&] { return stopped_; });
  }

  void CloseAll() {
    std::map<std::string, Entry> all;
    {
      std::unique_lock<std::shared_mutex> w(models_mu_);
      all.swap(models_);
    }
    for (auto& [n, e] : all) e.deployment->Close();
  }

  // --- requests ---

  static std::string Lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    return s;
  }

  bool Authorized(const Headers& headers) const {
    auto it = headers.find("authorization");
    if (it == headers.end()) return false;
    const std::string& v = it->second;
    static const std::string kBearer = "Bearer ";
    if (v.size() <= kBearer.size() || Lower(v.substr(0, kBearer.size())) != "bearer ") return false;
    // Digests have equal lengths whatever the token's, and are compared in constant time.
    const std::string d = Sha256(v.substr(kBearer.size()));
    return CRYPTO_memcmp(d.data(), token_digest_.data(), d.size()) == 0;
  }

  void RequireToken(const Headers& headers) const {
    if (!Authorized(headers))
      throw HttpError{401, "this endpoint needs 'Authorization: Bearer <token>'"};
  }

  // A request from a socket: its body inflated when compressed (Content-Encoding), the reply
  // compressed when the client accepts it (Accept-Encoding) and it is worth it.
  Reply HandleHttp(http::Request& req) {
    auto encoding = req.headers.find("content-encoding");
    if (encoding != req.headers.end()) {
      Reply refused;
      try {
        const http::Coding coding = http::ParseContentEncoding(encoding->second);
        if (coding != http::Coding::kIdentity) {
          std::string inflated;
          if (!http::Inflate(req.body, options_.max_body_bytes, req.reserve, &inflated)) {
            refused = ErrorReply(413, "the request body inflates past the server's limit of " +
                                          std::to_string(options_.max_body_bytes) + " bytes");
          }
          req.body.swap(inflated);
        }
      } catch (const std::length_error&) {
        refused = ErrorReply(503, "the server is holding as much memory as it may; retry shortly");
        refused.headers["Retry-After"] = "1";
      } catch (const std::invalid_argument& e) {
        const bool unknown = std::string(e.what()).rfind("Content-Encoding", 0) == 0;
        refused = ErrorReply(unknown ? 415 : 400, e.what());
      }
      if (refused.status != 200) {
        CountHttp(SplitPath(req.path), refused.status, 0);
        return refused;
      }
    }
    Reply r = Dispatch(req.method, req.path, req.query, req.body, req.headers,
                       Client{req.peer, req.reserve});
    auto accept = req.headers.find("accept-encoding");
    if (accept != req.headers.end() && r.body.size() >= kCompressFrom) {
      const http::Coding coding = http::PreferredCoding(accept->second);
      if (coding != http::Coding::kIdentity) {
        r.body = http::Compress(r.body, coding);
        r.headers["Content-Encoding"] = http::CodingName(coding);
        r.headers["Vary"] = "Accept-Encoding";
      }
    }
    return r;
  }

  // Smaller replies go uncompressed: the header would eat the saving.
  static constexpr size_t kCompressFrom = 1024;

  Reply Dispatch(const std::string& method, const std::string& path, const Query& query,
                 const std::string& body, const Headers& headers, const Client& client = {}) {
    const auto start = std::chrono::steady_clock::now();
    const auto parts = SplitPath(path);
    Reply r;
    try {
      r = Route(method, path, parts, query, body, headers, client);
    } catch (...) {
      r = CurrentErrorReply();
    }
    if (r.status == 401) r.headers["WWW-Authenticate"] = "Bearer";
    if (r.status == 503) r.headers["Retry-After"] = "1";
    CountHttp(parts, r.status,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return r;
  }

  // Every HTTP request by endpoint kind and status, including those refused before a version
  // was chosen (bad JSON, unknown models, missing tokens), which the deployments never see.
  static const char* EndpointKind(const std::vector<std::string>& p) {
    if (p.size() == 1 && p[0] == "metrics") return "metrics";
    if (p.size() < 2 || p[0] != "v2") return p.empty() ? "server" : "other";
    if (p[1] == "health") return "health";
    if (p[1] == "models") return p.back() == "infer" ? "infer" : "model";
    if (p[1] == "repository") return "repository";
    if (p[1] == "lepton") return p.size() == 5 && p[4] == "feedback" ? "feedback" : "management";
    return "other";
  }

  void CountHttp(const std::vector<std::string>& parts, int status, double seconds) {
    const char* kind = EndpointKind(parts);
    std::lock_guard<std::mutex> lk(http_mu_);
    ++http_counts_[{kind, status}];
    auto it = http_seconds_.find(kind);
    if (it == http_seconds_.end()) {
      it = http_seconds_.emplace(kind, std::make_unique<Histogram>(LatencyBuckets())).first;
    }
    it->second->Observe(seconds);
  }

  // Deployments that follow an alias: whether its target cannot be loaded, and how often it
  // failed to.
  static std::string AliasMetricsText(const std::vector<Entry>& entries) {
    std::ostringstream unloadable, failures;
    for (const auto& e : entries) {
      const DeploymentStatus st = e.deployment->Status();
      if (!st.alias) continue;
      const std::string labels = "{model=\"" + PrometheusEscape(st.model) + "\",alias=\"" +
                                 PrometheusEscape(*st.alias) + "\"}";
      unloadable << "lepton_alias_target_unloadable" << labels << ' '
                 << (st.alias_target_failed ? 1 : 0) << '\n';
      failures << "lepton_alias_follow_failures_total" << labels << ' ' << st.alias_follow_failures
               << '\n';
    }
    return "# HELP lepton_alias_target_unloadable 1 while a followed alias points to a version "
           "that cannot be loaded (the previous version keeps serving).\n"
           "# TYPE lepton_alias_target_unloadable gauge\n" +
           unloadable.str() +
           "# HELP lepton_alias_follow_failures_total Failed attempts to load a followed alias's "
           "target.\n"
           "# TYPE lepton_alias_follow_failures_total counter\n" +
           failures.str();
  }

  std::string HttpMetricsText() const {
    std::ostringstream o;
    o << "# HELP lepton_http_requests_total HTTP requests by endpoint kind and status code.\n"
         "# TYPE lepton_http_requests_total counter\n";
    std::lock_guard<std::mutex> lk(http_mu_);
    for (const auto& [key, n] : http_counts_) {
      o << "lepton_http_requests_total{endpoint=\"" << key.first << "\",code=\"" << key.second
        << "\"} " << n << '\n';
    }
    o << "# HELP lepton_http_request_duration_seconds Time lepton spent on an HTTP request, from "
         "its parsed body to its reply.\n"
         "# TYPE lepton_http_request_duration_seconds histogram\n";
    for (const auto& [kind, h] : http_seconds_) {
      o << PrometheusHistogram("lepton_http_request_duration_seconds", "endpoint=\"" + kind + "\"",
                               h->snapshot());
    }
    return o.str();
  }

  // Refuses any method but `want` with 405; `allow` lists every method the endpoint takes when
  // the caller has already handled the others.
  static void Method(const std::string& got, const char* want, const char* allow = nullptr) {
    if (got != want) {
      const std::string methods = allow ? allow : want;
      throw HttpError{405, "use " + methods + " here", methods};
    }
  }

  Reply Route(const std::string& method, const std::string& path, const std::vector<std::string>& p,
              const Query& query, const std::string& body, const Headers& headers,
              const Client& client) {
    const size_t n = p.size();
    if (n == 1 && p[0] == "metrics") {
      Method(method, "GET");
      std::vector<MetricsSnapshot> all;
      std::vector<Entry> entries;
      {
        std::shared_lock<std::shared_mutex> r(models_mu_);
        for (const auto& [k, e] : models_) entries.push_back(e);
      }
      for (const auto& e : entries) all.push_back(e.deployment->Metrics());
      Reply r;
      r.body = RenderPrometheus(all) + AliasMetricsText(entries) + HttpMetricsText();
      r.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8";
      return r;
    }
    if (n == 0 || p[0] != "v2") throw HttpError{404, "no such endpoint: " + path};
    if (n == 1) {
      Method(method, "GET");
      return JsonReply(200, {{"name", "lepton"},
                             {"version", LEPTON_VERSION_STRING},
                             {"extensions", {"binary_tensor_data", "model_repository", "lepton"}}});
    }
    if (p[1] == "health" && n == 3) {
      Method(method, "GET");
      if (p[2] == "live") return JsonReply(200, {{"live", true}});
      if (p[2] == "ready") {
        const bool ready = running_ && AllReady();
        return JsonReply(ready ? 200 : 503, {{"ready", ready}});
      }
    }
    if (p[1] == "models" && n >= 3) return ModelRoute(method, p, body, headers, client);
    if (p[1] == "repository") return RepositoryRoute(method, p, body, headers);
    if (p[1] == "lepton") return LeptonRoute(method, p, query, body, headers, client);
    throw HttpError{404, "no such endpoint: " + path};
  }

  bool AllReady() const {
    std::vector<Entry> entries;
    {
      std::shared_lock<std::shared_mutex> r(models_mu_);
      for (const auto& [k, e] : models_) entries.push_back(e);
    }
    for (const auto& e : entries) {
      const auto st = e.deployment->Status();
      const bool any =
          std::any_of(st.versions.begin(), st.versions.end(),
                      [](const ServableStats& s) { return s.health == Health::kReady; });
      if (!any) return false;
    }
    return true;
  }

  // /v2/models/{m}[/versions/{v}][/ready|/infer]
  Reply ModelRoute(const std::string& method, const std::vector<std::string>& p,
                   const std::string& body, const Headers& headers, const Client& client) {
    const std::string& model = p[2];
    std::optional<std::string> version;
    size_t i = 3;
    if (p.size() >= 5 && p[3] == "versions") {
      version = p[4];
      i = 5;
    }
    const std::string action = i < p.size() ? p[i] : "";
    if (i + (action.empty() ? 0 : 1) != p.size()) throw HttpError{404, "no such endpoint"};
    if (action == "infer") {
      Method(method, "POST");
      if (options_.token_for_inference) RequireToken(headers);
      return Infer(model, version, body, headers, client);
    }
    Method(method, "GET");
    if (action == "ready") {
      bool ready = false;
      const Entry e = Find(model);
      const auto st = e.deployment->Status();
      const std::string want = version ? ResolveVersion(model, *version) : st.primary;
      bool live = false;
      for (const auto& s : st.versions) {
        if (s.version == want) {
          live = true;
          ready = s.health == Health::kReady;
        }
      }
      if (version && !live) {
        registry_->Get(model + ":" + want);  // 404 when the version does not exist at all
      }
      return JsonReply(ready ? 200 : 503, {{"name", model}, {"version", want}, {"ready", ready}});
    }
    if (!action.empty()) throw HttpError{404, "no such endpoint"};
    // Metadata.
    const Entry e = Find(model);
    const auto st = e.deployment->Status();
    const std::string label = version ? ResolveVersion(model, *version) : st.primary;
    const ModelVersion mv = registry_->Get(model + ":" + label);
    json j = {{"name", model}, {"platform", "pytorch_torchscript"}};
    json versions = json::array();
    for (const auto& s : st.versions) versions.push_back(s.version);
    j["versions"] = version ? json::array({label}) : versions;
    j["inputs"] = mv.signature ? SpecsJson(mv.signature->inputs) : json::array();
    j["outputs"] = mv.signature ? SpecsJson(mv.signature->outputs) : json::array();
    j["parameters"] = {{"lepton_primary", st.primary},
                       {"lepton_policy", st.policy},
                       {"lepton_sha256", mv.sha256},
                       {"lepton_aliases", mv.aliases}};
    if (st.alias) j["parameters"]["lepton_alias"] = *st.alias;
    return JsonReply(200, j);
  }

  Reply Infer(const std::string& model, const std::optional<std::string>& version,
              const std::string& body, const Headers& headers, const Client& client) {
    const std::shared_ptr<Deployment> deployment = FindDeployment(model);
    ReserveForDecoding(body, client);
    std::optional<size_t> json_length;
    if (auto h = headers.find("inference-header-content-length"); h != headers.end()) {
      const std::string& v = h->second;
      if (v.empty() || v.size() > 18 || v.find_first_not_of("0123456789") != std::string::npos) {
        throw InvalidArgument("Inference-Header-Content-Length must be a byte count, got '" +
                              HeaderSafe(v) + "'");
      }
      json_length = std::stoull(v);
    }
    oip::InferRequest req = oip::DecodeInferRequest(body, {}, json_length);
    if (req.model_name && *req.model_name != model) {
      throw InvalidArgument("the body names model '" + *req.model_name + "' but the URL names '" +
                            model + "'");
    }
    Tensors inputs;
    inputs.reserve(req.inputs.size());
    PredictOptions o;
    o.input_names.reserve(req.inputs.size());
    for (auto& w : req.inputs) {
      o.input_names.push_back(w.name);
      inputs.push_back(ToTensor(std::move(w)));
    }
    if (version) o.context.version = ResolveVersion(model, *version);
    o.context.key = req.key;
    if (!o.context.key) {
      auto k = headers.find("x-lepton-key");
      if (k != headers.end()) o.context.key = k->second;
    }
    o.timeout_s = req.timeout_s;
    if (!o.timeout_s && options_.request_timeout_s > 0) o.timeout_s = options_.request_timeout_s;
    o.priority = req.priority;
    Prediction pred = deployment->Predict(inputs, o);
    // Output names: the signature's when it has them, else output_0, output_1, ...
    const std::vector<std::string> names = OutputNames(model, pred.versions.front());
    oip::InferResponse resp;
    resp.model = model;
    resp.version = pred.versions.size() == 1 ? pred.versions[0] : JoinVersions(pred.versions);
    // Every response has an id: the request's, else lepton's request id.
    resp.id = req.id.empty() ? pred.request_id : req.id;
    resp.parameters = PredictionParameters(pred);
    for (size_t i = 0; i < pred.outputs.size(); ++i) {
      std::string name = i < names.size() ? names[i] : "output_" + std::to_string(i);
      if (!req.outputs.empty() &&
          std::find(req.outputs.begin(), req.outputs.end(), name) == req.outputs.end()) {
        continue;
      }
      const bool binary = oip::WantsBinary(req, name);
      resp.outputs.push_back(FromTensor(std::move(name), pred.outputs[i]));
      resp.outputs.back().binary = binary;
    }
    for (const auto& want : req.outputs) {
      if (std::none_of(resp.outputs.begin(), resp.outputs.end(),
                       [&](const oip::WireTensor& t) { return t.name == want; })) {
        throw InvalidArgument("the model has no output named '" + want + "'");
      }
    }
    Reply r;
    std::optional<size_t> header_length;
    r.body = oip::EncodeInferResponse(resp, &header_length);
    if (header_length) {
      r.headers["Content-Type"] = "application/octet-stream";
      r.headers["Inference-Header-Content-Length"] = std::to_string(*header_length);
    } else {
      r.headers["Content-Type"] = "application/json";
    }
    r.headers["X-Lepton-Request-Id"] = pred.request_id;
    r.headers["X-Lepton-Version"] = HeaderSafe(resp.version);
    r.headers["X-Lepton-Route"] = HeaderSafe(pred.route);
    return r;
  }

  // Decoding a large JSON body holds several times its size for a while: a padded copy, the
  // parser's tape (16 bytes a number) and the tensors (up to 8 bytes a number). That is reserved
  // against the transport's budget first, so that the budget bounds what requests cost, not only
  // what they buffer. Small bodies use a parser kept per thread and are not counted.
  static void ReserveForDecoding(const std::string& body, const Client& client) {
    if (!client.reserve || body.size() <= (1 << 20)) return;
    const size_t values = static_cast<size_t>(std::count(body.begin(), body.end(), ',')) + 1;
    if (!client.reserve(body.size() + values * (16 + 8))) {
      throw HttpError{503,
                      "the server is holding as much memory for other requests as it may; retry "
                      "shortly"};
    }
  }

  std::vector<std::string> OutputNames(const std::string& model, const std::string& version) {
    const std::string ref = model + ":" + version;
    {
      std::lock_guard<std::mutex> lk(names_mu_);
      auto it = output_names_.find(ref);
      if (it != output_names_.end()) return it->second;
    }
    std::vector<std::string> names;
    try {
      const ModelVersion mv = registry_->Get(ref);
      if (mv.signature) {
        for (const auto& s : mv.signature->outputs) names.push_back(s.name);
      }
    } catch (const std::exception&) {
      return names;
    }
    std::lock_guard<std::mutex> lk(names_mu_);
    output_names_[ref] = names;
    return names;
  }

  static std::string JoinVersions(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : "+") + x;
    return s;
  }

  // /v2/repository/index, /v2/repository/models/{m}/load|unload
  Reply RepositoryRoute(const std::string& method, const std::vector<std::string>& p,
                        const std::string& body, const Headers& headers) {
    Method(method, "POST");
    RequireToken(headers);
    if (p.size() == 3 && p[2] == "index") {
      const json req = ParseBody(body, true);
      OnlyFields(req, {"ready"});
      const bool only_ready = req.value("ready", false);
      json out = json::array();
      const auto loaded = Names();
      for (const auto& m : registry_->Models()) {
        const bool is_loaded = std::count(loaded.begin(), loaded.end(), m.name) > 0;
        if (only_ready && !is_loaded) continue;
        if (!is_loaded) {
          json x = {{"name", m.name}, {"state", "UNAVAILABLE"}, {"reason", "not loaded"}};
          if (m.latest) x["version"] = *m.latest;
          out.push_back(std::move(x));
          continue;
        }
        // One entry per live version, as Triton lists them: a model serving two versions (a
        // canary, a split, an ensemble) shows both, each with its own state.
        for (const auto& v : Find(m.name).deployment->Status().versions) {
          const bool ready = v.health == Health::kReady;
          if (only_ready && !ready) continue;
          json x = {
              {"name", m.name}, {"version", v.version}, {"state", ready ? "READY" : "UNAVAILABLE"}};
          if (!ready) x["reason"] = HealthName(v.health);
          out.push_back(std::move(x));
        }
      }
      return JsonReply(200, out);
    }
    if (p.size() == 5 && p[2] == "models" && (p[4] == "load" || p[4] == "unload")) {
      const std::string& model = p[3];
      if (p[4] == "unload") {
        Unload(model);
        return JsonReply(200, {{"name", model}, {"state", "UNAVAILABLE"}});
      }
      const json req = ParseBody(body, true);
      OnlyFields(req, {"parameters"});
      ServedModel m{model, {}, {}, ""};
      if (req.contains("parameters")) {
        const json& params = req["parameters"];
        if (!params.is_object()) throw InvalidArgument("'parameters' must be an object");
        OnlyFields(params, {"alias", "versions", "policy"});
        m.alias = OptionalField<std::string>(params, "alias", "a string");
        m.versions =
            OptionalField<std::vector<std::string>>(params, "versions", "a list of strings")
                .value_or(std::vector<std::string>{});
        if (params.contains("policy")) m.policy = params["policy"].dump();
      }
      Load(m);
      return JsonReply(200, {{"name", model},
                             {"state", "READY"},
                             {"version", Find(model).deployment->Status().primary}});
    }
    throw HttpError{404, "no such repository endpoint"};
  }

  // /v2/lepton/...
  Reply LeptonRoute(const std::string& method, const std::vector<std::string>& p,
                    const Query& query, const std::string& body, const Headers& headers,
                    const Client& client) {
    const size_t n = p.size();
    // Feedback belongs with inference; everything else is management.
    if (n == 5 && p[2] == "models" && p[4] == "feedback") {
      Method(method, "POST");
      // Rewards steer traffic, and through an A/B test or a bandit that moves an alias they move
      // production: they need the token unless open_feedback is set, and even then a deployment
      // that follows an alias takes them only with the token.
      const bool authorized = Authorized(headers);
      const Entry entry = Find(p[3]);
      if (!authorized) {
        if (!options_.open_feedback) {
          throw HttpError{401,
                          "feedback needs 'Authorization: Bearer <token>' (a server started with "
                          "open_feedback takes it without the token for deployments that follow "
                          "no alias)"};
        }
        // A policy's automatic switch moves its own alias, else the one the deployment follows.
        const auto policy = entry.deployment->policy();
        if (policy && (policy->alias() || entry.deployment->Status().alias)) {
          throw HttpError{401, "feedback to " + p[3] +
                                   " can move an alias through its policy, so it needs "
                                   "'Authorization: Bearer <token>'"};
        }
      }
      const json req = ParseBody(body);
      OnlyFields(req, {"request_id", "reward"});
      const auto id = Field<std::string>(req, "request_id", "a string");
      if (!req.contains("reward") || !req["reward"].is_number()) {
        throw InvalidArgument("'reward' must be a number");
      }
      // The client's address (not its port, which changes with each connection).
      const std::string address = client.peer.substr(0, client.peer.rfind(':'));
      const std::string source = std::string("http ") +
                                 (address.empty() ? "(in-process)" : address) +
                                 (authorized ? " with the token" : " without the token");
      entry.deployment->Feedback(id, req["reward"].get<double>(), source);
      return JsonReply(200, {{"accepted", true}, {"request_id", id}});
    }
    RequireToken(headers);
    if (n == 3 && p[2] == "models") {
      Method(method, "GET");
      json out = json::array();
      for (const auto& name : Names()) out.push_back(ModelStats(name, false));
      return JsonReply(200, out);
    }
    if (n == 3 && p[2] == "events") {
      Method(method, "GET");
      int64_t since = 0;
      size_t limit = 1000;
      try {
        if (query.count("since")) since = std::stoll(query.at("since"));
        if (query.count("limit")) limit = std::stoul(query.at("limit"));
      } catch (const std::exception&) {
        throw InvalidArgument("'since' and 'limit' must be integers");
      }
      const std::string model = query.count("model") ? query.at("model") : "";
      json out = json::array();
      for (const auto& e : EventLog::Global().Since(since, 0, 100000)) {
        if (!model.empty() && e.model != model) continue;
        out.push_back(json::parse(e.ToJson()));
        if (out.size() >= limit) break;
      }
      return JsonReply(200, out);
    }
    if (n < 5 || p[2] != "models") throw HttpError{404, "no such lepton endpoint"};
    const std::string& model = p[3];
    const std::string& what = p[4];
    if (what == "stats" && n == 5) {
      Method(method, "GET");
      return JsonReply(200, ModelStats(model, true));
    }
    if (what == "policy" && n == 5) {
      const Entry e = Find(model);
      if (method == "GET") return JsonReply(200, PolicyJson(e));
      Method(method, "PUT", "GET, PUT");
      ParseBody(body);
      e.deployment->SetPolicy(PolicyFromJson(body));
      {
        std::unique_lock<std::shared_mutex> w(models_mu_);
        auto it = models_.find(model);
        if (it != models_.end()) it->second.config.policy = body;
      }
      return JsonReply(200, PolicyJson(Find(model)));
    }
    if (what == "rollback" && n == 5) {
      Method(method, "POST");
      const json req = ParseBody(body);
      OnlyFields(req, {"alias", "reason"});
      const ModelVersion v = registry_->Rollback(
          model, Field<std::string>(req, "alias", "a string"),
          OptionalField<std::string>(req, "reason", "a string").value_or("rollback over HTTP"));
      return JsonReply(200, {{"model", model}, {"version", v.version}, {"aliases", v.aliases}});
    }
    if (what == "aliases") {
      if (n == 5) {
        Method(method, "GET");
        return JsonReply(200, registry_->Aliases(model));
      }
      if (n == 6) {
        const std::string& alias = p[5];
        if (method == "DELETE") {
          const json req = ParseBody(body, true);
          OnlyFields(req, {"reason"});
          registry_->RemoveAlias(
              model, alias,
              OptionalField<std::string>(req, "reason", "a string").value_or("removed over HTTP"));
          return JsonReply(200, {{"model", model}, {"alias", alias}, {"removed", true}});
        }
        Method(method, "PUT", "PUT, DELETE");
        const json req = ParseBody(body);
        OnlyFields(req, {"version", "expected", "reason"});
        const ModelVersion v = registry_->SetAlias(
            model, alias, Field<std::string>(req, "version", "a string"),
            OptionalField<std::string>(req, "expected", "a string"),
            OptionalField<std::string>(req, "reason", "a string").value_or("moved over HTTP"));
        return JsonReply(200, {{"model", model}, {"alias", alias}, {"version", v.version}});
      }
    }
    throw HttpError{404, "no such lepton endpoint"};
  }

  json PolicyJson(const Entry& e) const {
    auto policy = e.deployment->policy();
    json j = {{"name", policy->name()}, {"describe", policy->Describe()}};
    j["report"] = json::parse(policy->Report(), nullptr, false);
    if (j["report"].is_discarded()) j["report"] = nullptr;
    if (!e.config.policy.empty()) {
      j["spec"] = json::parse(e.config.policy, nullptr, false);
    }
    return j;
  }

  // A served model's status, and with `full` its request series, anomaly flags and shadow
  // comparisons: the JSON that Python's Deployment.status(), metrics() and shadow_report() give.
  json ModelStats(const std::string& model, bool full) const {
    const Entry e = Find(model);
    json j = StatusJson(e.deployment->Status());
    if (!full) return j;
    const MetricsSnapshot m = e.deployment->Metrics();
    j["series"] = MetricsJson(m)["series"];
    json anomalous = json::array();
    for (const auto& g : m.versions) {
      if (g.anomalous) anomalous.push_back(g.version);
    }
    j["anomalous"] = anomalous;
    j["shadows"] = ShadowsJson(e.deployment->Shadows());
    return j;
  }

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
  std::atomic<bool> running_{false};
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stopped_ = false;

  friend class Server;
};

Server::Server(std::shared_ptr<Registry> registry, ServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(registry), std::move(options))),
      generation_(ForkGeneration()) {}
Server::~Server() {
  // In a forked child the parent's server threads do not exist; stopping would wait for them.
  if (generation_ != ForkGeneration()) (void)impl_.release();
}

Server::Impl* Server::Live() const {
  if (generation_ != ForkGeneration()) {
    throw Unavailable(
        "this server was started in the parent of this forked process, and its threads do not "
        "exist here; create a new Server in this process");
  }
  return impl_.get();
}
int Server::Start() { return Live()->Start(); }
void Server::Stop() { Live()->Stop(); }
void Server::Wait() { Live()->Wait(); }
int Server::port() const { return Live()->port_; }
const std::string& Server::host() const { return Live()->options_.host; }
const std::string& Server::token() const { return Live()->options_.token; }
std::vector<std::string> Server::models() const { return Live()->Names(); }
std::shared_ptr<Deployment> Server::deployment(const std::string& model) const {
  return Live()->Find(model).deployment;
}

Server::Reply Server::Handle(const std::string& method, const std::string& path,
                             const std::string& body,
                             const std::map<std::string, std::string>& headers) {
  Headers lower;
  for (const auto& [k, v] : headers) lower[Impl::Lower(k)] = v;
  std::string p;
  Query query;
  if (!http::SplitTarget(path, &p, &query)) {
    return ErrorReply(400, "the request target has a malformed percent escape");
  }
  return Live()->Dispatch(method, p, query, body, lower);
}

}  // namespace lepton
