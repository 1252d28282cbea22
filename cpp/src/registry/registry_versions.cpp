// The registry's models and versions: registering, reading, updating and deleting them.
#include "registry_impl.h"

namespace lepton {

std::optional<int64_t> Registry::Impl::FindModel(const std::string& name) {
  auto q = db_->Prepare("SELECT id FROM models WHERE name = ?");
  if (q->Bind(1, name).Step()) return q->Int(0);
  return std::nullopt;
}

int64_t Registry::Impl::ModelId(const std::string& name) {
  if (auto id = FindModel(name)) return *id;
  throw NotFound("model '" + name + "' does not exist in the registry at '" + root_ + "'");
}

std::string Registry::Impl::AliasList(int64_t model_id) {
  auto q = db_->Prepare("SELECT name FROM aliases WHERE model_id = ? ORDER BY name");
  q->Bind(1, model_id);
  std::string out;
  while (q->Step()) out += (out.empty() ? "" : ", ") + q->Text(0);
  return out.empty() ? "none" : out;
}

std::optional<int64_t> Registry::Impl::FindVersion(int64_t model_id, const Reference& ref) {
  switch (ref.kind) {
    case Reference::Kind::kLatest: {
      auto q = db_->Prepare("SELECT id FROM versions WHERE model_id = ? ORDER BY seq DESC LIMIT 1");
      if (q->Bind(1, model_id).Step()) return q->Int(0);
      return std::nullopt;
    }
    case Reference::Kind::kLabel: {
      auto q = db_->Prepare("SELECT id FROM versions WHERE model_id = ? AND label = ?");
      if (q->Bind(1, model_id).Bind(2, ref.value).Step()) return q->Int(0);
      return std::nullopt;
    }
    case Reference::Kind::kAlias: {
      auto q = db_->Prepare("SELECT version_id FROM aliases WHERE model_id = ? AND name = ?");
      if (q->Bind(1, model_id).Bind(2, ref.value).Step()) return q->Int(0);
      return std::nullopt;
    }
  }
  return std::nullopt;
}

int64_t Registry::Impl::Resolve(const Reference& ref) {
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

std::string Registry::Impl::LabelOf(int64_t version_id) {
  auto q = db_->Prepare("SELECT label FROM versions WHERE id = ?");
  if (q->Bind(1, version_id).Step()) return q->Text(0);
  throw NotFound("version id " + std::to_string(version_id));
}

ModelVersion Registry::Impl::RowToVersion(sql::Statement& s) {
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

ModelVersion Registry::Impl::LoadVersion(int64_t id) {
  ModelVersion v;
  {
    auto q = db_->Prepare(std::string(kVersionColumns) + "WHERE v.id = ?");
    if (!q->Bind(1, id).Step()) throw NotFound("version id " + std::to_string(id));
    v = RowToVersion(*q);
  }
  {
    auto q = db_->Prepare("SELECT key, value FROM tags WHERE version_id = ?");
    q->Bind(1, id);
    while (q->Step()) v.tags.emplace(q->Text(0), q->Text(1));
  }
  {
    auto q = db_->Prepare("SELECT key, value FROM metrics WHERE version_id = ?");
    q->Bind(1, id);
    while (q->Step()) v.metrics.emplace(q->Text(0), q->Real(1));
  }
  {
    auto q = db_->Prepare("SELECT name FROM aliases WHERE version_id = ? ORDER BY name");
    q->Bind(1, id);
    while (q->Step()) v.aliases.push_back(q->Text(0));
  }
  return v;
}

void Registry::Impl::Audit(const std::string& model, const std::string& action,
                           const std::optional<std::string>& version,
                           const std::optional<std::string>& alias,
                           const std::optional<std::string>& from,
                           const std::optional<std::string>& to, const std::string& reason,
                           const json& details) {
  db_->Prepare(
         "INSERT INTO audit(time, model, actor, action, version, alias, from_version, "
         "to_version, reason, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
      ->Bind(1, Now())
      .Bind(2, model)
      .Bind(3, registry_detail::acting_as.empty() ? options_.actor : registry_detail::acting_as)
      .Bind(4, action)
      .Bind(5, version)
      .Bind(6, alias)
      .Bind(7, from)
      .Bind(8, to)
      .Bind(9, reason)
      .Bind(10, details.dump())
      .Run();
}

int64_t Registry::Impl::EnsureModel(const std::string& name, const std::string& description) {
  db_->Prepare(
         "INSERT INTO models(name, description, created_at) VALUES (?, ?, ?) ON CONFLICT DO "
         "NOTHING")
      ->Bind(1, name)
      .Bind(2, description)
      .Bind(3, Now())
      .Run();
  return ModelId(name);
}

ModelVersion Registry::Impl::Register(
    const std::string& model, const RegisterOptions& opts,
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
  BlobLease lease = store(
      format ? BlobStore::Validator([&format](const std::string& path) { format->Validate(path); })
             : BlobStore::Validator());

  // Artifacts kept in the database are stored there before the metadata that refers to them. A
  // gc that drops the upload before the commit (it refers to nothing yet) makes the commit
  // upload it again.
  for (int attempt = 0; artifacts_in_db_; ++attempt) {
    try {
      UploadArtifact(lease.sha256());
    } catch (...) {
      const std::string sha = lease.sha256();
      lease.Release();
      RemoveBlobIfUnused(sha, nullptr);
      throw;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (ArtifactUploaded(lease.sha256()) || attempt >= 3) break;
  }
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

Conflict Registry::Impl::LabelTaken(const std::string& model, const std::string& label) {
  return Conflict("model '" + model + "' already has a version '" + label +
                  "'; labels are unique and artifacts immutable, so register under a new label");
}

ModelVersion Registry::Impl::Commit(const std::string& model, const RegisterOptions& opts,
                                    const std::optional<Reference>& parent_ref, BlobLease& lease) {
  const auto& format = options_.format;
  sql::Transaction tx(*db_);
  const int64_t model_id = EnsureModel(model, "");
  int64_t seq = 0;
  {
    auto q = db_->Prepare("SELECT last_seq FROM models WHERE id = ?");
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
  if (artifacts_in_db_ && !ArtifactUploaded(lease.sha256())) {
    throw StorageError("the artifact " + lease.sha256() +
                       " was removed from the database while it was being registered (a gc ran "
                       "meanwhile); register it again");
  }

  const double now = Now();
  int64_t id = 0;
  {
    auto q = db_->Prepare(
        "INSERT INTO versions(model_id, seq, label, sha256, size, format, created_at, "
        "updated_at, description, parent_id, signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
        "?) RETURNING id");
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
    q->Step();
    id = q->Int(0);
  }
  db_->Prepare("UPDATE models SET last_seq = ? WHERE id = ?")->Bind(1, seq).Bind(2, model_id).Run();
  for (const auto& [k, v] : opts.tags) {
    db_->Prepare("INSERT INTO tags(version_id, key, value) VALUES (?, ?, ?)")
        ->Bind(1, id)
        .Bind(2, k)
        .Bind(3, v)
        .Run();
  }
  for (const auto& [k, v] : opts.metrics) {
    db_->Prepare("INSERT INTO metrics(version_id, key, value) VALUES (?, ?, ?)")
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

void Registry::Impl::CreateModel(const std::string& name, const std::string& description,
                                 bool exist_ok) {
  ValidateName(name, "model name");
  std::lock_guard<std::mutex> lock(mu_);
  sql::Transaction tx(*db_);
  if (FindModel(name)) {
    if (!exist_ok) throw Conflict("model '" + name + "' already exists");
    return;
  }
  EnsureModel(name, description);
  Audit(name, "create_model", std::nullopt, std::nullopt, std::nullopt, std::nullopt, "",
        {{"description", description}});
  tx.Commit();
}

void Registry::Impl::SetModelDescription(const std::string& name, const std::string& description) {
  std::lock_guard<std::mutex> lock(mu_);
  sql::Transaction tx(*db_);
  const int64_t id = ModelId(name);
  db_->Prepare("UPDATE models SET description = ? WHERE id = ?")
      ->Bind(1, description)
      .Bind(2, id)
      .Run();
  Audit(name, "update_model", std::nullopt, std::nullopt, std::nullopt, std::nullopt, "",
        {{"description", description}});
  tx.Commit();
}

ModelVersion Registry::Impl::Get(std::string_view text) {
  const Reference ref = ParseReference(text);
  std::lock_guard<std::mutex> lock(mu_);
  sql::Transaction tx(*db_, /*write=*/false);
  return LoadVersion(Resolve(ref));
}

std::vector<ModelVersion> Registry::Impl::Versions(const std::string& model) {
  ValidateName(model, "model name");
  std::lock_guard<std::mutex> lock(mu_);
  sql::Transaction tx(*db_, /*write=*/false);
  const int64_t model_id = ModelId(model);
  std::vector<ModelVersion> out;
  std::unordered_map<int64_t, size_t> index;
  {
    auto q = db_->Prepare(std::string(kVersionColumns) + "WHERE v.model_id = ? ORDER BY v.seq");
    q->Bind(1, model_id);
    while (q->Step()) {
      index.emplace(q->Int(0), out.size());
      out.push_back(RowToVersion(*q));
    }
  }
  {
    auto q = db_->Prepare(
        "SELECT t.version_id, t.key, t.value FROM tags t JOIN versions v ON v.id = t.version_id "
        "WHERE v.model_id = ?");
    q->Bind(1, model_id);
    while (q->Step()) out[index.at(q->Int(0))].tags.emplace(q->Text(1), q->Text(2));
  }
  {
    auto q = db_->Prepare(
        "SELECT t.version_id, t.key, t.value FROM metrics t JOIN versions v ON v.id = "
        "t.version_id WHERE v.model_id = ?");
    q->Bind(1, model_id);
    while (q->Step()) out[index.at(q->Int(0))].metrics.emplace(q->Text(1), q->Real(2));
  }
  {
    auto q = db_->Prepare("SELECT version_id, name FROM aliases WHERE model_id = ? ORDER BY name");
    q->Bind(1, model_id);
    while (q->Step()) out[index.at(q->Int(0))].aliases.push_back(q->Text(1));
  }
  return out;
}

std::vector<ModelSummary> Registry::Impl::Models() {
  std::lock_guard<std::mutex> lock(mu_);
  sql::Transaction tx(*db_, /*write=*/false);
  std::vector<ModelSummary> out;
  std::unordered_map<std::string, size_t> index;
  {
    auto q = db_->Prepare(
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
    auto q = db_->Prepare(
        "SELECT m.name, a.name, v.label FROM aliases a JOIN models m ON m.id = a.model_id "
        "JOIN versions v ON v.id = a.version_id");
    while (q->Step()) out[index.at(q->Text(0))].aliases.emplace(q->Text(1), q->Text(2));
  }
  return out;
}

ModelVersion Registry::Impl::Update(std::string_view text, const MetadataUpdate& update,
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
  sql::Transaction tx(*db_);
  const int64_t id = Resolve(ref);
  json details = json::object();
  for (const auto& [k, v] : update.tags) {
    if (v) {
      db_->Prepare(
             "INSERT INTO tags(version_id, key, value) VALUES (?, ?, ?) "
             "ON CONFLICT(version_id, key) DO UPDATE SET value = excluded.value")
          ->Bind(1, id)
          .Bind(2, k)
          .Bind(3, *v)
          .Run();
      details["tags"][k] = *v;
    } else {
      db_->Prepare("DELETE FROM tags WHERE version_id = ? AND key = ?")
          ->Bind(1, id)
          .Bind(2, k)
          .Run();
      details["tags"][k] = nullptr;
    }
  }
  for (const auto& [k, v] : update.metrics) {
    if (v) {
      db_->Prepare(
             "INSERT INTO metrics(version_id, key, value) VALUES (?, ?, ?) "
             "ON CONFLICT(version_id, key) DO UPDATE SET value = excluded.value")
          ->Bind(1, id)
          .Bind(2, k)
          .Bind(3, *v)
          .Run();
      details["metrics"][k] = *v;
    } else {
      db_->Prepare("DELETE FROM metrics WHERE version_id = ? AND key = ?")
          ->Bind(1, id)
          .Bind(2, k)
          .Run();
      details["metrics"][k] = nullptr;
    }
  }
  if (update.description) {
    db_->Prepare("UPDATE versions SET description = ? WHERE id = ?")
        ->Bind(1, *update.description)
        .Bind(2, id)
        .Run();
    details["description"] = *update.description;
  }
  db_->Prepare("UPDATE versions SET updated_at = ? WHERE id = ?")->Bind(1, Now()).Bind(2, id).Run();
  Audit(ref.model, "update", LabelOf(id), std::nullopt, std::nullopt, std::nullopt, reason,
        details);
  ModelVersion result = LoadVersion(id);
  tx.Commit();
  return result;
}

// Deletes one version row inside the caller's transaction; returns its digest.
std::string Registry::Impl::DeleteRow(int64_t id, const std::string& model,
                                      const std::string& action, const std::string& reason,
                                      bool force) {
  ModelVersion v = LoadVersion(id);
  if (!v.aliases.empty() && !force) {
    std::string list;
    for (const auto& a : v.aliases) list += (list.empty() ? "" : ", ") + a;
    throw Conflict("version '" + v.ref() + "' is the target of alias " + list +
                   "; move the alias first or delete with force");
  }
  db_->Prepare("DELETE FROM aliases WHERE version_id = ?")->Bind(1, id).Run();
  db_->Prepare("DELETE FROM versions WHERE id = ?")->Bind(1, id).Run();
  json details = {{"seq", v.seq}, {"sha256", v.sha256}};
  if (!v.aliases.empty()) details["aliases_removed"] = v.aliases;
  Audit(model, action, v.version, std::nullopt, std::nullopt, std::nullopt, reason, details);
  return v.sha256;
}

void Registry::Impl::Delete(std::string_view text, bool force, const std::string& reason) {
  const Reference ref = ParseReference(text);
  const std::string sha = FreeingSpace([&] {
    std::lock_guard<std::mutex> lock(mu_);
    sql::Transaction tx(*db_);
    std::string digest = DeleteRow(Resolve(ref), ref.model, "delete", reason, force);
    tx.Commit();
    return digest;
  });
  RemoveBlobIfUnused(sha, nullptr);
  KeepReserve();
}

std::string Registry::Impl::ArtifactSha(std::string_view text) {
  const Reference ref = ParseReference(text);
  std::lock_guard<std::mutex> lock(mu_);
  sql::Transaction tx(*db_, /*write=*/false);
  auto q = db_->Prepare("SELECT sha256 FROM versions WHERE id = ?");
  q->Bind(1, Resolve(ref)).Step();
  return q->Text(0);
}

std::string Registry::Impl::ReadArtifact(std::string_view text) {
  const std::string sha = ArtifactSha(text);
  return WithLocal(sha, [&] { return blobs_.Read(sha); });
}

std::shared_ptr<const MappedBlob> Registry::Impl::MapArtifact(std::string_view text) {
  return MapBlob(ArtifactSha(text));
}

namespace {

void CheckSha(const std::string& sha) {
  if (sha.size() != 64 || sha.find_first_not_of("0123456789abcdef") != std::string::npos) {
    throw InvalidArgument("'" + sha + "' is not a sha256 in lower-case hex");
  }
}

}  // namespace

std::shared_ptr<const MappedBlob> Registry::Impl::MapBlob(const std::string& sha) {
  CheckSha(sha);
  return WithLocal(sha, [&] { return std::make_shared<const MappedBlob>(blobs_.Map(sha)); });
}

std::shared_ptr<BufferPool::Buffer> Registry::Impl::ReadBlob(const std::string& sha,
                                                             BufferPool& pool) {
  CheckSha(sha);
  return WithLocal(sha, [&] { return blobs_.ReadInto(sha, pool); });
}

std::string Registry::Impl::ArtifactPath(std::string_view text) {
  const std::string sha = ArtifactSha(text);
  // Kept in the database: fetched (and verified) into this machine's cache first.
  if (artifacts_in_db_) WithLocal(sha, [&] { blobs_.Map(sha); });
  return blobs_.PathOf(sha);
}

}  // namespace lepton
