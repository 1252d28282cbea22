// The worker program: reads its Start frame from the lifeline (fd 4), applies its limits, loads
// its one version, says Hello on the ready pipe (fd 3), then serves requests on its socket (and
// each connection's shared mailbox), one exchange per connection at a time, until the lifeline
// closes.
#include <dlfcn.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "lepton/common/errors.h"
#include "lepton/common/files.h"
#include "lepton/runtime/worker.h"
#include "worker_channel.h"
#include "worker_ring.h"
#include "worker_supervisor.h"
#include "worker_wire.h"

namespace lepton {
namespace {

constexpr int kReadyFd = 3;
constexpr int kLifelineFd = 4;

Signature SignatureOf(const worker::Start& s) {
  Signature sig;
  auto specs = [](const auto& in, std::vector<TensorSpec>& out) {
    for (const auto& t : in) {
      out.push_back(TensorSpec{t.name(), t.dtype(), {t.shape().begin(), t.shape().end()}});
    }
  };
  specs(s.inputs(), sig.inputs);
  specs(s.outputs(), sig.outputs);
  return sig;
}

void ApplyLimits(const worker::Start& s, worker::Hello& hello) {
  if (s.memory_bytes() > 0) {
    rlimit r{static_cast<rlim_t>(s.memory_bytes()), static_cast<rlim_t>(s.memory_bytes())};
    if (setrlimit(RLIMIT_AS, &r) != 0) {
      throw InvalidArgument("cannot limit the worker's memory to " +
                            std::to_string(s.memory_bytes()) + " bytes: " + std::strerror(errno));
    }
  }
  if (s.cpus_size() > 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int c : s.cpus()) {
      if (c < 0 || c >= CPU_SETSIZE) throw InvalidArgument("no CPU " + std::to_string(c));
      CPU_SET(c, &set);
    }
    if (sched_setaffinity(0, sizeof(set), &set) != 0) {
      throw InvalidArgument("cannot confine the worker to its CPUs: " +
                            std::string(std::strerror(errno)));
    }
  }
  // Read back: what the worker really runs under.
  rlimit r{};
  if (getrlimit(RLIMIT_AS, &r) == 0 && r.rlim_cur != RLIM_INFINITY) {
    hello.set_memory_limit(static_cast<int64_t>(r.rlim_cur));
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &set)) hello.add_cpus(c);
    }
  }
}

// Requests this worker is running now, over all its connections and rings.
std::atomic<int> running{0};

// An answer that carries an error in place of outputs (its code is off by one on the wire, so that
// 0 says "no error").
void Refuse(worker::Response& resp, Tensors& payload, ErrorCode code, const std::string& message) {
  resp.Clear();
  payload.clear();
  resp.set_error_code(static_cast<int>(code) + 1);
  resp.set_error(message);
}

// Runs one request and fills in its answer: the outputs, or the error.
void Respond(Servable& servable, const worker::Request& req, Tensors& inputs,
             std::shared_ptr<StringTensors> strings, worker::Response& resp, Tensors& payload) {
  running.fetch_add(1, std::memory_order_relaxed);
  struct Done {
    ~Done() { running.fetch_sub(1, std::memory_order_relaxed); }
  } done;
  try {
    RunOptions o;
    if (req.timeout_s() > 0) o.deadline = Clock::now() + DeadlineIn(req.timeout_s());
    if (req.has_priority()) o.priority = req.priority();
    if (!strings->empty()) o.strings = std::move(strings);
    RunResult r = servable.Run(inputs, o);
    TensorsToWire(r.outputs, &r.strings, resp.mutable_outputs(), payload);
    resp.set_queue_s(r.queue_s);
    resp.set_compute_s(r.compute_s);
    resp.set_batch_rows(r.batch_rows);
  } catch (...) {
    const CurrentError e = CurrentErrorOf();
    Refuse(resp, payload, e.code, e.message);
  }
  inputs.clear();
}

