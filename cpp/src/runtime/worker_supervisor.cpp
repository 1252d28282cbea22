#include "worker_supervisor.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <vector>

#include "lepton/common/errors.h"
#include "lepton/common/process.h"
#include "lepton/observe/events.h"
#include "worker_wire.h"

extern char** environ;

namespace lepton {
namespace {

std::string ExitText(int status) {
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    const char* name = strsignal(sig);
    return "killed by signal " + std::to_string(sig) + " (" + (name ? name : "?") + ")";
  }
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  return "ended (status " + std::to_string(status) + ")";
}

std::string DefaultProgram() {
  if (const char* env = std::getenv("LEPTON_WORKER"); env && *env) return env;
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&WorkerMain), &info) && info.dli_fname) {
    std::filesystem::path p(info.dli_fname);
    return (p.parent_path() / "lepton-worker").string();
  }
  return "lepton-worker";
}

}  // namespace

WorkerSupervisor::WorkerSupervisor(worker::Start start, WorkerOptions options, std::string dir)
    : start_(std::move(start)),
      options_(std::move(options)),
      dir_(std::move(dir)),
      who_(start_.model() + ":" + start_.version()) {
  if (options_.program.empty()) options_.program = DefaultProgram();
}

WorkerSupervisor::~WorkerSupervisor() { Stop(); }

worker::Hello WorkerSupervisor::Begin() {
  worker::Hello hello = Spawn();
  std::lock_guard<std::mutex> lk(mu_);
  status_.state = "running";
  supervisor_ = std::thread([this] { Supervise(); });
  return hello;
}

WorkerSupervisor::Running WorkerSupervisor::Current() const {
  std::lock_guard<std::mutex> lk(mu_);
  if (stopped_) throw Unavailable(who_ + " is unloaded");
  if (status_.state != "running" || current_.pid == 0) {
    throw BackendUnavailable(
        who_ + ": its worker is " +
        (status_.state == "crashed"
             ? "down for good after " + std::to_string(status_.crashes) + " crashes"
             : status_.state) +
        (status_.last_exit.empty() ? "" : " (last " + status_.last_exit + ")"));
  }
  return Running{current_.generation, current_.pid, SocketPath(current_.generation)};
}

bool WorkerSupervisor::IsCurrent(uint64_t generation) const {
  std::lock_guard<std::mutex> lk(mu_);
  return !stopped_ && generation == current_.generation;
}

std::string WorkerSupervisor::ExitOf(uint64_t generation) {
  std::unique_lock<std::mutex> lk(mu_);
  // The supervisor reaps the worker moments after its sockets close.
  changed_.wait_for(lk, std::chrono::milliseconds(200),
                    [&] { return current_.generation != generation || stopped_; });
  if (current_.generation != generation && !status_.last_exit.empty()) {
    return " (" + status_.last_exit + ")";
  }
  return "";
}

WorkerStatus WorkerSupervisor::status() const {
  std::lock_guard<std::mutex> lk(mu_);
  return status_;
}

void WorkerSupervisor::Stop() {
  std::thread supervisor;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopped_) return;
    stopped_ = true;
    status_.state = "stopped";
    // Closing the lifeline makes the worker leave; the supervisor reaps it.
    current_.lifeline.Close();
    supervisor = std::move(supervisor_);
    changed_.notify_all();
  }
  if (supervisor.joinable()) {
    // A worker that does not leave within 5 s of losing its lifeline is killed.
    std::unique_lock<std::mutex> lk(mu_);
    if (!changed_.wait_for(lk, std::chrono::seconds(5), [&] { return current_.pid == 0; })) {
      ::kill(current_.pid, SIGKILL);
    }
    lk.unlock();
    supervisor.join();
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::string WorkerSupervisor::SocketPath(uint64_t generation) const {
  return dir_ + "/w" + std::to_string(generation) + ".sock";
}

worker::Hello WorkerSupervisor::Spawn() {
  uint64_t generation;
  {
    std::lock_guard<std::mutex> lk(mu_);
    generation = ++generations_;
  }
  worker::Start start = start_;
  start.set_socket(SocketPath(generation));
  std::filesystem::remove(start.socket());
  int ready[2], lifeline[2];
  if (::pipe2(ready, O_CLOEXEC) != 0) throw LoadError(who_ + ": pipe: " + std::strerror(errno));
  Fd ready_r(ready[0]), ready_w(ready[1]);
  if (::pipe2(lifeline, O_CLOEXEC) != 0) {
    throw LoadError(who_ + ": pipe: " + std::strerror(errno));
  }
  Fd life_r(lifeline[0]), life_w(lifeline[1]);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, ready_w.fd, 3);
  posix_spawn_file_actions_adddup2(&fa, life_r.fd, 4);
  // Nothing else of this process (its listening sockets, its database) reaches the worker.
  posix_spawn_file_actions_addclosefrom_np(&fa, 5);
  std::vector<std::string> args = {options_.program};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, options_.program.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    throw LoadError(who_ + ": cannot start the worker program " + options_.program + ": " +
                    std::strerror(rc));
  }
  ready_w.Close();
  life_r.Close();
  std::string scratch;
  WireInput in;
  worker::Hello hello;
  WireStatus s = WriteFrame(life_w.fd, start, Clock::now() + std::chrono::seconds(10), scratch);
  const auto deadline = Clock::now() + DeadlineIn(options_.start_timeout_s);
  if (s == WireStatus::kOk) {
    try {
      s = ReadFrame(ready_r.fd, hello, deadline, in);
    } catch (const std::exception&) {
      s = WireStatus::kClosed;
    }
  }
  if (s != WireStatus::kOk || hello.error_code() != 0) {
    ::kill(pid, SIGKILL);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    std::string why =
        s == WireStatus::kTimeout ? "did not load within " + SecondsText(options_.start_timeout_s)
        : hello.error_code() != 0 ? hello.error()
                                  : "its worker " + ExitText(status) + " before it was ready";
    throw LoadError(who_ + " could not start in its own process: " + why);
  }
  std::lock_guard<std::mutex> lk(mu_);
  current_.pid = pid;
  current_.generation = generation;
  current_.lifeline = std::move(life_w);
  status_.pid = pid;
  status_.applied.memory_bytes = hello.memory_limit();
  status_.applied.cpus.assign(hello.cpus().begin(), hello.cpus().end());
  return hello;
}

