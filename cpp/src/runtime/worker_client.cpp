// The deployment's side of a version placed in its own process: a pool of connections to its
// worker, and the exchanges of requests and answers over them. The worker's life (starting it,
// and again after a crash) is worker_supervisor.cpp's.
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "lepton/common/errors.h"
#include "lepton/common/process.h"
#include "lepton/runtime/worker.h"
#include "worker_channel.h"
#include "worker_ring.h"
#include "worker_supervisor.h"
#include "worker_wire.h"

namespace lepton {
namespace {

// A connection to one incarnation of a worker: its socket and, where the system allows, its
// shared mailbox.
struct WorkerConnection {
  Fd socket;
  std::unique_ptr<WorkerChannel> channel;
  uint64_t generation = 0;
  int pid = 0;
};

// The shared request slots of one incarnation of a worker, and the socket they were sent over.
struct RingLink {
  std::unique_ptr<WorkerRing> ring;
  Fd socket;
  uint64_t generation = 0;
  int pid = 0;
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

class WorkerProcess final : public ForwardTarget {
 public:
  WorkerProcess(worker::Start start, WorkerOptions options, std::string dir)
      : supervisor_(std::move(start), std::move(options), std::move(dir)),
        options_(supervisor_.options()),
        who_(supervisor_.who()) {}

  ~WorkerProcess() override { Stop(); }

  // Starts the first incarnation; LoadError when it does not come up.
  worker::Hello Begin() { return supervisor_.Begin(); }

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
  bool direct() const override { return options_.shared_memory; }

  // A call alone goes through a slot of the worker's ring. Several calls (or one when no slot is
  // free, or too large for one) go out in one write on one connection, and the worker answers
  // them in order.
  void ForwardEach(std::vector<Call>& calls) override {
    if (calls.size() == 1 && options_.shared_memory) {
      Call& c = calls[0];
      try {
        if (std::shared_ptr<RingLink> link = Ring()) {
          const int slot = link->ring->Acquire();
          if (slot >= 0 && ForwardInRing(*link, slot, c, Awake(InFlight::Now() + 1))) return;
        }
      } catch (...) {
        *c.error = std::current_exception();
        return;
      }
    }
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
    const auto awake = Awake;
    if (awake(InFlight::Now() + 1)) {
      for (size_t i : sent) requests[i].set_awake(true);
    }
    for (size_t j = 0; j + 1 < sent.size(); ++j) requests[sent[j]].set_more(true);
    WorkerConnection conn;
    size_t answered = 0;
    try {
      conn = Connect();
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
        throw BackendUnavailable(who_ + ": its worker (pid " + std::to_string(conn.pid) +
                                 ") went away while running the request" +
                                 supervisor_.ExitOf(conn.generation));
      }
      // A worker answers each request with one frame: a connection with bytes left over is out
      // of step and is not reused.
      if (in.pending() == 0) Return(std::move(conn));
    } catch (...) {
      // What was not answered fails together.
      const std::exception_ptr error = std::current_exception();
      for (size_t j = answered; j < sent.size(); ++j) *calls[sent[j]].error = error;
    }
  }

  // Waiting awake pays only while a core is free for it: the worker needs one to answer, so this
  // process's exchanges with workers, and the requests it is answering, two cores each, must fit.
  static bool Awake(int exchanges) {
    return CoresToSpare(std::max(exchanges, CountedRequest::InFlight()));
  }

  void Describe(ServableStats& stats) const override {
    stats.placement = PlacementName(Placement::kProcess);
    stats.worker = supervisor_.status();
    if (stats.worker->state != "running" && stats.health == Health::kReady) {
      stats.health = Health::kFailed;
    }
  }

  void Stop() override {
    std::vector<WorkerConnection> idle;
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopped_ = true;
      idle.swap(idle_);
      ring_.reset();
    }
    supervisor_.Stop();
  }

