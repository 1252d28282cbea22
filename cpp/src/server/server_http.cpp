// The server's request path: authorisation, routing to the endpoint groups, and its HTTP metrics.
#include "server_impl.h"

namespace lepton {

// --- requests ---
std::string Server::Impl::Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

bool Server::Impl::Authorized(const Headers& headers) const {
  auto it = headers.find("authorization");
  if (it == headers.end()) return false;
  const std::string& v = it->second;
  static const std::string kBearer = "Bearer ";
  if (v.size() <= kBearer.size() || Lower(v.substr(0, kBearer.size())) != "bearer ") return false;
  // Digests have equal lengths whatever the token's, and are compared in constant time.
  const std::string d = Sha256(v.substr(kBearer.size()));
  return CRYPTO_memcmp(d.data(), token_digest_.data(), d.size()) == 0;
}

void Server::Impl::RequireToken(const Headers& headers) const {
  if (!Authorized(headers))
    throw HttpError{401, "this endpoint needs 'Authorization: Bearer <token>'"};
}

// A request from a socket: its body inflated when compressed (Content-Encoding), the reply
// compressed when the client accepts it (Accept-Encoding) and it is worth it.
Reply Server::Impl::HandleHttp(http::Request& req) {
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
    if (coding != http::Coding::kIdentity && http::WorthCompressing(r.body)) {
      r.body = http::Compress(r.body, coding);
      r.headers["Content-Encoding"] = http::CodingName(coding);
      r.headers["Vary"] = "Accept-Encoding";
    }
  }
  return r;
}

Reply Server::Impl::Dispatch(const std::string& method, const std::string& path, const Query& query,
                             const std::string& body, const Headers& headers,
                             const Client& client) {
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
const char* Server::Impl::EndpointKind(const std::vector<std::string>& p) {
  if (p.size() == 1 && p[0] == "metrics") return "metrics";
  if (!p.empty() && p[0] == "ui") return "ui";
  if (p.size() < 2 || p[0] != "v2") return p.empty() ? "server" : "other";
  if (p[1] == "health") return "health";
  if (p[1] == "models") return p.back() == "infer" ? "infer" : "model";
  if (p[1] == "repository") return "repository";
  if (p[1] == "lepton") return p.size() == 5 && p[4] == "feedback" ? "feedback" : "management";
  return "other";
}

void Server::Impl::CountHttp(const std::vector<std::string>& parts, int status, double seconds) {
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
std::string Server::Impl::AliasMetricsText(const std::vector<Entry>& entries) {
  std::ostringstream unloadable, failures, unreachable;
  for (const auto& e : entries) {
    const DeploymentStatus st = e.deployment->Status();
    if (!st.alias) continue;
    const std::string labels = "{model=\"" + PrometheusEscape(st.model) + "\",alias=\"" +
                               PrometheusEscape(*st.alias) + "\"}";
    unloadable << "lepton_alias_target_unloadable" << labels << ' '
               << (st.alias_target_failed ? 1 : 0) << '\n';
    failures << "lepton_alias_follow_failures_total" << labels << ' ' << st.alias_follow_failures
             << '\n';
    unreachable << "lepton_registry_unreachable" << labels << ' '
                << (st.registry_unreachable ? 1 : 0) << '\n';
  }
  return "# HELP lepton_alias_target_unloadable 1 while a followed alias points to a version "
         "that cannot be loaded (the previous version keeps serving).\n"
         "# TYPE lepton_alias_target_unloadable gauge\n" +
         unloadable.str() +
         "# HELP lepton_alias_follow_failures_total Failed attempts to load a followed alias's "
         "target.\n"
         "# TYPE lepton_alias_follow_failures_total counter\n" +
         failures.str() +
         "# HELP lepton_registry_unreachable 1 while the registry cannot be read to follow the "
         "alias (the loaded versions keep serving).\n"
         "# TYPE lepton_registry_unreachable gauge\n" +
         unreachable.str();
}

std::string Server::Impl::HttpMetricsText() const {
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
void Server::Impl::Method(const std::string& got, const char* want, const char* allow) {
  if (got != want) {
    const std::string methods = allow ? allow : want;
    throw HttpError{405, "use " + methods + " here", methods};
  }
}

Reply Server::Impl::Route(const std::string& method, const std::string& path,
                          const std::vector<std::string>& p, const Query& query,
                          const std::string& body, const Headers& headers, const Client& client) {
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
    r.body = RenderPrometheus(all) + AliasMetricsText(entries) + HttpMetricsText() +
             (grpc_ ? grpc_->MetricsText() : std::string()) + ProcessMetricsText();
    r.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8";
    return r;
  }
  if (n == 0 && !ui_files_.empty()) {
    Method(method, "GET");
    Reply r;
    r.status = 308;
    r.headers["Location"] = "/ui/";
    return r;
  }
  if (n >= 1 && p[0] == "ui") return UiRoute(method, p);
  if (n == 0 || p[0] != "v2") throw HttpError{404, "no such endpoint: " + path};
  if (n == 1) {
    Method(method, "GET");
    return JsonReply(
        200, {{"name", "lepton"},
              {"version", LEPTON_VERSION_STRING},
              {"extensions", {"binary_tensor_data", "model_repository", "statistics", "lepton"}}});
  }
  if (p[1] == "health" && n == 3) {
    Method(method, "GET");
    if (p[2] == "live") return JsonReply(200, {{"live", true}});
    if (p[2] == "ready") {
      const bool ready = running_ && AllReady();
      return JsonReply(ready ? 200 : 503, {{"ready", ready}});
    }
  }
  if (p[1] == "models" && n == 3 && p[2] == "stats") {
    Method(method, "GET");
    return StatisticsRoute(std::nullopt, std::nullopt, headers);
  }
  if (p[1] == "models" && n >= 3) return ModelRoute(method, p, body, headers, client);
  if (p[1] == "repository") return RepositoryRoute(method, p, body, headers);
  if (p[1] == "lepton") return LeptonRoute(method, p, query, body, headers, client);
  throw HttpError{404, "no such endpoint: " + path};
}

bool Server::Impl::AllReady() const {
  std::vector<Entry> entries;
  {
    std::shared_lock<std::shared_mutex> r(models_mu_);
    for (const auto& [k, e] : models_) entries.push_back(e);
  }
  for (const auto& e : entries) {
    const auto st = e.deployment->Status();
    const bool any = std::any_of(st.versions.begin(), st.versions.end(),
                                 [](const ServableStats& s) { return s.health == Health::kReady; });
    if (!any) return false;
  }
  return true;
}

}  // namespace lepton
