#include "lepton/runtime/servable.h"

#include <ATen/Parallel.h>
#include <omp.h>
#include <tbb/task_arena.h>
#include <torch/script.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>
#include <unordered_set>

#include "lepton/common/errors.h"
#include "lepton/common/process.h"
#include "lepton/registry/blob_store.h"
#include "lepton/runtime/forward_values.h"
#include "lepton/runtime/input_check.h"
#include "lepton/runtime/tensor_types.h"
#include "shared_code.h"

namespace lepton {
namespace {

at::ScalarType DtypeFromName(const std::string& name) {
  const DTypeInfo* d = DTypeNamed(name);
  if (!d) throw InvalidArgument("dtype '" + name + "' is not a dtype lepton knows");
  return ScalarTypeOf(d->type);
}

// Requests batch together when they agree on everything but the number of rows.
bool SameBatchShape(const Tensors& a, const Tensors& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].scalar_type() != b[i].scalar_type() || a[i].dim() != b[i].dim()) return false;
    if (!a[i].sizes().slice(1).equals(b[i].sizes().slice(1))) return false;
  }
  return true;
}

}  // namespace

const char* HealthName(Health h) {
  switch (h) {
    case Health::kLoading:
      return "loading";
    case Health::kReady:
      return "ready";
    case Health::kDraining:
      return "draining";
    case Health::kUnloaded:
      return "unloaded";
    case Health::kFailed:
      return "failed";
  }
  return "unknown";
}

class Servable::Ticket {
 public:
  enum class State { kQueued, kRunning, kDone };
  Tensors inputs;
  std::shared_ptr<const StringTensors> strings;  // never batched with others
  int64_t rows = 0;
  int priority = 0;
  std::optional<Clock::time_point> deadline;
  Clock::time_point enqueued;
  uint64_t seq = 0;
  State state = State::kQueued;
  RunResult result;
  std::exception_ptr error;
  std::condition_variable done;
};

class Servable::Impl : public std::enable_shared_from_this<Servable::Impl> {
 public:
  using Key = std::pair<int, uint64_t>;  // (-priority, arrival): best first

  Impl(std::string model, std::string version, std::string sha, std::optional<Signature> sig,
       ServableOptions options)
      : model_(std::move(model)),
        version_(std::move(version)),
        who_(model_ + ":" + version_),
        sha256_(std::move(sha)),
        signature_(std::move(sig)),
        options_(std::move(options)),
        threads_(options_.threads),
        arena_(NewArena(threads_)) {}

  // Every slot is reserved for external threads: the servable's own executors and callers that
  // run their request inline. No TBB worker is needed, so no process-wide setting is touched and
  // a hung forward can only hold its own version's threads.
  static std::shared_ptr<tbb::task_arena> NewArena(int threads) {
    return std::make_shared<tbb::task_arena>(threads, static_cast<unsigned>(threads));
  }

  const std::string& Who() const { return who_; }

  void LoadModule(std::string_view bytes, std::shared_ptr<void> owner) {
    try {
      LoadedModule loaded = LoadTorchScript(bytes, std::move(owner), sha256_);
      module_ = std::move(loaded.module);
      shared_code_ = loaded.shared_code;
      mapped_ = loaded.mapped;
    } catch (const std::exception& e) {
      throw InvalidArgument(
          Who() + " is not a loadable TorchScript module: " + std::string(e.what()).substr(0, 400));
    }
    module_.eval();
    // Looked up once here, not by name on every request.
    if (auto m = module_.find_method("forward")) forward_.emplace(std::move(*m));
    ResolveInputNames();
    weight_bytes_ = MeasureTensors();
  }

  // What the module's tensors hold: its parameters, buffers and other tensor attributes, each
  // storage counted once (tied weights and views share one).
  int64_t MeasureTensors() const {
    std::unordered_set<const void*> seen;
    int64_t bytes = 0;
    for (const auto& a : module_.named_attributes(/*recurse=*/true)) {
      if (!a.value.isTensor()) continue;
      const at::Tensor& t = a.value.toTensor();
      if (!t.defined() || !t.has_storage()) continue;
      const c10::Storage& st = t.storage();
      if (seen.insert(st.data()).second) bytes += static_cast<int64_t>(st.nbytes());
    }
    return bytes;
  }

