#include "lepton/errors.h"

#include <cstring>

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

// A message as str, with any byte that is not UTF-8 replaced rather than the message lost.
py::object Text(const char* what) {
  PyObject* text =
      PyUnicode_DecodeUTF8(what, static_cast<Py_ssize_t>(std::strlen(what)), "replace");
  return py::reinterpret_steal<py::object>(text);
}

void SetError(const py::object& type, const char* what) {
  py::object message = Text(what);
  if (message) PyErr_SetObject(type.ptr(), message.ptr());
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
      SetError(invalid, e.what());
    } catch (const NotFound& e) {
      SetError(not_found, e.what());
    } catch (const Conflict& e) {
      SetError(conflict, e.what());
    } catch (const IntegrityError& e) {
      SetError(integrity, e.what());
    } catch (const StorageError& e) {
      // OSError(errno, message): e.errno is the operating system's code (None when there is none).
      py::object message = Text(e.what());
      if (!message) return;
      py::object args =
          e.os_errno() ? py::make_tuple(e.os_errno(), message) : py::make_tuple(message);
      PyErr_SetObject(storage.ptr(), args.ptr());
    } catch (const Overloaded& e) {
      SetError(overloaded, e.what());
    } catch (const Timeout& e) {
      SetError(timeout, e.what());
    } catch (const ModelError& e) {
      SetError(model_error, e.what());
    } catch (const Unavailable& e) {
      SetError(unavailable, e.what());
    } catch (const Error& e) {
      SetError(base, e.what());
    }
  });
}

}  // namespace lepton::bindings
