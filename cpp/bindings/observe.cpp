
#include <pybind11/stl.h>

#include "bindings.h"
#include "lepton/common/errors.h"
#include "lepton/observe/events.h"

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
}

}  // namespace lepton::bindings