 private:
  // An idle connection to the running incarnation, or a new one.
  WorkerConnection Connect() {
    const WorkerSupervisor::Running run = supervisor_.Current();
    std::vector<WorkerConnection> stale;  // to an earlier incarnation: closed outside the lock
    {
      std::lock_guard<std::mutex> lk(mu_);
      while (!idle_.empty()) {
        WorkerConnection c = std::move(idle_.back());
        idle_.pop_back();
        if (c.generation == run.generation) return c;
        stale.push_back(std::move(c));
      }
    }
    WorkerConnection c{Dial(run), options_.shared_memory ? WorkerChannel::Create() : nullptr,
                       run.generation, run.pid};
    if (!SendDescriptor(c.socket.fd, c.channel ? c.channel->fd() : -1, kMailboxDescriptor)) {
      throw BackendUnavailable(who_ + ": its worker (pid " + std::to_string(run.pid) +
                               ") closed a new connection");
    }
    if (c.channel) c.channel->CloseDescriptor();
    return c;
  }

  // A new connection to the incarnation `run`, after its hello.
  Fd Dial(const WorkerSupervisor::Running& run) {
    Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, run.socket.data(),
                std::min(run.socket.size(), sizeof(addr.sun_path) - 1));
    if (fd.fd < 0 || ::connect(fd.fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      throw BackendUnavailable(who_ + ": cannot reach its worker (pid " + std::to_string(run.pid) +
                               "): " + std::strerror(errno));
    }
    WireInput in;
    worker::Hello hello;
    if (ReadFrame(fd.fd, hello, Clock::now() + std::chrono::seconds(10), in) != WireStatus::kOk) {
      throw BackendUnavailable(who_ + ": its worker (pid " + std::to_string(run.pid) +
                               ") closed a new connection");
    }
    return fd;
  }

  // The running incarnation's ring, set up on first use; nullptr where the system cannot make
  // one (requests then go over connections).
  std::shared_ptr<RingLink> Ring() {
    const WorkerSupervisor::Running run = supervisor_.Current();
    const auto current = [&]() -> std::shared_ptr<RingLink> {
      std::lock_guard<std::mutex> lk(mu_);
      if (stopped_) throw Unavailable(who_ + ": its worker was stopped");
      if (ring_ && ring_->generation == run.generation) return ring_;
      return nullptr;
    };
    if (auto link = current()) return link;
    std::lock_guard<std::mutex> ring_lk(ring_mu_);
    if (auto link = current()) return link;  // another caller set it up meanwhile
    auto link = std::make_shared<RingLink>();
    link->ring = WorkerRing::Create();
    if (!link->ring) return nullptr;
    link->socket = Dial(run);
    link->generation = run.generation;
    link->pid = run.pid;
    if (!SendDescriptor(link->socket.fd, link->ring->fd(), kRingDescriptor)) {
      throw BackendUnavailable(who_ + ": its worker (pid " + std::to_string(run.pid) +
                               ") closed a new connection");
    }
    link->ring->CloseDescriptor();
    std::lock_guard<std::mutex> lk(mu_);
    if (stopped_) throw Unavailable(who_ + ": its worker was stopped");
    ring_ = link;
    return link;
  }

