// The registry's database, whichever holds it: an embedded SQLite file or a PostgreSQL server. A
// thin layer over each one's C API (SQLite's, libpq): connections with a statement cache, scoped
// statements that reset themselves, and transactions that roll back unless committed. The
// registry writes its SQL once, in the dialect both speak (`?` or `?N` placeholders,
// ON CONFLICT, RETURNING); only the schema and the set-up differ.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace lepton::sql {

enum class Dialect { kSqlite, kPostgres };

class Statement {
 public:
  virtual ~Statement() = default;

  virtual Statement& Bind(int index, int64_t value) = 0;
  virtual Statement& Bind(int index, double value) = 0;
  virtual Statement& Bind(int index, std::string_view value) = 0;
  virtual Statement& BindNull(int index) = 0;
  // Binary data (a BLOB column, a bytea).
  virtual Statement& BindBytes(int index, std::string_view value) = 0;
  Statement& Bind(int index, const std::string& value) {
    return Bind(index, std::string_view(value));
  }
  Statement& Bind(int index, const char* value) { return Bind(index, std::string_view(value)); }
  Statement& Bind(int index, const std::optional<std::string>& value) {
    return value ? Bind(index, std::string_view(*value)) : BindNull(index);
  }

  // Advances; true while a row is available. Throws on errors, mapping constraint violations to
  // Conflict and everything else to StorageError (IntegrityError for a corrupt database).
  virtual bool Step() = 0;
  // Steps to completion, expecting no rows.
  void Run() {
    while (Step()) {
    }
  }
  virtual void Reset() = 0;

  virtual bool IsNull(int col) const = 0;
  virtual int64_t Int(int col) const = 0;
  virtual double Real(int col) const = 0;
  virtual std::string Text(int col) const = 0;
  virtual std::string Bytes(int col) const = 0;
  std::optional<std::string> OptText(int col) const {
    if (IsNull(col)) return std::nullopt;
    return Text(col);
  }
};

// A cached statement borrowed for one use; it is reset and unbound when the borrow ends.
class Query {
 public:
  explicit Query(Statement& stmt) : stmt_(&stmt) {}
  ~Query() { stmt_->Reset(); }
  Query(const Query&) = delete;
  Query& operator=(const Query&) = delete;
  Statement* operator->() { return stmt_; }
  Statement& operator*() { return *stmt_; }

 private:
  Statement* stmt_;
};

class Database {
 public:
  virtual ~Database() = default;
  virtual Dialect dialect() const = 0;
  // Runs statements without parameters (several, separated by semicolons).
  virtual void Exec(std::string_view sql) = 0;
  virtual Query Prepare(std::string_view sql) = 0;
  virtual bool HasTable(std::string_view name) = 0;
  // Starts a transaction. Writers hold the database's write lock from the start (SQLite's BEGIN
  // IMMEDIATE, a transaction-level advisory lock on PostgreSQL), so that read-then-write
  // sequences (the next sequence number, an alias's compare-and-swap) are atomic across
  // processes and machines; readers see one snapshot.
  virtual void Begin(bool write) = 0;
};

class Transaction {
 public:
  explicit Transaction(Database& db, bool write = true) : db_(db) {
    db_.Begin(write);
    open_ = true;
  }
  ~Transaction() {
    if (!open_) return;
    try {
      db_.Exec("ROLLBACK");
    } catch (...) {
    }
  }
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  void Commit() {
    db_.Exec("COMMIT");
    open_ = false;
  }

 private:
  Database& db_;
  bool open_ = false;
};

// An SQLite file (created when missing), in WAL mode with foreign keys on; writers wait for each
// other up to `busy_timeout_ms`.
std::unique_ptr<Database> OpenSqlite(const std::string& path, int busy_timeout_ms);

// A PostgreSQL server, by a libpq connection URI ("postgresql://user@host:port/dbname"); the
// password may come from the URI, PGPASSWORD or a password file. Messages never repeat the
// password. Statements wait on each other's locks up to `lock_timeout_ms`.
std::unique_ptr<Database> OpenPostgres(const std::string& url, int lock_timeout_ms);

// Notifications on one channel (PostgreSQL's LISTEN), on a connection and a thread of their own,
// until destroyed. A lost connection is made again (after 0.5 s, doubling to 5 s).
class Listener {
 public:
  virtual ~Listener() = default;
  // Whether it is listening now.
  virtual bool live() const = 0;
};

// `notified(payload)` for each notification; `resync()` when listening starts again after the
// connection was lost (notifications may have been missed meanwhile). Both run on the listener's
// thread. Connection failures are retried, never thrown.
std::unique_ptr<Listener> ListenPostgres(const std::string& url, const std::string& channel,
                                         std::function<void(const std::string&)> notified,
                                         std::function<void()> resync);

// The value of the URL's query parameter `name`, if it has one.
std::optional<std::string> QueryParameter(std::string_view url, std::string_view name);
// The URL without its query parameters called `name` ("...?a=1&name=x&b=2" -> "...?a=1&b=2").
std::string WithoutParameter(std::string_view url, std::string_view name);

// Whether `location` names a PostgreSQL database rather than a directory.
bool IsPostgresUrl(std::string_view location);

// The URL without its password (in the user part or as a parameter): for messages, and for
// naming the registry to another process, which takes the password from PGPASSWORD or a
// password file.
std::string RedactedUrl(std::string_view url);

}  // namespace lepton::sql
