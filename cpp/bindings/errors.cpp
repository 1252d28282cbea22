#include "lepton/errors.h"

#include "bindings.h"

namespace py = pybind11;

namespace lepton::bindings {
namespace {

// Creates lepton.<name> deriving from LeptonError and, where one fits, a builtin exception, so that
// `except ValueError` and `except lepton.InvalidArgument` both catch a bad argument.
py::object NewError(py::module_& m, const char* name, py::handle base, PyObject* builtin,
                    const char* doc) {
  const std::string qualified = std::string("lepton.") + name;
  py::tuple bases = builtin ? py::make_tuple(base, py::handle(builtin)) : py::make_tuple(base);
  PyObject* type = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, bases.ptr(), nullptr);
  if (!type) throw py::error_already_set();
  py::object cls = py::reinterpret_steal<py::object>(type);
  m.attr(name) = cls;
  return cls;
}

}  // namespace

void BindErrors(py::module_& m) {
  PyObject* base_type = PyErr_NewExceptionWithDoc(
      "lepton.LeptonError", "Base class of every lepton error.", PyExc_Exception, nullptr);
  if (!base_type) throw py::error_already_set();
  static py::object base = py::reinterpret_steal<py::object>(base_type);
  m.attr("LeptonError") = base;
  static py::object invalid = NewError(m, "InvalidArgument", base, PyExc_ValueError,
                                       "An argument is malformed or out of range.");
  static py::object not_found = NewError(m, "NotFound", base, PyExc_LookupError,
                                         "A model, version, alias or file does not exist.");
  static py::object conflict =
      NewError(m, "Conflict", base, nullptr, "The request clashes with the current state.");
  static py::object integrity = NewError(m, "IntegrityError", base, nullptr,
                                         "Stored data does not match its checksum or is missing.");
  static py::object storage =
      NewError(m, "StorageError", base, PyExc_OSError, "The storage layer failed.");
  static py::object overloaded =
      NewError(m, "Overloaded", base, nullptr, "A queue is full; the request was refused.");
  static py::object timeout = NewError(m, "Timeout", base, PyExc_TimeoutError,
                                       "A deadline passed before the work completed.");

  static py::object model_error =
      NewError(m, "ModelError", base, nullptr, "A model's forward failed or returned no tensors.");
  static py::object unavailable =
      NewError(m, "Unavailable", base, nullptr, "The target is not ready, unloaded or closed.");

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const InvalidArgument& e) {
      PyErr_SetString(invalid.ptr(), e.what());
    } catch (const NotFound& e) {
      PyErr_SetString(not_found.ptr(), e.what());
    } catch (const Conflict& e) {
      PyErr_SetString(conflict.ptr(), e.what());
    } catch (const IntegrityError& e) {
      PyErr_SetString(integrity.ptr(), e.what());
    } catch (const StorageError& e) {
      PyErr_SetString(storage.ptr(), e.what());
    } catch (const Overloaded& e) {
      PyErr_SetString(overloaded.ptr(), e.what());
    } catch (const Timeout& e) {
      PyErr_SetString(timeout.ptr(), e.what());
    } catch (const ModelError& e) {
      PyErr_SetString(model_error.ptr(), e.what());
    } catch (const Unavailable& e) {
      PyErr_SetString(unavailable.ptr(), e.what());
    } catch (const Error& e) {
      PyErr_SetString(base.ptr(), e.what());
    }
  });
}

}  // namespace lepton::bindings