  // Zeros (empty strings) of the signature's shapes, with 1 for every free dimension.
  Tensors WarmupInputs(StringTensors& strings) const {
    if (!options_.example_inputs.empty()) return options_.example_inputs;
    Tensors out;
    if (!signature_ || signature_->inputs.empty()) return out;
    for (const auto& spec : signature_->inputs) {
      std::vector<int64_t> shape = spec.shape;
      int64_t n = 1;
      for (auto& d : shape) n *= (d = d < 0 ? 1 : d);
      if (spec.dtype == InfoOf(DType::kString).name) {
        strings[out.size()] = StringTensor{shape, std::vector<std::string>(n)};
        out.emplace_back();
        continue;
      }
      out.push_back(at::zeros(shape, at::TensorOptions().dtype(DtypeFromName(spec.dtype))));
    }
    return out;
  }

  // Code shared with an earlier load was optimized there (the executors belong to the code): one
  // run checks that this version's weights answer, instead of `warmup_runs`.
  void Warmup() {
    StringTensors strings;
    const Tensors inputs = WarmupInputs(strings);
    if (inputs.empty()) return;
    CheckInputs(inputs, nullptr, &strings);
    const int runs = shared_code_ ? std::min(options_.warmup_runs, 1) : options_.warmup_runs;
    for (int i = 0; i < runs; ++i) {
      try {
        Forward(inputs, &strings);
      } catch (const Error& e) {
        throw ModelError(Who() + " failed its warm-up: " + e.what());
      }
    }
  }

  // What requests must give: the signature's inputs, else the forward's parameters.
  void ResolveInputNames() {
    std::vector<std::string> names;
    std::vector<bool> strings;
    size_t required = 0;
    if (forward_) {
      const auto& args = forward_->function().getSchema().arguments();
      const c10::TypePtr list_of_strings = c10::ListType::ofStrings();
      for (size_t i = 1; i < args.size(); ++i) {  // 0 is self
        names.push_back(args[i].name());
        strings.push_back(args[i].type()->isSubtypeOf(*list_of_strings));
        if (!args[i].default_value()) required = names.size();
      }
    }
    inputs_ = InputCheck(Who(), signature_, std::move(names), required, std::move(strings));
  }

  void CheckInputs(const Tensors& inputs, const std::vector<std::string>* names,
                   const StringTensors* strings) const {
    inputs_.Check(inputs, names, strings);
  }

  RunResult Forward(const Tensors& inputs, const StringTensors* strings = nullptr,
                    int intra_op_threads = 0) {
    // Touch ATen's per-thread pool set-up first so that it does not undo the count set next.
    // The count is per thread; the caller's own setting comes back when the forward ends.
    (void)at::get_num_threads();
    struct IntraOpThreads {
      int saved = omp_get_max_threads();
      explicit IntraOpThreads(int n) { omp_set_num_threads(n); }
      ~IntraOpThreads() { omp_set_num_threads(saved); }
    } intra_op(intra_op_threads > 0 ? intra_op_threads : options_.intra_op_threads);
    c10::InferenceMode guard;
    std::vector<c10::IValue> args = ForwardArguments(inputs, strings);
    try {
      RunResult r;
      ToOutputs(forward_ ? (*forward_)(std::move(args)) : module_.forward(std::move(args)), Who(),
                r.outputs, r.strings);
      return r;
    } catch (const Error&) {
      throw;
    } catch (const c10::Error& e) {
      throw ModelError(Who() + " raised: " + e.what_without_backtrace());
    } catch (const std::exception& e) {
      throw ModelError(Who() + " raised: " + e.what());
    }
  }

