// Where a deployment's versions come from: a model's versions in the registry (labels, `@ALIAS`
// or references), or TorchScript files named by label.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "lepton/common/signature.h"
#include "lepton/registry/registry.h"

namespace lepton {

// What is known of a version before it is read: enough to list it and to plan its memory.
struct ArtifactInfo {
  std::string label;
  std::string sha256;  // "" for a file outside the registry
  std::optional<Signature> signature;
  int64_t size = 0;  // the artifact's bytes
};

class ArtifactSource {
 public:
  ArtifactSource(std::shared_ptr<Registry> registry, std::string model);
  // InvalidArgument for a label that is not a valid name or is listed twice.
  ArtifactSource(std::string model, const std::vector<std::pair<std::string, std::string>>& files);

  // The version a spec names, without reading its artifact; NotFound when the version (or file)
  // is not known.
  ArtifactInfo Resolve(const std::string& spec) const;
  // The artifact of a resolved version: from the registry's blob store, mapped or, with `pool`,
  // read into one of its buffers; or read from a file. `bytes` stays valid while `keep` lives,
  // and is this process's own: a private mapping or buffer, whose pages may be written without
  // reaching the file (a loaded model's tensors point into it).
  struct Bytes {
    std::string_view bytes;
    std::shared_ptr<void> keep;
    bool pooled = false;  // in a buffer from `pool`
  };
  Bytes Read(const ArtifactInfo& info, BufferPool* pool = nullptr) const;
  // A version served elsewhere (a remote endpoint): known by its label, with no artifact.
  void AddExternal(const std::string& label);
  bool IsExternal(const std::string& label) const { return external_.count(label) > 0; }
  // The artifact's file: the registry's blob, or the file itself (for a worker process to read).
  std::string PathOf(const ArtifactInfo& info) const;
  // Every version of the registry's model, oldest first (the file labels for files).
  std::vector<ArtifactInfo> All() const;

  const std::string& model() const { return model_; }
  // The registry, or null for files.
  const std::shared_ptr<Registry>& registry() const { return registry_; }
  // The file labels in the order given (empty for a registry).
  const std::vector<std::string>& labels() const { return labels_; }

 private:
  std::shared_ptr<Registry> registry_;
  std::string model_;
  std::map<std::string, std::string> files_;
  std::vector<std::string> labels_;
  std::set<std::string> external_;
};

}  // namespace lepton
