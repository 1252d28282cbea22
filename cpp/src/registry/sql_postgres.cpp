// The registry's database on PostgreSQL, through libpq.
#include <libpq-fe.h>
#include <poll.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "lepton/common/errors.h"
#include "sql_db.h"

namespace lepton::sql {
namespace {

// Every registry writer in one database takes this transaction-level advisory lock first, as
// SQLite's writers take its write lock: read-then-write sequences stay atomic across machines.
constexpr const char* kWriteLock = "SELECT pg_advisory_xact_lock(7809567493486895982)";

// `?` and `?N` placeholders as PostgreSQL's `$N`, outside quoted strings.
std::string Translate(std::string_view sql) {
  std::string out;
  out.reserve(sql.size() + 16);
  int next = 0;
  bool quoted = false;
  for (size_t i = 0; i < sql.size(); ++i) {
    const char c = sql[i];
    if (c == '\'') quoted = !quoted;
    if (c != '?' || quoted) {
      out += c;
      continue;
    }
    size_t j = i + 1;
    while (j < sql.size() && sql[j] >= '0' && sql[j] <= '9') ++j;
    out += '$';
    out += j > i + 1 ? std::string(sql.substr(i + 1, j - i - 1)) : std::to_string(++next);
    i = j - 1;
  }
  return out;
}

std::string Trimmed(const char* message) {
  std::string s = message ? message : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Maps a failed result to lepton's errors by its SQLSTATE.
[[noreturn]] void Throw(PGconn* conn, const PGresult* result, std::string_view context) {
  const char* state = result ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
  const std::string code = state ? state : "";
  const std::string msg = std::string(context) + ": " +
                          Trimmed(result ? PQresultErrorMessage(result) : PQerrorMessage(conn));
  if (code.rfind("23", 0) == 0) throw Conflict(msg);  // integrity constraint violation
  if (code == "53100") throw StorageError(msg, ENOSPC);
  if (code == "XX001" || code == "XX002") throw IntegrityError(msg);
  throw StorageError(msg);
}

// A server that does not answer is given up after 10 s (unless the URL says otherwise), so that
// an unreachable database holds a background poll up, never forever.
PGconn* ConnectTo(const std::string& url) {
  const char* keywords[] = {"connect_timeout", "dbname", nullptr};
  const char* values[] = {"10", url.c_str(), nullptr};
  PGconn* conn = PQconnectdbParams(keywords, values, /*expand_dbname=*/1);
  if (conn)
    PQsetNoticeProcessor(
        conn, [](void*, const char*) {}, nullptr);
  return conn;
}

class PgDatabase;

class PgStatement final : public Statement {
 public:
  PgStatement(PgDatabase& db, std::string sql, std::string name)
      : db_(db), sql_(std::move(sql)), name_(std::move(name)) {}
  ~PgStatement() override { PQclear(result_); }

  using Statement::Bind;
  Statement& Bind(int index, int64_t value) override { return Set(index, std::to_string(value)); }
  // Numbers as text, in the shortest form that reads back exactly, whatever the locale.
  Statement& Bind(int index, double value) override {
    char buffer[32];
    const auto end = std::to_chars(buffer, buffer + sizeof buffer, value).ptr;
    return Set(index, std::string(buffer, end));
  }
  Statement& Bind(int index, std::string_view value) override {
    return Set(index, std::string(value));
  }
  Statement& BindNull(int index) override { return Set(index, std::nullopt); }
  // Sent in binary: no escaping, no doubling.
  Statement& BindBytes(int index, std::string_view value) override {
    Set(index, std::string(value));
    binary_.resize(params_.size());
    binary_[static_cast<size_t>(index) - 1] = true;
    return *this;
  }

  bool Step() override;
  void Reset() override {
    PQclear(result_);
    result_ = nullptr;
    params_.clear();
    binary_.clear();
    row_ = -1;
  }

  bool IsNull(int col) const override { return PQgetisnull(result_, row_, col); }
  int64_t Int(int col) const override {
    const char* v = PQgetvalue(result_, row_, col);
    if (v[0] == 't' || v[0] == 'f') return v[0] == 't';  // booleans
    return std::strtoll(v, nullptr, 10);
  }
  double Real(int col) const override {
    const char* v = PQgetvalue(result_, row_, col);
    double out = 0;
    std::from_chars(v, v + PQgetlength(result_, row_, col), out);
    return out;
  }
  std::string Text(int col) const override {
    return std::string(PQgetvalue(result_, row_, col),
                       static_cast<size_t>(PQgetlength(result_, row_, col)));
  }
  // A bytea comes back in its text form ("\\x" and hex), decoded by libpq.
  std::string Bytes(int col) const override {
    size_t n = 0;
    unsigned char* raw =
        PQunescapeBytea(reinterpret_cast<const unsigned char*>(PQgetvalue(result_, row_, col)), &n);
    if (!raw) throw StorageError("cannot decode binary data from PostgreSQL");
    std::string out(reinterpret_cast<const char*>(raw), n);
    PQfreemem(raw);
    return out;
  }
  const std::vector<bool>& binary() const { return binary_; }

  const std::string& sql() const { return sql_; }
  const std::string& name() const { return name_; }
  uint64_t prepared_on = 0;  // the connection (by number) this was prepared on; 0: none

 private:
  Statement& Set(int index, std::optional<std::string> value) {
    if (index < 1) throw InvalidArgument("SQL parameters count from 1");
    if (params_.size() < static_cast<size_t>(index)) params_.resize(static_cast<size_t>(index));
    params_[static_cast<size_t>(index) - 1] = std::move(value);
    return *this;
  }

  PgDatabase& db_;
  const std::string sql_, name_;
  std::vector<std::optional<std::string>> params_;
  std::vector<bool> binary_;  // which parameters are binary data
  PGresult* result_ = nullptr;
  int row_ = -1;
};

class PgDatabase final : public Database {
 public:
  PgDatabase(const std::string& url, int lock_timeout_ms)
      : url_(url), lock_timeout_ms_(lock_timeout_ms) {
    Connect();
  }
  ~PgDatabase() override {
    cache_.clear();
    PQfinish(conn_);
  }

  Dialect dialect() const override { return Dialect::kPostgres; }

  void Exec(std::string_view sql) override {
    const std::string text(sql);
    PGresult* r = Retrying([&] { return PQexec(conn_, text.c_str()); });
    struct Clear {
      PGresult* r;
      ~Clear() { PQclear(r); }
    } clear{r};
    if (sql == "COMMIT" || sql == "ROLLBACK") in_transaction_ = false;
    if (Failed(r)) Throw(conn_, r, "database error");
  }

  Query Prepare(std::string_view sql) override {
    auto it = cache_.find(std::string(sql));
    if (it == cache_.end()) {
      auto stmt = std::make_unique<PgStatement>(*this, Translate(sql),
                                                "lepton_" + std::to_string(cache_.size()));
      it = cache_.emplace(std::string(sql), std::move(stmt)).first;
    }
    return Query(*it->second);
  }

  bool HasTable(std::string_view name) override {
    auto q = Prepare(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND "
        "table_name = ? LIMIT 1");
    return q->Bind(1, name).Step();
  }

  void Begin(bool write) override {
    Exec(write ? "BEGIN" : "BEGIN ISOLATION LEVEL REPEATABLE READ");
    in_transaction_ = true;
    if (!write) return;
    try {
      Exec(kWriteLock);  // may time out (lock_timeout): the transaction must not stay open
    } catch (...) {
      try {
        Exec("ROLLBACK");
      } catch (...) {
      }
      throw;
    }
  }

  // Runs a statement, preparing it first on this connection; returns the result, failed or not.
  PGresult* Run(PgStatement& s, const std::vector<std::optional<std::string>>& params) {
    std::vector<const char*> values;
    std::vector<int> lengths, formats;
    values.reserve(params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      const auto& p = params[i];
      values.push_back(p ? p->data() : nullptr);
      lengths.push_back(p ? static_cast<int>(p->size()) : 0);
      formats.push_back(i < s.binary().size() && s.binary()[i] ? 1 : 0);
    }
    return Retrying([&]() -> PGresult* {
      if (s.prepared_on != connection_) {
        PGresult* p = PQprepare(conn_, s.name().c_str(), s.sql().c_str(), 0, nullptr);
        if (Failed(p)) return p;
        PQclear(p);
        s.prepared_on = connection_;
      }
      return PQexecPrepared(conn_, s.name().c_str(), static_cast<int>(values.size()), values.data(),
                            lengths.data(), formats.data(), 0);
    });
  }

  static bool Failed(const PGresult* r) {
    const auto status = PQresultStatus(r);
    return status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK;
  }

  PGconn* conn() { return conn_; }

 private:
  void Connect() {
    conn_ = ConnectTo(url_);
    if (PQstatus(conn_) != CONNECTION_OK) {
      const std::string msg = Trimmed(PQerrorMessage(conn_));
      PQfinish(conn_);
      conn_ = nullptr;
      throw StorageError("cannot connect to PostgreSQL at " + RedactedUrl(url_) + ": " + msg);
    }
    PQsetNoticeProcessor(
        conn_, [](void*, const char*) {}, nullptr);  // CREATE ... IF NOT EXISTS
    Configure();
  }

  void Configure() {
    ++connection_;
    in_transaction_ = false;
    PGresult* r = PQexec(conn_, ("SET lock_timeout = " + std::to_string(lock_timeout_ms_) +
                                 "; SET client_min_messages = warning")
                                    .c_str());
    PQclear(r);
  }

  // A connection found lost between transactions (a restarted server, a dropped link) is opened
  // again and the statement tried once more. One lost inside a transaction fails that
  // transaction, whose work the server has rolled back; the next statement after it connects
  // again.
  template <class Attempt>
  PGresult* Retrying(Attempt&& attempt) {
    Reconnect();
    PGresult* r = attempt();
    if (Failed(r) && PQstatus(conn_) == CONNECTION_BAD) {
      if (in_transaction_) {
        in_transaction_ = false;
        return r;  // reported by the caller; the transaction is gone
      }
      PQclear(r);
      Reconnect();
      r = attempt();
    }
    return r;
  }

  void Reconnect() {
    if (PQstatus(conn_) == CONNECTION_OK) return;
    const bool lost_transaction = in_transaction_;
    PQreset(conn_);
    if (PQstatus(conn_) != CONNECTION_OK) {
      throw StorageError("lost the connection to PostgreSQL at " + RedactedUrl(url_) + ": " +
                         Trimmed(PQerrorMessage(conn_)));
    }
    Configure();
    if (lost_transaction) {
      throw StorageError("lost the connection to PostgreSQL at " + RedactedUrl(url_) +
                         " inside a transaction; the server rolled it back");
    }
  }

  const std::string url_;
  const int lock_timeout_ms_;
  PGconn* conn_ = nullptr;
  uint64_t connection_ = 0;  // counts connections, so that statements know to prepare again
  bool in_transaction_ = false;
  std::unordered_map<std::string, std::unique_ptr<PgStatement>> cache_;
};

bool PgStatement::Step() {
  if (!result_) {
    result_ = db_.Run(*this, params_);
    if (PgDatabase::Failed(result_)) Throw(db_.conn(), result_, "database error");
  }
  ++row_;
  return row_ < PQntuples(result_);
}

class PgListener final : public Listener {
 public:
  PgListener(std::string url, std::string channel, std::function<void(const std::string&)> notified,
             std::function<void()> resync)
      : url_(std::move(url)),
        channel_(std::move(channel)),
        notified_(std::move(notified)),
        resync_(std::move(resync)),
        thread_([this] { Run(); }) {}

  ~PgListener() override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  bool live() const override { return live_.load(); }

 private:
  void Run() {
    auto pause = std::chrono::milliseconds(500);
    bool first = true;
    while (!Stopping()) {
      PGconn* conn = ConnectTo(url_);
      if (PQstatus(conn) == CONNECTION_OK) {
        PGresult* r = PQexec(conn, ("LISTEN " + channel_).c_str());
        const bool listening = PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        if (listening) {
          live_ = true;
          pause = std::chrono::milliseconds(500);
          if (!first) resync_();
          first = false;
          Listen(conn);
          live_ = false;
        }
      }
      PQfinish(conn);
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait_for(lk, pause, [&] { return stopping_; });
      pause = std::min(pause * 2, std::chrono::milliseconds(5000));
    }
  }

  // Delivers notifications until the connection is lost or the listener stops.
  void Listen(PGconn* conn) {
    while (!Stopping()) {
      pollfd fd{PQsocket(conn), POLLIN, 0};
      if (fd.fd < 0) return;
      const int ready = ::poll(&fd, 1, 250);  // wakes to see whether it must stop
      if (ready < 0 && errno != EINTR) return;
      if (ready > 0 && !PQconsumeInput(conn)) return;  // the connection is gone
      while (PGnotify* n = PQnotifies(conn)) {
        const std::string payload = n->extra ? n->extra : "";
        PQfreemem(n);
        notified_(payload);
      }
      if (PQstatus(conn) != CONNECTION_OK) return;
    }
  }

  bool Stopping() {
    std::lock_guard<std::mutex> lk(mu_);
    return stopping_;
  }

  const std::string url_, channel_;
  const std::function<void(const std::string&)> notified_;
  const std::function<void()> resync_;
  std::atomic<bool> live_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;  // last: starts once everything above is ready
};

}  // namespace

std::unique_ptr<Listener> ListenPostgres(const std::string& url, const std::string& channel,
                                         std::function<void(const std::string&)> notified,
                                         std::function<void()> resync) {
  return std::make_unique<PgListener>(url, channel, std::move(notified), std::move(resync));
}

std::unique_ptr<Database> OpenPostgres(const std::string& url, int lock_timeout_ms) {
  return std::make_unique<PgDatabase>(url, lock_timeout_ms);
}

bool IsPostgresUrl(std::string_view location) {
  return location.rfind("postgresql://", 0) == 0 || location.rfind("postgres://", 0) == 0;
}

std::string RedactedUrl(std::string_view url) {
  std::string out(url);
  // postgresql://user:password@host/...
  const size_t scheme = out.find("://");
  if (scheme != std::string::npos) {
    const size_t start = scheme + 3;
    const size_t at = out.find('@', start);
    const size_t slash = out.find('/', start);
    if (at != std::string::npos && (slash == std::string::npos || at < slash)) {
      const size_t colon = out.find(':', start);
      if (colon != std::string::npos && colon < at) out.erase(colon, at - colon);
    }
  }
  return WithoutParameter(out, "password");
}

std::optional<std::string> QueryParameter(std::string_view url, std::string_view name) {
  const std::string prefix = std::string(name) + "=";
  for (size_t p = url.find('?'); p != std::string_view::npos; p = url.find('&', p + 1)) {
    if (url.compare(p + 1, prefix.size(), prefix) != 0) continue;
    const size_t begin = p + 1 + prefix.size();
    const size_t end = url.find('&', begin);
    return std::string(
        url.substr(begin, (end == std::string_view::npos ? url.size() : end) - begin));
  }
  return std::nullopt;
}

std::string WithoutParameter(std::string_view url, std::string_view name) {
  const size_t query = url.find('?');
  if (query == std::string_view::npos) return std::string(url);
  const std::string prefix = std::string(name) + "=";
  std::string kept;
  for (size_t p = query; p != std::string_view::npos;) {
    const size_t end = url.find('&', p + 1);
    const std::string_view part =
        url.substr(p + 1, (end == std::string_view::npos ? url.size() : end) - p - 1);
    if (!part.empty() && part.rfind(prefix, 0) != 0) {
      kept += kept.empty() ? "?" : "&";
      kept += part;
    }
    p = end;
  }
  return std::string(url.substr(0, query)) + kept;
}

}  // namespace lepton::sql
