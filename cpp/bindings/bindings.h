// One binder per concept; module.cpp calls them in order.
#pragma once

#include <pybind11/pybind11.h>

namespace lepton::bindings {

void BindErrors(pybind11::module_& m);
void BindRegistry(pybind11::module_& m);
void BindPolicies(pybind11::module_& m);
void BindEngine(pybind11::module_& m);
void BindObserve(pybind11::module_& m);
void BindServer(pybind11::module_& m);

}  // namespace lepton::bindings