// Waits for each incarnation to end and starts the next one, until stopped or given up.
void WorkerSupervisor::Supervise() {
  std::deque<Clock::time_point> crashes;
  double backoff = options_.restart_backoff_s;
  for (;;) {
    pid_t pid;
    {
      std::lock_guard<std::mutex> lk(mu_);
      pid = current_.pid;
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    std::unique_lock<std::mutex> lk(mu_);
    const std::string how = ExitText(status);
    status_.last_exit = how;
    status_.pid = 0;
    current_.pid = 0;
    current_.lifeline.Close();
    ++current_.generation;  // connections to the old one are not kept
    std::filesystem::remove(SocketPath(generations_));
    changed_.notify_all();
    if (stopped_) return;
    ++status_.crashes;
    const auto now = Clock::now();
    crashes.push_back(now);
    while (!crashes.empty() && Seconds(now - crashes.front()) > options_.restart_window_s) {
      crashes.pop_front();
    }
    const bool give_up = static_cast<int>(crashes.size()) > options_.max_restarts;
    status_.state = give_up ? "crashed" : "restarting";
    lk.unlock();
    EmitEvent("error", "worker_crashed", start_.model(), start_.version(),
              "the worker of " + who_ + " (pid " + std::to_string(pid) + ") " + how,
              nlohmann::json({{"pid", pid}, {"exit", how}}).dump());
    if (give_up) {
      EmitEvent("error", "worker_given_up", start_.model(), start_.version(),
                "the worker of " + who_ + " crashed " + std::to_string(crashes.size()) +
                    " time(s) within " + SecondsText(options_.restart_window_s) +
                    ": it is not started again until the version is loaded again");
      return;
    }
    for (;;) {
      lk.lock();
      if (changed_.wait_for(lk, DeadlineIn(backoff), [&] { return stopped_; })) return;
      lk.unlock();
      backoff = std::min(backoff * 2, options_.restart_backoff_max_s);
      try {
        const worker::Hello hello = Spawn();
        lk.lock();
        if (stopped_) {
          lk.unlock();
          break;  // Stop closed no lifeline of this one: the loop reaps it below
        }
        ++status_.restarts;
        status_.state = "running";
        lk.unlock();
        EmitEvent("info", "worker_restarted", start_.model(), start_.version(),
                  "the worker of " + who_ + " runs again (pid " + std::to_string(hello.pid()) + ")",
                  nlohmann::json({{"pid", hello.pid()}}).dump());
        break;
      } catch (const std::exception& e) {
        EmitEvent("error", "worker_start_failed", start_.model(), start_.version(), e.what());
        lk.lock();
        ++status_.crashes;
        crashes.push_back(Clock::now());
        if (static_cast<int>(crashes.size()) > options_.max_restarts) {
          status_.state = "crashed";
          lk.unlock();
          EmitEvent("error", "worker_given_up", start_.model(), start_.version(),
                    "the worker of " + who_ + " could not be started again: " + e.what());
          return;
        }
        lk.unlock();
      }
    }
    lk.lock();
    if (stopped_) {
      // Stopped while the new incarnation came up: close its lifeline and reap it.
      current_.lifeline.Close();
      const pid_t p = current_.pid;
      lk.unlock();
      int st = 0;
      while (p > 0 && ::waitpid(p, &st, 0) < 0 && errno == EINTR) {
      }
      lk.lock();
      current_.pid = 0;
      changed_.notify_all();
      return;
    }
    lk.unlock();
    backoff = std::max(options_.restart_backoff_s, backoff / 2);
  }
}

}  // namespace lepton
