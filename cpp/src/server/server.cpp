#include "lepton/runtime/deployment_spec.h"
#include "server_impl.h"

namespace lepton {

Server::Impl::Impl(std::shared_ptr<Registry> registry, ServerOptions options)
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
  if (options_.grpc_port && (*options_.grpc_port < 0 || *options_.grpc_port > 65535)) {
    throw InvalidArgument("grpc_port must be in [0, 65535]");
  }
  LoadUi();
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

std::shared_ptr<Deployment> Server::Impl::Deploy(const ServedModel& m) {
  std::shared_ptr<const Policy> policy;
  if (!m.policy.empty()) policy = PolicyFromJson(m.policy);
  std::shared_ptr<Deployment> d;
  DeploymentOptions base = options_.deployment;
  if (!m.placement.empty()) ApplyPlacementJson(m.placement, base);
  if (m.alias) {
    DeploymentOptions o = base;
    o.all_versions = false;
    d = std::shared_ptr<Deployment>(Deployment::FollowAlias(registry_, m.name, *m.alias, o));
    if (policy) d->SetPolicy(policy);
  } else {
    DeploymentOptions o = base;
    std::vector<std::string> versions = m.versions;
    if (!versions.empty()) {
      o.all_versions = false;
    } else if (o.memory_budget) {
      // Under a memory budget every version of every model is served, loaded when asked for.
      o.all_versions = true;
    } else if (!o.all_versions) {
      const auto all = registry_->Versions(m.name);
      if (all.empty()) throw NotFound("model '" + m.name + "' has no versions");
      versions.push_back(all.back().version);
    }
    d = std::make_shared<Deployment>(registry_, m.name, versions, std::move(o));
    if (policy) d->SetPolicy(policy);
  }
  return d;
}

void Server::Impl::Load(ServedModel m) {
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

void Server::Impl::Unload(const std::string& name) {
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
std::shared_ptr<Deployment> Server::Impl::FindDeployment(const std::string& name) const {
  if (auto d = Served(name)) return d;
  return Find(name).deployment;
}

std::shared_ptr<Deployment> Server::Impl::Served(const std::string& name) const {
  std::shared_lock<std::shared_mutex> r(models_mu_);
  auto it = models_.find(name);
  return it == models_.end() ? nullptr : it->second.deployment;
}

Server::Impl::Entry Server::Impl::Find(const std::string& name) const {
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

std::vector<std::string> Server::Impl::Names() const {
  std::shared_lock<std::shared_mutex> r(models_mu_);
  std::vector<std::string> out;
  for (const auto& [n, e] : models_) out.push_back(n);
  return out;
}

// A version in a path is a label or an alias of the model.
std::string Server::Impl::ResolveVersion(const std::string& model, const std::string& v) const {
  const auto aliases = registry_->Aliases(model);
  auto it = aliases.find(v);
  if (it != aliases.end()) return it->second;
  return v;
}

// --- lifecycle ---
int Server::Impl::Start() {
  std::vector<ServedModel> wanted;
  std::map<std::string, ServedModel> overrides;
  for (const auto& m : options_.models) overrides[m.name] = m;
  if (options_.serve_all) {
    for (const auto& s : registry_->Models()) {
      if (s.version_count == 0) continue;
      auto it = overrides.find(s.name);
      wanted.push_back(it != overrides.end() ? it->second : ServedModel{s.name, {}, {}, "", ""});
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
  if (options_.grpc_port) {
    grpc_ = std::make_unique<GrpcFrontend>(*this);
    try {
      grpc_port_ = grpc_->Start();
    } catch (...) {
      grpc_.reset();
      http_.reset();
      CloseAll();
      throw;
    }
  }
  // Policies set through another replica's API are followed from the start.
  StartSharing();
  http_->Start();
  running_ = true;
  EmitEvent("info", "serve", "", "",
            "serving " + std::to_string(Names().size()) + " models on http://" + options_.host +
                ":" + std::to_string(port_) +
                (grpc_ ? " and gRPC on port " + std::to_string(grpc_port_) : std::string()));
  return port_;
}

void Server::Impl::Stop() {
  std::lock_guard<std::mutex> lk(stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  // Stops accepting; requests being handled finish and answer first.
  if (http_) http_->Stop();
  if (grpc_) grpc_->Stop();
  StopSharing();
  CloseAll();
  running_ = false;
  stop_cv_.notify_all();
  EmitEvent("info", "stop", "", "", "server stopped");
}

void Server::Impl::Wait() {
  std::unique_lock<std::mutex> lk(stop_mu_);
  stop_cv_.wait(lk, [&] { return stopped_; });
}

void Server::Impl::CloseAll() {
  std::map<std::string, Entry> all;
  {
    std::unique_lock<std::shared_mutex> w(models_mu_);
    all.swap(models_);
  }
  for (auto& [n, e] : all) e.deployment->Close();
}

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
int Server::grpc_port() const { return Live()->grpc_port_; }
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
