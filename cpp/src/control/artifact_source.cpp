#include "lepton/control/artifact_source.h"

#include "lepton/common/errors.h"
#include "lepton/common/files.h"
#include "lepton/common/names.h"

namespace lepton {
ArtifactSource::ArtifactSource(std::shared_ptr<Registry> registry, std::string model)
    : registry_(std::move(registry)), model_(std::move(model)) {
  if (!registry_) throw InvalidArgument("registry must not be null");
  ValidateName(model_, "model name");
}

ArtifactSource::ArtifactSource(std::string model,
                               const std::vector<std::pair<std::string, std::string>>& files)
    : model_(std::move(model)) {
  ValidateName(model_, "model name");
  for (const auto& [label, path] : files) {
    ValidateName(label, "version label");
    if (!files_.emplace(label, path).second) {
      throw InvalidArgument("version '" + label + "' is listed twice");
    }
    labels_.push_back(label);
  }
}

Artifact ArtifactSource::Fetch(const std::string& spec) const {
  if (registry_) {
    const Reference ref = ParseVersionIn(model_, spec);
    ModelVersion v = registry_->Get(ref.ToString());
    return Artifact{v.version, registry_->ReadArtifact(v.ref()), v.sha256, v.signature};
  }
  auto it = files_.find(spec);
  if (it == files_.end()) throw NotFound("no model file is known for version '" + spec + "'");
  return Artifact{spec, ReadWholeFile(it->second, "model file"), "", std::nullopt};
}

}  // namespace lepton
