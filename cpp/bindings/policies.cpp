#include "lepton/policy/policies.h"

#include <pybind11/eigen.h>
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "lepton/common/errors.h"
#include "lepton/policy/policy_config.h"
#include "lepton/policy/weighting.h"

namespace py = pybind11;
using py::arg;

namespace lepton::bindings {
namespace {

weights::Loss ParseLoss(const std::string& s) {
  if (s == "mse") return weights::Loss::kMse;
  if (s == "logloss") return weights::Loss::kLogLoss;
  throw InvalidArgument("loss must be 'mse' or 'logloss', not '" + s + "'");
}

}  // namespace

void BindPolicies(py::module_& m) {
  py::class_<Policy, std::shared_ptr<Policy>>(m, "Policy")
      .def_property_readonly("name", &Policy::name)
      .def("describe", &Policy::Describe)
      .def("report", &Policy::Report, py::call_guard<py::gil_scoped_release>())
      .def(
          "select",
          [](const Policy& p, std::vector<std::string> versions, std::optional<std::string> key,
             std::optional<std::string> primary) {
            LiveVersions live;
            live.versions = std::move(versions);
            if (live.versions.empty()) throw InvalidArgument("versions must not be empty");
            live.primary = primary.value_or(live.versions.front());
            RequestContext r;
            r.key = std::move(key);
            py::gil_scoped_release release;
            Route route = p.Select(r, live);
            return std::make_pair(route.targets.empty() ? std::string() : route.targets[0].version,
                                  route.reason.str());
          },
          arg("versions"), arg("key"), arg("primary"))
      .def("validate", [](const Policy& p, std::vector<std::string> versions) {
        LiveVersions live;
        live.versions = std::move(versions);
        if (!live.versions.empty()) live.primary = live.versions.front();
        p.Validate(live);
      });

  py::class_<Guardrails>(m, "Guardrails")
      .def_readonly("max_error_rate_increase", &Guardrails::max_error_rate_increase)
      .def_readonly("latency_slack_s", &Guardrails::latency_slack_s)
      .def_readonly("max_latency_ratio", &Guardrails::max_latency_ratio)
      .def_readonly("min_requests", &Guardrails::min_requests)
      .def_readonly("window", &Guardrails::window);

  py::class_<WeightedPolicy, Policy, std::shared_ptr<WeightedPolicy>>(m, "WeightedPolicy");

  py::class_<CanaryPolicy, Policy, std::shared_ptr<CanaryPolicy>>(m, "CanaryPolicy")
      .def_property_readonly(
          "phase", [](const CanaryPolicy& p) { return CanaryPolicy::PhaseName(p.phase()); });

  py::class_<ShadowPolicy, Policy, std::shared_ptr<ShadowPolicy>>(m, "ShadowPolicy");

  py::class_<BanditPolicy, Policy, std::shared_ptr<BanditPolicy>>(m, "BanditPolicy")
      .def("feedback", &BanditPolicy::Feedback, arg("version"), arg("reward"))
      .def_property_readonly("state_key", &BanditPolicy::state_key);

  py::class_<LeastLoadedPolicy, Policy, std::shared_ptr<LeastLoadedPolicy>>(m, "LeastLoadedPolicy")
      .def("outstanding", &LeastLoadedPolicy::outstanding, arg("version"));

  py::class_<BalancedPolicy, Policy, std::shared_ptr<BalancedPolicy>>(m, "BalancedPolicy");

  py::class_<ABTestPolicy, Policy, std::shared_ptr<ABTestPolicy>>(m, "ABTestPolicy")
      .def("feedback", &ABTestPolicy::Feedback, arg("version"), arg("reward"))
      .def_property_readonly("winner", &ABTestPolicy::winner);

  py::class_<TimeBasedPolicy, Policy, std::shared_ptr<TimeBasedPolicy>>(m, "TimeBasedPolicy")
      .def("eligible", [](const TimeBasedPolicy& p, double now) {
        std::vector<std::pair<std::string, double>> out;
        for (const auto& t : p.Eligible(now)) out.emplace_back(t.version, t.weight);
        return out;
      });

  // Every policy is built from its JSON specification: the Python classes write it.
  m.def(
      "policy_from_json",
      [](const std::string& text, bool combiner) {
        return std::const_pointer_cast<Policy>(PolicyFromJson(text, {combiner}));
      },
      arg("text"), arg("combiner") = false);

  m.def(
      "seed", [](uint64_t seed) { SeedRandom(seed); }, arg("seed"),
      "Seeds the random draws of every policy (0: from the system again).");

  // --- weighting math ---
  py::module_ w = m.def_submodule("weights", "Weighting math on Eigen (pure functions).");
  using weights::Vector;
  w.def("performance_average", &weights::PerformanceAverage, arg("performance"), arg("weights"));
  w.def("time_based", &weights::TimeBased, arg("validity"), arg("cycle"));
  w.def("request_share", &weights::RequestShare, arg("counts"));
  w.def("resource_share", &weights::ResourceShare, arg("usage"));
  w.def("fuse", &weights::Fuse, arg("y1"), arg("y2"), arg("alpha"));
  w.def("normalize", &weights::Normalize, arg("weights"));
  w.def("softmax", &weights::Softmax, arg("scores"), arg("temperature"));
  w.def(
      "fit_ensemble_weights",
      [](std::vector<weights::Matrix> predictions, weights::Matrix targets, const std::string& loss,
         int max_iterations, double tolerance) {
        weights::FitResult r;
        {
          py::gil_scoped_release release;
          r = weights::FitEnsembleWeights(predictions, targets, ParseLoss(loss), max_iterations,
                                          tolerance);
        }
        py::dict d;
        d["weights"] = r.weights;
        d["loss"] = r.loss;
        d["member_loss"] = r.member_loss;
        d["iterations"] = r.iterations;
        d["gap"] = r.gap;
        return d;
      },
      arg("predictions"), arg("targets"), arg("loss"), arg("max_iterations"), arg("tolerance"));
  w.def(
      "allocate",
      [](weights::Matrix demands, Vector capacity, Vector value, std::optional<Vector> min_share,
         std::optional<Vector> max_share, std::vector<std::string> names) {
        weights::Allocation a =
            weights::Allocate(demands, capacity, value, min_share, max_share, names);
        py::dict d;
        d["shares"] = a.shares;
        d["objective"] = a.objective;
        d["usage"] = a.usage;
        d["binding"] = a.binding;
        return d;
      },
      arg("demands"), arg("capacity"), arg("value"), arg("min_share"), arg("max_share"),
      arg("resource_names"));
}

}  // namespace lepton::bindings
