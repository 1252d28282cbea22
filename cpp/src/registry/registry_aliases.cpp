// The registry's aliases (moved by compare-and-swap, rolled back) and its audit trail.
#include <limits>

#include "registry_impl.h"

namespace lepton {

std::map<std::string, std::string> Registry::Impl::Aliases(const std::string& model) {
  ValidateName(model, "model name");
  std::lock_guard<std::mutex> lock(mu_);
  sql::Transaction tx(*db_, /*write=*/false);
  const int64_t model_id = ModelId(model);
  std::map<std::string, std::string> out;
  auto q = db_->Prepare(
      "SELECT a.name, v.label FROM aliases a JOIN versions v ON v.id = a.version_id "
      "WHERE a.model_id = ?");
  q->Bind(1, model_id);
  while (q->Step()) out.emplace(q->Text(0), q->Text(1));
  return out;
}

ModelVersion Registry::Impl::SetAlias(const std::string& model, const std::string& alias,
                                      const std::string& version,
                                      const std::optional<std::string>& expected,
                                      const std::string& reason) {
  ValidateName(model, "model name");
  ValidateName(alias, "alias");
  if (alias == kLatestAlias) {
    throw InvalidArgument("'latest' always means the newest version and cannot be set");
  }
  const Reference target_ref = ParseVersionIn(model, version);
  std::lock_guard<std::mutex> lock(mu_);
  sql::Transaction tx(*db_);
  const int64_t model_id = ModelId(model);
  const int64_t target = Resolve(target_ref);
  const std::optional<int64_t> current =
      FindVersion(model_id, {model, Reference::Kind::kAlias, alias});
  const std::optional<std::string> current_label =
      current ? std::optional<std::string>(LabelOf(*current)) : std::nullopt;
  if (expected) {
    if (expected->empty()) {
      if (current) {
        throw Conflict("alias '" + model + "@" + alias + "' already points to '" + *current_label +
                       "', expected it not to exist");
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
    db_->Prepare("INSERT INTO alias_history(model_id, alias, version_id) VALUES (?, ?, ?)")
        ->Bind(1, model_id)
        .Bind(2, alias)
        .Bind(3, *current)
        .Run();
  }
  MoveAlias(model_id, alias, target);
  AliasMoved(model);
  const std::string target_label = LabelOf(target);
  Audit(model, "set_alias", target_label, alias, current_label, target_label, reason,
        json::object());
  ModelVersion result = LoadVersion(target);
  tx.Commit();
  return result;
}

void Registry::Impl::MoveAlias(int64_t model_id, const std::string& alias, int64_t target) {
  db_->Prepare(
         "INSERT INTO aliases(model_id, name, version_id, updated_at) VALUES (?, ?, ?, ?) "
         "ON CONFLICT(model_id, name) DO UPDATE SET version_id = excluded.version_id, "
         "updated_at = excluded.updated_at")
      ->Bind(1, model_id)
      .Bind(2, alias)
      .Bind(3, target)
      .Bind(4, Now())
      .Run();
}

void Registry::Impl::RemoveAlias(const std::string& model, const std::string& alias,
                                 const std::string& reason) {
  ValidateName(model, "model name");
  ValidateName(alias, "alias");
  std::lock_guard<std::mutex> lock(mu_);
  sql::Transaction tx(*db_);
  const int64_t model_id = ModelId(model);
  const int64_t current = Resolve({model, Reference::Kind::kAlias, alias});
  const std::string label = LabelOf(current);
  db_->Prepare("DELETE FROM aliases WHERE model_id = ? AND name = ?")
      ->Bind(1, model_id)
      .Bind(2, alias)
      .Run();
  db_->Prepare("DELETE FROM alias_history WHERE model_id = ? AND alias = ?")
      ->Bind(1, model_id)
      .Bind(2, alias)
      .Run();
  AliasMoved(model);
  Audit(model, "remove_alias", label, alias, label, std::nullopt, reason, json::object());
  tx.Commit();
}

ModelVersion Registry::Impl::Rollback(const std::string& model, const std::string& alias,
                                      const std::string& reason) {
  ValidateName(model, "model name");
  ValidateName(alias, "alias");
  std::lock_guard<std::mutex> lock(mu_);
  sql::Transaction tx(*db_);
  const int64_t model_id = ModelId(model);
  const int64_t current = Resolve({model, Reference::Kind::kAlias, alias});
  int64_t history_id = 0, previous = 0;
  {
    auto q = db_->Prepare(
        "SELECT id, version_id FROM alias_history WHERE model_id = ? AND alias = ? "
        "ORDER BY id DESC LIMIT 1");
    if (!q->Bind(1, model_id).Bind(2, alias).Step()) {
      throw Conflict("alias '" + model + "@" + alias + "' has no previous target to roll back to");
    }
    history_id = q->Int(0);
    previous = q->Int(1);
  }
  db_->Prepare("DELETE FROM alias_history WHERE id = ?")->Bind(1, history_id).Run();
  MoveAlias(model_id, alias, previous);
  AliasMoved(model);
  const std::string from = LabelOf(current), to = LabelOf(previous);
  Audit(model, "rollback", to, alias, from, to, reason, json::object());
  ModelVersion result = LoadVersion(previous);
  tx.Commit();
  return result;
}

void Registry::Impl::Record(const std::string& model, const std::string& action,
                            const std::optional<std::string>& version,
                            const std::optional<std::string>& from,
                            const std::optional<std::string>& to, const std::string& reason,
                            const std::string& details) {
  ValidateName(model, "model name");
  ValidateName(action, "audit action");
  json parsed = details.empty() ? json::object() : json::parse(details, nullptr, false);
  if (parsed.is_discarded() || !parsed.is_object()) {
    throw InvalidArgument("audit details must be a JSON object");
  }
  std::lock_guard<std::mutex> lock(mu_);
  sql::Transaction tx(*db_);
  ModelId(model);
  Audit(model, action, version, std::nullopt, from, to, reason, parsed);
  tx.Commit();
}

std::vector<AuditEntry> Registry::Impl::History(const std::string& model, int64_t limit) {
  ValidateName(model, "model name");
  if (limit < 0) throw InvalidArgument("history limit must be >= 0");
  std::lock_guard<std::mutex> lock(mu_);
  sql::Transaction tx(*db_, /*write=*/false);
  std::vector<AuditEntry> out;
  auto q = db_->Prepare(
      "SELECT * FROM (SELECT id, time, model, actor, action, version, alias, from_version, "
      "to_version, reason, details FROM audit WHERE model = ? ORDER BY id DESC LIMIT ?) AS recent "
      "ORDER BY id");
  q->Bind(1, model).Bind(2, limit > 0 ? limit : std::numeric_limits<int64_t>::max());
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

// --- alias moves pushed by PostgreSQL ---

namespace {
constexpr const char* kAliasChannel = "lepton_aliases";
}  // namespace

// Delivered by PostgreSQL when the transaction commits, to every connection listening; nothing
// is sent when it rolls back.
void Registry::Impl::AliasMoved(const std::string& model) {
  if (db_->dialect() != sql::Dialect::kPostgres) return;
  auto q = db_->Prepare("SELECT pg_notify(?, ?)");
  q->Bind(1, kAliasChannel).Bind(2, model).Run();
}

std::shared_ptr<void> Registry::Impl::WatchAliases(std::function<void(const std::string&)> moved) {
  if (db_->dialect() != sql::Dialect::kPostgres) return nullptr;
  std::lock_guard<std::mutex> lk(watch_mu_);
  const uint64_t id = next_watcher_++;
  watchers_.emplace(id, std::move(moved));
  if (!listener_) {
    listener_ = sql::ListenPostgres(
        WithoutBlobs(location_), kAliasChannel, [this](const std::string& m) { Dispatch(m); },
        [this] { Dispatch(""); });
    listening_ = listener_.get();
  }
  return std::shared_ptr<void>(new uint64_t(id), [this](void* p) {
    auto* token = static_cast<uint64_t*>(p);
    {
      std::lock_guard<std::mutex> lk(watch_mu_);
      watchers_.erase(*token);
    }
    delete token;
  });
}

void Registry::Impl::Dispatch(const std::string& model) {
  std::lock_guard<std::mutex> lk(watch_mu_);
  for (const auto& [id, moved] : watchers_) moved(model);
}

}  // namespace lepton
