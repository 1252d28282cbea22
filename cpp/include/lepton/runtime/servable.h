// A servable is one loaded version of a model, ready to take traffic: a TorchScript module in eval
// and inference mode, warmed up, running inside its own tbb::task_arena whose size is its CPU
// budget, behind a dynamic batcher with a bounded, priority-ordered queue and per-request
// deadlines.
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "lepton/common/errors.h"
#include "lepton/common/process.h"
#include "lepton/common/signature.h"
#include "lepton/runtime/string_tensor.h"
#include "lepton/runtime/worker_status.h"

namespace lepton {

using Tensors = std::vector<at::Tensor>;

using Clock = std::chrono::steady_clock;

inline double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
// "2.5 s", for messages.
std::string SecondsText(double seconds);
// Clamped, so that a timeout of 1e10 s or infinity is a distant deadline, not an overflow.
inline Clock::duration DeadlineIn(double seconds) {
  return ClampedDuration<Clock::duration>(seconds);
}

// The cores a deployment's versions share, and how many forwards run on them now. Budgets divide
// the cores between versions, but a version whose budget is full may run a request on a core
// that no version uses (see ServableOptions::borrow): budgets keep each version its share under
// contention without leaving cores idle when the others have nothing to do. Thread-safe.
class CorePool {
 public:
  explicit CorePool(int cores) : cores_(cores) {}
  CorePool(const CorePool&) = delete;
  CorePool& operator=(const CorePool&) = delete;

  bool Idle() const { return running_.load(std::memory_order_relaxed) < cores_; }
  void Begin() { running_.fetch_add(1, std::memory_order_relaxed); }
  void End() { running_.fetch_sub(1, std::memory_order_relaxed); }
  int running() const { return running_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int> running_{0};
  const int cores_;
};

struct ServableOptions {
  // CPU budget: how many requests (or batches) of this version run at once, each on one thread.
  int threads = 1;
  // The deployment's cores, counted while this version's forwards run here. With `borrow`, a
  // request waiting for a budget that is full runs at once on its caller's thread when fewer
  // forwards run than there are cores (without dynamic batching; a request run elsewhere never
  // borrows).
  std::shared_ptr<CorePool> cores;
  bool borrow = false;
  // Intra-op threads inside one forward. 1 by default: parallelism comes from running requests and
  // versions side by side, which does not oversubscribe the cores the way nested pools do.
  int intra_op_threads = 1;
  int max_batch_size = 1;        // rows; 1 disables batching
  double max_queue_delay_s = 0;  // how long a batch may wait to fill
  int max_queue = 1024;          // queued requests beyond this are refused (Overloaded)
  int priority = 0;              // default priority of this version's requests
  int warmup_runs = 2;
  // An executor thread idle this long exits; the next queued request starts it again. A version
  // without traffic holds no thread.
  double idle_thread_s = 2.0;
  Tensors example_inputs;  // used to warm up when there is no signature
};

enum class Health { kLoading, kReady, kDraining, kUnloaded, kFailed };
const char* HealthName(Health h);

struct ServableStats {
  std::string version;
  Health health = Health::kLoading;
  int threads = 0;
  int executors = 0;     // executor threads alive now (none while idle)
  int64_t requests = 0;  // admitted
  int64_t succeeded = 0;
  int64_t failed = 0;  // the model raised
  int64_t timed_out = 0;
  int64_t rejected = 0;  // refused or evicted because the queue was full
  int64_t batches = 0;
  int64_t batched_rows = 0;
  int64_t in_flight = 0;  // running now
  int64_t borrowed = 0;   // requests run beyond the budget, on cores no version used
  int64_t queued = 0;     // waiting now
  double busy_s = 0;      // total compute time
  int64_t weight_bytes = 0;
  bool shared_code = false;  // compiled (and optimized) by an earlier version with the same code
  bool mapped = false;       // the tensors point into the artifact's mapping, not copies
  bool pooled = false;       // the tensors point into a memory budget's reused buffer
  std::string placement = "in_process";  // or "process": its forwards run in a worker
  std::optional<WorkerStatus> worker;    // that worker, for a version placed in a process
};

struct RunOptions {
  std::optional<Clock::time_point> deadline;
  std::optional<int> priority;
  // Run on the servable's arena even when the caller could run it itself (ensemble members).
  bool force_async = false;
  // The request's string inputs (null: none).
  std::shared_ptr<const StringTensors> strings;
  // The caller checked the inputs against this servable already (a deployment does before it
  // routes): Run does not check them again.
  bool inputs_checked = false;
};

struct RunResult {
  Tensors outputs;
  StringTensors strings;  // string outputs; their positions in `outputs` are undefined
  double queue_s = 0;
  double compute_s = 0;
  int batch_rows = 0;            // rows in the batch this request ran in
  Clock::time_point finished{};  // when its run ended; unset for a result made elsewhere
};

// What runs a version's forwards elsewhere (its worker process, its remote endpoint) is down,
// ejected, or went away while running the request: Unavailable to the caller (the same code and
// Python class), and the version's own failure to a policy that watches outcomes (a canary's
// guardrails), unlike a version that left the deployment.
class BackendUnavailable : public Unavailable {
 public:
  explicit BackendUnavailable(const std::string& what) : Unavailable(what) {}
};

// Where the forwards of a version run when not in this process (a worker process). The servable
// keeps its queue, batching, deadlines and statistics and calls this for each batch.
class ForwardTarget {
 public:
  virtual ~ForwardTarget() = default;
  // Runs one forward there; throws lepton errors (Unavailable when it cannot be reached).
  virtual RunResult Forward(const Tensors& inputs, const StringTensors* strings,
                            std::optional<Clock::time_point> deadline) = 0;

