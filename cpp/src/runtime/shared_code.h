// Loading TorchScript archives so that versions with the same code share it.
//
// Versions of one model usually differ in their weights alone: their archives hold the same code,
// the same constants and the same pickled structure (data.pkl), and differ only in the tensor
// records. The first such archive is loaded by LibTorch, which compiles its code. Every later one
// with the same code fingerprint is built without compiling anything: its data.pkl is unpickled
// against the classes that first load compiled, so it runs the same (already optimized) methods,
// and its tensors point into the caller's bytes (the registry's mapping of the artifact) instead
// of being copied out of them.
//
// Private to the runtime layer: it includes LibTorch.
#pragma once

#include <torch/script.h>

#include <memory>
#include <string>
#include <string_view>

namespace lepton {

struct LoadedModule {
  torch::jit::Module module;
  // The code was compiled (and its executors optimized) by an earlier load of an archive with
  // the same code: nothing was compiled for this one.
  bool shared_code = false;
  // The tensors point into the archive's bytes (kept alive by the owner given) rather than into
  // copies of them.
  bool mapped = false;
};

// Loads a TorchScript archive. When `owner` is given it keeps `bytes` alive and their pages may
// be written to without harm (a private mapping or a buffer of the caller's): the module's tensors
// then point into `bytes` and hold `owner`. Without it the tensors are copies. Throws what
// LibTorch throws for an archive it cannot load. `sha256`, when known, lets the code fingerprint
// of bytes seen before be remembered rather than computed again.
LoadedModule LoadTorchScript(std::string_view bytes, std::shared_ptr<void> owner,
                             const std::string& sha256 = "");

// How many distinct codes are kept compiled for later archives (the least recently used beyond
// that are dropped once no loaded module uses them).
constexpr size_t kSharedCodeEntries = 64;

}  // namespace lepton