  // Runs one batch and fills in each ticket's outputs or error. Never throws.
  void Execute(const std::vector<std::shared_ptr<Ticket>>& batch, int intra_op_threads = 0) {
    const auto start = Clock::now();
    int64_t rows = 0;
    for (const auto& t : batch) rows += t->rows;
    try {
      if (batch.size() == 1) {
        RunResult& r = batch[0]->result;
        RunResult out = Forward(batch[0]->inputs, batch[0]->strings.get(), intra_op_threads);
        r.outputs = std::move(out.outputs);
        r.strings = std::move(out.strings);
      } else {
        Tensors joined;
        for (size_t i = 0; i < batch[0]->inputs.size(); ++i) {
          std::vector<at::Tensor> parts;
          parts.reserve(batch.size());
          for (const auto& t : batch) parts.push_back(t->inputs[i]);
          joined.push_back(at::cat(parts, 0));
        }
        Tensors out = Forward(joined).outputs;
        bool splittable = true;
        for (const auto& o : out) splittable &= o.defined() && o.dim() > 0 && o.size(0) == rows;
        if (splittable) {
          std::vector<int64_t> sizes;
          for (const auto& t : batch) sizes.push_back(t->rows);
          for (const auto& o : out) {
            auto pieces = o.split_with_sizes(sizes, 0);
            for (size_t k = 0; k < batch.size(); ++k) batch[k]->result.outputs.push_back(pieces[k]);
          }
        } else {
          // The outputs do not follow the batch dimension: this model cannot be batched.
          rows_independent_ = false;
          for (const auto& t : batch) t->result = Forward(t->inputs);
        }
      }
    } catch (...) {
      const std::exception_ptr error = std::current_exception();
      for (const auto& t : batch) t->error = error;
    }
    const auto end = Clock::now();
    for (const auto& t : batch) {
      t->result.queue_s = Seconds(start - t->enqueued);
      t->result.compute_s = Seconds(end - start);
      t->result.batch_rows = static_cast<int>(rows);
    }
  }

  std::shared_ptr<Ticket> MakeTicket(const Tensors& inputs, const RunOptions& o) {
    auto t = std::make_shared<Ticket>();
    t->inputs = inputs;
    t->strings = o.strings && !o.strings->empty() ? o.strings : nullptr;
    if (t->strings && t->strings->count(0)) {
      t->rows = t->strings->at(0).shape.at(0);
    } else {
      t->rows = inputs.empty() ? 0 : inputs[0].size(0);
    }
    t->priority = o.priority.value_or(options_.priority);
    t->deadline = o.deadline;
    t->enqueued = Clock::now();
    return t;
  }

  void RequireServing() const {
    if (health_ == Health::kUnloaded || health_ == Health::kFailed) {
      throw Unavailable(Who() + " is " + HealthName(health_));
    }
  }

  // Puts a ticket in the queue, evicting a lower-priority one when the queue is full.
  void Admit(std::unique_lock<std::mutex>& lk, const std::shared_ptr<Ticket>& t) {
    (void)lk;
    if (static_cast<int>(queue_.size()) >= options_.max_queue) {
      if (queue_.empty() || std::prev(queue_.end())->second->priority >= t->priority) {
        ++rejected_;
        throw Overloaded(Who() + ": queue full (" + std::to_string(queue_.size()) +
                         " waiting, max_queue=" + std::to_string(options_.max_queue) + ")");
      }
      auto lowest = std::prev(queue_.end());
      std::shared_ptr<Ticket> evicted = lowest->second;
      queue_.erase(lowest);
      ++rejected_;
      evicted->error = std::make_exception_ptr(
          Overloaded(Who() + ": queue full; request evicted by one of higher priority"));
      evicted->state = Ticket::State::kDone;
      evicted->done.notify_all();
    }
    t->seq = next_seq_++;
    queue_.emplace(Key{-t->priority, t->seq}, t);
    ++requests_;
    if (QueuedRows() >= options_.max_batch_size) changed_.notify_all();
    StartExecutors(lk);  // executors exist only while there is queued work (and shortly after)
  }

  int64_t QueuedRows() const {
    int64_t rows = 0;
    for (const auto& [k, t] : queue_) {
      rows += t->rows;
      if (rows >= options_.max_batch_size) break;
    }
    return rows;
  }

  void MaybeDispatch(std::unique_lock<std::mutex>& lk) {
    (void)lk;
    if (!queue_.empty() && !collecting_ && in_flight_ < threads_) work_.notify_one();
  }

  void StartExecutors(std::unique_lock<std::mutex>& lk) {
    (void)lk;
    if (stopping_) return;
    auto self = shared_from_this();
    while (executors_ < threads_) {
      const int index = executors_++;
      std::thread([self, index] { self->ExecutorLoop(index); }).detach();
    }
  }

