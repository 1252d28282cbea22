#include "bindings.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "lepton's C++ core; use the public classes of the lepton package instead.";
  m.attr("__version__") = LEPTON_VERSION_STRING;
  lepton::bindings::BindErrors(m);
  lepton::bindings::BindRegistry(m);
  lepton::bindings::BindPolicies(m);
  lepton::bindings::BindEngine(m);
  lepton::bindings::BindObserve(m);
  lepton::bindings::BindServer(m);
}
