// lepton's own endpoints: aliases, rollback, policies, feedback, statistics and events.
#include "lepton/registry/registry_json.h"
#include "server_impl.h"

namespace lepton {

// /v2/lepton/...
Reply Server::Impl::LeptonRoute(const std::string& method, const std::vector<std::string>& p,
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
    OnlyFields(req, {"request_id", "reward", "version"});
    const auto id = Field<std::string>(req, "request_id", "a string");
    if (!req.contains("reward") || !req["reward"].is_number()) {
      throw InvalidArgument("'reward' must be a number");
    }
    // The client's address (not its port, which changes with each connection).
    const std::string address = client.peer.substr(0, client.peer.rfind(':'));
    const std::string source = std::string("http ") + (address.empty() ? "(in-process)" : address) +
                               (authorized ? " with the token" : " without the token");
    // `version` (the answer's model_version) lets a replica that did not answer the request take
    // its reward for a policy the replicas share.
    entry.deployment->Feedback(id, req["reward"].get<double>(), source,
                               OptionalField<std::string>(req, "version", "a string"));
    return JsonReply(200, {{"accepted", true}, {"request_id", id}});
  }
  RequireToken(headers);
  std::optional<Registry::ActingAs> acting;
  if (const auto actor = ActorOf(headers, client)) acting.emplace(*actor);
  if (n >= 4 && p[2] == "registry") return RegistryRoute(method, p, query);
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
    SharePolicy(model, body, "http " + client.peer.substr(0, client.peer.rfind(':')));
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

Reply Server::Impl::RegistryRoute(const std::string& method, const std::vector<std::string>& p,
                                  const Query& query) {
  const size_t n = p.size();
  if (p[3] != "models" || !(n == 4 || (n == 6 && (p[5] == "versions" || p[5] == "history")))) {
    throw HttpError{404, "no such registry endpoint"};
  }
  Method(method, "GET");
  json out = json::array();
  if (n == 4) {
    for (const auto& m : registry_->Models()) out.push_back(ModelSummaryJson(m));
  } else if (p[5] == "versions") {
    for (const auto& v : registry_->Versions(p[4])) out.push_back(ModelVersionJson(v));
  } else {
    int64_t limit = 0;
    if (query.count("limit")) {
      try {
        size_t used = 0;
        limit = std::stoll(query.at("limit"), &used);
        if (used != query.at("limit").size()) throw std::invalid_argument("trailing");
      } catch (const std::exception&) {
        throw InvalidArgument("'limit' must be an integer");
      }
    }
    for (const auto& e : registry_->History(p[4], limit)) out.push_back(AuditEntryJson(e));
  }
  return JsonReply(200, out);
}

std::optional<std::string> Server::Impl::ActorOf(const Headers& headers, const Client& client) {
  auto it = headers.find("x-lepton-actor");
  if (it == headers.end()) return std::nullopt;
  const std::string& name = it->second;
  constexpr size_t kMaxActor = 64;
  if (name.empty() || name.size() > kMaxActor) {
    throw InvalidArgument("X-Lepton-Actor must name who acts in 1 to " + std::to_string(kMaxActor) +
                          " bytes");
  }
  for (unsigned char c : name) {
    if (c < 0x20 || c == 0x7f)
      throw InvalidArgument("X-Lepton-Actor must not hold control characters");
  }
  const std::string address = client.peer.substr(0, client.peer.rfind(':'));
  return name + " (http " + (address.empty() ? "in-process" : address) + ")";
}

json Server::Impl::PolicyJson(const Entry& e) const {
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
json Server::Impl::ModelStats(const std::string& model, bool full) const {
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

}  // namespace lepton