  // One of the servable's `threads_` executors: takes a batch whenever there is work and a free
  // slot, and runs it inside the arena. Holds the servable alive until it exits: when stopped,
  // beyond a smaller budget, or idle for `idle_thread_s` (the next queued request starts it
  // again), so that an idle version holds no thread.
  void ExecutorLoop(int index) {
    std::unique_lock<std::mutex> lk(mu_);
    const auto linger = DeadlineIn(options_.idle_thread_s);
    while (!stopping_ && index < threads_) {
      if (queue_.empty() || collecting_ || in_flight_ >= threads_) {
        if (work_.wait_for(lk, linger) == std::cv_status::timeout && queue_.empty()) break;
        continue;
      }
      collecting_ = true;
      auto arena = arena_;
      lk.unlock();
      arena->execute([this] { Collect(); });
      lk.lock();
    }
    --executors_;
    changed_.notify_all();
  }

  void Stop() {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
    work_.notify_all();
  }

  void Collect() {
    // Declared before the lock so that tickets (and the caller's tensors, whose destructor may
    // need Python's GIL) are released only after the mutex is.
    std::vector<std::shared_ptr<Ticket>> batch;
    std::unique_lock<std::mutex> lk(mu_);
    const bool batching = options_.max_batch_size > 1 && rows_independent_;
    if (batching && options_.max_queue_delay_s > 0) {
      const auto delay = std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double>(options_.max_queue_delay_s));
      while (!queue_.empty() && QueuedRows() < options_.max_batch_size) {
        Clock::time_point oldest = Clock::time_point::max();
        for (const auto& [k, t] : queue_) oldest = std::min(oldest, t->enqueued);
        if (Clock::now() >= oldest + delay) break;
        changed_.wait_until(lk, oldest + delay);
      }
    }
    if (!queue_.empty()) {
      auto first = queue_.begin();
      batch.push_back(first->second);
      int64_t rows = first->second->rows;
      queue_.erase(first);
      if (batching) {
        for (auto it = queue_.begin(); it != queue_.end() && rows < options_.max_batch_size;) {
          const auto& t = it->second;
          if (rows + t->rows <= options_.max_batch_size && !t->strings && !batch[0]->strings &&
              SameBatchShape(t->inputs, batch[0]->inputs)) {
            rows += t->rows;
            batch.push_back(t);
            it = queue_.erase(it);
          } else {
            ++it;
          }
        }
      }
      for (const auto& t : batch) t->state = Ticket::State::kRunning;
      ++in_flight_;
    }
    collecting_ = false;
    MaybeDispatch(lk);
    if (batch.empty()) {
      changed_.notify_all();
      return;
    }
    lk.unlock();
    Execute(batch);
    lk.lock();
    --in_flight_;
    Finish(batch);
    MaybeDispatch(lk);
  }

  void Finish(const std::vector<std::shared_ptr<Ticket>>& batch) {
    ++batches_;
    for (const auto& t : batch) {
      batched_rows_ += t->rows;
      t->state = Ticket::State::kDone;
      if (t->error) {
        ++failed_;
      } else {
        ++succeeded_;
      }
      t->done.notify_all();
    }
    busy_s_ += batch.front()->result.compute_s;
    changed_.notify_all();
  }

  RunResult Take(const std::shared_ptr<Ticket>& t) {
    if (t->error) std::rethrow_exception(t->error);
    return std::move(t->result);
  }

  RunResult Run(const Tensors& inputs, const RunOptions& o) {
    if (!o.inputs_checked) CheckInputs(inputs, nullptr, o.strings.get());
    std::unique_lock<std::mutex> lk(mu_);
    RequireServing();
    const bool inline_ok = options_.max_batch_size == 1 && !o.deadline && !o.force_async &&
                           queue_.empty() && !collecting_ && in_flight_ < threads_;
    if (!inline_ok) {
      auto t = MakeTicket(inputs, o);
      Admit(lk, t);
      MaybeDispatch(lk);
      return WaitLocked(lk, t);
    }
    // A free slot and nobody waiting: the caller runs the request itself, inside the arena.
    auto arena = arena_;
    return RunOnCaller(lk, MakeTicket(inputs, o), [&](const std::shared_ptr<Ticket>& t) {
      arena->execute([&] { Execute({t}); });
    });
  }

  RunResult RunHere(const Tensors& inputs, int intra_op_threads,
                    std::shared_ptr<const StringTensors> strings) {
    CheckInputs(inputs, nullptr, strings.get());
    std::unique_lock<std::mutex> lk(mu_);
    RequireServing();
    RunOptions o;
    o.strings = std::move(strings);
    return RunOnCaller(lk, MakeTicket(inputs, o),
                       [&](const std::shared_ptr<Ticket>& t) { Execute({t}, intra_op_threads); });
  }

  // Runs a ticket on the calling thread, counted like every other request; `run` executes it
  // with the lock released.
  template <typename RunFn>
  RunResult RunOnCaller(std::unique_lock<std::mutex>& lk, std::shared_ptr<Ticket> t, RunFn&& run) {
    ++requests_;
    ++in_flight_;
    t->state = Ticket::State::kRunning;
    lk.unlock();
    run(t);
    lk.lock();
    --in_flight_;
    Finish({t});
    MaybeDispatch(lk);
    lk.unlock();
    return Take(t);
  }

  std::shared_ptr<Ticket> Submit(const Tensors& inputs, const RunOptions& o) {
    CheckInputs(inputs, nullptr, o.strings.get());
    std::unique_lock<std::mutex> lk(mu_);
    RequireServing();
    auto t = MakeTicket(inputs, o);
    Admit(lk, t);
    MaybeDispatch(lk);
    return t;
  }

  RunResult WaitLocked(std::unique_lock<std::mutex>& lk, const std::shared_ptr<Ticket>& t) {
    while (t->state != Ticket::State::kDone) {
      if (!t->deadline) {
        t->done.wait(lk);
        continue;
      }
      if (t->done.wait_until(lk, *t->deadline) == std::cv_status::timeout &&
          t->state != Ticket::State::kDone) {
        const bool queued = t->state == Ticket::State::kQueued;
        if (queued) {
          // A running one cannot be stopped: it finishes and its result is dropped.
          queue_.erase(Key{-t->priority, t->seq});
          changed_.notify_all();
        }
        ++timed_out_;
        throw Timeout(Who() + ": no answer by the deadline (" +
                      std::string(queued ? "still queued" : "still running") + ")");
      }
    }
    lk.unlock();
    return Take(t);
  }

  bool Drain(double timeout_s) {
    std::unique_lock<std::mutex> lk(mu_);
    if (health_ == Health::kUnloaded) return true;
    health_ = Health::kDraining;
    const auto deadline = Clock::now() + ClampedDuration<Clock::duration>(timeout_s);
    const bool finished = changed_.wait_until(
        lk, deadline, [&] { return queue_.empty() && in_flight_ == 0 && !collecting_; });
    for (auto& [k, t] : queue_) {
      t->error = std::make_exception_ptr(Unavailable(Who() + " was unloaded before this ran"));
      t->state = Ticket::State::kDone;
      t->done.notify_all();
    }
    std::map<Key, std::shared_ptr<Ticket>> dropped;
    dropped.swap(queue_);
    health_ = Health::kUnloaded;
    lk.unlock();
    return finished;
  }

  void SetThreads(int threads) {
    if (threads < 1) throw InvalidArgument("threads must be >= 1, got " + std::to_string(threads));
    std::unique_lock<std::mutex> lk(mu_);
    if (threads == threads_) return;
    threads_ = threads;
    arena_ = NewArena(threads);
    if (!queue_.empty()) StartExecutors(lk);
    work_.notify_all();  // executors beyond the new budget exit
    MaybeDispatch(lk);
  }

  ServableStats Stats() const {
    std::lock_guard<std::mutex> lk(mu_);
    ServableStats s;
    s.version = version_;
    s.health = health_;
    s.threads = threads_;
    s.executors = executors_;
    s.requests = requests_;
    s.succeeded = succeeded_;
    s.failed = failed_;
    s.timed_out = timed_out_;
    s.rejected = rejected_;
    s.batches = batches_;
    s.batched_rows = batched_rows_;
    s.in_flight = in_flight_;
    s.queued = static_cast<int64_t>(queue_.size());
    s.busy_s = busy_s_;
    s.weight_bytes = weight_bytes_;
    s.shared_code = shared_code_;
    s.mapped = mapped_;
    return s;
  }

  const std::string model_, version_;
  const std::string who_;  // "model:version", for messages (built once, not per request)
  const std::string sha256_;
  const std::optional<Signature> signature_;
  const ServableOptions options_;
  InputCheck inputs_;  // what a request must give
  torch::jit::Module module_;
  std::optional<torch::jit::Method> forward_;
  int64_t weight_bytes_ = 0;
  bool shared_code_ = false, mapped_ = false;

  mutable std::mutex mu_;
  std::condition_variable changed_;
  Health health_ = Health::kLoading;
  int threads_;
  std::shared_ptr<tbb::task_arena> arena_;
  std::condition_variable work_;  // wakes executors
  int executors_ = 0;             // executor threads started and not yet exited
  bool stopping_ = false;
  std::map<Key, std::shared_ptr<Ticket>> queue_;
  uint64_t next_seq_ = 0;
  bool collecting_ = false;
  int in_flight_ = 0;
  // Cleared by whichever thread ran the batch or the split that showed otherwise.
  std::atomic<bool> rows_independent_{true};
  int64_t requests_ = 0, succeeded_ = 0, failed_ = 0, timed_out_ = 0, rejected_ = 0;
  int64_t batches_ = 0, batched_rows_ = 0;
  double busy_s_ = 0;
};

