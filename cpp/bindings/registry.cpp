#include "lepton/registry/registry.h"

#include <pybind11/operators.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "lepton/common/process.h"
#include "lepton/registry/artifact_format.h"

namespace py = pybind11;
using py::arg;

namespace lepton::bindings {
namespace {

using Release = py::call_guard<py::gil_scoped_release>;

RegisterOptions MakeOptions(std::optional<std::string> version, std::string description,
                            std::map<std::string, std::string> tags,
                            std::map<std::string, double> metrics,
                            std::optional<std::string> parent, std::optional<Signature> signature,
                            std::string reason) {
  RegisterOptions o;
  o.version = std::move(version);
  o.description = std::move(description);
  o.tags = std::move(tags);
  o.metrics = std::move(metrics);
  o.parent = std::move(parent);
  o.signature = std::move(signature);
  o.reason = std::move(reason);
  return o;
}

}  // namespace

void BindRegistry(py::module_& m) {
  py::class_<TensorSpec>(m, "TensorSpec")
      .def(py::init<std::string, std::string, std::vector<int64_t>>(), arg("name"), arg("dtype"),
           arg("shape"))
      .def_readwrite("name", &TensorSpec::name)
      .def_readwrite("dtype", &TensorSpec::dtype)
      .def_readwrite("shape", &TensorSpec::shape)
      .def(py::self == py::self)
      .def("__repr__", [](const TensorSpec& t) {
        return "TensorSpec(name=" + py::repr(py::str(t.name)).cast<std::string>() +
               ", dtype=" + py::repr(py::str(t.dtype)).cast<std::string>() +
               ", shape=" + py::repr(py::cast(t.shape)).cast<std::string>() + ")";
      });

  py::class_<Signature>(m, "Signature")
      .def(py::init([](std::vector<TensorSpec> inputs, std::vector<TensorSpec> outputs) {
             Signature s{std::move(inputs), std::move(outputs)};
             ValidateSignature(s);
             return s;
           }),
           arg("inputs"), arg("outputs") = std::vector<TensorSpec>{})
      .def_readonly("inputs", &Signature::inputs)
      .def_readonly("outputs", &Signature::outputs)
      .def(py::self == py::self)
      .def("__repr__", [](const Signature& s) {
        return "Signature(inputs=" + py::repr(py::cast(s.inputs)).cast<std::string>() +
               ", outputs=" + py::repr(py::cast(s.outputs)).cast<std::string>() + ")";
      });

  py::class_<ModelVersion>(m, "ModelVersion")
      .def_readonly("model", &ModelVersion::model)
      .def_readonly("version", &ModelVersion::version)
      .def_readonly("seq", &ModelVersion::seq)
      .def_readonly("sha256", &ModelVersion::sha256)
      .def_readonly("size", &ModelVersion::size)
      .def_readonly("format", &ModelVersion::format)
      .def_readonly("created_at", &ModelVersion::created_at)
      .def_readonly("updated_at", &ModelVersion::updated_at)
      .def_readonly("description", &ModelVersion::description)
      .def_readonly("tags", &ModelVersion::tags)
      .def_readonly("metrics", &ModelVersion::metrics)
      .def_readonly("parent", &ModelVersion::parent)
      .def_readonly("aliases", &ModelVersion::aliases)
      .def_readonly("signature", &ModelVersion::signature)
      .def_property_readonly("ref", &ModelVersion::ref);

  py::class_<ModelSummary>(m, "ModelSummary")
      .def_readonly("name", &ModelSummary::name)
      .def_readonly("description", &ModelSummary::description)
      .def_readonly("created_at", &ModelSummary::created_at)
      .def_readonly("version_count", &ModelSummary::version_count)
      .def_readonly("latest", &ModelSummary::latest)
      .def_readonly("aliases", &ModelSummary::aliases);

  py::class_<AuditEntry>(m, "AuditEntry")
      .def_readonly("id", &AuditEntry::id)
      .def_readonly("time", &AuditEntry::time)
      .def_readonly("model", &AuditEntry::model)
      .def_readonly("actor", &AuditEntry::actor)
      .def_readonly("action", &AuditEntry::action)
      .def_readonly("version", &AuditEntry::version)
      .def_readonly("alias", &AuditEntry::alias)
      .def_readonly("from_version", &AuditEntry::from_version)
      .def_readonly("to_version", &AuditEntry::to_version)
      .def_readonly("reason", &AuditEntry::reason)
      .def_readonly("details", &AuditEntry::details);

  py::class_<VerifyProblem>(m, "VerifyProblem")
      .def_readonly("ref", &VerifyProblem::ref)
      .def_readonly("sha256", &VerifyProblem::sha256)
      .def_readonly("problem", &VerifyProblem::problem);

  py::class_<VerifyReport>(m, "VerifyReport")
      .def_readonly("versions_checked", &VerifyReport::versions_checked)
      .def_readonly("blobs_checked", &VerifyReport::blobs_checked)
      .def_readonly("problems", &VerifyReport::problems)
      .def_readonly("orphan_blobs", &VerifyReport::orphan_blobs)
      .def_property_readonly("ok", &VerifyReport::ok);

  py::class_<GcReport>(m, "GcReport")
      .def_readonly("deleted_versions", &GcReport::deleted_versions)
      .def_readonly("blobs_removed", &GcReport::blobs_removed)
      .def_readonly("bytes_freed", &GcReport::bytes_freed)
      .def_readonly("dry_run", &GcReport::dry_run);

  py::class_<Registry, std::shared_ptr<Registry>>(m, "Registry")
      .def(py::init(
               [](const std::string& root, const std::string& actor, const std::string& blob_root) {
                 Registry::Options options;
                 options.actor = actor;
                 options.format = TorchScriptFormat();
                 options.blob_root = blob_root;
                 return std::make_shared<Registry>(root, std::move(options));
               }),
           arg("root"), arg("actor") = "", arg("blob_root") = "", Release())
      .def_property_readonly("root", &Registry::root)
      .def_property_readonly("location", &Registry::location)
      .def_property_readonly("actor", &Registry::actor)
      .def("create_model", &Registry::CreateModel, arg("name"), arg("description"), arg("exist_ok"),
           Release())
      .def("set_model_description", &Registry::SetModelDescription, arg("name"), arg("description"),
           Release())
      .def(
          "register_file",
          [](Registry& r, const std::string& model, const std::string& path,
             std::optional<std::string> version, std::string description,
             std::map<std::string, std::string> tags, std::map<std::string, double> metrics,
             std::optional<std::string> parent, std::optional<Signature> signature,
             std::string reason) {
            const RegisterOptions o = MakeOptions(
                std::move(version), std::move(description), std::move(tags), std::move(metrics),
                std::move(parent), std::move(signature), std::move(reason));
            py::gil_scoped_release release;
            return r.RegisterFile(model, path, o);
          },
          arg("model"), arg("path"), arg("version"), arg("description"), arg("tags"),
          arg("metrics"), arg("parent"), arg("signature"), arg("reason"))
      .def(
          "register_bytes",
          [](Registry& r, const std::string& model, const py::bytes& data,
             std::optional<std::string> version, std::string description,
             std::map<std::string, std::string> tags, std::map<std::string, double> metrics,
             std::optional<std::string> parent, std::optional<Signature> signature,
             std::string reason) {
            const RegisterOptions o = MakeOptions(
                std::move(version), std::move(description), std::move(tags), std::move(metrics),
                std::move(parent), std::move(signature), std::move(reason));
            // The caller's bytes object stays alive for the call, so its buffer is used in place.
            char* buffer = nullptr;
            Py_ssize_t length = 0;
            if (PyBytes_AsStringAndSize(data.ptr(), &buffer, &length) != 0) {
              throw py::error_already_set();
            }
            py::gil_scoped_release release;
            return r.RegisterBytes(model, std::string_view(buffer, static_cast<size_t>(length)), o);
          },
          arg("model"), arg("data"), arg("version"), arg("description"), arg("tags"),
          arg("metrics"), arg("parent"), arg("signature"), arg("reason"))
      .def("get", &Registry::Get, arg("ref"), Release())
      .def("versions", &Registry::Versions, arg("model"), Release())
      .def("models", &Registry::Models, Release())
      .def("aliases", &Registry::Aliases, arg("model"), Release())
      .def(
          "read_artifact",
          [](const Registry& r, const std::string& ref) {
            std::string bytes;
            {
              py::gil_scoped_release release;
              bytes = r.ReadArtifact(ref);
            }
            return py::bytes(bytes);
          },
          arg("ref"))
      .def("artifact_path", &Registry::ArtifactPath, arg("ref"), Release())
      .def("set_alias", &Registry::SetAlias, arg("model"), arg("alias"), arg("version"),
           arg("expected"), arg("reason"), Release())
      .def("remove_alias", &Registry::RemoveAlias, arg("model"), arg("alias"), arg("reason"),
           Release())
      .def("rollback", &Registry::Rollback, arg("model"), arg("alias"), arg("reason"), Release())
      .def("history", &Registry::History, arg("model"), arg("limit"), Release())
      .def(
          "update",
          [](Registry& r, const std::string& ref,
             std::map<std::string, std::optional<std::string>> tags,
             std::map<std::string, std::optional<double>> metrics,
             std::optional<std::string> description, const std::string& reason) {
            MetadataUpdate u{std::move(tags), std::move(metrics), std::move(description)};
            py::gil_scoped_release release;
            return r.Update(ref, u, reason);
          },
          arg("ref"), arg("tags"), arg("metrics"), arg("description"), arg("reason"))
      .def("delete", &Registry::Delete, arg("ref"), arg("force"), arg("reason"), Release())
      .def("gc", &Registry::Gc, arg("keep_latest"), arg("model"), arg("dry_run"), Release())
      .def("verify", &Registry::Verify, Release())
      .def_static(
          "recover",
          [](const std::string& root, const std::string& model, const std::string& actor) {
            Registry::Options options;
            options.actor = actor;
            options.format = TorchScriptFormat();
            return Registry::Recover(root, model, std::move(options));
          },
          arg("root"), arg("model"), arg("actor") = "", Release());

  py::class_<RecoverReport>(m, "RecoverReport")
      .def_readonly("moved_aside", &RecoverReport::moved_aside)
      .def_readonly("recovered", &RecoverReport::recovered)
      .def_readonly("skipped", &RecoverReport::skipped);

  // Held by Python code while it scripts, traces, saves or loads TorchScript, so that it never
  // compiles at the same time as another Python thread or a C++ load. Waiting releases the GIL.
  struct TorchScriptLock {
    std::unique_lock<std::mutex> lock{TorchScriptMutex(), std::defer_lock};
  };
  py::class_<TorchScriptLock>(m, "TorchScriptLock")
      .def(py::init<>())
      .def("__enter__",
           [](TorchScriptLock& l) {
             py::gil_scoped_release release;
             l.lock.lock();
           })
      .def("__exit__", [](TorchScriptLock& l, py::args) {
        if (l.lock.owns_lock()) l.lock.unlock();
      });
}

}  // namespace lepton::bindings
