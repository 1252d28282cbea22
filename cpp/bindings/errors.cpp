#include "lepton/common/errors.h"

#include <pybind11/stl.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

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

PyObject* Builtin(const char* name) {
  if (!name) return nullptr;
  const std::string n = name;
  if (n == "ValueError") return PyExc_ValueError;
  if (n == "LookupError") return PyExc_LookupError;
  if (n == "OSError") return PyExc_OSError;
  if (n == "TimeoutError") return PyExc_TimeoutError;
  throw std::logic_error("no builtin exception named " + n);
}

}  // namespace

// One Python class per row of the error table (errors.h), LeptonError first as their base.
void BindErrors(py::module_& m) {
  m.def(
      "failure_reasons",
      [] {
        std::vector<std::string> out;
        for (size_t i = 0; i < static_cast<size_t>(FailureReason::kCount); ++i) {
          out.push_back(FailureReasonName(static_cast<FailureReason>(i)));
        }
        return out;
      },
      "The reasons failed requests are counted under, in the metrics' order.");
  // Never destroyed: the interpreter may be gone by the time static destructors run.
  static auto& classes = *new std::vector<py::object>(ErrorKinds().size());
  const ErrorKind& base_kind = KindOf(ErrorCode::kInternal);
  PyObject* base_type = PyErr_NewExceptionWithDoc((std::string("lepton.") + base_kind.name).c_str(),
                                                  base_kind.doc, PyExc_Exception, nullptr);
  if (!base_type) throw py::error_already_set();
  py::object base = py::reinterpret_steal<py::object>(base_type);
  m.attr(base_kind.name) = base;
  for (const ErrorKind& kind : ErrorKinds()) {
    classes[static_cast<size_t>(kind.code)] =
        kind.code == ErrorCode::kInternal
            ? base
            : NewError(m, kind.name, base, Builtin(kind.python_builtin), kind.doc);
  }

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StorageError& e) {
      // OSError(errno, message): e.errno is the operating system's code (None when there is none).
      py::object message = Text(e.what());
      if (!message) return;
      py::object args =
          e.os_errno() ? py::make_tuple(e.os_errno(), message) : py::make_tuple(message);
      PyErr_SetObject(classes[static_cast<size_t>(e.code())].ptr(), args.ptr());
    } catch (const Error& e) {
      SetError(classes[static_cast<size_t>(e.code())], e.what());
    }
  });
}

}  // namespace lepton::bindings
