#include "lepton/runtime/remote.h"

#include <ATen/ATen.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cstring>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>

#include "lepton/common/dtypes.h"
#include "lepton/common/errors.h"
#include "lepton/observe/events.h"
#include "lepton/protocol/oip.h"
#include "lepton/runtime/tensor_types.h"

namespace lepton {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using json = nlohmann::json;

struct Endpoint {
  std::string host, port, prefix;
};

Endpoint ParseUrl(const std::string& url) {
  const std::string scheme = "http://";
  if (url.rfind("https://", 0) == 0) {
    throw InvalidArgument("remote version " + url +
                          ": https is not spoken; reach it through a local proxy or over http");
  }
  if (url.rfind(scheme, 0) != 0) {
    throw InvalidArgument("a remote version's url must start with http://, got '" + url + "'");
  }
  std::string rest = url.substr(scheme.size());
  Endpoint e;
  const size_t slash = rest.find('/');
  if (slash != std::string::npos) {
    e.prefix = rest.substr(slash);
    rest = rest.substr(0, slash);
    while (!e.prefix.empty() && e.prefix.back() == '/') e.prefix.pop_back();
  }
  const size_t colon = rest.rfind(':');
  if (colon != std::string::npos && rest.find(']') == std::string::npos) {
    e.host = rest.substr(0, colon);
    e.port = rest.substr(colon + 1);
  } else {
    e.host = rest;
    e.port = "80";
  }
  if (e.host.empty() || e.port.empty() ||
      e.port.find_first_not_of("0123456789") != std::string::npos) {
    throw InvalidArgument("a remote version's url must be http://HOST:PORT, got '" + url + "'");
  }
  return e;
}

// One keep-alive connection with its own event loop, used by one request at a time.
struct Connection {
  asio::io_context ioc;
  beast::tcp_stream stream{ioc};
  beast::flat_buffer buffer;
  bool reused = false;
};

// Runs the loop until `done` or the deadline; false (with the socket closed) at the deadline.
bool RunUntil(Connection& c, const bool& done, Clock::time_point deadline) {
  c.ioc.restart();
  while (!done && !c.ioc.stopped()) {
    if (c.ioc.run_one_until(deadline) == 0 && Clock::now() >= deadline) break;
  }
  if (done) return true;
  beast::error_code ignored;
  c.stream.socket().close(ignored);
  c.ioc.restart();
  c.ioc.run();  // the cancelled operation's handler
  return false;
}

struct Reply {
  unsigned status = 0;
  std::string body;
  std::optional<size_t> json_length;
};

enum class Outcome { kAnswered, kNotReached, kLost, kTimedOut };

class RemoteTarget final : public ForwardTarget {
 public:
  RemoteTarget(std::string model, std::string label, RemoteOptions o)
      : model_(std::move(model)),
        label_(std::move(label)),
        options_(std::move(o)),
        endpoint_(ParseUrl(options_.url)) {
    who_ = label_ + " (" + options_.model +
           (options_.version.empty() ? "" : ":" + options_.version) + " at " + options_.url + ")";
    model_path_ = endpoint_.prefix + "/v2/models/" + options_.model +
                  (options_.version.empty() ? "" : "/versions/" + options_.version);
  }

  const std::string& who() const { return who_; }

  // The model's metadata, after checking it is ready; LoadError when the endpoint says no.
  json Metadata() {
    const auto deadline =
        Clock::now() + DeadlineIn(options_.connect_timeout_s + options_.timeout_s);
    Reply ready = Call(http::verb::get, model_path_ + "/ready", "", {}, deadline);
    if (ready.status != 200) {
      throw LoadError(who_ + " is not ready: HTTP " + std::to_string(ready.status) + " " +
                      ErrorText(ready));
    }
    Reply meta = Call(http::verb::get, model_path_, "", {}, deadline);
    if (meta.status != 200) {
      throw LoadError(who_ + " has no metadata: HTTP " + std::to_string(meta.status) + " " +
                      ErrorText(meta));
    }
    json j = json::parse(meta.body, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("inputs") || !j["inputs"].is_array()) {
      throw LoadError(who_ + " answered its metadata with something that is not the protocol's");
    }
    return j;
  }

