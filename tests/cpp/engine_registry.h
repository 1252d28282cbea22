// A registry for the engine tests: TorchScript artifacts, actor "tester", versions by label.
#pragma once

#include <memory>
#include <string>

#include "lepton/registry/artifact_format.h"
#include "lepton/registry/registry.h"

namespace lepton::testing {

inline std::shared_ptr<Registry> EngineRegistry(const std::string& path) {
  Registry::Options o;
  o.actor = "tester";
  o.format = TorchScriptFormat();
  return std::make_shared<Registry>(path, o);
}

// Registers `bytes` (a TorchScript archive) as `model:label`.
inline void RegisterLabelled(Registry& reg, const std::string& model, const std::string& label,
                             const std::string& bytes) {
  RegisterOptions r;
  r.version = label;
  reg.RegisterBytes(model, bytes, r);
}

}  // namespace lepton::testing
