#include "lepton/server/server_config.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "lepton/common/errors.h"
#include "lepton/common/files.h"
#include "lepton/common/json_fields.h"
#include "lepton/policy/policy_config.h"
#include "lepton/runtime/deployment_spec.h"

namespace lepton {
namespace {

using json = nlohmann::json;

json Parse(const std::string& text, const std::string& what) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) throw InvalidArgument(what + " is not valid JSON");
  if (!j.is_object()) throw InvalidArgument(what + " must hold a JSON object");
  return j;
}

// A served model's entry as an object: null (the latest version), "@alias", "version", or
// {"alias", "versions", "policy"}.
json ModelObject(const std::string& name, const json& spec) {
  if (spec.is_null()) return json::object();
  if (spec.is_string()) {
    const std::string s = spec.get<std::string>();
    if (!s.empty() && s[0] == '@') return json{{"alias", s.substr(1)}};
    return json{{"versions", json::array({s})}};
  }
  if (spec.is_object()) return spec;
  throw InvalidArgument("model '" + name + "': expected '@alias', a version or an object, got " +
                        spec.dump());
}

ServedModel ServedModelOf(const std::string& name, const json& spec) {
  const json j = ModelObject(name, spec);
  Fields f(j, "model '" + name + "'");
  ServedModel m;
  m.name = name;
  m.alias = f.maybe<std::string>("alias", "a string");
  if (f.has("versions")) {
    const json& v = f.raw("versions");
    m.versions = v.is_string() ? std::vector<std::string>{v.get<std::string>()}
                               : f.get<std::vector<std::string>>("versions", "a list of strings");
  }
  if (m.alias && !m.versions.empty()) {
    throw InvalidArgument("model '" + name + "': give an alias or versions, not both");
  }
  if (f.has("policy")) {
    const json& p = f.raw("policy");
    m.policy = p.is_string() ? p.get<std::string>() : p.dump();
    try {
      PolicyFromJson(m.policy);  // refused now, with the reason, rather than at start
    } catch (const InvalidArgument& e) {
      throw InvalidArgument("model '" + name + "': " + e.what());
    }
  }
  for (const char* k : {"placement", "resources", "worker", "remotes"}) f.has(k);  // known
  try {
    m.placement = PlacementSpecOf(j);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument("model '" + name + "': " + e.what());
  }
  return m;
}

double NonNegative(Fields& f, const std::string& k, double fallback) {
  const double v = f.get<double>(k, "a number", fallback);
  if (!std::isfinite(v) || v < 0) {
    throw InvalidArgument(f.where() + ": '" + k + "' must be a finite number >= 0");
  }
  return v;
}

int Positive(Fields& f, const std::string& k, int fallback) {
  const int64_t v = f.get<int64_t>(k, "an integer", fallback);
  if (v < 1 || v > 4096) throw InvalidArgument(f.where() + ": '" + k + "' must be in [1, 4096]");
  return static_cast<int>(v);
}

size_t Bytes(Fields& f, const std::string& k, size_t fallback) {
  const int64_t v = f.get<int64_t>(k, "an integer", static_cast<int64_t>(fallback));
  if (v < 1) throw InvalidArgument(f.where() + ": '" + k + "' must be >= 1");
  return static_cast<size_t>(v);
}