  void SetInputs(std::vector<std::string> names) { input_names_ = std::move(names); }

  RunResult Forward(const Tensors& inputs, const StringTensors* strings,
                    std::optional<Clock::time_point> deadline) override {
    const auto start = Clock::now();
    const Clock::time_point until = deadline ? *deadline : start + DeadlineIn(options_.timeout_s);
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (start < ejected_until_) {
        throw BackendUnavailable(who_ + " is ejected after " + std::to_string(consecutive_) +
                                 " failures in a row (" + last_failure_ + ")");
      }
    }
    std::string body;
    std::optional<size_t> json_length;
    Encode(inputs, strings, body, json_length);
    std::vector<std::pair<std::string, std::string>> extra;
    if (json_length)
      extra.emplace_back("Inference-Header-Content-Length", std::to_string(*json_length));
    Reply reply;
    try {
      reply = Call(http::verb::post, model_path_ + "/infer", body, extra, until);
    } catch (const Timeout&) {
      throw;
    } catch (const BackendUnavailable& e) {
      Failed(e.what());
      throw;
    }
    Succeeded();
    if (reply.status != 200) {
      const std::string text = ErrorText(reply);
      const std::string msg = who_ + " answered HTTP " + std::to_string(reply.status) + ": " + text;
      // An endpoint that cannot serve now fails this version, as a worker that is down does.
      if (reply.status == 502 || reply.status == 503) throw BackendUnavailable(msg);
      if (reply.status == 408) throw Timeout(msg);
      // lepton's own statuses and summaries (the error table); any other server's 5xx is taken
      // for its model failing.
      const std::optional<ErrorCode> code = ErrorCodeOfHttp(static_cast<int>(reply.status), text);
      ThrowErrorOf(code                  ? *code
                   : reply.status >= 500 ? ErrorCode::kModel
                                         : ErrorCode::kInternal,
                   msg);
    }
    RunResult r;
    Decode(reply, r);
    return r;
  }

  void Describe(ServableStats& stats) const override {
    stats.placement = "remote";
    std::lock_guard<std::mutex> lk(mu_);
    if (Clock::now() < ejected_until_ && stats.health == Health::kReady) {
      stats.health = Health::kFailed;
    }
  }

  void Stop() override {
    std::lock_guard<std::mutex> lk(mu_);
    idle_.clear();
  }

 private:
  static std::string ErrorText(const Reply& r) {
    json j = json::parse(r.body, nullptr, false);
    if (j.is_object() && j.contains("error") && j["error"].is_string()) {
      return j["error"].get<std::string>();
    }
    return r.body.substr(0, 200);
  }

  void Failed(const std::string& why) {
    std::lock_guard<std::mutex> lk(mu_);
    last_failure_ = why;
    if (++consecutive_ >= options_.eject_after && options_.eject_after > 0) {
      const bool was = Clock::now() < ejected_until_;
      ejected_until_ = Clock::now() + DeadlineIn(options_.eject_s);
      if (!was) {
        EmitEvent("error", "remote_ejected", model_, label_,
                  who_ + " is ejected for " + SecondsText(options_.eject_s) + " after " +
                      std::to_string(consecutive_) + " failures in a row: " + why);
      }
    }
  }

  void Succeeded() {
    std::lock_guard<std::mutex> lk(mu_);
    consecutive_ = 0;
  }

  std::unique_ptr<Connection> Take() {
    std::lock_guard<std::mutex> lk(mu_);
    if (idle_.empty()) return nullptr;
    auto c = std::move(idle_.back());
    idle_.pop_back();
    return c;
  }

  void Give(std::unique_ptr<Connection> c) {
    std::lock_guard<std::mutex> lk(mu_);
    if (static_cast<int>(idle_.size()) < options_.max_connections) {
      c->reused = true;
      idle_.push_back(std::move(c));
    }
  }

