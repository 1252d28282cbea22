// The registry's database on SQLite.
#include <sqlite3.h>

#include <cerrno>
#include <unordered_map>

#include "lepton/common/errors.h"
#include "sql_db.h"

namespace lepton::sql {
namespace {

[[noreturn]] void Throw(sqlite3* db, int rc, std::string_view context) {
  const std::string msg =
      db ? std::string(context) + ": " + sqlite3_errmsg(db) : std::string(context);
  switch (rc & 0xff) {
    case SQLITE_CONSTRAINT:
      throw Conflict(msg);
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      throw IntegrityError(msg);
    case SQLITE_FULL:
      throw StorageError(msg, db && sqlite3_system_errno(db) ? sqlite3_system_errno(db) : ENOSPC);
    default:
      throw StorageError(msg, db ? sqlite3_system_errno(db) : 0);
  }
}

class SqliteStatement final : public Statement {
 public:
  SqliteStatement(sqlite3* db, std::string_view sql) : db_(db) {
    const int rc = sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()),
                                      SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr);
    if (rc != SQLITE_OK) Throw(db, rc, "cannot prepare statement");
  }
  ~SqliteStatement() override { sqlite3_finalize(stmt_); }

  using Statement::Bind;
  Statement& Bind(int index, int64_t value) override {
    sqlite3_bind_int64(stmt_, index, value);
    return *this;
  }
  Statement& Bind(int index, double value) override {
    sqlite3_bind_double(stmt_, index, value);
    return *this;
  }
  Statement& Bind(int index, std::string_view value) override {
    sqlite3_bind_text(stmt_, index, value.data(), static_cast<int>(value.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Statement& BindBytes(int index, std::string_view value) override {
    sqlite3_bind_blob64(stmt_, index, value.data(), value.size(), SQLITE_TRANSIENT);
    return *this;
  }
  Statement& BindNull(int index) override {
    sqlite3_bind_null(stmt_, index);
    return *this;
  }

  bool Step() override {
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    Throw(db_, rc, "database error");
  }
  void Reset() override {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }

  bool IsNull(int col) const override { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  int64_t Int(int col) const override { return sqlite3_column_int64(stmt_, col); }
  double Real(int col) const override { return sqlite3_column_double(stmt_, col); }
  std::string Text(int col) const override {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, col));
    return p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(stmt_, col)))
             : std::string();
  }
  std::string Bytes(int col) const override {
    const auto* p = static_cast<const char*>(sqlite3_column_blob(stmt_, col));
    return p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(stmt_, col)))
             : std::string();
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
};

class SqliteDatabase final : public Database {
 public:
  SqliteDatabase(const std::string& path, int busy_timeout_ms) {
    const int rc =
        sqlite3_open_v2(path.c_str(), &db_,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    if (rc != SQLITE_OK) {
      const std::string msg =
          "cannot open database " + path + ": " + (db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc));
      sqlite3_close(db_);
      db_ = nullptr;
      throw StorageError(msg);
    }
    sqlite3_extended_result_codes(db_, 1);
    sqlite3_busy_timeout(db_, busy_timeout_ms);
  }
  ~SqliteDatabase() override {
    cache_.clear();
    sqlite3_close(db_);
  }

  Dialect dialect() const override { return Dialect::kSqlite; }

  void Exec(std::string_view sql) override {
    char* err = nullptr;
    const std::string text(sql);
    const int rc = sqlite3_exec(db_, text.c_str(), nullptr, nullptr, &err);
    if (rc != SQLITE_OK) {
      sqlite3_free(err);
      Throw(db_, rc, "cannot run '" + text + "'");
    }
  }

  Query Prepare(std::string_view sql) override {
    auto it = cache_.find(std::string(sql));
    if (it == cache_.end()) {
      it = cache_.emplace(std::string(sql), std::make_unique<SqliteStatement>(db_, sql)).first;
    }
    return Query(*it->second);
  }

  bool HasTable(std::string_view name) override {
    auto q = Prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ? LIMIT 1");
    return q->Bind(1, name).Step();
  }

  // BEGIN IMMEDIATE for writers, so that the write lock is taken up front and a busy database
  // is waited on (busy timeout) instead of failing half-way through a read-then-write.
  void Begin(bool write) override { Exec(write ? "BEGIN IMMEDIATE" : "BEGIN"); }

 private:
  sqlite3* db_ = nullptr;
  std::unordered_map<std::string, std::unique_ptr<SqliteStatement>> cache_;
};

}  // namespace

std::unique_ptr<Database> OpenSqlite(const std::string& path, int busy_timeout_ms) {
  return std::make_unique<SqliteDatabase>(path, busy_timeout_ms);
}

}  // namespace lepton::sql
