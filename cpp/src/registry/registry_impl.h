// The registry's implementation, shared by its files: registry.cpp (opening, the schema, the
// reserve), registry_versions.cpp (models and versions), registry_aliases.cpp (aliases, the audit
// trail), registry_policies.cpp (policy state, shared policies' evidence and leads) and
// registry_maintenance.cpp (gc, verify). Private to the registry library.
#pragma once

#include <fcntl.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "lepton/common/errors.h"
#include "lepton/common/names.h"
#include "lepton/common/process.h"
#include "lepton/registry/blob_store.h"
#include "lepton/registry/registry.h"
#include "sql_db.h"

namespace lepton {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace registry_detail {

// Space set aside in the registry's directory, given up when a delete or gc meets a full disk so
// that lepton itself can always free space.
inline constexpr int64_t kReserveBytes = 8 << 20;
inline constexpr const char* kReserveName = "reserve";

// An exclusive flock on the registry's lock file, held while a process creates or checks the
// database, so that processes opening a brand-new registry together do not race on its set-up.
class OpenLock {
 public:
  explicit OpenLock(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      const int e = errno;
      throw StorageError("cannot open " + path + ": " + std::strerror(e), e);
    }
    while (::flock(fd_, LOCK_EX) != 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      ::close(fd_);
      throw StorageError("cannot lock " + path + ": " + std::strerror(e), e);
    }
  }
  ~OpenLock() { ::close(fd_); }
  OpenLock(const OpenLock&) = delete;
  OpenLock& operator=(const OpenLock&) = delete;

 private:
  int fd_ = -1;
};

inline bool IsDiskFull(const StorageError& e) {
  return e.os_errno() == ENOSPC || e.os_errno() == EDQUOT;
}

inline constexpr const char* kVersionColumns =
    "SELECT v.id, m.name, v.label, v.seq, v.sha256, v.size, v.format, v.created_at, v.updated_at, "
    "v.description, pm.name, p.label, v.signature FROM versions v JOIN models m ON m.id = "
    "v.model_id "
    "LEFT JOIN versions p ON p.id = v.parent_id LEFT JOIN models pm ON pm.id = p.model_id ";

inline double Now() {
  using namespace std::chrono;
  return duration_cast<microseconds>(system_clock::now().time_since_epoch()).count() / 1e6;
}

inline std::string DefaultActor() {
  if (const char* env = std::getenv("LEPTON_ACTOR"); env && *env) return env;
  if (const passwd* pw = ::getpwuid(::geteuid()); pw && pw->pw_name) return pw->pw_name;
  return "uid:" + std::to_string(::geteuid());
}

inline json SignatureToJson(const Signature& s) {
  auto specs = [](const std::vector<TensorSpec>& v) {
    json out = json::array();
    for (const auto& t : v)
      out.push_back({{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}});
    return out;
  };
  return {{"inputs", specs(s.inputs)}, {"outputs", specs(s.outputs)}};
}

inline Signature SignatureFromJson(const std::string& text) {
  Signature s;
  const json j = json::parse(text);
  auto specs = [](const json& arr) {
    std::vector<TensorSpec> out;
    for (const auto& t : arr) {
      out.push_back({t.at("name").get<std::string>(), t.at("dtype").get<std::string>(),
                     t.at("shape").get<std::vector<int64_t>>()});
    }
    return out;
  };
  s.inputs = specs(j.at("inputs"));
  s.outputs = specs(j.at("outputs"));
  return s;
}

inline void ValidateMetadata(const std::map<std::string, std::string>& tags,
                             const std::map<std::string, double>& metrics) {
  for (const auto& [k, v] : tags) {
    if (k.empty()) throw InvalidArgument("tag keys must not be empty");
    (void)v;
  }
  for (const auto& [k, v] : metrics) {
    if (k.empty()) throw InvalidArgument("metric names must not be empty");
    if (!std::isfinite(v)) {
      throw InvalidArgument("metric '" + k + "' is " + std::to_string(v) +
                            "; metrics must be finite");
    }
  }
}

// The actor a Registry::ActingAs scope names on this thread; empty outside one.
extern thread_local std::string acting_as;

}  // namespace registry_detail

using namespace registry_detail;

