// Artifacts kept in the database (a registry on PostgreSQL with artifacts=database): each blob is
// stored in parts of 4 MiB, and its row in `artifacts`, written last, says the upload is whole.
// The blob store beside it is then this machine's cache, filled from the database on first use
// and checked against the sha256 like any blob.
#include <fstream>

#include "registry_impl.h"

namespace lepton {
namespace {

constexpr size_t kArtifactPart = 4 << 20;
// Parts of an upload that never finished are dropped by gc after this long.
constexpr double kAbandonedUploadS = 3600;

}  // namespace

bool Registry::Impl::ArtifactUploaded(const std::string& sha) {
  return db_->Prepare("SELECT 1 FROM artifacts WHERE sha256 = ?")->Bind(1, sha).Step();
}

void Registry::Impl::UploadArtifact(const std::string& sha) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (ArtifactUploaded(sha)) return;
  }
  const std::string path = blobs_.PathOf(sha);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw StorageError("cannot read " + path + " to store it in the database");
  std::string part(kArtifactPart, '\0');
  int64_t parts = 0, size = 0;
  // Each part is its own statement, outside the write lock: a large artifact does not hold up
  // the other writers. A part already there (an earlier attempt) is the same bytes.
  while (in) {
    in.read(part.data(), static_cast<std::streamsize>(part.size()));
    const auto n = static_cast<size_t>(in.gcount());
    if (n == 0) break;
    std::lock_guard<std::mutex> lock(mu_);
    db_->Prepare(
           "INSERT INTO artifact_parts(sha256, part, data, created_at) VALUES (?, ?, ?, ?) "
           "ON CONFLICT(sha256, part) DO NOTHING")
        ->Bind(1, sha)
        .Bind(2, parts)
        .BindBytes(3, std::string_view(part.data(), n))
        .Bind(4, Now())
        .Run();
    ++parts;
    size += static_cast<int64_t>(n);
  }
  if (in.bad()) throw StorageError("cannot read " + path + " to store it in the database");
  std::lock_guard<std::mutex> lock(mu_);
  db_->Prepare(
         "INSERT INTO artifacts(sha256, size, parts, created_at) VALUES (?, ?, ?, ?) "
         "ON CONFLICT(sha256) DO NOTHING")
      ->Bind(1, sha)
      .Bind(2, size)
      .Bind(3, parts)
      .Bind(4, Now())
      .Run();
}

void Registry::Impl::FetchArtifact(const std::string& sha) {
  const std::string tmp = root_ + "/fetch-" + RandomHex(8);
  struct Remove {
    const std::string& path;
    ~Remove() { ::unlink(path.c_str()); }
  } remove{tmp};
  {
    std::lock_guard<std::mutex> lock(mu_);
    sql::Transaction tx(*db_, /*write=*/false);
    int64_t size = 0, parts = 0;
    {
      auto q = db_->Prepare("SELECT size, parts FROM artifacts WHERE sha256 = ?");
      if (!q->Bind(1, sha).Step()) {
        throw IntegrityError("artifact " + sha + " is missing from the database");
      }
      size = q->Int(0);
      parts = q->Int(1);
    }
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    int64_t written = 0;
    for (int64_t i = 0; i < parts; ++i) {
      auto q = db_->Prepare("SELECT data FROM artifact_parts WHERE sha256 = ? AND part = ?");
      if (!q->Bind(1, sha).Bind(2, i).Step()) {
        throw IntegrityError("artifact " + sha + " is incomplete in the database (part " +
                             std::to_string(i) + " of " + std::to_string(parts) + " is missing)");
      }
      const std::string data = q->Bytes(0);
      out.write(data.data(), static_cast<std::streamsize>(data.size()));
      written += static_cast<int64_t>(data.size());
    }
    out.close();
    if (!out) throw StorageError("cannot write " + tmp + " (the artifact cache)");
    if (written != size) {
      throw IntegrityError("artifact " + sha + " in the database has " + std::to_string(written) +
                           " bytes, not " + std::to_string(size));
    }
  }
  BlobLease lease = blobs_.PutFile(tmp, {});
  if (lease.sha256() != sha) {
    const std::string got = lease.sha256();
    lease.Release();
    RemoveBlobIfUnused(got, nullptr);
    throw IntegrityError("artifact " + sha + " in the database is corrupted (its bytes hash to " +
                         got + ")");
  }
}

int64_t Registry::Impl::DropUnreferencedArtifacts() {
  std::vector<std::string> doomed;
  {
    auto q = db_->Prepare(
        "SELECT sha256 FROM artifacts a WHERE NOT EXISTS "
        "(SELECT 1 FROM versions v WHERE v.sha256 = a.sha256)");
    while (q->Step()) doomed.push_back(q->Text(0));
  }
  for (const auto& sha : doomed) {
    db_->Prepare("DELETE FROM artifact_parts WHERE sha256 = ?")->Bind(1, sha).Run();
    db_->Prepare("DELETE FROM artifacts WHERE sha256 = ?")->Bind(1, sha).Run();
  }
  db_->Prepare(
         "DELETE FROM artifact_parts WHERE created_at < ? AND NOT EXISTS "
         "(SELECT 1 FROM artifacts a WHERE a.sha256 = artifact_parts.sha256)")
      ->Bind(1, Now() - kAbandonedUploadS)
      .Run();
  return static_cast<int64_t>(doomed.size());
}

void Registry::Impl::VerifyStoredArtifacts(
    const std::map<std::string, std::vector<std::string>>& refs_by_sha, VerifyReport& report) {
  std::lock_guard<std::mutex> lock(mu_);
  sql::Transaction tx(*db_, /*write=*/false);
  for (const auto& [sha, refs] : refs_by_sha) {
    ++report.blobs_checked;
    const char* problem = nullptr;
    auto q = db_->Prepare(
        "SELECT a.size, a.parts, (SELECT COUNT(*) FROM artifact_parts p WHERE p.sha256 = "
        "a.sha256), "
        "(SELECT COALESCE(SUM(LENGTH(p.data)), 0) FROM artifact_parts p WHERE p.sha256 = a.sha256) "
        "FROM artifacts a WHERE a.sha256 = ?");
    if (!q->Bind(1, sha).Step()) {
      problem = "missing";
    } else if (q->Int(1) != q->Int(2) || q->Int(0) != q->Int(3)) {
      problem = "corrupted";
    }
    if (problem) {
      for (const auto& ref : refs) report.problems.push_back({ref, sha, problem});
    }
  }
  // An upload younger than that may be a registration on its way to its commit.
  auto q = db_->Prepare("SELECT sha256 FROM artifacts WHERE created_at < ?");
  q->Bind(1, Now() - kAbandonedUploadS);
  while (q->Step()) {
    if (!refs_by_sha.count(q->Text(0))) report.orphan_blobs.push_back(q->Text(0));
  }
}

}  // namespace lepton