  // One HTTP exchange, tried again (on a new connection) while it never reached the endpoint.
  Reply Call(http::verb verb, const std::string& target, const std::string& body,
             const std::vector<std::pair<std::string, std::string>>& extra,
             Clock::time_point deadline) {
    http::request<http::string_body> req{verb, target, 11};
    req.set(http::field::host, endpoint_.host + ":" + endpoint_.port);
    req.set(http::field::user_agent, "lepton");
    for (const auto& [k, v] : options_.headers) req.set(k, v);
    for (const auto& [k, v] : extra) req.set(k, v);
    if (verb == http::verb::post) {
      req.set(http::field::content_type,
              extra.empty() ? "application/json" : "application/octet-stream");
      req.body() = body;
    }
    req.keep_alive(true);
    req.prepare_payload();
    std::string last;
    for (int attempt = 0; attempt <= options_.retries; ++attempt) {
      std::unique_ptr<Connection> c = Take();
      Reply reply;
      const Outcome o = Exchange(c, req, deadline, reply, last);
      if (o == Outcome::kAnswered) return reply;
      if (o == Outcome::kTimedOut) {
        throw Timeout(who_ + " did not answer before the deadline");
      }
      if (o == Outcome::kLost) {
        throw BackendUnavailable(who_ + " went away while answering: " + last);
      }
      if (Clock::now() >= deadline) throw Timeout(who_ + " could not be reached in time: " + last);
    }
    throw BackendUnavailable(who_ + " cannot be reached: " + last);
  }

  Outcome Exchange(std::unique_ptr<Connection>& c, http::request<http::string_body>& req,
                   Clock::time_point deadline, Reply& reply, std::string& why) {
    if (!c) {
      c = std::make_unique<Connection>();
      bool done = false;
      beast::error_code ec;
      tcp::resolver resolver(c->ioc);
      tcp::resolver::results_type found;
      resolver.async_resolve(endpoint_.host, endpoint_.port,
                             [&](beast::error_code e, tcp::resolver::results_type r) {
                               ec = e;
                               found = std::move(r);
                               done = true;
                             });
      const auto connect_by =
          std::min(deadline, Clock::now() + DeadlineIn(options_.connect_timeout_s));
      if (!RunUntil(*c, done, connect_by) || ec) {
        why = ec ? "cannot resolve " + endpoint_.host + ": " + ec.message()
                 : "resolving " + endpoint_.host + " took too long";
        return Clock::now() >= deadline ? Outcome::kTimedOut : Outcome::kNotReached;
      }
      done = false;
      c->stream.async_connect(found, [&](beast::error_code e, const tcp::endpoint&) {
        ec = e;
        done = true;
      });
      if (!RunUntil(*c, done, connect_by) || ec) {
        why = ec ? "cannot connect: " + ec.message() : "connecting took too long";
        return Clock::now() >= deadline ? Outcome::kTimedOut : Outcome::kNotReached;
      }
      c->stream.socket().set_option(tcp::no_delay(true), ec);
    }
    bool done = false;
    beast::error_code ec;
    http::async_write(c->stream, req, [&](beast::error_code e, size_t) {
      ec = e;
      done = true;
    });
    if (!RunUntil(*c, done, deadline)) return Outcome::kTimedOut;
    if (ec) {
      why = "sending failed: " + ec.message();
      // A kept-alive connection the endpoint had closed: the request never reached it.
      return c->reused ? Outcome::kNotReached : Outcome::kLost;
    }
    http::response_parser<http::string_body> parser;
    parser.body_limit(size_t{1} << 31);
    done = false;
    bool any = false;
    http::async_read_header(c->stream, c->buffer, parser, [&](beast::error_code e, size_t n) {
      ec = e;
      any = n > 0;
      done = true;
    });
    if (!RunUntil(*c, done, deadline)) return Outcome::kTimedOut;
    if (!ec) {
      done = false;
      http::async_read(c->stream, c->buffer, parser, [&](beast::error_code e, size_t) {
        ec = e;
        done = true;
      });
      if (!RunUntil(*c, done, deadline)) return Outcome::kTimedOut;
    }
    if (ec) {
      why = "reading the answer failed: " + ec.message();
      // Closed before a byte of the answer on a kept-alive connection: never reached.
      return c->reused && !any && ec == http::error::end_of_stream ? Outcome::kNotReached
                                                                   : Outcome::kLost;
    }
    auto res = parser.release();
    reply.status = res.result_int();
    auto h = res.find("Inference-Header-Content-Length");
    if (h != res.end()) {
      try {
        reply.json_length = std::stoul(std::string(h->value()));
      } catch (const std::exception&) {
        throw Error(who_ + " sent a bad Inference-Header-Content-Length");
      }
    }
    reply.body = std::move(res.body());
    if (res.keep_alive()) Give(std::move(c));
    return Outcome::kAnswered;
  }