class Registry::Impl {
 public:
  // `location`: a directory (SQLite), or a PostgreSQL URL whose artifacts are in BlobRoot.
  // `adopt_lost_database`: open even a database that lost its metadata (Recover's case).
  Impl(const std::string& location, Options options, bool adopt_lost_database = false);

  // A PostgreSQL registry's artifact directory: the blob_root option, the URL's `blobs`
  // parameter, or $LEPTON_BLOBS.
  static std::string BlobRoot(const std::string& url, const Options& options);
  // Whether the artifacts live in the database (PostgreSQL only) and root_ is a cache of them.
  static bool ArtifactsInDatabase(const std::string& location, const Options& options);
  // The URL without the `blobs` parameter, for libpq.
  static std::string WithoutBlobs(const std::string& url);
  // Where the registry is: its directory, or its URL without the password and with the blob
  // directory (what another process opens it by).
  std::string where() const;

  // --- helpers used under mu_ ---

  static std::string PrepareRoot(const std::string& root);

  // A database without lepton's schema beside a blob store that holds artifacts has been deleted,
  // truncated or replaced: treating it as a new registry would let gc delete every artifact.
  void RefuseLostDatabase();

  std::string ReservePath() const { return root_ + "/" + kReserveName; }

  // Creates the reserve file when it is missing and there is room for it; never fails.
  void KeepReserve();

  // Runs a write that frees space; on a full disk it gives up the reserve and tries once more.
  template <class F>
  auto FreeingSpace(F&& write) -> decltype(write()) {
    try {
      return write();
    } catch (const StorageError& e) {
      if (!IsDiskFull(e) || ::unlink(ReservePath().c_str()) != 0) throw;
    }
    return write();
  }

  void InitSchema();

  bool Referenced(const std::string& sha);

  void CollectAbandoned();

  std::optional<int64_t> FindModel(const std::string& name);

  int64_t ModelId(const std::string& name);

  std::string AliasList(int64_t model_id);

  std::optional<int64_t> FindVersion(int64_t model_id, const Reference& ref);

  int64_t Resolve(const Reference& ref);

  std::string LabelOf(int64_t version_id);

  static ModelVersion RowToVersion(sql::Statement& s);

  ModelVersion LoadVersion(int64_t id);

  void Audit(const std::string& model, const std::string& action,
             const std::optional<std::string>& version, const std::optional<std::string>& alias,
             const std::optional<std::string>& from, const std::optional<std::string>& to,
             const std::string& reason, const json& details);

  int64_t EnsureModel(const std::string& name, const std::string& description);

  ModelVersion Register(const std::string& model, const RegisterOptions& opts,
                        const std::function<BlobLease(const BlobStore::Validator&)>& store);

  static Conflict LabelTaken(const std::string& model, const std::string& label);

  ModelVersion Commit(const std::string& model, const RegisterOptions& opts,
                      const std::optional<Reference>& parent_ref, BlobLease& lease);

  void CreateModel(const std::string& name, const std::string& description, bool exist_ok);

  void SetModelDescription(const std::string& name, const std::string& description);

  ModelVersion Get(std::string_view text);

  std::vector<ModelVersion> Versions(const std::string& model);

  std::vector<ModelSummary> Models();

  std::map<std::string, std::string> Aliases(const std::string& model);

  ModelVersion SetAlias(const std::string& model, const std::string& alias,
                        const std::string& version, const std::optional<std::string>& expected,
                        const std::string& reason);

  void MoveAlias(int64_t model_id, const std::string& alias, int64_t target);

  void RemoveAlias(const std::string& model, const std::string& alias, const std::string& reason);

  ModelVersion Rollback(const std::string& model, const std::string& alias,
                        const std::string& reason);

  void Record(const std::string& model, const std::string& action,
              const std::optional<std::string>& version, const std::optional<std::string>& from,
              const std::optional<std::string>& to, const std::string& reason,
              const std::string& details);

  void PutState(const std::string& model, const std::string& key, const std::string& value);

  std::optional<std::string> GetState(const std::string& model, const std::string& key);

