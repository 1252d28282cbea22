// The model registry: the durable truth about every model version. Metadata lives in SQLite (WAL,
// one transaction per change), artifacts in a content-addressed blob store beside it; aliases move
// by compare-and-swap and every change is appended to an audit log.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "lepton/common/buffer_pool.h"
#include "lepton/common/signature.h"
#include "lepton/registry/artifact_format.h"

namespace lepton {

class MappedBlob;

struct ModelVersion {
  std::string model;
  std::string version;  // the label, unique within the model
  int64_t seq = 0;      // 1, 2, 3, ... per model, assigned at registration and never reused
  std::string sha256;
  int64_t size = 0;
  std::string format;
  double created_at = 0;  // seconds since the Unix epoch
  double updated_at = 0;
  std::string description;
  std::map<std::string, std::string> tags;
  std::map<std::string, double> metrics;
  std::optional<std::string> parent;  // "model:label" of the version this one derives from
  std::vector<std::string> aliases;
  std::optional<Signature> signature;

  std::string ref() const { return model + ":" + version; }
};

struct ModelSummary {
  std::string name;
  std::string description;
  double created_at = 0;
  int64_t version_count = 0;
  std::optional<std::string> latest;           // label of the highest seq
  std::map<std::string, std::string> aliases;  // alias -> label
};

// One replica's evidence for a shared policy: outcomes and rewards since its previous batch.
struct EvidenceBatch {
  int64_t id = 0;  // increasing in the order the batches were added
  std::string replica;
  std::string payload;  // a JSON object
  double time = 0;
};

// Who decides for a shared policy. `term` grows with each change of leader; `beat` with each
// heartbeat; `cursor` is the last evidence batch the leaders have taken in.
struct PolicyLead {
  std::string replica;  // empty: vacant, the last leader stepped down
  int64_t term = 0;
  int64_t beat = 0;
  int64_t cursor = 0;
};

struct AuditEntry {
  int64_t id = 0;
  double time = 0;
  std::string model;
  std::string actor;
  std::string action;  // register, update, set_alias, remove_alias, rollback, delete, gc,
                       // or a policy's event (canary_promote, canary_rollback, ...)
  std::optional<std::string> version;
  std::optional<std::string> alias;
  std::optional<std::string> from_version;
  std::optional<std::string> to_version;
  std::string reason;
  std::string details;  // JSON object with action-specific facts
};

struct RegisterOptions {
  std::optional<std::string> version;  // label; default "v<seq>"
  std::string description;
  std::map<std::string, std::string> tags;
  std::map<std::string, double> metrics;
  // A label of the same model, `@ALIAS`, or a full reference to a version of any model.
  std::optional<std::string> parent;
  std::optional<Signature> signature;
  std::string reason;
};

// Fields left empty are unchanged; a key mapped to nullopt is removed.
struct MetadataUpdate {
  std::map<std::string, std::optional<std::string>> tags;
  std::map<std::string, std::optional<double>> metrics;
  std::optional<std::string> description;
};

struct VerifyProblem {
  std::string ref;
  std::string sha256;
  std::string problem;  // "missing" or "corrupted"
};

struct VerifyReport {
  int64_t versions_checked = 0;
  int64_t blobs_checked = 0;
  std::vector<VerifyProblem> problems;
  // Stored but referenced by no version: metadata was lost (a deleted or rolled-back database),
  // so verify fails on them too.
  std::vector<std::string> orphan_blobs;
  bool ok() const { return problems.empty() && orphan_blobs.empty(); }
};

struct GcReport {
  std::vector<std::string> deleted_versions;  // refs
  int64_t blobs_removed = 0;
  int64_t bytes_freed = 0;
  bool dry_run = false;
};

// What Registry::Recover did.
struct RecoverReport {
  std::string moved_aside;             // where the lost database was moved, if it was
  std::vector<std::string> recovered;  // refs of the versions registered from orphan blobs
  std::vector<std::string> skipped;    // digests that could not be registered, with the reason
};

class Registry {
 public:
  struct Options {
    // Recorded in the audit log; default $LEPTON_ACTOR, else the login name.
    std::string actor;
    // Checks artifacts at registration and names their format; none accepts any file as "opaque".
    std::shared_ptr<const ArtifactFormat> format;
    int busy_timeout_ms = 60000;
    // For a registry on PostgreSQL: the directory of its artifacts, shared by every process and
    // machine that uses the registry (else the URL's `blobs` parameter, else $LEPTON_BLOBS).
    std::string blob_root;
    // For a registry on PostgreSQL: keep the artifacts in the database too (else the URL's
    // `artifacts=database`), so that a cluster needs nothing but PostgreSQL. `blob_root` is then
    // this machine's cache of them, by sha256, which need not be shared (default: $LEPTON_CACHE,
    // else ~/.cache/lepton).
    bool artifacts_in_database = false;
  };

