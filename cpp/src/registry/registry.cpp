#include "registry_impl.h"

namespace lepton {
namespace {

constexpr int kSchemaVersion = 1;

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models(
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  description TEXT NOT NULL DEFAULT '',
  created_at REAL NOT NULL,
  last_seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS versions(
  id INTEGER PRIMARY KEY,
  model_id INTEGER NOT NULL REFERENCES models(id),
  seq INTEGER NOT NULL,
  label TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  size INTEGER NOT NULL,
  format TEXT NOT NULL,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL,
  description TEXT NOT NULL DEFAULT '',
  parent_id INTEGER REFERENCES versions(id) ON DELETE SET NULL,
  signature TEXT,
  UNIQUE(model_id, seq),
  UNIQUE(model_id, label));
CREATE INDEX IF NOT EXISTS versions_sha256 ON versions(sha256);
CREATE INDEX IF NOT EXISTS versions_parent ON versions(parent_id);
CREATE TABLE IF NOT EXISTS tags(
  version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
  key TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY(version_id, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metrics(
  version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
  key TEXT NOT NULL, value REAL NOT NULL,
  PRIMARY KEY(version_id, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS aliases(
  model_id INTEGER NOT NULL REFERENCES models(id),
  name TEXT NOT NULL,
  version_id INTEGER NOT NULL REFERENCES versions(id),
  updated_at REAL NOT NULL,
  PRIMARY KEY(model_id, name));
CREATE INDEX IF NOT EXISTS aliases_version ON aliases(version_id);
CREATE TABLE IF NOT EXISTS alias_history(
  id INTEGER PRIMARY KEY,
  model_id INTEGER NOT NULL REFERENCES models(id),
  alias TEXT NOT NULL,
  version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE);
CREATE INDEX IF NOT EXISTS alias_history_alias ON alias_history(model_id, alias);
CREATE INDEX IF NOT EXISTS alias_history_version ON alias_history(version_id);
CREATE TABLE IF NOT EXISTS audit(
  id INTEGER PRIMARY KEY,
  time REAL NOT NULL,
  model TEXT NOT NULL,
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  version TEXT, alias TEXT, from_version TEXT, to_version TEXT,
  reason TEXT NOT NULL DEFAULT '',
  details TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS audit_model ON audit(model, id);
CREATE TABLE IF NOT EXISTS policy_state(
  model TEXT NOT NULL,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  updated_at REAL NOT NULL,
  PRIMARY KEY(model, key)) WITHOUT ROWID;
)sql";

}  // namespace

// `adopt_lost_database`: open even a database that lost its metadata (Recover's case).
Registry::Impl::Impl(const std::string& root, Options options, bool adopt_lost_database)
    : root_(PrepareRoot(root)),
      options_(std::move(options)),
      open_lock_(std::make_unique<OpenLock>(root_ + "/registry.lock")),
      blobs_(root_ + "/blobs"),
      db_(root_ + "/registry.db", options_.busy_timeout_ms) {
  if (options_.actor.empty()) options_.actor = DefaultActor();
  if (!adopt_lost_database) RefuseLostDatabase();
  CollectAbandoned();
  KeepReserve();
  open_lock_.reset();
}

// --- helpers used under mu_ ---
std::string Registry::Impl::PrepareRoot(const std::string& root) {
  if (root.empty()) throw InvalidArgument("registry path must not be empty");
  std::error_code ec;
  if (fs::exists(root, ec) && !fs::is_directory(root, ec)) {
    throw InvalidArgument("registry path '" + root + "' exists and is not a directory");
  }
  fs::create_directories(root, ec);
  if (ec)
    throw StorageError("cannot create registry directory '" + root + "': " + ec.message(),
                       ec.value());
  return root;
}

// A database without lepton's schema beside a blob store that holds artifacts has been deleted,
// truncated or replaced: treating it as a new registry would let gc delete every artifact.
void Registry::Impl::RefuseLostDatabase() {
  bool has_schema = false;
  {
    auto q =
        db_.Prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta' LIMIT 1");
    has_schema = q->Step();
  }
  if (has_schema) return;
  const size_t artifacts = blobs_.List().size();
  if (artifacts == 0) return;
  throw IntegrityError(
      "the registry at '" + root_ + "' has " + std::to_string(artifacts) +
      " artifacts in its blob store but its database (registry.db) is missing or empty, so "
      "every version's metadata is gone; refusing to open it, since it would look empty and gc "
      "would delete the artifacts. Restore registry.db from a backup, or run 'lepton recover " +
      root_ +
      "' to register every stored artifact again as a version of a model named "
      "'recovered'");
}

// Creates the reserve file when it is missing and there is room for it; never fails.
void Registry::Impl::KeepReserve() {
  const std::string path = ReservePath();
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && st.st_size >= kReserveBytes) return;
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return;
  const bool ok = ::posix_fallocate(fd, 0, kReserveBytes) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) ::unlink(tmp.c_str());
}

void Registry::Impl::InitSchema() {
  db_.Exec("PRAGMA foreign_keys = ON");
  db_.Exec("PRAGMA journal_mode = WAL");
  db_.Exec("PRAGMA synchronous = FULL");
  sqlite::Transaction tx(db_);
  db_.Exec(kSchema);
  {
    auto q = db_.Prepare("SELECT value FROM meta WHERE key = 'schema_version'");
    if (q->Step()) {
      const int found = std::stoi(q->Text(0));
      if (found > kSchemaVersion) {
        throw StorageError("registry at '" + root_ + "' has schema version " +
                           std::to_string(found) + ", newer than this lepton understands (" +
                           std::to_string(kSchemaVersion) + ")");
      }
    }
  }
  db_.Prepare("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)")
      ->Bind(1, std::to_string(kSchemaVersion))
      .Run();
  tx.Commit();
}

bool Registry::Impl::Referenced(const std::string& sha) {
  auto q = db_.Prepare("SELECT 1 FROM versions WHERE sha256 = ? LIMIT 1");
  return q->Bind(1, sha).Step();
}

void Registry::Impl::CollectAbandoned() {
  std::lock_guard<std::mutex> lock(mu_);
  InitSchema();
  for (const auto& sha : blobs_.RecoverAbandoned()) {
    blobs_.RemoveIfUnused(sha, [&] { return !Referenced(sha); });
  }
}

Registry::Registry(const std::string& root) : Registry(root, Options()) {}
Registry::Registry(const std::string& root, Options options)
    : impl_(new Impl(root, std::move(options))), generation_(ForkGeneration()) {}

Registry::~Registry() {
  // An object inherited through fork leaves its parent's connection alone: closing it here could
  // release or corrupt the parent's locks.
  Impl* impl = impl_.load();
  if (generation_.load() == ForkGeneration()) delete impl;
}

Registry::Impl* Registry::Self() const {
  const uint64_t now = ForkGeneration();
  if (generation_.load(std::memory_order_acquire) == now) return impl_.load();
  static std::mutex reopen_mu;  // taken only in a forked child, once per object
  std::lock_guard<std::mutex> lock(reopen_mu);
  if (generation_.load() != now) {
    Impl* inherited = impl_.load();
    impl_.store(new Impl(inherited->root_, inherited->options_));
    generation_.store(now, std::memory_order_release);
  }
  return impl_.load();
}

RecoverReport Registry::Recover(const std::string& root, const std::string& model,
                                Options options) {
  ValidateName(model, "model name");
  RecoverReport report;
  const std::string root_dir = Impl::PrepareRoot(root);
  {
    OpenLock lock(root_dir + "/registry.lock");
    const std::string db_path = root_dir + "/registry.db";
    bool lost = false;
    if (fs::exists(db_path)) {
      sqlite::Database db(db_path, options.busy_timeout_ms);
      auto q =
          db.Prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta' LIMIT 1");
      lost = !q->Step();
    }
    if (lost) {
      report.moved_aside = db_path + ".lost-" + std::to_string(static_cast<int64_t>(Now()));
      for (const char* suffix : {"", "-wal", "-shm"}) {
        const std::string from = db_path + suffix;
        if (fs::exists(from) &&
            ::rename(from.c_str(), (report.moved_aside + suffix).c_str()) != 0) {
          const int e = errno;
          throw StorageError("cannot move " + from + " aside: " + std::strerror(e), e);
        }
      }
    }
  }
  // Opening creates the schema in a database that has none; what it holds is what is recovered.
  Impl impl(root_dir, std::move(options), /*adopt_lost_database=*/true);
  std::vector<std::pair<int64_t, std::string>> orphans;  // (mtime, digest)
  for (const std::string& sha : impl.Verify().orphan_blobs) {
    struct stat st {};
    ::stat(impl.blobs_.PathOf(sha).c_str(), &st);
    orphans.emplace_back(static_cast<int64_t>(st.st_mtime), sha);
  }
  std::sort(orphans.begin(), orphans.end());
  for (const auto& [mtime, sha] : orphans) {
    RegisterOptions o;
    o.version = "sha256-" + sha.substr(0, 12);
    o.description = "recovered from the blob store";
    o.tags = {{"recovered", "blob store"}};
    o.reason = "lepton recover: the artifact was stored but no version referred to it";
    try {
      const std::string path = impl.blobs_.PathOf(sha);
      report.recovered.push_back(impl.Register(model, o,
                                               [&](const BlobStore::Validator& validate) {
                                                 return impl.blobs_.PutFile(path, validate);
                                               })
                                     .ref());
    } catch (const Error& e) {
      report.skipped.push_back(sha + ": " + e.what());
    }
  }
  return report;
}

const std::string& Registry::root() const { return Self()->root_; }
const std::string& Registry::actor() const { return Self()->options_.actor; }

void Registry::CreateModel(const std::string& name, const std::string& description, bool exist_ok) {
  Self()->CreateModel(name, description, exist_ok);
}
void Registry::SetModelDescription(const std::string& name, const std::string& description) {
  Self()->SetModelDescription(name, description);
}
ModelVersion Registry::RegisterFile(const std::string& model, const std::string& path,
                                    const RegisterOptions& options) {
  return Self()->Register(model, options, [&](const BlobStore::Validator& validate) {
    return Self()->blobs_.PutFile(path, validate);
  });
}
ModelVersion Registry::RegisterBytes(const std::string& model, std::string_view bytes,
                                     const RegisterOptions& options) {
  return Self()->Register(model, options, [&](const BlobStore::Validator& validate) {
    return Self()->blobs_.PutBytes(bytes, validate);
  });
}
ModelVersion Registry::Get(std::string_view ref) const { return Self()->Get(ref); }
std::vector<ModelVersion> Registry::Versions(const std::string& model) const {
  return Self()->Versions(model);
}
std::vector<ModelSummary> Registry::Models() const { return Self()->Models(); }
std::map<std::string, std::string> Registry::Aliases(const std::string& model) const {
  return Self()->Aliases(model);
}
std::string Registry::ReadArtifact(std::string_view ref) const { return Self()->ReadArtifact(ref); }
std::shared_ptr<const MappedBlob> Registry::MapArtifact(std::string_view ref) const {
  return Self()->MapArtifact(ref);
}
std::string Registry::ArtifactPath(std::string_view ref) const { return Self()->ArtifactPath(ref); }
ModelVersion Registry::SetAlias(const std::string& model, const std::string& alias,
                                const std::string& version,
                                const std::optional<std::string>& expected,
                                const std::string& reason) {
  return Self()->SetAlias(model, alias, version, expected, reason);
}
void Registry::RemoveAlias(const std::string& model, const std::string& alias,
                           const std::string& reason) {
  Self()->RemoveAlias(model, alias, reason);
}
ModelVersion Registry::Rollback(const std::string& model, const std::string& alias,
                                const std::string& reason) {
  return Self()->Rollback(model, alias, reason);
}
std::vector<AuditEntry> Registry::History(const std::string& model, int64_t limit) const {
  return Self()->History(model, limit);
}
ModelVersion Registry::Update(std::string_view ref, const MetadataUpdate& update,
                              const std::string& reason) {
  return Self()->Update(ref, update, reason);
}
void Registry::Delete(std::string_view ref, bool force, const std::string& reason) {
  Self()->Delete(ref, force, reason);
}
GcReport Registry::Gc(int64_t keep_latest, const std::optional<std::string>& model, bool dry_run) {
  return Self()->Gc(keep_latest, model, dry_run);
}
VerifyReport Registry::Verify() const { return Self()->Verify(); }
void Registry::Record(const std::string& model, const std::string& action,
                      const std::optional<std::string>& version,
                      const std::optional<std::string>& from, const std::optional<std::string>& to,
                      const std::string& reason, const std::string& details) {
  Self()->Record(model, action, version, from, to, reason, details);
}
void Registry::PutState(const std::string& model, const std::string& key,
                        const std::string& value) {
  Self()->PutState(model, key, value);
}
std::optional<std::string> Registry::GetState(const std::string& model,
                                              const std::string& key) const {
  return Self()->GetState(model, key);
}

}  // namespace lepton