ServerOptions FromObject(const json& j) {
  ServerOptions o;
  Fields f(j, "the server configuration");
  o.host = f.get<std::string>("host", "a string", o.host);
  const int64_t port = f.get<int64_t>("port", "an integer", o.port);
  if (port < 0 || port > 65535) throw InvalidArgument("'port' must be in [0, 65535]");
  o.port = static_cast<int>(port);
  if (const auto grpc = f.maybe<int64_t>("grpc_port", "an integer")) {
    if (*grpc < 0 || *grpc > 65535) throw InvalidArgument("'grpc_port' must be in [0, 65535]");
    o.grpc_port = static_cast<int>(*grpc);
  }
  o.token = f.get<std::string>("token", "a string", o.token);
  o.token_for_inference = f.get<bool>("token_for_inference", "true or false", false);
  o.open_feedback = f.get<bool>("open_feedback", "true or false", false);
  o.max_body_bytes = Bytes(f, "max_body_bytes", o.max_body_bytes);
  o.max_buffered_bytes = Bytes(f, "max_buffered_bytes", o.max_buffered_bytes);
  o.read_timeout_s = NonNegative(f, "read_timeout", o.read_timeout_s);
  o.write_timeout_s = o.read_timeout_s;
  o.keep_alive_s = NonNegative(f, "keep_alive", o.keep_alive_s);
  o.request_timeout_s = NonNegative(f, "request_timeout", o.request_timeout_s);
  o.io_threads = Positive(f, "io_threads", o.io_threads);
  if (f.has("busy_poll_us")) o.busy_poll_s = NonNegative(f, "busy_poll_us", 0) * 1e-6;
  o.http_threads = Positive(f, "http_threads", o.http_threads);
  o.ui_dir = f.get<std::string>("ui_dir", "a string", o.ui_dir);
  o.serve_all = !f.get<bool>("only", "true or false", !o.serve_all);
  if (f.has("models")) {
    const json& models = f.raw("models");
    if (!models.is_object()) throw InvalidArgument("'models' must map model names to specs");
    for (const auto& [name, spec] : models.items()) o.models.push_back(ServedModelOf(name, spec));
  }
  ReadDeploymentOptions(f, o.deployment);
  return o;
}

}  // namespace

ServerOptions ServerOptionsFromJson(const std::string& json_text) {
  return FromObject(Parse(json_text, "the server configuration"));
}

ServerOptions LoadServerConfig(const std::string& path, const std::string& overrides) {
  json config = path.empty() ? json::object()
                             : Parse(ReadWholeFile(path, "the configuration file"),
                                     "the configuration file '" + path + "'");
  const json patch = Parse(overrides.empty() ? "{}" : overrides, "the overrides");
  for (const auto& [key, value] : patch.items()) {
    if (key != "models" || !value.is_object()) {
      config[key] = value;
      continue;
    }
    json& models = config["models"];
    if (models.is_null()) models = json::object();
    if (!models.is_object()) throw InvalidArgument("'models' must map model names to specs");
    for (const auto& [name, spec] : value.items()) {
      json merged = models.contains(name) ? ModelObject(name, models[name]) : json::object();
      const json fields = ModelObject(name, spec);  // kept alive: items() only refers to it
      for (const auto& [field, v] : fields.items()) {
        if (v.is_null()) {
          merged.erase(field);
        } else {
          merged[field] = v;
        }
      }
      models[name] = merged;
    }
  }
  return FromObject(config);
}

std::string ServerConfigDefaults() {
  const ServerOptions o;
  const DeploymentOptions& d = o.deployment;
  return json{{"host", o.host},
              {"port", o.port},
              {"grpc_port", nullptr},
              {"token_for_inference", o.token_for_inference},
              {"open_feedback", o.open_feedback},
              {"max_body_bytes", o.max_body_bytes},
              {"max_buffered_bytes", o.max_buffered_bytes},
              {"read_timeout", o.read_timeout_s},
              {"keep_alive", o.keep_alive_s},
              {"request_timeout", o.request_timeout_s},
              {"io_threads", o.io_threads},
              {"busy_poll_us", o.busy_poll_s * 1e6},
              {"http_threads", o.http_threads},
              {"only", !o.serve_all},
              {"ui_dir", o.ui_dir},
              {"threads", d.threads},
              {"max_batch_size", d.servable.max_batch_size},
              {"max_queue_delay_ms", d.servable.max_queue_delay_s * 1000},
              {"max_queue", d.servable.max_queue}}
      .dump();
}

}  // namespace lepton