std::shared_ptr<Servable> Servable::Load(std::string model, std::string version,
                                         std::string_view bytes, std::string sha256,
                                         std::optional<Signature> signature,
                                         ServableOptions options, bool verified,
                                         std::shared_ptr<void> owner) {
  if (options.threads < 1) throw InvalidArgument("threads must be >= 1");
  if (options.intra_op_threads < 1) throw InvalidArgument("intra_op_threads must be >= 1");
  if (options.max_batch_size < 1) throw InvalidArgument("max_batch_size must be >= 1");
  if (options.max_queue < 0) throw InvalidArgument("max_queue must be >= 0");
  if (!(options.max_queue_delay_s >= 0)) throw InvalidArgument("max_queue_delay must be >= 0");
  if (!(options.idle_thread_s > 0))
    throw InvalidArgument("idle_thread_timeout must be > 0 seconds");
  if (!sha256.empty() && !verified) {
    const std::string actual = Sha256Hex(bytes);
    if (actual != sha256) {
      throw IntegrityError(model + ":" + version + " artifact hashes to " + actual + ", expected " +
                           sha256);
    }
  } else if (sha256.empty()) {
    sha256 = Sha256Hex(bytes);
  }
  auto impl = std::make_shared<Impl>(std::move(model), std::move(version), std::move(sha256),
                                     std::move(signature), std::move(options));
  impl->LoadModule(bytes, std::move(owner));
  impl->Warmup();
  {
    std::unique_lock<std::mutex> lk(impl->mu_);
    impl->health_ = Health::kReady;
  }
  return std::shared_ptr<Servable>(new Servable(std::move(impl)));
}

