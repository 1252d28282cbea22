// lepton's event log: loads, warm-ups, swaps, alias moves, promotions, rollbacks, anomalies and
// errors, as JSON lines. Written through spdlog (to a file when configured), kept in a bounded
// in-memory ring that readers follow by sequence number (the Python `logging` bridge does).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace spdlog {
class logger;
}

namespace lepton {

struct Event {
  int64_t seq = 0;
  double time = 0;    // seconds since the epoch
  std::string level;  // "debug", "info", "warning" or "error"
  std::string kind;   // "load", "warmup", "swap", "alias", "promote", "rollback", ...
  std::string model, version;
  std::string message;
  std::string details;         // a JSON object
  std::string ToJson() const;  // one line
};

class EventLog {
 public:
  static EventLog& Global();
  explicit EventLog(size_t capacity = 10000);
  ~EventLog();

  void Emit(const std::string& level, const std::string& kind, const std::string& model,
            const std::string& version, const std::string& message,
            const std::string& details = "{}");

  // Events with seq > `after`, at most `max`; waits up to `wait_s` for one to arrive.
  std::vector<Event> Since(int64_t after, double wait_s = 0, size_t max = 1000) const;
  // The latest `n` events, of `model` only when it is not empty.
  std::vector<Event> Recent(size_t n, const std::string& model = "") const;
  int64_t last_seq() const;

  // Also appends every event as a JSON line to `path` ("" stops); rotates at `max_bytes`.
  void SetFile(const std::string& path, size_t max_bytes = 64 << 20, size_t max_files = 3);

 private:
  void LockForFork();
  void UnlockAfterFork(bool child);

  size_t capacity_;
  std::mutex file_mu_;  // taken by writers of the file, so that a fork never splits a write
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::deque<Event> ring_;
  int64_t seq_ = 0;
  std::shared_ptr<spdlog::logger> file_;
};

// Shorthand for EventLog::Global().Emit(...).
void EmitEvent(const std::string& level, const std::string& kind, const std::string& model,
               const std::string& version, const std::string& message,
               const std::string& details = "{}");

}  // namespace lepton
