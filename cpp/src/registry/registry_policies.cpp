// What the registry keeps for policies: their durable state, and for policies that replicas
// share, the evidence each replica adds and the lead that one replica at a time holds.
#include "registry_impl.h"

namespace lepton {
namespace {

void CheckKey(const std::string& model, const std::string& key) {
  ValidateName(model, "model name");
  if (key.empty()) throw InvalidArgument("state key must not be empty");
}

void CheckReplica(const std::string& replica) {
  if (replica.empty()) throw InvalidArgument("a replica's name must not be empty");
}

}  // namespace

void Registry::Impl::WriteState(const std::string& model, const std::string& key,
                                const std::string& value) {
  db_->Prepare(
         "INSERT INTO policy_state(model, key, value, updated_at) VALUES (?, ?, ?, ?) "
         "ON CONFLICT(model, key) DO UPDATE SET value = excluded.value, "
         "updated_at = excluded.updated_at")
      ->Bind(1, model)
      .Bind(2, key)
      .Bind(3, value)
      .Bind(4, Now())
      .Run();
}

void Registry::Impl::PutState(const std::string& model, const std::string& key,
                              const std::string& value) {
  CheckKey(model, key);
  std::lock_guard<std::mutex> lock(mu_);
  sql::Transaction tx(*db_);
  WriteState(model, key, value);
  tx.Commit();
}

std::optional<std::string> Registry::Impl::GetState(const std::string& model,
                                                    const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto q = db_->Prepare("SELECT value FROM policy_state WHERE model = ? AND key = ?");
  if (!q->Bind(1, model).Bind(2, key).Step()) return std::nullopt;
  return q->Text(0);
}

void Registry::Impl::AddEvidence(const std::string& model, const std::string& key,
                                 const std::string& replica, const std::string& payload) {
  CheckKey(model, key);
  CheckReplica(replica);
  const json parsed = json::parse(payload, nullptr, false);
  if (parsed.is_discarded() || !parsed.is_object()) {
    throw InvalidArgument("evidence must be a JSON object");
  }
  std::lock_guard<std::mutex> lock(mu_);
  // A write transaction: batches are numbered under the write lock, so they become visible in
  // the order of their ids and a leader reading past its cursor never skips one.
  sql::Transaction tx(*db_);
  db_->Prepare(
         "INSERT INTO policy_evidence(model, key, replica, payload, created_at) "
         "VALUES (?, ?, ?, ?, ?)")
      ->Bind(1, model)
      .Bind(2, key)
      .Bind(3, replica)
      .Bind(4, payload)
      .Bind(5, Now())
      .Run();
  tx.Commit();
}

std::vector<EvidenceBatch> Registry::Impl::Evidence(const std::string& model,
                                                    const std::string& key, int64_t after,
                                                    int64_t limit) {
  CheckKey(model, key);
  if (limit < 1) throw InvalidArgument("an evidence limit must be >= 1");
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<EvidenceBatch> out;
  auto q = db_->Prepare(
      "SELECT id, replica, payload, created_at FROM policy_evidence "
      "WHERE model = ? AND key = ? AND id > ? ORDER BY id LIMIT ?");
  q->Bind(1, model).Bind(2, key).Bind(3, after).Bind(4, limit);
  while (q->Step()) out.push_back({q->Int(0), q->Text(1), q->Text(2), q->Real(3)});
  return out;
}

std::optional<PolicyLead> Registry::Impl::ReadLead(const std::string& model,
                                                   const std::string& key) {
  auto q = db_->Prepare(
      "SELECT replica, term, beat, cursor FROM policy_leaders WHERE model = ? AND key = ?");
  if (!q->Bind(1, model).Bind(2, key).Step()) return std::nullopt;
  return PolicyLead{q->Text(0), q->Int(1), q->Int(2), q->Int(3)};
}

std::optional<PolicyLead> Registry::Impl::Lead(const std::string& model, const std::string& key) {
  CheckKey(model, key);
  std::lock_guard<std::mutex> lock(mu_);
  return ReadLead(model, key);
}

std::optional<PolicyLead> Registry::Impl::TakeLead(const std::string& model, const std::string& key,
                                                   const std::string& replica,
                                                   const std::optional<PolicyLead>& seen) {
  CheckKey(model, key);
  CheckReplica(replica);
  std::lock_guard<std::mutex> lock(mu_);
  sql::Transaction tx(*db_);
  const std::optional<PolicyLead> now = ReadLead(model, key);
  PolicyLead taken;
  if (!now) {
    if (seen) return std::nullopt;  // it was there a moment ago: changed by someone else
    taken = {replica, 1, 0, 0};
    db_->Prepare(
           "INSERT INTO policy_leaders(model, key, replica, term, beat, cursor) "
           "VALUES (?, ?, ?, 1, 0, 0)")
        ->Bind(1, model)
        .Bind(2, key)
        .Bind(3, replica)
        .Run();
  } else {
    const bool vacant = now->replica.empty();
    const bool unchanged = seen && seen->term == now->term && seen->beat == now->beat;
    if (!vacant && !unchanged) return std::nullopt;
    taken = {replica, now->term + 1, 0, now->cursor};
    db_->Prepare(
           "UPDATE policy_leaders SET replica = ?, term = ?, beat = 0 WHERE model = ? AND key = ?")
        ->Bind(1, replica)
        .Bind(2, taken.term)
        .Bind(3, model)
        .Bind(4, key)
        .Run();
  }
  tx.Commit();
  return taken;
}

bool Registry::Impl::KeepLead(const std::string& model, const std::string& key, int64_t term,
                              int64_t cursor, const std::optional<std::string>& state) {
  CheckKey(model, key);
  std::lock_guard<std::mutex> lock(mu_);
  sql::Transaction tx(*db_);
  const std::optional<PolicyLead> now = ReadLead(model, key);
  if (!now || now->term != term || now->replica.empty()) return false;
  if (cursor < now->cursor) {
    throw InvalidArgument("a leader's cursor cannot go back (" + std::to_string(cursor) + " < " +
                          std::to_string(now->cursor) + ")");
  }
  db_->Prepare("UPDATE policy_leaders SET beat = beat + 1, cursor = ? WHERE model = ? AND key = ?")
      ->Bind(1, cursor)
      .Bind(2, model)
      .Bind(3, key)
      .Run();
  if (cursor > now->cursor) {
    db_->Prepare("DELETE FROM policy_evidence WHERE model = ? AND key = ? AND id <= ?")
        ->Bind(1, model)
        .Bind(2, key)
        .Bind(3, cursor)
        .Run();
  }
  if (state) WriteState(model, key, *state);
  tx.Commit();
  return true;
}

void Registry::Impl::LeaveLead(const std::string& model, const std::string& key, int64_t term) {
  CheckKey(model, key);
  std::lock_guard<std::mutex> lock(mu_);
  sql::Transaction tx(*db_);
  db_->Prepare(
         "UPDATE policy_leaders SET replica = '', beat = beat + 1 "
         "WHERE model = ? AND key = ? AND term = ?")
      ->Bind(1, model)
      .Bind(2, key)
      .Bind(3, term)
      .Run();
  tx.Commit();
}

}  // namespace lepton
