#include <pybind11/functional.h>
#include <pybind11/stl.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "bindings.h"
#include "lepton/common/errors.h"
#include "lepton/observe/metrics_json.h"
#include "lepton/policy/policy_config.h"
#include "lepton/runtime/deployment.h"
#include "lepton/runtime/deployment_json.h"

namespace py = pybind11;
using py::arg;

namespace lepton::bindings {
namespace {

using Release = py::call_guard<py::gil_scoped_release>;

// The options' JSON specification (DeploymentOptionsFromJson) plus the example inputs, which are
// tensors rather than JSON.
// A budget object given by the caller (shared by several deployments) overrides the JSON's.
DeploymentOptions MakeOptions(const std::string& options_json,
                              std::vector<at::Tensor> example_inputs,
                              std::shared_ptr<MemoryBudget> budget) {
  DeploymentOptions o = DeploymentOptionsFromJson(options_json);
  o.servable.example_inputs = std::move(example_inputs);
  if (budget) o.memory_budget = std::move(budget);
  return o;
}

// Python's strings, or bytes where they are not UTF-8.
py::list StringValues(const StringTensor& s) {
  py::list out;
  for (const auto& v : s.values) {
    PyObject* text = PyUnicode_DecodeUTF8(v.data(), static_cast<Py_ssize_t>(v.size()), nullptr);
    if (text) {
      out.append(py::reinterpret_steal<py::object>(text));
    } else {
      PyErr_Clear();
      out.append(py::bytes(v));
    }
  }
  return out;
}

// What Deployment.predict returns: the core's answer, and whether the inputs were numpy arrays
// (the outputs then are too).
struct Answer {
  Prediction p;
  bool numpy = false;
};

py::list Outputs(const Answer& a) {
  py::list outs;
  for (const auto& t : a.p.outputs) {
    if (!t.defined()) {
      outs.append(py::none());
      continue;
    }
    py::object o = py::cast(t);
    outs.append(a.numpy ? o.attr("numpy")() : o);
  }
  for (const auto& [i, s] : a.p.strings) {
    if (i >= outs.size()) continue;
    py::list values = StringValues(s);
    outs[i] = a.numpy ? py::module_::import("numpy").attr("array")(values, py::arg("dtype") = "O")
                      : py::object(values);
  }
  return outs;
}

py::object VersionOf(const Answer& a) {
  if (a.p.versions.size() == 1 && a.p.policy != "ensemble") return py::str(a.p.versions[0]);
  return py::cast(a.p.versions);
}

}  // namespace

void BindEngine(py::module_& m) {
  py::class_<FixedPolicy, Policy, std::shared_ptr<FixedPolicy>>(m, "FixedPolicy")
      .def_property_readonly("version", &FixedPolicy::version);

  py::class_<EnsemblePolicy, Policy, std::shared_ptr<EnsemblePolicy>>(m, "EnsemblePolicy")
      .def_property_readonly("versions", &EnsemblePolicy::versions)
      .def_property_readonly("weights", &EnsemblePolicy::weights);

  py::class_<Answer>(m, "Prediction",
                     "The answer to one request, and which version gave it and why.")
      .def_property_readonly("outputs", &Outputs,
                             "Every output, as tensors (numpy arrays when the inputs were numpy), "
                             "and as lists of ``str`` for a model that returns ``List[str]`` (a "
                             "numpy array of objects in numpy mode; an element that is not UTF-8 "
                             "comes as ``bytes``).")
      .def_property_readonly(
          "output",
          [](const Answer& a) -> py::object {
            py::list outs = Outputs(a);
            if (outs.size() == 1) return outs[0];
            return py::tuple(outs);
          },
          "The model's output: one tensor (or array), or a tuple for multi-output models.")
      .def_property_readonly("version", &VersionOf,
                             "The version that answered; for an ensemble, the members whose "
                             "outputs were combined.")
      .def_property_readonly(
          "versions", [](const Answer& a) { return a.p.versions; },
          "Every version whose output is in the answer.")
      .def_property_readonly(
          "skipped", [](const Answer& a) { return a.p.skipped; },
          "Ensemble members left out after an error.")
      .def_property_readonly(
          "policy", [](const Answer& a) { return a.p.policy; },
          "The policy that routed the request.")
      .def_property_readonly(
          "route", [](const Answer& a) { return a.p.route.str(); }, "Why these versions answered.")
      .def_property_readonly(
          "request_id", [](const Answer& a) { return a.p.request_id.str(); },
          "The request's id, for feedback.")
      .def_property_readonly(
          "cold_start", [](const Answer& a) { return a.p.cold_start; },
          "Whether the request waited for its version to load (under a memory budget).")
      .def_property_readonly(
          "latency", [](const Answer& a) { return a.p.latency_s; }, "Seconds from call to answer.")
      .def_property_readonly(
          "queue_time", [](const Answer& a) { return a.p.queue_s; },
          "Seconds spent waiting in a queue.")
      .def_property_readonly(
          "compute_time", [](const Answer& a) { return a.p.compute_s; },
          "Seconds of model compute.")
      .def("__repr__", [](const Answer& a) {
        char ms[32];
        std::snprintf(ms, sizeof(ms), "%.3f", a.p.latency_s * 1e3);
        return "Prediction(version=" + py::repr(VersionOf(a)).cast<std::string>() +
               ", route=" + py::repr(py::str(a.p.route.str())).cast<std::string>() +
               ", request_id=" + py::repr(py::str(a.p.request_id.str())).cast<std::string>() +
               ", latency=" + ms + " ms)";
      });

  // Destroying a deployment drains its versions, whose workers may need the GIL to release the
  // caller's tensors: it must not hold the GIL while it waits.
  struct ReleaseGilDelete {
    void operator()(Deployment* d) const {
      py::gil_scoped_release release;
      delete d;
    }
  };
  py::class_<MemoryBudget, std::shared_ptr<MemoryBudget>>(m, "MemoryBudget")
      .def(py::init([](const py::object& size, const std::optional<std::string>& eviction) {
             if (py::isinstance<py::bool_>(size) ||
                 !(py::isinstance<py::str>(size) || py::isinstance<py::int_>(size))) {
               throw InvalidArgument(
                   "a memory budget is a number of bytes or a size such as "
                   "'512MB'");
             }
             return MemoryBudget::Make(py::str(size), eviction);
           }),
           arg("size"), arg("eviction") = std::nullopt)
      .def_property_readonly("eviction",
                             [](const MemoryBudget& b) { return EvictionName(b.eviction()); })
      .def_property_readonly("limit", &MemoryBudget::limit)
      .def("stats", [](const MemoryBudget& b) {
        const MemoryBudgetStats s = b.stats();
        return py::dict(py::arg("limit_bytes") = s.limit, py::arg("used_bytes") = s.used,
                        py::arg("peak_bytes") = s.peak, py::arg("evictions") = s.evictions,
                        py::arg("waits") = s.waits, py::arg("exhausted") = s.exhausted,
                        py::arg("versions") = s.items, py::arg("buffers_reused") = s.buffers_reused,
                        py::arg("buffers_kept_bytes") = s.buffers_kept_bytes);
      });
  m.def("parse_byte_size", &ParseByteSize, arg("text"));

  py::class_<Deployment, std::unique_ptr<Deployment, ReleaseGilDelete>>(m, "Deployment")
      .def(py::init([](std::shared_ptr<Registry> registry, const std::string& model,
                       std::vector<std::string> versions, const std::optional<std::string>& alias,
                       const std::string& options_json, std::vector<at::Tensor> example_inputs,
                       std::optional<std::shared_ptr<MemoryBudget>> budget) {
             DeploymentOptions o =
                 MakeOptions(options_json, std::move(example_inputs), budget.value_or(nullptr));
             py::gil_scoped_release release;
             if (alias) {
               if (!versions.empty()) {
                 throw InvalidArgument("give versions or alias, not both");
               }
               return std::unique_ptr<Deployment, ReleaseGilDelete>(
                   Deployment::FollowAlias(std::move(registry), model, *alias, std::move(o))
                       .release());
             }
             return std::unique_ptr<Deployment, ReleaseGilDelete>(
                 new Deployment(std::move(registry), model, std::move(versions), std::move(o)));
           }),
           arg("registry"), arg("model"), arg("versions"), arg("alias"), arg("options") = "{}",
           arg("example_inputs") = std::vector<at::Tensor>{}, arg("memory_budget") = std::nullopt)
      .def(py::init([](const std::string& model,
                       std::vector<std::pair<std::string, std::string>> files,
                       const std::string& options_json, std::vector<at::Tensor> example_inputs) {
             DeploymentOptions o = MakeOptions(options_json, std::move(example_inputs), nullptr);
             py::gil_scoped_release release;
             return std::unique_ptr<Deployment, ReleaseGilDelete>(
                 new Deployment(model, std::move(files), std::move(o)));
           }),
           arg("model"), arg("files"), arg("options") = "{}",
           arg("example_inputs") = std::vector<at::Tensor>{})
      .def(
          "predict",
          // String inputs come in `strings` by position ({position: (shape, values)}), with any
          // tensor in their place in `inputs`.
          [](Deployment& d, std::vector<at::Tensor> inputs, std::optional<std::string> version,
             std::optional<std::string> key,
             std::optional<std::map<std::string, std::string>> headers,
             std::optional<double> timeout_s, std::optional<int> priority,
             std::map<size_t, std::pair<std::vector<int64_t>, std::vector<std::string>>> strings,
             bool numpy) {
            PredictOptions o;
            if (!strings.empty()) {
              auto text = std::make_shared<StringTensors>();
              for (auto& [i, s] : strings) {
                if (i >= inputs.size()) throw InvalidArgument("a string input past the last input");
                inputs[i] = at::Tensor();
                (*text)[i] = StringTensor{std::move(s.first), std::move(s.second)};
              }
              o.strings = std::move(text);
            }
            o.context.version = std::move(version);
            o.context.key = std::move(key);
            if (headers) o.context.headers = std::move(*headers);
            o.timeout_s = timeout_s;
            o.priority = priority;
            py::gil_scoped_release release;
            return Answer{d.Predict(inputs, o), numpy};
          },
          arg("inputs"), arg("version"), arg("key"), arg("headers"), arg("timeout"),
          arg("priority"),
          arg("strings") =
              std::map<size_t, std::pair<std::vector<int64_t>, std::vector<std::string>>>{},
          arg("numpy") = false)
      // One tensor and no options: the common call, without converting six empty arguments.
      .def(
          "predict_tensor",
          [](Deployment& d, const at::Tensor& x) {
            const Tensors inputs{x};
            py::gil_scoped_release release;
            return Answer{d.Predict(inputs, PredictOptions{}), false};
          },
          arg("x"))
      .def("add", &Deployment::Add, arg("version"), arg("policy"), Release())
      .def("remove", &Deployment::Remove, arg("version"), arg("policy"), Release())
      .def("swap", &Deployment::Swap, arg("old"), arg("new"), Release())
      .def("set_policy", &Deployment::SetPolicy, arg("policy"), Release())
      .def("pin", &Deployment::Pin, arg("version"), Release())
      .def("unpin", &Deployment::Unpin, arg("version"), Release())
      .def("refresh_versions", &Deployment::RefreshVersions, Release())
      .def(
          "set_combiner",
          [](Deployment& d, py::object fn) {
            if (fn.is_none()) {
              d.SetCombiner(nullptr);
              return;
            }
            // The callable is shared by worker threads; it is released under the GIL.
            auto holder =
                std::shared_ptr<py::object>(new py::object(std::move(fn)), [](py::object* p) {
                  py::gil_scoped_acquire gil;
                  delete p;
                });
            d.SetCombiner([holder](const std::vector<Tensors>& outputs,
                                   const std::vector<double>& weights) {
              py::gil_scoped_acquire gil;
              try {
                py::object result = (*holder)(outputs, weights);
                if (THPVariable_Check(result.ptr())) return Tensors{result.cast<at::Tensor>()};
                return result.cast<Tensors>();
              } catch (py::error_already_set& e) {
                throw ModelError(std::string("the ensemble combiner raised: ") + e.what());
              } catch (const py::cast_error&) {
                throw ModelError("the ensemble combiner must return a tensor or a list of tensors");
              }
            });
          },
          arg("combiner"))
      .def_property_readonly("policy", &Deployment::policy)
      .def_property_readonly("versions", &Deployment::versions)
      .def_property_readonly("model", &Deployment::model)
      // What a deployment reports is JSON text in the form the HTTP API gives (deployment_json.h).
      .def("status",
           [](const Deployment& d) {
             py::gil_scoped_release release;
             return StatusJson(d.Status()).dump();
           })
      .def("feedback", &Deployment::Feedback, arg("request_id"), arg("reward"), arg("source") = "",
           arg("version") = std::nullopt, Release())
      .def("tick_policy", &Deployment::TickPolicy, Release())
      .def("shadows",
           [](const Deployment& d) {
             py::gil_scoped_release release;
             return ShadowsJson(d.Shadows()).dump();
           })
      .def("events",
           [](const Deployment& d) {
             py::gil_scoped_release release;
             return EventsJson(d.Events()).dump();
           })
      .def("metrics",
           [](const Deployment& d) {
             py::gil_scoped_release release;
             return MetricsJson(d.Metrics()).dump();
           })
      .def("prometheus",
           [](const Deployment& d) {
             py::gil_scoped_release release;
             return RenderPrometheus({d.Metrics()});
           })
      .def("close", &Deployment::Close, Release());
}

}  // namespace lepton::bindings