Servable::Servable(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Servable::~Servable() {
  impl_->Drain(0);
  impl_->Stop();
}

const std::string& Servable::model() const { return impl_->model_; }
const std::string& Servable::version() const { return impl_->version_; }
const std::string& Servable::sha256() const { return impl_->sha256_; }
const std::optional<Signature>& Servable::signature() const { return impl_->signature_; }
const ServableOptions& Servable::options() const { return impl_->options_; }
void Servable::CheckInputs(const Tensors& inputs, const std::vector<std::string>* names,
                           const StringTensors* strings) const {
  impl_->CheckInputs(inputs, names, strings);
}
const std::vector<std::string>& Servable::input_names() const { return impl_->inputs_.names(); }
RunResult Servable::Run(const Tensors& inputs, const RunOptions& options) {
  return impl_->Run(inputs, options);
}
RunResult Servable::RunHere(const Tensors& inputs, int intra_op_threads,
                            std::shared_ptr<const StringTensors> strings) {
  return impl_->RunHere(inputs, intra_op_threads, std::move(strings));
}
bool Servable::rows_independent() const { return impl_->rows_independent_; }
void Servable::MarkRowsDependent() { impl_->rows_independent_ = false; }
std::shared_ptr<Servable::Ticket> Servable::Submit(const Tensors& inputs,
                                                   const RunOptions& options) {
  return impl_->Submit(inputs, options);
}
RunResult Servable::Wait(const std::shared_ptr<Ticket>& ticket) {
  std::unique_lock<std::mutex> lk(impl_->mu_);
  return impl_->WaitLocked(lk, ticket);
}
bool Servable::Drain(double timeout_s) { return impl_->Drain(timeout_s); }
void Servable::SetThreads(int threads) { impl_->SetThreads(threads); }
Health Servable::health() const {
  std::lock_guard<std::mutex> lk(impl_->mu_);
  return impl_->health_;
}
ServableStats Servable::stats() const { return impl_->Stats(); }

}  // namespace lepton
