#include "lepton/observe/events.h"

#include <pthread.h>
#include <spdlog/sinks/rotating_file_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <new>
#include <nlohmann/json.hpp>

#include "lepton/common/errors.h"
#include "lepton/common/process.h"

namespace lepton {

std::string Event::ToJson() const {
  nlohmann::json j;
  j["seq"] = seq;
  j["time"] = time;
  j["level"] = level;
  j["kind"] = kind;
  j["model"] = model;
  if (!version.empty()) j["version"] = version;
  j["message"] = message;
  j["details"] = nlohmann::json::parse(details.empty() ? "{}" : details, nullptr, false);
  if (j["details"].is_discarded()) j["details"] = details;
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

EventLog& EventLog::Global() {
  static EventLog* log = [] {
    auto* created = new EventLog();  // never destroyed: threads may log during exit
    // Forking while another thread waits on or writes to the log would leave the child a lock
    // that is never released and a condition variable counting waiters it does not have: the
    // fork waits until no thread is inside the log, and the child starts with fresh ones.
    ::pthread_atfork([] { Global().LockForFork(); }, [] { Global().UnlockAfterFork(false); },
                     [] { Global().UnlockAfterFork(true); });
    return created;
  }();
  return *log;
}

void EventLog::LockForFork() {
  file_mu_.lock();
  mu_.lock();
}

void EventLog::UnlockAfterFork(bool child) {
  // The parent's waiters do not exist in the child; the old object is abandoned, not destroyed,
  // since destroying a condition variable with waiters blocks.
  if (child) new (&cv_) std::condition_variable();
  mu_.unlock();
  file_mu_.unlock();
}

EventLog::EventLog(size_t capacity) : capacity_(std::max<size_t>(1, capacity)) {}

EventLog::~EventLog() = default;

void EventLog::Emit(const std::string& level, const std::string& kind, const std::string& model,
                    const std::string& version, const std::string& message,
                    const std::string& details) {
  Event e;
  e.time =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  e.level = level;
  e.kind = kind;
  e.model = model;
  e.version = version;
  e.message = message;
  e.details = details;
  std::shared_ptr<spdlog::logger> file;
  std::string line;
  {
    std::lock_guard<std::mutex> lk(mu_);
    e.seq = ++seq_;
    file = file_;
    if (file) line = e.ToJson();
    if (ring_.size() >= capacity_) ring_.pop_front();
    ring_.push_back(std::move(e));
  }
  cv_.notify_all();
  if (file) {
    std::lock_guard<std::mutex> lk(file_mu_);
    file->info(line);
    file->flush();
  }
}

std::vector<Event> EventLog::Since(int64_t after, double wait_s, size_t max) const {
  std::unique_lock<std::mutex> lk(mu_);
  if (wait_s > 0 && seq_ <= after) {
    cv_.wait_for(lk, ClampedDuration(wait_s), [&] { return seq_ > after; });
  }
  // The ring is in sequence order: the first event after `after` is found by bisection, so a
  // follower that asks after every event does not scan the whole ring each time.
  auto it = std::partition_point(ring_.begin(), ring_.end(),
                                 [after](const Event& e) { return e.seq <= after; });
  std::vector<Event> out;
  for (; it != ring_.end() && out.size() < max; ++it) out.push_back(*it);
  return out;
}

std::vector<Event> EventLog::Recent(size_t n, const std::string& model) const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<Event> out;
  for (auto it = ring_.rbegin(); it != ring_.rend() && out.size() < n; ++it) {
    if (model.empty() || it->model == model) out.push_back(*it);
  }
  std::reverse(out.begin(), out.end());
  return out;
}

int64_t EventLog::last_seq() const {
  std::lock_guard<std::mutex> lk(mu_);
  return seq_;
}

void EventLog::SetFile(const std::string& path, size_t max_bytes, size_t max_files) {
  std::shared_ptr<spdlog::logger> logger;
  if (!path.empty()) {
    try {
      auto sink =
          std::make_shared<spdlog::sinks::rotating_file_sink_mt>(path, max_bytes, max_files);
      logger = std::make_shared<spdlog::logger>("lepton-events", std::move(sink));
      logger->set_pattern("%v");
      logger->set_level(spdlog::level::info);
    } catch (const spdlog::spdlog_ex& e) {
      throw StorageError("cannot write the event log to '" + path + "': " + e.what());
    }
  }
  std::lock_guard<std::mutex> lk(mu_);
  file_ = std::move(logger);
}

void EmitEvent(const std::string& level, const std::string& kind, const std::string& model,
               const std::string& version, const std::string& message, const std::string& details) {
  EventLog::Global().Emit(level, kind, model, version, message, details);
}

}  // namespace lepton