  void AddEvidence(const std::string& model, const std::string& key, const std::string& replica,
                   const std::string& payload);
  std::vector<EvidenceBatch> Evidence(const std::string& model, const std::string& key,
                                      int64_t after, int64_t limit);
  std::optional<PolicyLead> Lead(const std::string& model, const std::string& key);
  std::optional<PolicyLead> TakeLead(const std::string& model, const std::string& key,
                                     const std::string& replica,
                                     const std::optional<PolicyLead>& seen);
  bool KeepLead(const std::string& model, const std::string& key, int64_t term, int64_t cursor,
                const std::optional<std::string>& state);
  void LeaveLead(const std::string& model, const std::string& key, int64_t term);
  // Under mu_, inside the caller's transaction.
  std::optional<PolicyLead> ReadLead(const std::string& model, const std::string& key);
  void WriteState(const std::string& model, const std::string& key, const std::string& value);

  std::vector<AuditEntry> History(const std::string& model, int64_t limit);

  ModelVersion Update(std::string_view text, const MetadataUpdate& update,
                      const std::string& reason);

  // Deletes one version row inside the caller's transaction; returns its digest.
  std::string DeleteRow(int64_t id, const std::string& model, const std::string& action,
                        const std::string& reason, bool force);

  void Delete(std::string_view text, bool force, const std::string& reason);

  bool RemoveBlobIfUnused(const std::string& sha, int64_t* freed);

  GcReport Gc(int64_t keep_latest, const std::optional<std::string>& model, bool dry_run);

  VerifyReport Verify();

  // --- artifacts kept in the database (registry_artifacts.cpp) ---
  // Stores the blob `sha` (already in the local store) in the database unless it is there.
  void UploadArtifact(const std::string& sha);
  // Under mu_, in the registration's transaction: StorageError when the upload has gone (a gc
  // ran between the upload and the commit).
  bool ArtifactUploaded(const std::string& sha);
  // Runs `use` on the local copy of `sha`, fetching it from the database first when it is
  // missing or corrupted there.
  template <class F>
  auto WithLocal(const std::string& sha, F&& use) -> decltype(use()) {
    if (!artifacts_in_db_) return use();
    if (!fs::exists(blobs_.PathOf(sha))) FetchArtifact(sha);
    try {
      return use();
    } catch (const IntegrityError&) {
      ::unlink(blobs_.PathOf(sha).c_str());  // a damaged copy of the cache, not the truth
      FetchArtifact(sha);
      return use();
    }
  }
  void FetchArtifact(const std::string& sha);
  // Under mu_, in gc's transaction: drops the stored artifacts no version refers to, and parts
  // of uploads abandoned over an hour ago; returns how many artifacts went.
  int64_t DropUnreferencedArtifacts();
  // Verify's half for the database: each referenced artifact complete there.
  void VerifyStoredArtifacts(const std::map<std::string, std::vector<std::string>>& refs_by_sha,
                             VerifyReport& report);

  std::string ArtifactSha(std::string_view text);  // of the version `text` names
  std::string ReadArtifact(std::string_view text);
  std::shared_ptr<const MappedBlob> MapArtifact(std::string_view text);
  std::shared_ptr<const MappedBlob> MapBlob(const std::string& sha);
  std::shared_ptr<BufferPool::Buffer> ReadBlob(const std::string& sha, BufferPool& pool);

  std::string ArtifactPath(std::string_view text);

  std::string location_;  // as opened: a directory or a PostgreSQL URL
  bool artifacts_in_db_;  // the artifacts live in the database; root_ is this machine's cache
  std::string root_;      // the directory of the artifacts (and the database, for SQLite)
  Options options_;
  std::unique_ptr<OpenLock> open_lock_;  // held while the constructor sets the database up
  BlobStore blobs_;
  std::unique_ptr<sql::Database> db_;
  mutable std::mutex mu_;

  // --- alias moves pushed by PostgreSQL ---
  // Tells listeners, when the transaction commits, that an alias of `model` moved.
  void AliasMoved(const std::string& model);
  std::shared_ptr<void> WatchAliases(std::function<void(const std::string&)> moved);
  void Dispatch(const std::string& model);
  std::mutex watch_mu_;  // held while watchers are called, so that removing one waits for them
  std::map<uint64_t, std::function<void(const std::string&)>> watchers_;
  uint64_t next_watcher_ = 0;
  std::unique_ptr<sql::Listener> listener_;               // started by the first watch
  std::atomic<const sql::Listener*> listening_{nullptr};  // the same, read without the lock
};

}  // namespace lepton
