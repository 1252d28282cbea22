#include "lepton/control/artifact_source.h"

#include <filesystem>

#include "lepton/common/errors.h"
#include "lepton/common/files.h"
#include "lepton/common/names.h"
#include "lepton/registry/blob_store.h"

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

void ArtifactSource::AddExternal(const std::string& label) {
  ValidateName(label, "version label");
  external_.insert(label);
}

ArtifactInfo ArtifactSource::Resolve(const std::string& spec) const {
  if (external_.count(spec)) return ArtifactInfo{spec, "", std::nullopt, 0};
  if (registry_) {
    const Reference ref = ParseVersionIn(model_, spec);
    ModelVersion v = registry_->Get(ref.ToString());
    return ArtifactInfo{v.version, v.sha256, v.signature, v.size};
  }
  auto it = files_.find(spec);
  if (it == files_.end()) throw NotFound("no model file is known for version '" + spec + "'");
  std::error_code ec;
  const auto size = std::filesystem::file_size(it->second, ec);
  return ArtifactInfo{spec, "", std::nullopt, ec ? 0 : static_cast<int64_t>(size)};
}

ArtifactSource::Bytes ArtifactSource::Read(const ArtifactInfo& info, BufferPool* pool) const {
  if (registry_ && pool) {
    auto buffer = registry_->ReadBlob(info.sha256, *pool);
    const std::string_view view(buffer->data(), buffer->size());
    return {view, std::move(buffer), true};
  }
  if (registry_) {
    // By the hash resolved with the version: a load asks the database nothing.
    auto mapped = registry_->MapBlob(info.sha256);
    const std::string_view view = mapped->bytes();
    // A private, writable mapping: writes make copies of the pages and never reach the blob.
    return {view, std::const_pointer_cast<MappedBlob>(std::move(mapped))};
  }
  auto it = files_.find(info.label);
  if (it == files_.end()) throw NotFound("no model file is known for version '" + info.label + "'");
  auto bytes = std::make_shared<std::string>(ReadWholeFile(it->second, "model file"));
  const std::string_view view = *bytes;
  return {view, std::move(bytes)};
}

std::string ArtifactSource::PathOf(const ArtifactInfo& info) const {
  if (registry_) return registry_->ArtifactPath(model_ + ":" + info.label);
  auto it = files_.find(info.label);
  if (it == files_.end()) throw NotFound("no model file is known for version '" + info.label + "'");
  return it->second;
}

std::vector<ArtifactInfo> ArtifactSource::All() const {
  std::vector<ArtifactInfo> out;
  if (registry_) {
    for (const auto& v : registry_->Versions(model_)) {
      out.push_back(ArtifactInfo{v.version, v.sha256, v.signature, v.size});
    }
    return out;
  }
  for (const auto& label : labels_) out.push_back(Resolve(label));
  return out;
}

}  // namespace lepton