  // One request of several sent together, each with its own forward, answer and error.
  struct Call {
    const Tensors* inputs = nullptr;
    const StringTensors* strings = nullptr;
    std::optional<Clock::time_point> deadline;
    RunResult* result = nullptr;
    std::exception_ptr* error = nullptr;
    int priority = 0;
  };
  // How many queued requests one exchange with the target may carry: under load, requests that
  // wait together travel together, and the hop's cost is paid once for all of them.
  virtual int max_coalesced() const { return 1; }
  // Whether callers send their requests to the target themselves, on their own threads and any
  // number at once, rather than through the servable's queue: the target orders them (by
  // priority, then arrival) and runs them within the version's budget.
  virtual bool direct() const { return false; }
  // Runs each call's forward there, filling in its result or its error. Never throws. By
  // default, one Forward after another.
  virtual void ForwardEach(std::vector<Call>& calls);
  // Adds what it knows to the servable's statistics: its placement, its process, its health.
  virtual void Describe(ServableStats& stats) const = 0;
  // At unload: stops whatever runs the forwards.
  virtual void Stop() = 0;
};

// What a version's forward takes, for a servable whose forward runs elsewhere.
struct ForwardSignature {
  std::vector<std::string> names;
  std::vector<bool> strings;  // which inputs take List[str]
  size_t required = 0;        // inputs without a default value
  int64_t weight_bytes = 0;
  bool shared_code = false;
};

class Servable {
 public:
  class Ticket;  // an asynchronous request in flight

  // A servable whose forwards run in `target` (already loaded and warmed up there).
  static std::shared_ptr<Servable> Attach(std::string model, std::string version,
                                          std::string sha256, std::optional<Signature> signature,
                                          ServableOptions options, ForwardSignature forward,
                                          std::shared_ptr<ForwardTarget> target);

  // Loads a TorchScript archive. `sha256`, when given, is checked against the bytes first
  // (IntegrityError) unless `verified` says the caller already did (the registry's blob store
  // checks what it reads). Warms up before returning; a model that fails to load or warm up
  // throws.
  //
  // An archive whose code (everything but its tensors) was loaded before in this process reuses
  // that compiled and optimized code: nothing is compiled, and one warm-up run (at most) checks
  // that the version answers.
  // `owner`, when given, keeps `bytes` alive and makes them the servable's to write (a private
  // mapping, or with `pooled` a buffer a memory budget reuses): the tensors then point into them
  // instead of being copied.
  static std::shared_ptr<Servable> Load(std::string model, std::string version,
                                        std::string_view bytes, std::string sha256,
                                        std::optional<Signature> signature, ServableOptions options,
                                        bool verified = false,
                                        std::shared_ptr<void> owner = nullptr, bool pooled = false);
  ~Servable();

  const std::string& model() const;
  const std::string& version() const;
  const std::string& sha256() const;
  const std::optional<Signature>& signature() const;
  const ServableOptions& options() const;

  // The names of the inputs in order: the signature's, else the forward's parameter names.
  const std::vector<std::string>& input_names() const;
  // What its forward takes and what it holds (for a worker to tell its deployment).
  ForwardSignature forward_signature() const;

  // Throws InvalidArgument naming what was expected when inputs (with their string inputs) do
  // not fit the signature (or the forward's parameter count), or when `names` are not the input
  // names in order.
  void CheckInputs(const Tensors& inputs, const std::vector<std::string>* names = nullptr,
                   const StringTensors* strings = nullptr) const;

  // Runs one request and blocks until its outputs are ready. Throws Overloaded when the queue is
  // full, Timeout at the deadline, ModelError when the forward fails, Unavailable when unloaded.
  RunResult Run(const Tensors& inputs, const RunOptions& options = {});

  // Runs one request on the calling thread at once, whatever the budget, with `intra_op_threads`
  // (0: the servable's own setting): for work already inside a bounded pool (an ensemble's TBB
  // arena). Counted in the statistics like any other.
  RunResult RunHere(const Tensors& inputs, int intra_op_threads = 0,
                    std::shared_ptr<const StringTensors> strings = nullptr);

  // Whether the model's outputs follow the batch dimension (one output row per input row), so
  // that requests can be batched together and one request split by rows. True until a batch
  // or a split shows otherwise, or until MarkRowsDependent.
  bool rows_independent() const;
  void MarkRowsDependent();

  // Starts one request on the servable's arena and returns at once.
  std::shared_ptr<Ticket> Submit(const Tensors& inputs, const RunOptions& options = {});
  // Waits for a ticket (until its deadline) and returns or throws as Run does.
  RunResult Wait(const std::shared_ptr<Ticket>& ticket);

  // Stops taking new requests, waits for queued and running ones until `timeout_s`, then unloads;
  // requests still queued then fail with Unavailable. Returns true when everything finished.
  bool Drain(double timeout_s);

  // Changes the CPU budget; running requests finish on the old arena.
  void SetThreads(int threads);

  Health health() const;
  ServableStats stats() const;

 private:
  class Impl;
  explicit Servable(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace lepton