  void Encode(const Tensors& inputs, const StringTensors* strings, std::string& body,
              std::optional<size_t>& json_length) const {
    if (input_names_.size() < inputs.size()) {
      throw InvalidArgument(who_ + " takes " + std::to_string(input_names_.size()) +
                            " inputs, got " + std::to_string(inputs.size()));
    }
    json j;
    j["inputs"] = json::array();
    std::string binary;
    for (size_t i = 0; i < inputs.size(); ++i) {
      json in;
      in["name"] = input_names_[i];
      const StringTensor* st = nullptr;
      if (strings) {
        auto it = strings->find(i);
        if (it != strings->end()) st = &it->second;
      }
      if (st) {
        in["datatype"] = "BYTES";
        in["shape"] = st->shape;
        if (options_.binary) {
          std::string data;
          for (const auto& v : st->values) oip::AppendBytesElement(data, v);
          in["parameters"] = {{"binary_data_size", data.size()}};
          binary += data;
        } else {
          in["data"] = st->values;
        }
        j["inputs"].push_back(std::move(in));
        continue;
      }
      const at::Tensor t = inputs[i].contiguous();
      const std::optional<DType> d = DTypeOf(t.scalar_type());
      if (!d || !*InfoOf(*d).wire) {
        throw InvalidArgument(who_ + ": a " + DTypeName(t.scalar_type()) +
                              " input has no datatype in the protocol");
      }
      in["datatype"] = InfoOf(*d).wire;
      in["shape"] = t.sizes().vec();
      if (options_.binary) {
        in["parameters"] = {{"binary_data_size", t.nbytes()}};
        binary.append(static_cast<const char*>(t.data_ptr()), t.nbytes());
      } else if (t.scalar_type() == at::kBool) {
        const at::Tensor f = t.flatten();
        std::vector<bool> v(f.data_ptr<bool>(), f.data_ptr<bool>() + f.numel());
        in["data"] = v;
      } else if (at::isFloatingType(t.scalar_type())) {
        const at::Tensor f = t.to(at::kDouble).flatten();
        in["data"] = std::vector<double>(f.data_ptr<double>(), f.data_ptr<double>() + f.numel());
      } else {
        const at::Tensor f = t.to(at::kLong).flatten();
        in["data"] = std::vector<int64_t>(f.data_ptr<int64_t>(), f.data_ptr<int64_t>() + f.numel());
      }
      j["inputs"].push_back(std::move(in));
    }
    if (options_.binary) j["parameters"] = {{"binary_data_output", true}};
    body = j.dump();
    if (options_.binary) {
      json_length = body.size();
      body += binary;
    }
  }