// One of the threads that serve a ring (WorkerRing): takes the next posted slot, runs its
// request and posts the answer in the slot, in pieces when it is larger than the slot, until the
// deployment lets the ring go or goes away.
void ServeRing(std::shared_ptr<WorkerRing> ring, std::shared_ptr<Fd> socket,
               std::shared_ptr<Servable> servable, double busy_poll_s) {
  WireInput in;
  worker::Request req;
  worker::Response resp;
  Tensors inputs;
  Tensors payload;
  std::string scratch;
  bool awake = false;
  for (;;) {
    const double spin_s =
        awake && CoresToSpare(running.load(std::memory_order_relaxed) + 1) ? busy_poll_s : 0;
    const int slot = ring->Take(socket->fd, spin_s);
    if (slot < 0) break;
    size_t n = 0;
    const char* bytes = ring->request_bytes(slot, n);
    if (in.bytes.size() < n) in.bytes.resize(n);
    std::memcpy(in.bytes.data(), bytes, n);
    in.begin = 0;
    in.end = n;
    resp.Clear();
    payload.clear();
    auto strings = std::make_shared<StringTensors>();
    bool parsed = false;
    try {
      parsed = ReadFrame(-1, req, std::nullopt, in) == WireStatus::kOk &&
               TensorsFromWire(-1, req.inputs(), std::nullopt, in, inputs, *strings) ==
                   WireStatus::kOk &&
               in.pending() == 0;
    } catch (const std::exception&) {
      parsed = false;
    }
    if (parsed) {
      awake = req.awake();
      Respond(*servable, req, inputs, std::move(strings), resp, payload);
    } else {
      inputs.clear();
      Refuse(resp, payload, ErrorCode::kInternal,
             "the worker received a request that does not parse");
    }
    try {
      const FramePieces laid = LayOutFrames({OutFrame{&resp, &payload}}, scratch);
      for (size_t at = 0;;) {
        const size_t piece = std::min(laid.total - at, WorkerRing::kArea);
        laid.CopyRange(at, piece, ring->answer_area(slot));
        at += piece;
        const bool more = at < laid.total;
        if (!ring->Answer(slot, piece, more, laid.total, socket->fd) || !more) break;
      }
    } catch (const std::exception& e) {
      // An answer over the frame limit: said in its place.
      Refuse(resp, payload, ErrorCode::kInternal,
             std::string("the worker cannot send its answer: ") + e.what());
      const FramePieces laid = LayOutFrames({OutFrame{&resp, &payload}}, scratch);
      laid.CopyRange(0, laid.total, ring->answer_area(slot));
      ring->Answer(slot, laid.total, false, laid.total, socket->fd);
    }
    payload.clear();
  }
}

// Answers one connection's requests, one exchange at a time, until it closes. With a shared
// mailbox (WorkerChannel), an exchange's requests and answers are copied through it, and only
// those too large for it go over the socket. Either way the answers to an exchange's requests go
// back together, after its last request. A connection that brings a ring (WorkerRing) instead is
// served by as many threads as the version's budget, until the ring is let go.
void Serve(int fd, std::shared_ptr<Servable> servable, worker::Hello hello, double busy_poll_s) {
  std::string scratch;
  WireInput in;
  worker::Request req;
  std::deque<worker::Response> answers;  // stable addresses while they wait
  std::deque<Tensors> payloads;
  std::unique_ptr<WorkerChannel> channel;
  Tensors inputs;
  // Waiting awake for the next request pays only while a core is free for it: the deployment
  // says whether it had one to spare when it asked (it waited awake for the answer), and the
  // other connections' forwards need theirs.
  bool awake = false;
  bool more = false;  // the request read last said that more of its exchange follow
  // Reads the next request (from `from`, or only from what `in` holds when it is -1), runs it and
  // keeps its answer; false when the connection is done.
  const auto run_one = [&](int from, double spin_s) {
    if (ReadFrame(from, req, std::nullopt, in, spin_s) != WireStatus::kOk) return false;
    awake = req.awake();
    more = req.more();
    worker::Response& resp = answers.emplace_back();
    Tensors& payload = payloads.emplace_back();
    auto strings = std::make_shared<StringTensors>();
    if (TensorsFromWire(from, req.inputs(), std::nullopt, in, inputs, *strings) !=
        WireStatus::kOk) {
      return false;
    }
    Respond(*servable, req, inputs, std::move(strings), resp, payload);
    return true;
  };
  const auto answer_frames = [&] {
    std::vector<OutFrame> frames;
    for (size_t i = 0; i < answers.size(); ++i) frames.push_back({&answers[i], &payloads[i]});
    return frames;
  };
  try {
    if (WriteFrame(fd, hello, std::nullopt, scratch) != WireStatus::kOk) {
      ::close(fd);
      return;
    }
    // The deployment answers the hello with its mailbox's or its ring's descriptor, or with none.
    char kind = 0;
    const std::optional<int> shared = ReceiveDescriptor(fd, &kind);
    if (!shared) {
      ::close(fd);
      return;
    }
    if (*shared >= 0 && kind == kRingDescriptor) {
      std::shared_ptr<WorkerRing> ring = WorkerRing::Attach(*shared);
      if (!ring) {
        ::close(fd);
        return;
      }
      auto socket = std::make_shared<Fd>(fd);
      const int threads = std::max(1, servable->options().threads);
      std::vector<std::thread> others;
      for (int i = 1; i < threads; ++i) {
        others.emplace_back(ServeRing, ring, socket, servable, busy_poll_s);
      }
      ServeRing(ring, socket, servable, busy_poll_s);
      for (auto& t : others) t.join();
      return;
    }
    if (*shared >= 0) {
      channel = WorkerChannel::Attach(*shared);
      if (!channel) {
        // The deployment will look for answers in a mailbox this side cannot reach.
        ::close(fd);
        return;
      }
    }
    for (;;) {
      const double spin_s =
          awake && CoresToSpare(running.load(std::memory_order_relaxed) + 1) ? busy_poll_s : 0;
      if (!channel) {
        if (!run_one(fd, spin_s)) break;
        if (more) continue;  // the exchange goes on
        if (WriteFrames(fd, answer_frames(), std::nullopt, scratch) != WireStatus::kOk) break;
        answers.clear();
        payloads.clear();
        continue;
      }
      if (channel->WaitRequest(fd, spin_s) != WireStatus::kOk) break;
      const int count = channel->posted_count();
      int from = fd;
      in.begin = in.end = 0;
      if (!channel->posted_on_socket(/*request=*/true)) {
        // All of the exchange is here: a frame cut short ends the connection, it is not awaited.
        const size_t n = channel->posted_bytes(/*request=*/true);
        if (in.bytes.size() < n) in.bytes.resize(n);
        std::memcpy(in.bytes.data(), channel->request_bytes(), n);
        in.end = n;
        from = -1;
      }
      bool ok = count > 0;
      for (int i = 0; ok && i < count; ++i) ok = run_one(from, 0);
      if (!ok || in.pending() > 0) break;
      const std::vector<OutFrame> frames = answer_frames();
      const FramePieces laid = LayOutFrames(frames, scratch);
      const bool fits = laid.total <= WorkerChannel::kArea;
      if (fits) laid.CopyTo(channel->response_area());
      // Posted before a large answer is written, so that the deployment reads it as it comes.
      channel->PostResponse(fits ? laid.total : 0, /*on_socket=*/!fits);
      if (!fits && WriteFrames(fd, frames, std::nullopt, scratch) != WireStatus::kOk) break;
      answers.clear();
      payloads.clear();
    }
  } catch (...) {
    // A frame that does not parse: this connection is done; the others go on.
  }
  channel.reset();
  ::close(fd);
}

