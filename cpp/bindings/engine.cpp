#include <pybind11/functional.h>
#include <pybind11/stl.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <cmath>

#include "bindings.h"
#include "lepton/common/errors.h"
#include "lepton/observe/metrics.h"
#include "lepton/policy/policy_config.h"
#include "lepton/runtime/deployment.h"

namespace py = pybind11;
using py::arg;

namespace lepton::bindings {
namespace {

using Release = py::call_guard<py::gil_scoped_release>;

// The options' JSON specification (DeploymentOptionsFromJson) plus the example inputs, which are
// tensors rather than JSON.
DeploymentOptions MakeOptions(const std::string& options_json,
                              std::vector<at::Tensor> example_inputs) {
  DeploymentOptions o = DeploymentOptionsFromJson(options_json);
  o.servable.example_inputs = std::move(example_inputs);
  return o;
}

py::dict HistogramDict(const Histogram::Snapshot& h) {
  py::dict d;
  d["count"] = h.count;
  d["sum"] = h.sum;
  d["mean"] = h.count ? py::cast(h.sum / double(h.count)) : py::none();
  for (const auto& [name, q] : {std::pair{"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}}) {
    d[name] = h.count ? py::cast(h.Quantile(q)) : py::none();
  }
  py::list buckets;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.counts.size(); ++i) {
    cumulative += h.counts[i];
    const double le = i < h.bounds.size() ? h.bounds[i] : INFINITY;
    buckets.append(py::make_tuple(le, cumulative));
  }
  d["buckets"] = buckets;
  return d;
}

py::dict MetricsDict(const MetricsSnapshot& m) {
  py::list series;
  for (const auto& x : m.series) {
    py::dict d;
    d["model"] = x.key.model;
    d["version"] = x.key.version;
    d["alias"] = x.key.alias;
    d["policy"] = x.key.policy;
    d["requests"] = x.requests;
    d["succeeded"] = x.succeeded;
    d["failed"] = x.failed();
    py::dict f;
    for (size_t i = 0; i < kFailureReasons; ++i) {
      f[FailureReasonName(static_cast<FailureReason>(i))] = x.failures[i];
    }
    d["failures"] = f;
    d["queue_s"] = HistogramDict(x.queue);
    d["compute_s"] = HistogramDict(x.compute);
    d["total_s"] = HistogramDict(x.total);
    d["batch_rows"] = HistogramDict(x.batch);
    series.append(d);
  }
  py::list versions;
  for (const auto& g : m.versions) {
    py::dict d;
    d["model"] = g.model;
    d["version"] = g.version;
    d["health"] = g.health;
    d["threads"] = g.threads;
    d["in_flight"] = g.in_flight;
    d["queued"] = g.queued;
    d["weight_bytes"] = g.weight_bytes;
    d["anomalous"] = g.anomalous;
    versions.append(d);
  }
  py::dict out;
  out["series"] = series;
  out["versions"] = versions;
  return out;
}

py::dict StatsDict(const ServableStats& s) {
  py::dict d;
  d["version"] = s.version;
  d["health"] = HealthName(s.health);
  d["threads"] = s.threads;
  d["requests"] = s.requests;
  d["succeeded"] = s.succeeded;
  d["failed"] = s.failed;
  d["timed_out"] = s.timed_out;
  d["rejected"] = s.rejected;
  d["batches"] = s.batches;
  d["batched_rows"] = s.batched_rows;
  d["in_flight"] = s.in_flight;
  d["queued"] = s.queued;
  d["busy_seconds"] = s.busy_s;
  d["weight_bytes"] = s.weight_bytes;
  return d;
}

}  // namespace

void BindEngine(py::module_& m) {
  py::class_<FixedPolicy, Policy, std::shared_ptr<FixedPolicy>>(m, "FixedPolicy")
      .def_property_readonly("version", &FixedPolicy::version);

  py::class_<EnsemblePolicy, Policy, std::shared_ptr<EnsemblePolicy>>(m, "EnsemblePolicy")
      .def_property_readonly("versions", &EnsemblePolicy::versions)
      .def_property_readonly("weights", &EnsemblePolicy::weights);

  py::class_<Prediction>(m, "Prediction")
      .def_readonly("outputs", &Prediction::outputs)
      .def_readonly("versions", &Prediction::versions)
      .def_readonly("skipped", &Prediction::skipped)
      .def_readonly("policy", &Prediction::policy)
      .def_readonly("route", &Prediction::route)
      .def_readonly("request_id", &Prediction::request_id)
      .def_readonly("latency", &Prediction::latency_s)
      .def_readonly("queue_time", &Prediction::queue_s)
      .def_readonly("compute_time", &Prediction::compute_s);

  // Destroying a deployment drains its versions, whose workers may need the GIL to release the
  // caller's tensors: it must not hold the GIL while it waits.
  struct ReleaseGilDelete {
    void operator()(Deployment* d) const {
      py::gil_scoped_release release;
      delete d;
    }
  };
  py::class_<Deployment, std::unique_ptr<Deployment, ReleaseGilDelete>>(m, "Deployment")
      .def(py::init([](std::shared_ptr<Registry> registry, const std::string& model,
                       std::vector<std::string> versions, const std::optional<std::string>& alias,
                       const std::string& options_json, std::vector<at::Tensor> example_inputs) {
             DeploymentOptions o = MakeOptions(options_json, std::move(example_inputs));
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
           arg("example_inputs") = std::vector<at::Tensor>{})
      .def(py::init([](const std::string& model,
                       std::vector<std::pair<std::string, std::string>> files,
                       const std::string& options_json, std::vector<at::Tensor> example_inputs) {
             DeploymentOptions o = MakeOptions(options_json, std::move(example_inputs));
             py::gil_scoped_release release;
             return std::unique_ptr<Deployment, ReleaseGilDelete>(
                 new Deployment(model, std::move(files), std::move(o)));
           }),
           arg("model"), arg("files"), arg("options") = "{}",
           arg("example_inputs") = std::vector<at::Tensor>{})
      .def(
          "predict",
          [](Deployment& d, std::vector<at::Tensor> inputs, std::optional<std::string> version,
             std::optional<std::string> key,
             std::optional<std::map<std::string, std::string>> headers,
             std::optional<double> timeout_s, std::optional<int> priority) {
            PredictOptions o;
            o.context.version = std::move(version);
            o.context.key = std::move(key);
            if (headers) o.context.headers = std::move(*headers);
            o.timeout_s = timeout_s;
            o.priority = priority;
            py::gil_scoped_release release;
            return d.Predict(inputs, o);
          },
          arg("inputs"), arg("version"), arg("key"), arg("headers"), arg("timeout"),
          arg("priority"))
      .def("add", &Deployment::Add, arg("version"), arg("policy"), Release())
      .def("remove", &Deployment::Remove, arg("version"), arg("policy"), Release())
      .def("swap", &Deployment::Swap, arg("old"), arg("new"), Release())
      .def("set_policy", &Deployment::SetPolicy, arg("policy"), Release())
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
      .def("status",
           [](const Deployment& d) {
             DeploymentStatus s;
             {
               py::gil_scoped_release release;
               s = d.Status();
             }
             py::dict out;
             out["model"] = s.model;
             out["alias"] = s.alias;
             out["primary"] = s.primary;
             out["policy"] = s.policy;
             out["threads"] = s.threads;
             out["adaptive"] = s.adaptive;
             out["swaps"] = s.swaps;
             out["last_error"] = s.last_error;
             out["alias_target_failed"] = s.alias_target_failed;
             out["alias_follow_failures"] = s.alias_follow_failures;
             py::list versions;
             for (const auto& v : s.versions) versions.append(StatsDict(v));
             out["versions"] = versions;
             return out;
           })
      .def("feedback", &Deployment::Feedback, arg("request_id"), arg("reward"), arg("source") = "",
           Release())
      .def("tick_policy", &Deployment::TickPolicy, Release())
      .def("shadows",
           [](const Deployment& d) {
             std::vector<ShadowStats> stats;
             {
               py::gil_scoped_release release;
               stats = d.Shadows();
             }
             py::list out;
             for (const auto& s : stats) {
               py::dict x;
               x["primary"] = s.primary;
               x["mirror"] = s.mirror;
               x["compared"] = s.compared;
               x["failed"] = s.failed;
               x["dropped"] = s.dropped;
               x["max_abs_diff"] = s.max_abs_diff;
               x["mean_abs_diff"] = s.mean_abs_diff;
               x["argmax_agreement"] = s.argmax_agreement;
               x["kl_divergence"] = s.kl_divergence;
               out.append(x);
             }
             return out;
           })
      .def("events",
           [](const Deployment& d) {
             std::vector<AppliedEvent> events;
             {
               py::gil_scoped_release release;
               events = d.Events();
             }
             py::list out;
             for (const auto& a : events) {
               static const char* kKinds[] = {"promote", "rollback", "switch", "conclude"};
               py::dict x;
               x["kind"] = kKinds[static_cast<int>(a.event.kind)];
               x["action"] = a.event.action;
               x["from"] = a.event.from;
               x["to"] = a.event.to;
               x["reason"] = a.event.reason;
               x["evidence"] = a.event.evidence;
               x["time"] = a.event.time;
               x["policy"] = a.policy;
               x["alias"] = a.alias;
               x["note"] = a.note;
               out.append(x);
             }
             return out;
           })
      .def("metrics",
           [](const Deployment& d) {
             MetricsSnapshot m;
             {
               py::gil_scoped_release release;
               m = d.Metrics();
             }
             return MetricsDict(m);
           })
      .def("prometheus",
           [](const Deployment& d) {
             py::gil_scoped_release release;
             return RenderPrometheus({d.Metrics()});
           })
      .def("close", &Deployment::Close, Release());
}

}  // namespace lepton::bindings