  // Opens (creating if needed) the registry in directory `root`, or on the PostgreSQL server a
  // URL names ("postgresql://user@host:port/dbname?blobs=/shared/dir"), and cleans up what
  // writers that died part-way left behind.
  // Refuses (IntegrityError) a registry whose database is missing or empty while its blob store
  // holds artifacts. An object used in a child after fork opens its own database connection.
  explicit Registry(const std::string& root);
  Registry(const std::string& root, Options options);

  // Makes a registry whose metadata was lost usable again without losing an artifact: a database
  // without lepton's schema is moved aside (registry.db.lost-<time>), and every blob that no
  // version refers to is registered as a version of `model`, labelled by its digest, oldest
  // first.
  static RecoverReport Recover(const std::string& root, const std::string& model, Options options);
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // The directory of the artifacts (and, for SQLite, of the database).
  const std::string& root() const;
  // What opens this registry again: its directory, or its PostgreSQL URL (without the password,
  // with the artifact directory as its `blobs` parameter).
  std::string location() const;

  // Whether it lives on a database server (PostgreSQL) that processes on other machines share,
  // rather than in a directory.
  bool networked() const;

  // Alias moves made by any process or machine, as they happen: `moved(model)` after each move
  // of one of `model`'s aliases, and moved("") when some may have been missed (the connection
  // that hears them was lost and made again). A registry on PostgreSQL pushes them
  // (LISTEN/NOTIFY); a directory does not, and returns null: poll it instead. The calls run on a
  // thread of the registry's, one at a time, and stop once the returned handle is destroyed.
  std::shared_ptr<void> WatchAliases(std::function<void(const std::string& model)> moved);
  // Whether alias moves are being pushed now (a watch exists and its connection is up).
  bool AliasesPushed() const;
  const std::string& actor() const;

  // While one lives, the changes this thread makes through any registry are recorded in the
  // audit log as made by `actor` (a client acting through the server, say) instead of the
  // registry's own actor. Scopes nest; an empty actor leaves the registry's.
  class ActingAs {
   public:
    explicit ActingAs(std::string actor);
    ~ActingAs();
    ActingAs(const ActingAs&) = delete;
    ActingAs& operator=(const ActingAs&) = delete;

   private:
    std::string previous_;
  };

  void CreateModel(const std::string& name, const std::string& description, bool exist_ok);
  void SetModelDescription(const std::string& name, const std::string& description);

  ModelVersion RegisterFile(const std::string& model, const std::string& path,
                            const RegisterOptions& options);
  ModelVersion RegisterBytes(const std::string& model, std::string_view bytes,
                             const RegisterOptions& options);

  // `ref` is `name`, `name:LABEL` or `name@ALIAS`.
  ModelVersion Get(std::string_view ref) const;
  std::vector<ModelVersion> Versions(const std::string& model) const;
  std::vector<ModelSummary> Models() const;
  std::map<std::string, std::string> Aliases(const std::string& model) const;

  // The artifact's bytes, rehashed; IntegrityError when they do not match the recorded sha256.
  std::string ReadArtifact(std::string_view ref) const;
  // The same bytes mapped from the blob store rather than copied (verified the same way).
  std::shared_ptr<const MappedBlob> MapArtifact(std::string_view ref) const;
  // The artifact with this content hash (a version's sha256), mapped and verified as MapArtifact
  // does but without looking a version up: for a loader that resolved the version already.
  // InvalidArgument for a malformed hash; IntegrityError when no such artifact is stored.
  std::shared_ptr<const MappedBlob> MapBlob(const std::string& sha256) const;
  // The same, read into a buffer from `pool` instead of mapped.
  std::shared_ptr<BufferPool::Buffer> ReadBlob(const std::string& sha256, BufferPool& pool) const;
  std::string ArtifactPath(std::string_view ref) const;

