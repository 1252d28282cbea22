// The deployment's side of a version placed in its own process: starting the worker, a pool of
// connections to it, and a supervisor thread that waits for the worker to exit and starts it
// again with back-off.
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "lepton/common/errors.h"
#include "lepton/common/process.h"
#include "lepton/observe/events.h"
#include "lepton/runtime/worker.h"
#include "worker_channel.h"
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

struct Fd {
  int fd = -1;
  Fd() = default;
  explicit Fd(int f) : fd(f) {}
  Fd(Fd&& o) noexcept : fd(o.fd) { o.fd = -1; }
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      Close();
      fd = o.fd;
      o.fd = -1;
    }
    return *this;
  }
  ~Fd() { Close(); }
  void Close() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

// A connection to a worker: its socket and, where the system allows, its shared mailbox.
struct Connection {
  Fd socket;
  std::unique_ptr<WorkerChannel> channel;
};

// One running incarnation of the worker.
struct Incarnation {
  pid_t pid = 0;
  uint64_t generation = 0;
  Fd lifeline;  // the write end: closing it makes the worker leave
};

// This process's requests in flight to its workers, while one is counted.
class InFlight {
 public:
  InFlight() : n_(count_.fetch_add(1, std::memory_order_relaxed) + 1) {}
  ~InFlight() { count_.fetch_sub(1, std::memory_order_relaxed); }
  int count() const { return n_; }
  static int Now() { return count_.load(std::memory_order_relaxed); }

 private:
  static inline std::atomic<int> count_{0};
  const int n_;
};

// A worker's answer that carries an error, as the error.
std::exception_ptr ErrorOf(const worker::Response& resp) {
  try {
    const int code = resp.error_code() - 1;
    if (code < 0 || code > static_cast<int>(ErrorCode::kInternal)) throw Error(resp.error());
    ThrowErrorOf(static_cast<ErrorCode>(code), resp.error());
  } catch (...) {
    return std::current_exception();
  }
  return nullptr;
}

// Queued requests of one version sent to its worker in one exchange, at most.
constexpr int kMaxCoalesced = 8;

