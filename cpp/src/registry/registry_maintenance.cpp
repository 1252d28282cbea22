// Keeping the registry in order: gc by retention, and verify against the blob store.
#include "registry_impl.h"

namespace lepton {

bool Registry::Impl::RemoveBlobIfUnused(const std::string& sha, int64_t* freed) {
  std::lock_guard<std::mutex> lock(mu_);
  return blobs_.RemoveIfUnused(
      sha, [&] { return !Referenced(sha); }, freed);
}

GcReport Registry::Impl::Gc(int64_t keep_latest, const std::optional<std::string>& model,
                            bool dry_run) {
  if (keep_latest < 0) throw InvalidArgument("keep_latest must be >= 0");
  if (model) ValidateName(*model, "model name");
  GcReport report;
  report.dry_run = dry_run;
  FreeingSpace([&] {
    report.deleted_versions.clear();
    std::lock_guard<std::mutex> lock(mu_);
    sql::Transaction tx(*db_);
    if (model) ModelId(*model);
    std::vector<std::pair<int64_t, std::string>> doomed;
    {
      auto q = db_->Prepare(
          "SELECT id, name FROM (SELECT v.id AS id, m.name AS name, ROW_NUMBER() OVER "
          "(PARTITION BY v.model_id ORDER BY v.seq DESC) AS rank FROM versions v JOIN models m "
          "ON m.id = v.model_id WHERE (CAST(?1 AS TEXT) IS NULL OR m.name = ?1)) r WHERE rank > ?2 "
          "AND NOT "
          "EXISTS (SELECT 1 FROM aliases a WHERE a.version_id = r.id) ORDER BY id");
      q->Bind(1, model).Bind(2, keep_latest);
      while (q->Step()) doomed.emplace_back(q->Int(0), q->Text(1));
    }
    for (const auto& [id, name] : doomed) {
      if (dry_run) {
        report.deleted_versions.push_back(name + ":" + LabelOf(id));
      } else {
        const std::string label = LabelOf(id);
        DeleteRow(id, name, "gc", "gc keep_latest=" + std::to_string(keep_latest), false);
        report.deleted_versions.push_back(name + ":" + label);
      }
    }
    if (artifacts_in_db_ && !dry_run) report.blobs_removed = DropUnreferencedArtifacts();
    tx.Commit();
  });
  if (dry_run) {
    // Blobs that would be left unreferenced: those whose every referencing version is doomed.
    std::lock_guard<std::mutex> lock(mu_);
    std::set<std::string> doomed(report.deleted_versions.begin(), report.deleted_versions.end());
    std::map<std::string, bool> kept_by_sha;
    auto q = db_->Prepare(
        "SELECT m.name || ':' || v.label, v.sha256 FROM versions v JOIN models m "
        "ON m.id = v.model_id");
    while (q->Step()) kept_by_sha[q->Text(1)] |= !doomed.count(q->Text(0));
    std::vector<std::string> stored;
    if (artifacts_in_db_) {
      auto a = db_->Prepare("SELECT sha256 FROM artifacts");
      while (a->Step()) stored.push_back(a->Text(0));
    } else {
      stored = blobs_.List();
    }
    for (const auto& sha : stored) {
      auto it = kept_by_sha.find(sha);
      if (it == kept_by_sha.end() || !it->second) ++report.blobs_removed;
    }
    return report;
  }
  std::vector<std::string> candidates;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& sha : blobs_.RecoverAbandoned()) candidates.push_back(sha);
    for (const auto& sha : blobs_.List()) candidates.push_back(sha);
  }
  // Kept in the database, the local blobs are a cache: those of dropped artifacts go too, but
  // the count is the database's.
  for (const auto& sha : candidates) {
    if (RemoveBlobIfUnused(sha, &report.bytes_freed) && !artifacts_in_db_) ++report.blobs_removed;
  }
  KeepReserve();
  return report;
}

VerifyReport Registry::Impl::Verify() {
  VerifyReport report;
  std::map<std::string, std::vector<std::string>> refs_by_sha;
  // Listed before the versions are read, so that a blob registered meanwhile is not taken for
  // an orphan; one that a writer still holds is on its way to being committed.
  std::vector<std::string> stored = blobs_.List();
  {
    std::lock_guard<std::mutex> lock(mu_);
    sql::Transaction tx(*db_, /*write=*/false);
    auto q = db_->Prepare(
        "SELECT m.name, v.label, v.sha256 FROM versions v JOIN models m ON m.id = v.model_id "
        "ORDER BY m.name, v.seq");
    while (q->Step()) {
      refs_by_sha[q->Text(2)].push_back(q->Text(0) + ":" + q->Text(1));
      ++report.versions_checked;
    }
  }
  if (artifacts_in_db_) {
    VerifyStoredArtifacts(refs_by_sha, report);
    return report;
  }
  // Hashing runs without the lock: it reads immutable files only.
  for (const auto& [sha, refs] : refs_by_sha) {
    ++report.blobs_checked;
    const BlobStore::Health health = blobs_.Check(sha);
    if (health == BlobStore::Health::kOk) continue;
    const char* problem = health == BlobStore::Health::kMissing ? "missing" : "corrupted";
    for (const auto& ref : refs) report.problems.push_back({ref, sha, problem});
  }
  for (const auto& sha : stored) {
    if (!refs_by_sha.count(sha) && !blobs_.Held(sha)) report.orphan_blobs.push_back(sha);
  }
  return report;
}

}  // namespace lepton