  void Decode(const Reply& reply, RunResult& r) const {
    const size_t json_len = reply.json_length.value_or(reply.body.size());
    if (json_len > reply.body.size()) throw Error(who_ + " sent a truncated answer");
    json j = json::parse(reply.body.begin(), reply.body.begin() + json_len, nullptr, false);
    if (j.is_discarded() || !j.contains("outputs") || !j["outputs"].is_array()) {
      throw Error(who_ + " answered with something that is not the protocol's");
    }
    size_t offset = json_len;
    for (const auto& out : j["outputs"]) {
      const std::string datatype = out.value("datatype", "");
      std::vector<int64_t> shape = out.value("shape", std::vector<int64_t>{});
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      const bool bin = out.contains("parameters") && out["parameters"].is_object() &&
                       out["parameters"].contains("binary_data_size");
      if (datatype == "BYTES") {
        StringTensor st{shape, {}};
        if (bin) {
          const size_t size = out["parameters"]["binary_data_size"].get<size_t>();
          if (offset + size > reply.body.size()) throw Error(who_ + " sent a truncated answer");
          for (auto v :
               oip::SplitBytesElements(std::string_view(reply.body).substr(offset, size), n, who_))
            st.values.emplace_back(v);
          offset += size;
        } else {
          st.values = out.value("data", std::vector<std::string>{});
        }
        r.strings[r.outputs.size()] = std::move(st);
        r.outputs.emplace_back();
        continue;
      }
      const DTypeInfo* info = DTypeOnWire(datatype);
      if (!info) throw Error(who_ + " answered an output of datatype '" + datatype + "'");
      at::Tensor t = at::empty(shape, at::TensorOptions().dtype(ScalarTypeOf(info->type)));
      if (bin) {
        const size_t size = out["parameters"]["binary_data_size"].get<size_t>();
        if (size != t.nbytes() || offset + size > reply.body.size()) {
          throw Error(who_ + " sent binary data that does not fit its output's shape");
        }
        std::memcpy(t.data_ptr(), reply.body.data() + offset, size);
        offset += size;
      } else {
        json data = out.value("data", json::array());
        std::vector<double> flat;
        std::function<void(const json&)> walk = [&](const json& x) {
          if (x.is_array()) {
            for (const auto& e : x) walk(e);
          } else if (x.is_boolean()) {
            flat.push_back(x.get<bool>() ? 1 : 0);
          } else if (x.is_number()) {
            flat.push_back(x.get<double>());
          } else {
            throw Error(who_ + " answered a non-numeric element");
          }
        };
        walk(data);
        if (static_cast<int64_t>(flat.size()) != n) {
          throw Error(who_ + " answered data that does not fit its output's shape");
        }
        t = at::tensor(flat, at::kDouble).reshape(shape).to(ScalarTypeOf(info->type));
      }
      r.outputs.push_back(std::move(t));
    }
  }

  const std::string model_, label_;
  const RemoteOptions options_;
  const Endpoint endpoint_;
  std::string who_, model_path_;
  std::vector<std::string> input_names_;
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Connection>> idle_;
  int consecutive_ = 0;
  std::string last_failure_;
  Clock::time_point ejected_until_{};
};

}  // namespace

std::shared_ptr<Servable> StartRemote(const std::string& deployment_model, const std::string& label,
                                      const RemoteOptions& remote, const ServableOptions& options) {
  if (remote.model.empty()) throw InvalidArgument("remote version '" + label + "' needs a model");
  auto target = std::make_shared<RemoteTarget>(deployment_model, label, remote);
  json meta;
  try {
    meta = target->Metadata();
  } catch (const LoadError&) {
    throw;
  } catch (const std::exception& e) {
    throw LoadError(target->who() + " cannot be reached: " + e.what());
  }
  ForwardSignature f;
  Signature sig;
  bool typed = true;
  for (const auto& in : meta["inputs"]) {
    const std::string name = in.value("name", "");
    const std::string datatype = in.value("datatype", "");
    f.names.push_back(name);
    f.strings.push_back(datatype == "BYTES");
    const DTypeInfo* info = DTypeOnWire(datatype);
    if (!info || name.empty()) {
      typed = false;
      continue;
    }
    sig.inputs.push_back(TensorSpec{name, info->name, in.value("shape", std::vector<int64_t>{})});
  }
  if (f.names.empty()) {
    throw LoadError(target->who() +
                    " lists no inputs in its metadata: a request needs their names (register the "
                    "model there with a signature)");
  }
  f.required = f.names.size();
  target->SetInputs(f.names);
  std::optional<Signature> signature;
  if (typed && !sig.inputs.empty()) signature = std::move(sig);
  const std::string version = meta.contains("versions") && meta["versions"].is_array() &&
                                      !meta["versions"].empty() && remote.version.empty()
                                  ? meta["versions"][0].dump()
                                  : remote.version;
  return Servable::Attach(
      deployment_model, label,
      "remote:" + remote.url + "/" + remote.model + (version.empty() ? "" : ":" + version),
      std::move(signature), options, std::move(f), target);
}

}  // namespace lepton
