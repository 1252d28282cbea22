#include "lepton/registry/registry.h"

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
#include "sqlite_db.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace lepton {
namespace {

constexpr int kSchemaVersion = 1;
// Space set aside in the registry's directory, given up when a delete or gc meets a full disk so
// that lepton itself can always free space.
constexpr int64_t kReserveBytes = 8 << 20;
constexpr const char* kReserveName = "reserve";

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

bool IsDiskFull(const StorageError& e) { return e.os_errno() == ENOSPC || e.os_errno() == EDQUOT; }

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

constexpr const char* kVersionColumns =
    "SELECT v.id, m.name, v.label, v.seq, v.sha256, v.size, v.format, v.created_at, v.updated_at, "
    "v.description, pm.name, p.label, v.signature FROM versions v JOIN models m ON m.id = "
    "v.model_id "
    "LEFT JOIN versions p ON p.id = v.parent_id LEFT JOIN models pm ON pm.id = p.model_id ";

double Now() {
  using namespace std::chrono;
  return duration_cast<microseconds>(system_clock::now().time_since_epoch()).count() / 1e6;
}

std::string DefaultActor() {
  if (const char* env = std::getenv("LEPTON_ACTOR"); env && *env) return env;
  if (const passwd* pw = ::getpwuid(::geteuid()); pw && pw->pw_name) return pw->pw_name;
  return "uid:" + std::to_string(::geteuid());
}

json SignatureToJson(const Signature& s) {
  auto specs = [](const std::vector<TensorSpec>& v) {
    json out = json::array();
    for (const auto& t : v)
      out.push_back({{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}});
    return out;
  };
  return {{"inputs", specs(s.inputs)}, {"outputs", specs(s.outputs)}};
}

Signature SignatureFromJson(const std::string& text) {
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

void ValidateMetadata(const std::map<std::string, std::string>& tags,
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

}  // namespace

class Registry::Impl {
 public:
  // `adopt_lost_database`: open even a database that lost its metadata (Recover's case).
  Impl(const std::string& root, Options options, bool adopt_lost_database = false)
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

  static std::string PrepareRoot(const std::string& root) {
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
  void RefuseLostDatabase() {
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

  std::string ReservePath() const { return root_ + "/" + kReserveName; }

  // Creates the reserve file when it is missing and there is room for it; never fails.
  void KeepReserve() {
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

  void InitSchema() {
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

  bool Referenced(const std::string& sha) {
    auto q = db_.Prepare("SELECT 1 FROM versions WHERE sha256 = ? LIMIT 1");
    return q->Bind(1, sha).Step();
  }

  void CollectAbandoned() {
    std::lock_guard<std::mutex> lock(mu_);
    InitSchema();
    for (const auto& sha : blobs_.RecoverAbandoned()) {
      blobs_.RemoveIfUnused(sha, [&] { return !Referenced(sha); });
    }
  }

  std::optional<int64_t> FindModel(const std::string& name) {
    auto q = db_.Prepare("SELECT id FROM models WHERE name = ?");
    if (q->Bind(1, name).Step()) return q->Int(0);
    return std::nullopt;
  }

  int64_t ModelId(const std::string& name) {
    if (auto id = FindModel(name)) return *id;
    throw NotFound("model '" + name + "' does not exist in the registry at '" + root_ + "'");
  }

  std::string AliasList(int64_t model_id) {
    auto q = db_.Prepare("SELECT name FROM aliases WHERE model_id = ? ORDER BY name");
    q->Bind(1, model_id);
    std::string out;
    while (q->Step()) out += (out.empty() ? "" : ", ") + q->Text(0);
    return out.empty() ? "none" : out;
  }

  std::optional<int64_t> FindVersion(int64_t model_id, const Reference& ref) {
    switch (ref.kind) {
      case Reference::Kind::kLatest: {
        auto q =
            db_.Prepare("SELECT id FROM versions WHERE model_id = ? ORDER BY seq DESC LIMIT 1");
        if (q->Bind(1, model_id).Step()) return q->Int(0);
        return std::nullopt;
      }
      case Reference::Kind::kLabel: {
        auto q = db_.Prepare("SELECT id FROM versions WHERE model_id = ? AND label = ?");
        if (q->Bind(1, model_id).Bind(2, ref.value).Step()) return q->Int(0);
        return std::nullopt;
      }
      case Reference::Kind::kAlias: {
        auto q = db_.Prepare("SELECT version_id FROM aliases WHERE model_id = ? AND name = ?");
        if (q->Bind(1, model_id).Bind(2, ref.value).Step()) return q->Int(0);
        return std::nullopt;
      }
    }
    return std::nullopt;
  }

  int64_t Resolve(const Reference& ref) {
    const int64_t model_id = ModelId(ref.model);
    if (auto id = FindVersion(model_id, ref)) return *id;
    switch (ref.kind) {
      case Reference::Kind::kLatest:
        throw NotFound("model '" + ref.model + "' has no versions");
      case Reference::Kind::kLabel:
        throw NotFound("model '" + ref.model + "' has no version '" + ref.value + "'");
      case Reference::Kind::kAlias:
        throw NotFound("model '" + ref.model + "' has no alias '" + ref.value +
                       "' (aliases: " + AliasList(model_id) + ")");
    }
    throw NotFound(ref.ToString());
  }

  std::string LabelOf(int64_t version_id) {
    auto q = db_.Prepare("SELECT label FROM versions WHERE id = ?");
    if (q->Bind(1, version_id).Step()) return q->Text(0);
    throw NotFound("version id " + std::to_string(version_id));
  }

  static ModelVersion RowToVersion(sqlite::Statement& s) {
    ModelVersion v;
    v.model = s.Text(1);
    v.version = s.Text(2);
    v.seq = s.Int(3);
    v.sha256 = s.Text(4);
    v.size = s.Int(5);
    v.format = s.Text(6);
    v.created_at = s.Real(7);
    v.updated_at = s.Real(8);
    v.description = s.Text(9);
    if (!s.IsNull(10)) v.parent = s.Text(10) + ":" + s.Text(11);
    if (!s.IsNull(12)) v.signature = SignatureFromJson(s.Text(12));
    return v;
  }

  ModelVersion LoadVersion(int64_t id) {
    ModelVersion v;
    {
      auto q = db_.Prepare(std::string(kVersionColumns) + "WHERE v.id = ?");
      if (!q->Bind(1, id).Step()) throw NotFound("version id " + std::to_string(id));
      v = RowToVersion(*q);
    }
    {
      auto q = db_.Prepare("SELECT key, value FROM tags WHERE version_id = ?");
      q->Bind(1, id);
      while (q->Step()) v.tags.emplace(q->Text(0), q->Text(1));
    }
    {
      auto q = db_.Prepare("SELECT key, value FROM metrics WHERE version_id = ?");
      q->Bind(1, id);
      while (q->Step()) v.metrics.emplace(q->Text(0), q->Real(1));
    }
    {
      auto q = db_.Prepare("SELECT name FROM aliases WHERE version_id = ? ORDER BY name");
      q->Bind(1, id);
      while (q->Step()) v.aliases.push_back(q->Text(0));
    }
    return v;
  }

  void Audit(const std::string& model, const std::string& action,
             const std::optional<std::string>& version, const std::optional<std::string>& alias,
             const std::optional<std::string>& from, const std::optional<std::string>& to,
             const std::string& reason, const json& details) {
    db_.Prepare(
           "INSERT INTO audit(time, model, actor, action, version, alias, from_version, "
           "to_version, reason, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        ->Bind(1, Now())
        .Bind(2, model)
        .Bind(3, options_.actor)
        .Bind(4, action)
        .Bind(5, version)
        .Bind(6, alias)
        .Bind(7, from)
        .Bind(8, to)
        .Bind(9, reason)
        .Bind(10, details.dump())
        .Run();
  }

  int64_t EnsureModel(const std::string& name, const std::string& description) {
    db_.Prepare("INSERT OR IGNORE INTO models(name, description, created_at) VALUES (?, ?, ?)")
        ->Bind(1, name)
        .Bind(2, description)
        .Bind(3, Now())
        .Run();
    return ModelId(name);
  }

  ModelVersion Register(const std::string& model, const RegisterOptions& opts,
                        const std::function<BlobLease(const BlobStore::Validator&)>& store) {
    ValidateName(model, "model name");
    if (opts.version) {
      ValidateName(*opts.version, "version label");
    }
    ValidateMetadata(opts.tags, opts.metrics);
    if (opts.signature) ValidateSignature(*opts.signature);
    if (opts.parent && opts.parent->empty()) throw InvalidArgument("parent must not be empty");
    std::optional<Reference> parent_ref;
    if (opts.parent) {
      // A bare label or `@ALIAS` is within this model; `other:LABEL` may name any model.
      const bool within =
          opts.parent->front() == '@' || opts.parent->find_first_of(":@") == std::string::npos;
      parent_ref = within ? ParseVersionIn(model, *opts.parent) : ParseReference(*opts.parent);
    }
    if (opts.version) {
      // Refuse a taken label before copying a possibly large artifact; checked again below.
      std::lock_guard<std::mutex> lock(mu_);
      if (auto id = FindModel(model);
          id && FindVersion(*id, {model, Reference::Kind::kLabel, *opts.version})) {
        throw LabelTaken(model, *opts.version);
      }
    }

    const auto& format = options_.format;
    BlobLease lease = store(format ? BlobStore::Validator([&format](const std::string& path) {
      format->Validate(path);
    })
                                   : BlobStore::Validator());

    std::lock_guard<std::mutex> lock(mu_);
    try {
      return Commit(model, opts, parent_ref, lease);
    } catch (...) {
      // The metadata was rolled back: the blob goes too unless another version shares it.
      const std::string sha = lease.sha256();
      lease.Release();
      blobs_.RemoveIfUnused(sha, [&] { return !Referenced(sha); });
      throw;
    }
  }

  static Conflict LabelTaken(const std::string& model, const std::string& label) {
    return Conflict("model '" + model + "' already has a version '" + label +
                    "'; labels are unique and artifacts immutable, so register under a new label");
  }

  ModelVersion Commit(const std::string& model, const RegisterOptions& opts,
                      const std::optional<Reference>& parent_ref, BlobLease& lease) {
    const auto& format = options_.format;
    sqlite::Transaction tx(db_);
    const int64_t model_id = EnsureModel(model, "");
    int64_t seq = 0;
    {
      auto q = db_.Prepare("SELECT last_seq FROM models WHERE id = ?");
      q->Bind(1, model_id).Step();
      seq = q->Int(0) + 1;
    }
    std::string label;
    if (opts.version) {
      label = *opts.version;
      if (FindVersion(model_id, {model, Reference::Kind::kLabel, label})) {
        throw LabelTaken(model, label);
      }
    } else {
      label = "v" + std::to_string(seq);
      for (int n = 2; FindVersion(model_id, {model, Reference::Kind::kLabel, label}); ++n) {
        label = "v" + std::to_string(seq) + "-" + std::to_string(n);
      }
    }
    std::optional<int64_t> parent_id;
    if (parent_ref) parent_id = Resolve(*parent_ref);

    const double now = Now();
    {
      auto q = db_.Prepare(
          "INSERT INTO versions(model_id, seq, label, sha256, size, format, created_at, "
          "updated_at, description, parent_id, signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
          "?)");
      q->Bind(1, model_id)
          .Bind(2, seq)
          .Bind(3, label)
          .Bind(4, lease.sha256())
          .Bind(5, lease.size())
          .Bind(6, format ? format->name() : std::string("opaque"))
          .Bind(7, now)
          .Bind(8, now)
          .Bind(9, opts.description);
      if (parent_id) {
        q->Bind(10, *parent_id);
      } else {
        q->BindNull(10);
      }
      if (opts.signature) {
        q->Bind(11, SignatureToJson(*opts.signature).dump());
      } else {
        q->BindNull(11);
      }
      q->Run();
    }
    const int64_t id = db_.LastInsertRowId();
    db_.Prepare("UPDATE models SET last_seq = ? WHERE id = ?")
        ->Bind(1, seq)
        .Bind(2, model_id)
        .Run();
    for (const auto& [k, v] : opts.tags) {
      db_.Prepare("INSERT INTO tags(version_id, key, value) VALUES (?, ?, ?)")
          ->Bind(1, id)
          .Bind(2, k)
          .Bind(3, v)
          .Run();
    }
    for (const auto& [k, v] : opts.metrics) {
      db_.Prepare("INSERT INTO metrics(version_id, key, value) VALUES (?, ?, ?)")
          ->Bind(1, id)
          .Bind(2, k)
          .Bind(3, v)
          .Run();
    }
    json details = {{"seq", seq}, {"sha256", lease.sha256()}, {"size", lease.size()}};
    if (parent_id) details["parent"] = parent_ref->ToString();
    Audit(model, "register", label, std::nullopt, std::nullopt, std::nullopt, opts.reason, details);
    // Read inside the transaction: once committed, a concurrent delete or gc may remove the row,
    // and a register that then reported NotFound would be retried into a duplicate.
    ModelVersion registered = LoadVersion(id);
    tx.Commit();
    lease.Release();
    return registered;
  }

  void CreateModel(const std::string& name, const std::string& description, bool exist_ok) {
    ValidateName(name, "model name");
    std::lock_guard<std::mutex> lock(mu_);
    sqlite::Transaction tx(db_);
    if (FindModel(name)) {
      if (!exist_ok) throw Conflict("model '" + name + "' already exists");
      return;
    }
    EnsureModel(name, description);
    Audit(name, "create_model", std::nullopt, std::nullopt, std::nullopt, std::nullopt, "",
          {{"description", description}});
    tx.Commit();
  }

  void SetModelDescription(const std::string& name, const std::string& description) {
    std::lock_guard<std::mutex> lock(mu_);
    sqlite::Transaction tx(db_);
    const int64_t id = ModelId(name);
    db_.Prepare("UPDATE models SET description = ? WHERE id = ?")
        ->Bind(1, description)
        .Bind(2, id)
        .Run();
    Audit(name, "update_model", std::nullopt, std::nullopt, std::nullopt, std::nullopt, "",
          {{"description", description}});
    tx.Commit();
  }

  ModelVersion Get(std::string_view text) {
    const Reference ref = ParseReference(text);
    std::lock_guard<std::mutex> lock(mu_);
    sqlite::Transaction tx(db_, /*write=*/false);
    return LoadVersion(Resolve(ref));
  }

  std::vector<ModelVersion> Versions(const std::string& model) {
    ValidateName(model, "model name");
    std::lock_guard<std::mutex> lock(mu_);
    sqlite::Transaction tx(db_, /*write=*/false);
    const int64_t model_id = ModelId(model);
    std::vector<ModelVersion> out;
    std::unordered_map<int64_t, size_t> index;
    {
      auto q = db_.Prepare(std::string(kVersionColumns) + "WHERE v.model_id = ? ORDER BY v.seq");
      q->Bind(1, model_id);
      while (q->Step()) {
        index.emplace(q->Int(0), out.size());
        out.push_back(RowToVersion(*q));
      }
    }
    {
      auto q = db_.Prepare(
          "SELECT t.version_id, t.key, t.value FROM tags t JOIN versions v ON v.id = t.version_id "
          "WHERE v.model_id = ?");
      q->Bind(1, model_id);
      while (q->Step()) out[index.at(q->Int(0))].tags.emplace(q->Text(1), q->Text(2));
    }
    {
      auto q = db_.Prepare(
          "SELECT t.version_id, t.key, t.value FROM metrics t JOIN versions v ON v.id = "
          "t.version_id WHERE v.model_id = ?");
      q->Bind(1, model_id);
      while (q->Step()) out[index.at(q->Int(0))].metrics.emplace(q->Text(1), q->Real(2));
    }
    {
      auto q = db_.Prepare("SELECT version_id, name FROM aliases WHERE model_id = ? ORDER BY name");
      q->Bind(1, model_id);
      while (q->Step()) out[index.at(q->Int(0))].aliases.push_back(q->Text(1));
    }
    return out;
  }

  std::vector<ModelSummary> Models() {
    std::lock_guard<std::mutex> lock(mu_);
    sqlite::Transaction tx(db_, /*write=*/false);
    std::vector<ModelSummary> out;
    std::unordered_map<std::string, size_t> index;
    {
      auto q = db_.Prepare(
          "SELECT m.name, m.description, m.created_at, COUNT(v.id), "
          "(SELECT label FROM versions WHERE model_id = m.id ORDER BY seq DESC LIMIT 1) "
          "FROM models m LEFT JOIN versions v ON v.model_id = m.id GROUP BY m.id ORDER BY m.name");
      while (q->Step()) {
        ModelSummary s;
        s.name = q->Text(0);
        s.description = q->Text(1);
        s.created_at = q->Real(2);
        s.version_count = q->Int(3);
        s.latest = q->OptText(4);
        index.emplace(s.name, out.size());
        out.push_back(std::move(s));
      }
    }
    {
      auto q = db_.Prepare(
          "SELECT m.name, a.name, v.label FROM aliases a JOIN models m ON m.id = a.model_id "
          "JOIN versions v ON v.id = a.version_id");
      while (q->Step()) out[index.at(q->Text(0))].aliases.emplace(q->Text(1), q->Text(2));
    }
    return out;
  }

  std::map<std::string, std::string> Aliases(const std::string& model) {
    ValidateName(model, "model name");
    std::lock_guard<std::mutex> lock(mu_);
    sqlite::Transaction tx(db_, /*write=*/false);
    const int64_t model_id = ModelId(model);
    std::map<std::string, std::string> out;
    auto q = db_.Prepare(
        "SELECT a.name, v.label FROM aliases a JOIN versions v ON v.id = a.version_id "
        "WHERE a.model_id = ?");
    q->Bind(1, model_id);
    while (q->Step()) out.emplace(q->Text(0), q->Text(1));
    return out;
  }

  ModelVersion SetAlias(const std::string& model, const std::string& alias,
                        const std::string& version, const std::optional<std::string>& expected,
                        const std::string& reason) {
    ValidateName(model, "model name");
    ValidateName(alias, "alias");
    if (alias == kLatestAlias) {
      throw InvalidArgument("'latest' always means the newest version and cannot be set");
    }
    const Reference target_ref = ParseVersionIn(model, version);
    std::lock_guard<std::mutex> lock(mu_);
    sqlite::Transaction tx(db_);
    const int64_t model_id = ModelId(model);
    const int64_t target = Resolve(target_ref);
    const std::optional<int64_t> current =
        FindVersion(model_id, {model, Reference::Kind::kAlias, alias});
    const std::optional<std::string> current_label =
        current ? std::optional<std::string>(LabelOf(*current)) : std::nullopt;
    if (expected) {
      if (expected->empty()) {
        if (current) {
          throw Conflict("alias '" + model + "@" + alias + "' already points to '" +
                         *current_label + "', expected it not to exist");
        }
      } else {
        const Reference expected_ref = ParseVersionIn(model, *expected);
        const std::optional<int64_t> expected_id = FindVersion(model_id, expected_ref);
        if (!current || !expected_id || *expected_id != *current) {
          throw Conflict("alias '" + model + "@" + alias + "' points to " +
                         (current ? "'" + *current_label + "'" : std::string("nothing")) +
                         ", expected '" + *expected + "'");
        }
      }
    }
    if (current && *current == target) return LoadVersion(target);
    if (current) {
      db_.Prepare("INSERT INTO alias_history(model_id, alias, version_id) VALUES (?, ?, ?)")
          ->Bind(1, model_id)
          .Bind(2, alias)
          .Bind(3, *current)
          .Run();
    }
    MoveAlias(model_id, alias, target);
    const std::string target_label = LabelOf(target);
    Audit(model, "set_alias", target_label, alias, current_label, target_label, reason,
          json::object());
    ModelVersion result = LoadVersion(target);
    tx.Commit();
    return result;
  }

  void MoveAlias(int64_t model_id, const std::string& alias, int64_t target) {
    db_.Prepare(
           "INSERT INTO aliases(model_id, name, version_id, updated_at) VALUES (?, ?, ?, ?) "
           "ON CONFLICT(model_id, name) DO UPDATE SET version_id = excluded.version_id, "
           "updated_at = excluded.updated_at")
        ->Bind(1, model_id)
        .Bind(2, alias)
        .Bind(3, target)
        .Bind(4, Now())
        .Run();
  }

  void RemoveAlias(const std::string& model, const std::string& alias, const std::string& reason) {
    ValidateName(model, "model name");
    ValidateName(alias, "alias");
    std::lock_guard<std::mutex> lock(mu_);
    sqlite::Transaction tx(db_);
    const int64_t model_id = ModelId(model);
    const int64_t current = Resolve({model, Reference::Kind::kAlias, alias});
    const std::string label = LabelOf(current);
    db_.Prepare("DELETE FROM aliases WHERE model_id = ? AND name = ?")
        ->Bind(1, model_id)
        .Bind(2, alias)
        .Run();
    db_.Prepare("DELETE FROM alias_history WHERE model_id = ? AND alias = ?")
        ->Bind(1, model_id)
        .Bind(2, alias)
        .Run();
    Audit(model, "remove_alias", label, alias, label, std::nullopt, reason, json::object());
    tx.Commit();
  }

  ModelVersion Rollback(const std::string& model, const std::string& alias,
                        const std::string& reason) {
    ValidateName(model, "model name");
    ValidateName(alias, "alias");
    std::lock_guard<std::mutex> lock(mu_);
    sqlite::Transaction tx(db_);
    const int64_t model_id = ModelId(model);
    const int64_t current = Resolve({model, Reference::Kind::kAlias, alias});
    int64_t history_id = 0, previous = 0;
    {
      auto q = db_.Prepare(
          "SELECT id, version_id FROM alias_history WHERE model_id = ? AND alias = ? "
          "ORDER BY id DESC LIMIT 1");
      if (!q->Bind(1, model_id).Bind(2, alias).Step()) {
        throw Conflict("alias '" + model + "@" + alias +
                       "' has no previous target to roll back to");
      }
      history_id = q->Int(0);
      previous = q->Int(1);
    }
    db_.Prepare("DELETE FROM alias_history WHERE id = ?")->Bind(1, history_id).Run();
    MoveAlias(model_id, alias, previous);
    const std::string from = LabelOf(current), to = LabelOf(previous);
    Audit(model, "rollback", to, alias, from, to, reason, json::object());
    ModelVersion result = LoadVersion(previous);
    tx.Commit();
    return result;
  }

  void Record(const std::string& model, const std::string& action,
              const std::optional<std::string>& version, const std::optional<std::string>& from,
              const std::optional<std::string>& to, const std::string& reason,
              const std::string& details) {
    ValidateName(model, "model name");
    ValidateName(action, "audit action");
    json parsed = details.empty() ? json::object() : json::parse(details, nullptr, false);
    if (parsed.is_discarded() || !parsed.is_object()) {
      throw InvalidArgument("audit details must be a JSON object");
    }
    std::lock_guard<std::mutex> lock(mu_);
    sqlite::Transaction tx(db_);
    ModelId(model);
    Audit(model, action, version, std::nullopt, from, to, reason, parsed);
    tx.Commit();
  }

  void PutState(const std::string& model, const std::string& key, const std::string& value) {
    ValidateName(model, "model name");
    if (key.empty()) throw InvalidArgument("state key must not be empty");
    std::lock_guard<std::mutex> lock(mu_);
    sqlite::Transaction tx(db_);
    db_.Prepare(
           "INSERT INTO policy_state(model, key, value, updated_at) VALUES (?, ?, ?, ?) "
           "ON CONFLICT(model, key) DO UPDATE SET value = excluded.value, "
           "updated_at = excluded.updated_at")
        ->Bind(1, model)
        .Bind(2, key)
        .Bind(3, value)
        .Bind(4, Now())
        .Run();
    tx.Commit();
  }

  std::optional<std::string> GetState(const std::string& model, const std::string& key) {
    std::lock_guard<std::mutex> lock(mu_);
    auto q = db_.Prepare("SELECT value FROM policy_state WHERE model = ? AND key = ?");
    if (!q->Bind(1, model).Bind(2, key).Step()) return std::nullopt;
    return q->Text(0);
  }

  std::vector<AuditEntry> History(const std::string& model, int64_t limit) {
    ValidateName(model, "model name");
    if (limit < 0) throw InvalidArgument("history limit must be >= 0");
    std::lock_guard<std::mutex> lock(mu_);
    sqlite::Transaction tx(db_, /*write=*/false);
    std::vector<AuditEntry> out;
    auto q = db_.Prepare(
        "SELECT * FROM (SELECT id, time, model, actor, action, version, alias, from_version, "
        "to_version, reason, details FROM audit WHERE model = ? ORDER BY id DESC LIMIT ?) "
        "ORDER BY id");
    q->Bind(1, model).Bind(2, limit > 0 ? limit : int64_t{-1});
    while (q->Step()) {
      AuditEntry e;
      e.id = q->Int(0);
      e.time = q->Real(1);
      e.model = q->Text(2);
      e.actor = q->Text(3);
      e.action = q->Text(4);
      e.version = q->OptText(5);
      e.alias = q->OptText(6);
      e.from_version = q->OptText(7);
      e.to_version = q->OptText(8);
      e.reason = q->Text(9);
      e.details = q->Text(10);
      out.push_back(std::move(e));
    }
    if (out.empty() && !FindModel(model)) {
      throw NotFound("model '" + model + "' has no history in the registry at '" + root_ + "'");
    }
    return out;
  }

  ModelVersion Update(std::string_view text, const MetadataUpdate& update,
                      const std::string& reason) {
    const Reference ref = ParseReference(text);
    std::map<std::string, std::string> set_tags;
    std::map<std::string, double> set_metrics;
    for (const auto& [k, v] : update.tags) {
      if (v) set_tags.emplace(k, *v);
      if (k.empty()) throw InvalidArgument("tag keys must not be empty");
    }
    for (const auto& [k, v] : update.metrics) {
      if (v) set_metrics.emplace(k, *v);
      if (k.empty()) throw InvalidArgument("metric names must not be empty");
    }
    ValidateMetadata(set_tags, set_metrics);
    std::lock_guard<std::mutex> lock(mu_);
    sqlite::Transaction tx(db_);
    const int64_t id = Resolve(ref);
    json details = json::object();
    for (const auto& [k, v] : update.tags) {
      if (v) {
        db_.Prepare(
               "INSERT INTO tags(version_id, key, value) VALUES (?, ?, ?) "
               "ON CONFLICT(version_id, key) DO UPDATE SET value = excluded.value")
            ->Bind(1, id)
            .Bind(2, k)
            .Bind(3, *v)
            .Run();
        details["tags"][k] = *v;
      } else {
        db_.Prepare("DELETE FROM tags WHERE version_id = ? AND key = ?")
            ->Bind(1, id)
            .Bind(2, k)
            .Run();
        details["tags"][k] = nullptr;
      }
    }
    for (const auto& [k, v] : update.metrics) {
      if (v) {
        db_.Prepare(
               "INSERT INTO metrics(version_id, key, value) VALUES (?, ?, ?) "
               "ON CONFLICT(version_id, key) DO UPDATE SET value = excluded.value")
            ->Bind(1, id)
            .Bind(2, k)
            .Bind(3, *v)
            .Run();
        details["metrics"][k] = *v;
      } else {
        db_.Prepare("DELETE FROM metrics WHERE version_id = ? AND key = ?")
            ->Bind(1, id)
            .Bind(2, k)
            .Run();
        details["metrics"][k] = nullptr;
      }
    }
    if (update.description) {
      db_.Prepare("UPDATE versions SET description = ? WHERE id = ?")
          ->Bind(1, *update.description)
          .Bind(2, id)
          .Run();
      details["description"] = *update.description;
    }
    db_.Prepare("UPDATE versions SET updated_at = ? WHERE id = ?")
        ->Bind(1, Now())
        .Bind(2, id)
        .Run();
    Audit(ref.model, "update", LabelOf(id), std::nullopt, std::nullopt, std::nullopt, reason,
          details);
    ModelVersion result = LoadVersion(id);
    tx.Commit();
    return result;
  }

  // Deletes one version row inside the caller's transaction; returns its digest.
  std::string DeleteRow(int64_t id, const std::string& model, const std::string& action,
                        const std::string& reason, bool force) {
    ModelVersion v = LoadVersion(id);
    if (!v.aliases.empty() && !force) {
      std::string list;
      for (const auto& a : v.aliases) list += (list.empty() ? "" : ", ") + a;
      throw Conflict("version '" + v.ref() + "' is the target of alias " + list +
                     "; move the alias first or delete with force");
    }
    db_.Prepare("DELETE FROM aliases WHERE version_id = ?")->Bind(1, id).Run();
    db_.Prepare("DELETE FROM versions WHERE id = ?")->Bind(1, id).Run();
    json details = {{"seq", v.seq}, {"sha256", v.sha256}};
    if (!v.aliases.empty()) details["aliases_removed"] = v.aliases;
    Audit(model, action, v.version, std::nullopt, std::nullopt, std::nullopt, reason, details);
    return v.sha256;
  }

  void Delete(std::string_view text, bool force, const std::string& reason) {
    const Reference ref = ParseReference(text);
    const std::string sha = FreeingSpace([&] {
      std::lock_guard<std::mutex> lock(mu_);
      sqlite::Transaction tx(db_);
      std::string digest = DeleteRow(Resolve(ref), ref.model, "delete", reason, force);
      tx.Commit();
      return digest;
    });
    RemoveBlobIfUnused(sha, nullptr);
    KeepReserve();
  }

  bool RemoveBlobIfUnused(const std::string& sha, int64_t* freed) {
    std::lock_guard<std::mutex> lock(mu_);
    return blobs_.RemoveIfUnused(
        sha, [&] { return !Referenced(sha); }, freed);
  }

  GcReport Gc(int64_t keep_latest, const std::optional<std::string>& model, bool dry_run) {
    if (keep_latest < 0) throw InvalidArgument("keep_latest must be >= 0");
    if (model) ValidateName(*model, "model name");
    GcReport report;
    report.dry_run = dry_run;
    FreeingSpace([&] {
      report.deleted_versions.clear();
      std::lock_guard<std::mutex> lock(mu_);
      sqlite::Transaction tx(db_);
      if (model) ModelId(*model);
      std::vector<std::pair<int64_t, std::string>> doomed;
      {
        auto q = db_.Prepare(
            "SELECT id, name FROM (SELECT v.id AS id, m.name AS name, ROW_NUMBER() OVER "
            "(PARTITION BY v.model_id ORDER BY v.seq DESC) AS rank FROM versions v JOIN models m "
            "ON m.id = v.model_id WHERE (?1 IS NULL OR m.name = ?1)) r WHERE rank > ?2 AND NOT "
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
      tx.Commit();
    });
    if (dry_run) {
      // Blobs that would be left unreferenced: those whose every referencing version is doomed.
      std::lock_guard<std::mutex> lock(mu_);
      std::set<std::string> doomed(report.deleted_versions.begin(), report.deleted_versions.end());
      std::map<std::string, bool> kept_by_sha;
      auto q = db_.Prepare(
          "SELECT m.name || ':' || v.label, v.sha256 FROM versions v JOIN models m "
          "ON m.id = v.model_id");
      while (q->Step()) kept_by_sha[q->Text(1)] |= !doomed.count(q->Text(0));
      for (const auto& sha : blobs_.List()) {
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
    for (const auto& sha : candidates) {
      if (RemoveBlobIfUnused(sha, &report.bytes_freed)) ++report.blobs_removed;
    }
    KeepReserve();
    return report;
  }

  VerifyReport Verify() {
    VerifyReport report;
    std::map<std::string, std::vector<std::string>> refs_by_sha;
    // Listed before the versions are read, so that a blob registered meanwhile is not taken for
    // an orphan; one that a writer still holds is on its way to being committed.
    std::vector<std::string> stored = blobs_.List();
    {
      std::lock_guard<std::mutex> lock(mu_);
      sqlite::Transaction tx(db_, /*write=*/false);
      auto q = db_.Prepare(
          "SELECT m.name, v.label, v.sha256 FROM versions v JOIN models m ON m.id = v.model_id "
          "ORDER BY m.name, v.seq");
      while (q->Step()) {
        refs_by_sha[q->Text(2)].push_back(q->Text(0) + ":" + q->Text(1));
        ++report.versions_checked;
      }
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

  std::string ReadArtifact(std::string_view text) {
    std::string sha;
    {
      const Reference ref = ParseReference(text);
      std::lock_guard<std::mutex> lock(mu_);
      sqlite::Transaction tx(db_, /*write=*/false);
      auto q = db_.Prepare("SELECT sha256 FROM versions WHERE id = ?");
      q->Bind(1, Resolve(ref)).Step();
      sha = q->Text(0);
    }
    return blobs_.Read(sha);
  }

  std::string ArtifactPath(std::string_view text) {
    const Reference ref = ParseReference(text);
    std::lock_guard<std::mutex> lock(mu_);
    sqlite::Transaction tx(db_, /*write=*/false);
    auto q = db_.Prepare("SELECT sha256 FROM versions WHERE id = ?");
    q->Bind(1, Resolve(ref)).Step();
    return blobs_.PathOf(q->Text(0));
  }

  std::string root_;
  Options options_;
  std::unique_ptr<OpenLock> open_lock_;  // held while the constructor sets the database up
  BlobStore blobs_;
  sqlite::Database db_;
  mutable std::mutex mu_;
};

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