  // Sends one request through a slot of the ring and waits for its answer there; false when the
  // request is too large for a slot (it then goes over a connection).
  bool ForwardInRing(RingLink& link, int slot, const Call& c, bool awake) {
    WorkerRing& ring = *link.ring;
    // The slot goes back to the ring however this ends: free at once when nothing was posted or
    // the answer was read, given up on otherwise (the worker may still be writing in it).
    struct Held {
      WorkerRing& ring;
      int slot;
      bool posted = false;
      bool answered = false;
      ~Held() {
        if (posted && !answered) {
          ring.Abandon(slot);
        } else {
          ring.Release(slot);
        }
      }
    } held{ring, slot};
    worker::Request req;
    Tensors payload;
    thread_local std::string scratch;
    thread_local WireInput in;
    TensorsToWire(*c.inputs, c.strings, req.mutable_inputs(), payload);
    if (c.deadline) {
      const double left = Seconds(*c.deadline - Clock::now());
      if (left <= 0) throw Timeout(who_ + ": the deadline passed before the worker was asked");
      req.set_timeout_s(left);
    }
    if (c.priority != 0) req.set_priority(c.priority);
    if (awake) req.set_awake(true);
    {
      const FramePieces laid = LayOutFrames({OutFrame{&req, &payload}}, scratch);
      if (laid.total > WorkerRing::kArea) return false;
      laid.CopyTo(ring.request_area(slot));
      ring.Post(slot, laid.total, c.priority);
      held.posted = true;
    }
    const InFlight counted;
    in.begin = in.end = 0;
    // A large answer's buffer is not kept for the thread's next request.
    struct Trim {
      ~Trim() {
        if (in.bytes.size() > 4 * WorkerRing::kArea) std::string().swap(in.bytes);
      }
    } trim;
    for (;;) {
      const double spin_s = awake && Awake(counted.count()) ? options_.busy_poll_s : 0;
      const WireStatus s = ring.WaitAnswer(slot, link.socket.fd, c.deadline, spin_s);
      if (s == WireStatus::kTimeout) {
        throw Timeout(who_ + ": the worker did not answer before the deadline");
      }
      if (s == WireStatus::kClosed) {
        DropRing(link);
        throw BackendUnavailable(who_ + ": its worker (pid " + std::to_string(link.pid) +
                                 ") went away while running the request" +
                                 supervisor_.ExitOf(link.generation));
      }
      bool more = false;
      size_t total = 0;
      const size_t n = ring.answer_bytes(slot, more, total);
      if (in.end + n > total) throw Error(who_ + ": its worker sent an answer that does not fit");
      if (in.bytes.size() < in.end + n) {
        in.bytes.resize(std::max(in.end + n, std::min(total, 2 * in.bytes.size())));
      }
      std::memcpy(in.bytes.data() + in.end, ring.answer_area(slot), n);
      in.end += n;
      if (!more) break;
      ring.NextPiece(slot);
    }
    held.answered = true;
    worker::Response resp;
    RunResult r;
    try {
      if (ReadFrame(-1, resp, std::nullopt, in) != WireStatus::kOk ||
          TensorsFromWire(-1, resp.outputs(), std::nullopt, in, r.outputs, r.strings) !=
              WireStatus::kOk) {
        throw Error("it is cut short");
      }
    } catch (const std::exception& e) {
      throw Error(who_ + ": its worker sent an answer that does not fit: " + e.what());
    }
    if (resp.error_code() != 0) {
      *c.error = ErrorOf(resp);
      return true;
    }
    r.queue_s = resp.queue_s();
    r.compute_s = resp.compute_s();
    r.batch_rows = resp.batch_rows();
    *c.result = std::move(r);
    return true;
  }

  // A ring whose worker went away is not used again.
  void DropRing(const RingLink& link) {
    std::lock_guard<std::mutex> lk(mu_);
    if (ring_.get() == &link) ring_.reset();
  }

  // Keeps a connection for the next exchange, while its incarnation runs and the pool has room.
  void Return(WorkerConnection c) {
    if (!supervisor_.IsCurrent(c.generation)) return;
    std::lock_guard<std::mutex> lk(mu_);
    if (stopped_ || static_cast<int>(idle_.size()) >= options_.max_connections) return;
    idle_.push_back(std::move(c));
  }

  WorkerSupervisor supervisor_;
  const WorkerOptions& options_;  // the supervisor's
  const std::string who_;
  std::mutex mu_;  // guards the pool
  std::vector<WorkerConnection> idle_;
  std::shared_ptr<RingLink> ring_;  // the running incarnation's, once used
  std::mutex ring_mu_;              // one thread sets a ring up at a time
  bool stopped_ = false;
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
