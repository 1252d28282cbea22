#include "lepton/server/server.h"

#include <pybind11/stl.h>

#include "bindings.h"
#include "lepton/common/errors.h"
#include "lepton/server/server_config.h"

namespace py = pybind11;
using py::arg;

namespace lepton::bindings {

void BindServer(py::module_& m) {
  m.def("server_config_defaults", &ServerConfigDefaults);

  // The configuration is its JSON specification (server_config.h): a file's path and/or a JSON
  // object laid over it.
  py::class_<Server>(m, "Server")
      .def(py::init([](std::shared_ptr<Registry> registry, const std::string& config,
                       const std::string& config_path) {
             return std::make_unique<Server>(std::move(registry),
                                             LoadServerConfig(config_path, config));
           }),
           arg("registry"), arg("config") = "{}", arg("config_path") = "")
      .def("start", &Server::Start, py::call_guard<py::gil_scoped_release>())
      .def("stop", &Server::Stop, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("port", &Server::port)
      .def_property_readonly("grpc_port", &Server::grpc_port)
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