  // Points `alias` at `version` (a label, `@OTHER`, or a full reference). With `expected`, the move
  // happens only if the alias currently points at that version ("" = the alias must not exist),
  // else Conflict.
  ModelVersion SetAlias(const std::string& model, const std::string& alias,
                        const std::string& version, const std::optional<std::string>& expected,
                        const std::string& reason);
  void RemoveAlias(const std::string& model, const std::string& alias, const std::string& reason);
  // Moves `alias` back to the target it had before its last move; Conflict when there is none.
  ModelVersion Rollback(const std::string& model, const std::string& alias,
                        const std::string& reason);

  // Oldest first; with `limit` > 0 only the newest `limit` entries.
  std::vector<AuditEntry> History(const std::string& model, int64_t limit = 0) const;

  ModelVersion Update(std::string_view ref, const MetadataUpdate& update,
                      const std::string& reason);
  // Conflict when an alias points at the version, unless `force` (the aliases are removed too).
  void Delete(std::string_view ref, bool force, const std::string& reason);
  // Deletes every version that is neither among the newest `keep_latest` of its model nor aliased,
  // then every blob nothing refers to. Restricted to `model` when given.
  GcReport Gc(int64_t keep_latest, const std::optional<std::string>& model, bool dry_run);
  VerifyReport Verify() const;

  // Appends an audit entry for an event that happened outside the registry (a policy's automatic
  // switch); `details` is a JSON object with its evidence.
  void Record(const std::string& model, const std::string& action,
              const std::optional<std::string>& version, const std::optional<std::string>& from,
              const std::optional<std::string>& to, const std::string& reason,
              const std::string& details);
  // Durable per-model state for stateful policies (a bandit's counts), keyed by the policy.
  void PutState(const std::string& model, const std::string& key, const std::string& value);
  std::optional<std::string> GetState(const std::string& model, const std::string& key) const;

  // --- policies that replicas share (control/PolicySync): each replica adds its evidence, one
  // replica at a time leads (takes the evidence in, decides and stores the policy's state) ---

  // Appends a replica's batch of evidence (a JSON object) for `model`'s policy `key`.
  void AddEvidence(const std::string& model, const std::string& key, const std::string& replica,
                   const std::string& payload);
  // The batches after id `after` that no leader has taken in yet, oldest first, at most `limit`.
  std::vector<EvidenceBatch> Evidence(const std::string& model, const std::string& key,
                                      int64_t after, int64_t limit) const;
  // The policy's lead as it stands; nothing when no replica has led it yet.
  std::optional<PolicyLead> Lead(const std::string& model, const std::string& key) const;
  // Makes `replica` the leader under the next term: when no one has led, when the lead is vacant
  // (its leader stepped down), or when it is still exactly `seen` (its leader has not beaten
  // since). The lead as taken, or nothing when another replica changed it first.
  std::optional<PolicyLead> TakeLead(const std::string& model, const std::string& key,
                                     const std::string& replica,
                                     const std::optional<PolicyLead>& seen);
  // The leader of `term` beats: in one transaction it records how far it has taken the evidence
  // in (`cursor`, whose batches are dropped), and stores `state` as the policy's state when
  // given. False, with nothing written, when `term` no longer leads (a write of a leader that
  // was replaced while it was paused is refused).
  bool KeepLead(const std::string& model, const std::string& key, int64_t term, int64_t cursor,
                const std::optional<std::string>& state);
  // The leader of `term` steps down, so that another replica takes over at once.
  void LeaveLead(const std::string& model, const std::string& key, int64_t term);

 private:
  class Impl;
  // The implementation for this process: after a fork the child gets a fresh one (the parent's
  // SQLite connection and lock state must not be used in the child) and the parent's is left as
  // it is.
  Impl* Self() const;
  mutable std::atomic<Impl*> impl_{nullptr};
  mutable std::atomic<uint64_t> generation_{0};
};

}  // namespace lepton
