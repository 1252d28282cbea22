#include "lepton/server/server.h"

#include <pybind11/stl.h>

#include "bindings.h"
#include "lepton/common/errors.h"
#include "lepton/observe/events.h"
#include "lepton/policy/policy_config.h"

namespace py = pybind11;
using py::arg;

namespace lepton::bindings {
namespace {

py::dict EventDict(const Event& e) {
  py::dict d;
  d["seq"] = e.seq;
  d["time"] = e.time;
  d["level"] = e.level;
  d["kind"] = e.kind;
  d["model"] = e.model;
  d["version"] = e.version;
  d["message"] = e.message;
  d["details"] = e.details;
  d["json"] = e.ToJson();
  return d;
}

py::list EventList(const std::vector<Event>& events) {
  py::list out;
  for (const auto& e : events) out.append(EventDict(e));
  return out;
}

}  // namespace

void BindObserve(py::module_& m) {
  m.def(
      "events_since",
      [](int64_t after, double wait_s, size_t max) {
        std::vector<Event> events;
        {
          py::gil_scoped_release release;
          events = EventLog::Global().Since(after, wait_s, max);
        }
        return EventList(events);
      },
      arg("after"), arg("wait_s") = 0.0, arg("max") = 1000);
  m.def(
      "recent_events",
      [](size_t n, const std::string& model) {
        return EventList(EventLog::Global().Recent(n, model));
      },
      arg("n"), arg("model") = "");
  m.def("last_event_seq", [] { return EventLog::Global().last_seq(); });
  m.def(
      "set_event_file", [](const std::string& path) { EventLog::Global().SetFile(path); },
      arg("path"));
  m.def(
      "emit_event",
      [](const std::string& level, const std::string& kind, const std::string& model,
         const std::string& version, const std::string& message,
         const std::string& details) { EmitEvent(level, kind, model, version, message, details); },
      arg("level"), arg("kind"), arg("model"), arg("version"), arg("message"),
      arg("details") = "{}");

  py::class_<ServedModel>(m, "ServedModel")
      .def(py::init([](std::string name, std::optional<std::string> alias,
                       std::vector<std::string> versions, std::string policy) {
             return ServedModel{std::move(name), std::move(alias), std::move(versions),
                                std::move(policy)};
           }),
           arg("name"), arg("alias") = py::none(), arg("versions") = std::vector<std::string>{},
           arg("policy") = "");

  py::class_<Server>(m, "Server")
      .def(py::init([](std::shared_ptr<Registry> registry, std::string host, int port,
                       std::string token, bool token_for_inference, size_t max_body_bytes,
                       double read_timeout_s, int http_threads, double request_timeout_s,
                       bool serve_all, std::vector<ServedModel> models, int threads,
                       int max_batch_size, double max_queue_delay_s, int max_queue, int io_threads,
                       double busy_poll_s, bool open_feedback, size_t max_buffered_bytes) {
             ServerOptions o;
             o.host = std::move(host);
             o.port = port;
             o.token = std::move(token);
             o.token_for_inference = token_for_inference;
             o.open_feedback = open_feedback;
             o.max_buffered_bytes = max_buffered_bytes;
             o.max_body_bytes = max_body_bytes;
             o.read_timeout_s = read_timeout_s;
             o.write_timeout_s = read_timeout_s;
             o.http_threads = http_threads;
             o.io_threads = io_threads;
             o.busy_poll_s = busy_poll_s;
             o.request_timeout_s = request_timeout_s;
             o.serve_all = serve_all;
             o.models = std::move(models);
             o.deployment.threads = threads;
             o.deployment.servable.max_batch_size = max_batch_size;
             o.deployment.servable.max_queue_delay_s = max_queue_delay_s;
             o.deployment.servable.max_queue = max_queue;
             return std::make_unique<Server>(std::move(registry), std::move(o));
           }),
           arg("registry"), arg("host"), arg("port"), arg("token"), arg("token_for_inference"),
           arg("max_body_bytes"), arg("read_timeout_s"), arg("http_threads"),
           arg("request_timeout_s"), arg("serve_all"), arg("models"), arg("threads"),
           arg("max_batch_size"), arg("max_queue_delay_s"), arg("max_queue"),
           arg("io_threads") = ServerOptions{}.io_threads,
           arg("busy_poll_s") = ServerOptions{}.busy_poll_s,
           arg("open_feedback") = ServerOptions{}.open_feedback,
           arg("max_buffered_bytes") = ServerOptions{}.max_buffered_bytes)
      .def("start", &Server::Start, py::call_guard<py::gil_scoped_release>())
      .def("stop", &Server::Stop, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("port", &Server::port)
      .def_property_readonly("host", &Server::host)
      .def_property_readonly("token", &Server::token)
      .def_property_readonly("models", &Server::models)
      .def(
          "handle",
          [](Server& s, const std::string& method, const std::string& path, const std::string& body,
             std::map<std::string, std::string> headers) {
            Server::Reply r;
            {
              py::gil_scoped_release release;
              r = s.Handle(method, path, body, headers);
            }
            return py::make_tuple(r.status, py::bytes(r.body), r.headers);
          },
          arg("method"), arg("path"), arg("body") = "",
          arg("headers") = std::map<std::string, std::string>{});
}

}  // namespace lepton::bindings