class WorkerProcess final : public ForwardTarget,
                            public std::enable_shared_from_this<WorkerProcess> {
 public:
  WorkerProcess(worker::Start start, WorkerOptions options, std::string dir)
      : start_(std::move(start)),
        options_(std::move(options)),
        dir_(std::move(dir)),
        who_(start_.model() + ":" + start_.version()) {
    if (options_.program.empty()) options_.program = DefaultProgram();
  }

  ~WorkerProcess() override { Stop(); }

  // Starts the first incarnation and the supervisor; LoadError when it does not come up.
  worker::Hello Begin() {
    worker::Hello hello = Spawn();
    std::lock_guard<std::mutex> lk(mu_);
    status_.state = "running";
    supervisor_ = std::thread([self = this] { self->Supervise(); });
    return hello;
  }

  RunResult Forward(const Tensors& inputs, const StringTensors* strings,
                    std::optional<Clock::time_point> deadline) override {
    RunResult r;
    std::exception_ptr error;
    std::vector<Call> calls{Call{&inputs, strings, deadline, &r, &error}};
    ForwardEach(calls);
    if (error) std::rethrow_exception(error);
    return r;
  }

  int max_coalesced() const override { return kMaxCoalesced; }

  // The calls' requests go out in one write on one connection; the worker answers them in order.
  void ForwardEach(std::vector<Call>& calls) override {
    std::vector<worker::Request> requests(calls.size());
    std::vector<Tensors> payloads(calls.size());
    std::vector<size_t> sent;  // the calls asked, in the order asked
    // The exchange lasts until the latest deadline; each request carries its own.
    std::optional<Clock::time_point> deadline;
    bool unbounded = false;
    const auto now = Clock::now();
    for (size_t i = 0; i < calls.size(); ++i) {
      const Call& c = calls[i];
      try {
        TensorsToWire(*c.inputs, c.strings, requests[i].mutable_inputs(), payloads[i]);
        if (c.deadline) {
          const double left = Seconds(*c.deadline - now);
          if (left <= 0) throw Timeout(who_ + ": the deadline passed before the worker was asked");
          requests[i].set_timeout_s(left);
          if (!deadline || *c.deadline > *deadline) deadline = c.deadline;
        } else {
          unbounded = true;
        }
        sent.push_back(i);
      } catch (...) {
        *c.error = std::current_exception();
      }
    }
    if (sent.empty()) return;
    if (unbounded) deadline.reset();
    // Waiting awake pays only while a core is free for it: the worker needs one to answer, so
    // this process's exchanges with workers, and the requests it is answering, two cores each,
    // must fit.
    const auto awake = [](int exchanges) {
      return CoresToSpare(std::max(exchanges, CountedRequest::InFlight()));
    };
    if (awake(InFlight::Now() + 1)) {
      for (size_t i : sent) requests[i].set_awake(true);
    }
    for (size_t j = 0; j + 1 < sent.size(); ++j) requests[sent[j]].set_more(true);
    uint64_t generation = 0;
    int pid = 0;
    Connection conn;
    size_t answered = 0;
    try {
      conn = Connect(generation, pid);
      // The calling thread's buffers, kept from one exchange to the next.
      thread_local std::string scratch;
      thread_local WireInput in;
      in.begin = in.end = 0;
      std::vector<OutFrame> frames;
      for (size_t i : sent) frames.push_back({&requests[i], &payloads[i]});
      // Where the answers are read from: the socket, or (-1) only what `in` holds.
      int from = conn.socket.fd;
      WireStatus s = WireStatus::kOk;
      if (conn.channel) {
        WorkerChannel& ch = *conn.channel;
        const FramePieces laid = LayOutFrames(frames, scratch);
        const bool fits = laid.total <= WorkerChannel::kArea;
        if (fits) laid.CopyTo(ch.request_area());
        // Posted before a large exchange is written, so that the worker reads it as it comes.
        ch.PostRequest(fits ? laid.total : 0, static_cast<int>(sent.size()), /*on_socket=*/!fits);
        if (!fits) s = WriteFrames(conn.socket.fd, frames, deadline, scratch);
        if (s == WireStatus::kOk) {
          const InFlight counted;
          const double spin_s = awake(counted.count()) ? options_.busy_poll_s : 0;
          s = ch.WaitResponse(conn.socket.fd, deadline, spin_s);
        }
        if (s == WireStatus::kOk && !ch.posted_on_socket(/*request=*/false)) {
          const size_t n = ch.posted_bytes(/*request=*/false);
          if (in.bytes.size() < n) in.bytes.resize(n);
          std::memcpy(in.bytes.data(), ch.response_area(), n);
          in.end = n;
          from = -1;
        }
      } else {
        s = WriteFrames(conn.socket.fd, frames, deadline, scratch);
      }
      worker::Response resp;
      while (s == WireStatus::kOk && answered < sent.size()) {
        if (from >= 0 && !conn.channel) {
          const InFlight counted;
          const double spin_s = awake(counted.count()) ? options_.busy_poll_s : 0;
          s = ReadFrame(from, resp, deadline, in, spin_s);
        } else {
          s = ReadFrame(from, resp, deadline, in);
        }
        if (s != WireStatus::kOk) break;
        const Call& c = calls[sent[answered]];
        RunResult r;
        try {
          s = TensorsFromWire(from, resp.outputs(), deadline, in, r.outputs, r.strings);
        } catch (const std::exception& e) {
          throw Error(who_ + ": its worker sent an answer that does not fit: " + e.what());
        }
        if (s != WireStatus::kOk) break;
        if (resp.error_code() != 0) {
          *c.error = ErrorOf(resp);
        } else {
          r.queue_s = resp.queue_s();
          r.compute_s = resp.compute_s();
          r.batch_rows = resp.batch_rows();
          *c.result = std::move(r);
        }
        ++answered;
      }
      if (s == WireStatus::kTimeout) {
        // The answers may still come on this connection: it is dropped, not reused.
        throw Timeout(who_ + ": the worker did not answer before the deadline");
      }
      if (s == WireStatus::kClosed) {
        throw BackendUnavailable(who_ + ": its worker (pid " + std::to_string(pid) +
                                 ") went away while running the request" + Exit(generation));
      }
      // A worker answers each request with one frame: a connection with bytes left over is out
      // of step and is not reused.
      if (in.pending() == 0) Return(std::move(conn), generation);
    } catch (...) {
      // What was not answered fails together.
      const std::exception_ptr error = std::current_exception();
      for (size_t j = answered; j < sent.size(); ++j) *calls[sent[j]].error = error;
    }
  }

  void Describe(ServableStats& stats) const override {
    std::lock_guard<std::mutex> lk(mu_);
    stats.placement = PlacementName(Placement::kProcess);
    stats.worker = status_;
    if (status_.state != "running" && stats.health == Health::kReady) {
      stats.health = Health::kFailed;
    }
  }

  void Stop() override {
    std::thread supervisor;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (stopped_) return;
      stopped_ = true;
      status_.state = "stopped";
      idle_.clear();
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

 private:
  std::string SocketPath(uint64_t generation) const {
    return dir_ + "/w" + std::to_string(generation) + ".sock";
  }

  // " (killed by signal 9 (Killed))" once the supervisor has seen that incarnation end.
  std::string Exit(uint64_t generation) {
    std::unique_lock<std::mutex> lk(mu_);
    // The supervisor reaps the worker moments after its sockets close.
    changed_.wait_for(lk, std::chrono::milliseconds(200),
                      [&] { return current_.generation != generation || stopped_; });
    if (current_.generation != generation && !status_.last_exit.empty()) {
      return " (" + status_.last_exit + ")";
    }
    return "";
  }

  // Starts one incarnation and waits for its Hello. Called without mu_.
  worker::Hello Spawn() {
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
    const int rc =
        ::posix_spawn(&pid, options_.program.c_str(), &fa, nullptr, argv.data(), environ);
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

  // An idle connection to the running incarnation, or a new one.
  Connection Connect(uint64_t& generation, int& pid) {
    {
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
      generation = current_.generation;
      pid = current_.pid;
      if (!idle_.empty()) {
        Connection c = std::move(idle_.back());
        idle_.pop_back();
        return c;
      }
    }
    Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string path = SocketPath(generation);
    std::memcpy(addr.sun_path, path.data(), std::min(path.size(), sizeof(addr.sun_path) - 1));
    if (fd.fd < 0 || ::connect(fd.fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      throw BackendUnavailable(who_ + ": cannot reach its worker (pid " + std::to_string(pid) +
                               "): " + std::strerror(errno));
    }
    WireInput in;
    worker::Hello hello;
    if (ReadFrame(fd.fd, hello, Clock::now() + std::chrono::seconds(10), in) != WireStatus::kOk) {
      throw BackendUnavailable(who_ + ": its worker (pid " + std::to_string(pid) +
                               ") closed a new connection");
    }
    Connection c{std::move(fd), options_.shared_memory ? WorkerChannel::Create() : nullptr};
    if (!SendDescriptor(c.socket.fd, c.channel ? c.channel->fd() : -1)) {
      throw BackendUnavailable(who_ + ": its worker (pid " + std::to_string(pid) +
                               ") closed a new connection");
    }
    if (c.channel) c.channel->CloseDescriptor();
    return c;
  }

  void Return(Connection c, uint64_t generation) {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopped_ || generation != current_.generation ||
        static_cast<int>(idle_.size()) >= options_.max_connections) {
      return;
    }
    idle_.push_back(std::move(c));
  }

  // Waits for each incarnation to end and starts the next one, until stopped or given up.
  void Supervise() {
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
      idle_.clear();
      ++current_.generation;  // connections to the old one are not returned
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
          EmitEvent(
              "info", "worker_restarted", start_.model(), start_.version(),
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

  const worker::Start start_;
  WorkerOptions options_;
  const std::string dir_;
  const std::string who_;
  mutable std::mutex mu_;
  std::condition_variable changed_;
  Incarnation current_;
  uint64_t generations_ = 0;
  std::vector<Connection> idle_;
  WorkerStatus status_;
  bool stopped_ = false;
  std::thread supervisor_;
};

std::string PrivateDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string base = tmp && *tmp ? tmp : "/tmp";
  // A socket path must fit in 108 bytes.
  if (base.size() > 60) base = "/tmp";
  std::string tmpl = base + "/lepton-w-XXXXXX";
  if (!::mkdtemp(tmpl.data())) {
    throw LoadError("cannot make a folder for a worker's socket in " + base + ": " +
                    std::strerror(errno));
  }
  return tmpl;
}

}  // namespace

const char* PlacementName(Placement p) {
  return p == Placement::kProcess ? "process" : "in_process";
}

Placement PlacementNamed(const std::string& name) {
  if (name == "process") return Placement::kProcess;
  if (name == "in_process") return Placement::kInProcess;
  throw InvalidArgument("placement must be \"in_process\" or \"process\", got \"" + name + "\"");
}

std::shared_ptr<Servable> StartWorker(const std::string& model, const std::string& version,
                                      const std::string& artifact, const std::string& sha256,
                                      const std::optional<Signature>& signature,
                                      const ServableOptions& options, const WorkerOptions& worker) {
  worker::Start start;
  start.set_model(model);
  start.set_version(version);
  start.set_artifact(artifact);
  start.set_sha256(sha256);
  if (signature) {
    start.set_has_signature(true);
    auto specs = [](const std::vector<TensorSpec>& in, auto* out) {
      for (const auto& t : in) {
        worker::TensorSpec* w = out->Add();
        w->set_name(t.name);
        w->set_dtype(t.dtype);
        for (int64_t d : t.shape) w->add_shape(d);
      }
    };
    specs(signature->inputs, start.mutable_inputs());
    specs(signature->outputs, start.mutable_outputs());
  }
  // The worker runs as many forwards at once as the version's CPU budget allows, each on the
  // intra-op threads asked for; it batches nothing itself (the deployment's side does).
  start.set_threads(options.threads);
  start.set_intra_op_threads(options.intra_op_threads);
  start.set_warmup_runs(options.warmup_runs);
  start.set_memory_bytes(worker.resources.memory_bytes);
  for (int c : worker.resources.cpus) start.add_cpus(c);
  for (const auto& l : worker.libraries) start.add_libraries(l);
  start.set_busy_poll_s(worker.busy_poll_s);

  auto process = std::make_shared<WorkerProcess>(std::move(start), worker, PrivateDir());
  const worker::Hello hello = process->Begin();
  ForwardSignature f;
  f.names.assign(hello.input_names().begin(), hello.input_names().end());
  f.strings.assign(hello.string_inputs().begin(), hello.string_inputs().end());
  f.required = static_cast<size_t>(hello.required_inputs());
  f.weight_bytes = hello.weight_bytes();
  f.shared_code = hello.shared_code();
  try {
    return Servable::Attach(model, version, hello.sha256(), signature, options, std::move(f),
                            process);
  } catch (...) {
    process->Stop();
    throw;
  }
}

}  // namespace lepton
