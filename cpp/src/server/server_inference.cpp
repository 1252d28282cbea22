// The Open Inference Protocol's endpoints: model metadata, readiness, inference and the repository.
#include <ATen/ATen.h>

#include "lepton/runtime/deployment_spec.h"
#include "server_impl.h"

namespace lepton {
namespace {

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

StringTensor ToStrings(const oip::WireTensor& w) {
  StringTensor s;
  s.shape = w.shape;
  const auto elements = oip::SplitBytesElements(w.data, w.elements(), "input '" + w.name + "'");
  s.values.assign(elements.begin(), elements.end());
  return s;
}

oip::WireTensor FromStrings(std::string name, const StringTensor& s) {
  oip::WireTensor w;
  w.name = std::move(name);
  w.datatype = DType::kString;
  w.shape = s.shape;
  size_t size = 0;
  for (const auto& v : s.values) size += 4 + v.size();
  w.data.reserve(size);
  for (const auto& v : s.values) oip::AppendBytesElement(w.data, v);
  return w;
}

}  // namespace

// /v2/models/{m}[/versions/{v}][/ready|/infer|/stats|/config]
Reply Server::Impl::ModelRoute(const std::string& method, const std::vector<std::string>& p,
                               const std::string& body, const Headers& headers,
                               const Client& client) {
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
  if (action == "stats") return StatisticsRoute(model, version, headers);
  if (action == "config") return ConfigRoute(model, version);
  if (action == "ready") {
    bool ready = false;
    const Entry e = Find(model);
    const auto st = e.deployment->Status();
    const std::string want = version ? ResolveVersion(model, *version) : st.primary;
    bool live = false;
    for (size_t i = 0; i < st.versions.size(); ++i) {
      if (st.versions[i].version != want) continue;
      live = true;
      ready = st.versions[i].health == Health::kReady;
      if (st.memory && i < st.slots.size()) {
        // Under a memory budget a version that is not loaded answers all the same: its first
        // request loads it.
        const Residency r = st.slots[i].residency;
        ready = r != Residency::kDraining && r != Residency::kFailed;
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
                     // Parameter values are strings, numbers or booleans: lists are comma-joined.
                     {"lepton_aliases", [&] {
                        std::string joined;
                        for (const auto& a : mv.aliases) joined += (joined.empty() ? "" : ",") + a;
                        return joined;
                      }()}};
  if (st.alias) j["parameters"]["lepton_alias"] = *st.alias;
  return JsonReply(200, j);
}

// Triton's model configuration (GET /v2/models/{m}[/versions/{v}]/config), in its JSON form,
// from the version's signature and the deployment's batching. With batching on, max_batch_size
// is its row limit and dims leave out the batch dimension; with it off, max_batch_size is 0 and
// dims are the whole shape. Types are Triton's names (TYPE_FP32, ..., TYPE_STRING for BYTES).
Reply Server::Impl::ConfigRoute(const std::string& model,
                                const std::optional<std::string>& version) {
  const Entry e = Find(model);
  const DeploymentStatus st = e.deployment->Status();
  const std::string label = version ? ResolveVersion(model, *version) : st.primary;
  if (std::none_of(st.versions.begin(), st.versions.end(),
                   [&](const ServableStats& v) { return v.version == label; })) {
    registry_->Get(model + ":" + label);  // 404 when the version does not exist at all
    throw NotFound("version '" + label + "' of " + model + " is not deployed");
  }
  const ModelVersion mv = registry_->Get(model + ":" + label);
  const int batch = options_.deployment.servable.max_batch_size;
  auto tensors = [&](const std::vector<TensorSpec>& specs) {
    json a = json::array();
    for (const auto& s : specs) {
      std::vector<int64_t> dims = s.shape;
      if (batch > 1 && !dims.empty() && dims.front() == -1) dims.erase(dims.begin());
      const std::string wire = OipType(s.dtype);
      a.push_back({{"name", s.name},
                   {"data_type", "TYPE_" + (wire == "BYTES" ? std::string("STRING") : wire)},
                   {"dims", dims}});
    }
    return a;
  };
  json versions = json::array();
  for (const auto& v : st.versions) versions.push_back(v.version);
  json j = {{"name", model},
            {"platform", "pytorch_torchscript"},
            {"backend", "lepton"},
            {"max_batch_size", batch > 1 ? batch : 0},
            {"input", mv.signature ? tensors(mv.signature->inputs) : json::array()},
            {"output", mv.signature ? tensors(mv.signature->outputs) : json::array()},
            {"version_policy", {{"specific", {{"versions", versions}}}}},
            {"parameters",
             {{"lepton_version", {{"string_value", label}}},
              {"lepton_policy", {{"string_value", st.policy}}}}}};
  if (batch > 1) {
    j["dynamic_batching"] = {
        {"max_queue_delay_microseconds",
         static_cast<int64_t>(options_.deployment.servable.max_queue_delay_s * 1e6)}};
  }
  return JsonReply(200, j);
}

Reply Server::Impl::Infer(const std::string& model, const std::optional<std::string>& version,
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
  std::optional<std::string> key;
  if (auto k = headers.find("x-lepton-key"); k != headers.end()) key = k->second;
  Inferred done = InferDecoded(*deployment, model, version, req, key, std::nullopt);
  oip::InferResponse& resp = done.response;
  for (auto& out : resp.outputs) out.binary = oip::WantsBinary(req, out.name);
  Reply r;
  std::optional<size_t> header_length;
  r.body = oip::EncodeInferResponse(resp, &header_length);
  if (header_length) {
    r.headers["Content-Type"] = "application/octet-stream";
    r.headers["Inference-Header-Content-Length"] = std::to_string(*header_length);
  } else {
    r.headers["Content-Type"] = "application/json";
  }
  r.headers["X-Lepton-Request-Id"] = done.request_id;
  r.headers["X-Lepton-Version"] = HeaderSafe(resp.version);
  r.headers["X-Lepton-Route"] = HeaderSafe(done.route);
  return r;
}

// A decoded request, from HTTP or gRPC, through the deployment: the routing key from the
// request's parameters, else the transport's (X-Lepton-Key); the deadline from the request's
// parameters, else the transport's, else the server's default.
Server::Impl::Inferred Server::Impl::InferDecoded(Deployment& deployment, const std::string& model,
                                                  const std::optional<std::string>& version,
                                                  oip::InferRequest& req,
                                                  const std::optional<std::string>& key,
                                                  std::optional<double> deadline_s) {
  if (req.model_name && *req.model_name != model) {
    throw InvalidArgument("the body names model '" + *req.model_name + "' but the URL names '" +
                          model + "'");
  }
  Tensors inputs;
  inputs.reserve(req.inputs.size());
  PredictOptions o;
  o.input_names.reserve(req.inputs.size());
  std::shared_ptr<StringTensors> strings;
  for (auto& w : req.inputs) {
    o.input_names.push_back(w.name);
    if (w.datatype == DType::kString) {
      if (!strings) strings = std::make_shared<StringTensors>();
      strings->emplace(inputs.size(), ToStrings(w));
      inputs.emplace_back();
      continue;
    }
    inputs.push_back(ToTensor(std::move(w)));
  }
  o.strings = std::move(strings);
  if (version) o.context.version = ResolveVersion(model, *version);
  o.context.key = req.key ? req.key : key;
  o.timeout_s = req.timeout_s ? req.timeout_s : deadline_s;
  if (!o.timeout_s && options_.request_timeout_s > 0) o.timeout_s = options_.request_timeout_s;
  o.priority = req.priority;
  Prediction pred = deployment.Predict(inputs, o);
  // Output names: the signature's when it has them, else output_0, output_1, ...
  const std::vector<std::string> names = OutputNames(model, pred.versions.front());
  Inferred done;
  oip::InferResponse& resp = done.response;
  resp.model = model;
  resp.version = pred.versions.size() == 1 ? pred.versions[0] : JoinVersions(pred.versions);
  // Every response has an id: the request's, else lepton's request id.
  resp.id = req.id.empty() ? pred.request_id.str() : req.id;
  resp.parameters = PredictionParameters(pred);
  for (size_t i = 0; i < pred.outputs.size(); ++i) {
    std::string name = i < names.size() ? names[i] : "output_" + std::to_string(i);
    if (!req.outputs.empty() &&
        std::find(req.outputs.begin(), req.outputs.end(), name) == req.outputs.end()) {
      continue;
    }
    if (auto text = pred.strings.find(i); text != pred.strings.end()) {
      resp.outputs.push_back(FromStrings(std::move(name), text->second));
    } else {
      resp.outputs.push_back(FromTensor(std::move(name), pred.outputs[i]));
    }
  }
  for (const auto& want : req.outputs) {
    if (std::none_of(resp.outputs.begin(), resp.outputs.end(),
                     [&](const oip::WireTensor& t) { return t.name == want; })) {
      throw InvalidArgument("the model has no output named '" + want + "'");
    }
  }
  done.request_id = pred.request_id.str();
  done.route = pred.route.str();
  return done;
}

// Decoding a large JSON body holds several times its size for a while: a padded copy, the
// parser's tape (16 bytes a number) and the tensors (up to 8 bytes a number). That is reserved
// against the transport's budget first, so that the budget bounds what requests cost, not only
// what they buffer. Small bodies use a parser kept per thread and are not counted.
void Server::Impl::ReserveForDecoding(const std::string& body, const Client& client) {
  if (!client.reserve || body.size() <= (1 << 20)) return;
  const size_t values = static_cast<size_t>(std::count(body.begin(), body.end(), ',')) + 1;
  if (!client.reserve(body.size() + values * (16 + 8))) {
    throw HttpError{503,
                    "the server is holding as much memory for other requests as it may; retry "
                    "shortly"};
  }
}

std::vector<std::string> Server::Impl::OutputNames(const std::string& model,
                                                   const std::string& version) {
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

std::string Server::Impl::JoinVersions(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : "+") + x;
  return s;
}

// /v2/repository/index, /v2/repository/models/{m}/load|unload
// Under a memory budget a served model stays served and loads its versions on demand: loading
// pins a version (the one named by parameters.version, else the primary) and unloading unpins it.
// Nothing for a model that is not served, or one served without a budget.
std::optional<Reply> Server::Impl::PinRoute(const std::string& model, bool load,
                                            const std::string& body) {
  const std::shared_ptr<Deployment> d = Served(model);
  if (!d || !d->memory_budget()) return std::nullopt;
  const json req = ParseBody(body, true);
  OnlyFields(req, {"parameters"});
  std::string version = d->primary();
  if (req.contains("parameters")) {
    const json& params = req["parameters"];
    if (!params.is_object()) throw InvalidArgument("'parameters' must be an object");
    // Triton's client sends unload_dependents with every unload; there are no dependents here.
    OnlyFields(params, {"version", "unload_dependents"});
    if (auto v = OptionalField<std::string>(params, "version", "a string")) {
      version = ResolveVersion(model, *v);
    }
  }
  if (load) {
    d->Pin(version);
  } else {
    d->Unpin(version);
  }
  return JsonReply(200, {{"name", model},
                         {"version", version},
                         {"state", load ? "READY" : "UNAVAILABLE"},
                         {"lepton_pinned", load}});
}

Reply Server::Impl::RepositoryRoute(const std::string& method, const std::vector<std::string>& p,
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
      // canary, a split, an ensemble) shows both, each with its own state. Under a memory budget
      // every version is listed: Triton's state (LOADING, UNLOADING, or UNAVAILABLE for one that
      // is not loaded now but loads on its first request) and lepton's own.
      const DeploymentStatus st = Find(m.name).deployment->Status();
      for (size_t i = 0; i < st.versions.size(); ++i) {
        const ServableStats& v = st.versions[i];
        const SlotStats slot = i < st.slots.size() ? st.slots[i] : SlotStats{};
        const bool ready = v.health == Health::kReady;
        if (only_ready && !ready) continue;
        std::string state = ready ? "READY" : "UNAVAILABLE";
        if (slot.residency == Residency::kLoading) state = "LOADING";
        if (slot.residency == Residency::kDraining) state = "UNLOADING";
        json x = {{"name", m.name},
                  {"version", v.version},
                  {"state", state},
                  {"lepton_state", ResidencyName(slot.residency)},
                  {"lepton_pinned", slot.pinned}};
        if (!ready) {
          const bool on_demand = st.memory && (slot.residency == Residency::kRegistered ||
                                               slot.residency == Residency::kEvicted);
          x["reason"] = on_demand ? std::string(ResidencyName(slot.residency)) +
                                        "; loads on its first request"
                        : slot.residency == Residency::kFailed ? "its last load failed"
                                                               : std::string(HealthName(v.health));
        }
        out.push_back(std::move(x));
      }
    }
    return JsonReply(200, out);
  }
  if (p.size() == 5 && p[2] == "models" && (p[4] == "load" || p[4] == "unload")) {
    const std::string& model = p[3];
    if (auto pinned = PinRoute(model, p[4] == "load", body)) return *pinned;
    if (p[4] == "unload") {
      Unload(model);
      return JsonReply(200, {{"name", model}, {"state", "UNAVAILABLE"}});
    }
    const json req = ParseBody(body, true);
    OnlyFields(req, {"parameters"});
    if (!req.contains("parameters") || req["parameters"].is_null()) {
      // Loading a model that is served, with nothing to change, leaves it as it is (Triton's
      // clients load before use); a load that asks for another configuration is a conflict.
      if (auto served = Served(model)) {
        return JsonReply(200,
                         {{"name", model}, {"state", "READY"}, {"version", served->primary()}});
      }
    }
    ServedModel m{model, {}, {}, "", ""};
    if (req.contains("parameters")) {
      const json& params = req["parameters"];
      if (!params.is_object()) throw InvalidArgument("'parameters' must be an object");
      OnlyFields(params,
                 {"alias", "versions", "policy", "placement", "resources", "worker", "remotes"});
      m.placement = PlacementSpecOf(params);
      m.alias = OptionalField<std::string>(params, "alias", "a string");
      m.versions = OptionalField<std::vector<std::string>>(params, "versions", "a list of strings")
                       .value_or(std::vector<std::string>{});
      if (params.contains("policy")) m.policy = params["policy"].dump();
    }
    Load(m);
    return JsonReply(
        200, {{"name", model}, {"state", "READY"}, {"version", Find(model).deployment->primary()}});
  }
  throw HttpError{404, "no such repository endpoint"};
}

}  // namespace lepton