int Fail(const worker::Start& start, const std::string& why) {
  worker::Hello hello;
  hello.set_model(start.model());
  hello.set_version(start.version());
  hello.set_pid(getpid());
  hello.set_error_code(static_cast<int>(ErrorCode::kLoad) + 1);
  hello.set_error(why);
  std::string scratch;
  WriteFrame(kReadyFd, hello, std::nullopt, scratch);
  return 2;
}

}  // namespace

int WorkerMain(int argc, char** argv) {
  if (argc > 1) {
    std::fprintf(stderr,
                 "lepton-worker runs one version of a model for a lepton deployment, which starts "
                 "it with its instructions on file descriptor 4; it takes no arguments.\n");
    return std::strcmp(argv[1], "--help") == 0 ? 0 : 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  std::string scratch;
  worker::Start start;
  try {
    WireInput in;
    if (ReadFrame(kLifelineFd, start, std::nullopt, in) != WireStatus::kOk) return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lepton-worker: %s\n", e.what());
    return 2;
  }
  // The deployment closes the lifeline (or dies): the worker leaves at once.
  std::thread([] {
    char c;
    while (::read(kLifelineFd, &c, 1) != 0) {
      if (errno != EINTR && errno != EAGAIN) break;
    }
    ::_exit(0);
  }).detach();

  worker::Hello hello;
  hello.set_model(start.model());
  hello.set_version(start.version());
  hello.set_pid(getpid());
  std::shared_ptr<Servable> servable;
  int listener = -1;
  try {
    ApplyLimits(start, hello);
    for (const auto& lib : start.libraries()) {
      if (!::dlopen(lib.c_str(), RTLD_NOW | RTLD_GLOBAL)) {
        throw LoadError("cannot load the library " + lib + ": " + ::dlerror());
      }
    }
    auto bytes = std::make_shared<std::string>(ReadWholeFile(start.artifact(), "model file"));
    ServableOptions o;
    o.threads = std::max({1, start.threads(), hello.cpus_size()});
    o.intra_op_threads = std::max(1, start.intra_op_threads());
    o.warmup_runs = start.warmup_runs();
    std::optional<Signature> sig;
    if (start.has_signature()) sig = SignatureOf(start);
    const std::string_view view = *bytes;
    servable = Servable::Load(start.model(), start.version(), view, start.sha256(), sig, o,
                              /*verified=*/false, bytes);
    const ForwardSignature f = servable->forward_signature();
    hello.set_sha256(servable->sha256());
    hello.set_weight_bytes(f.weight_bytes);
    hello.set_shared_code(f.shared_code);
    for (const auto& n : f.names) hello.add_input_names(n);
    for (bool b : f.strings) hello.add_string_inputs(b);
    hello.set_required_inputs(static_cast<int>(f.required));

    listener = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (start.socket().size() >= sizeof(addr.sun_path)) {
      throw InvalidArgument("the worker's socket path is too long: " + start.socket());
    }
    std::memcpy(addr.sun_path, start.socket().data(), start.socket().size());
    if (listener < 0 || ::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(listener, 128) != 0) {
      throw Unavailable("the worker cannot listen on " + start.socket() + ": " +
                        std::strerror(errno));
    }
  } catch (const std::exception& e) {
    return Fail(start, e.what());
  }
  if (WriteFrame(kReadyFd, hello, std::nullopt, scratch) != WireStatus::kOk) return 2;
  ::close(kReadyFd);
  for (;;) {
    const int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return 3;
    }
    std::thread(Serve, fd, servable, hello, start.busy_poll_s()).detach();
  }
}

}  // namespace lepton
