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
#include "servable_impl.h"
#include "shared_code.h"

namespace lepton {
namespace {

at::ScalarType DtypeFromName(const std::string& name) {
  const DTypeInfo* d = DTypeNamed(name);
  if (!d) throw InvalidArgument("dtype '" + name + "' is not a dtype lepton knows");
  return ScalarTypeOf(d->type);
}

}  // namespace

std::string SecondsText(double seconds) {
  std::ostringstream out;
  out << seconds << " s";
  return out.str();
}

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

Servable::Impl::Impl(std::string model, std::string version, std::string sha,
                     std::optional<Signature> sig, ServableOptions options)
    : model_(std::move(model)),
      version_(std::move(version)),
      who_(model_ + ":" + version_),
      sha256_(std::move(sha)),
      signature_(std::move(sig)),
      options_(std::move(options)),
      threads_(options_.threads),
      arena_(NewArena(threads_)) {}

std::shared_ptr<tbb::task_arena> Servable::Impl::NewArena(int threads) {
  return std::make_shared<tbb::task_arena>(threads, static_cast<unsigned>(threads));
}

void Servable::Impl::LoadModule(std::string_view bytes, std::shared_ptr<void> owner, bool pooled) {
  try {
    LoadedModule loaded = LoadTorchScript(bytes, std::move(owner), sha256_);
    module_ = std::move(loaded.module);
    shared_code_ = loaded.shared_code;
    mapped_ = loaded.mapped && !pooled;
    pooled_ = loaded.mapped && pooled;
  } catch (const std::exception& e) {
    throw InvalidArgument(
        Who() + " is not a loadable TorchScript module: " + std::string(e.what()).substr(0, 400));
  }
  module_.eval();
  // Looked up once here, not by name on every request.
  if (auto m = module_.find_method("forward")) forward_.emplace(std::move(*m));
  if (forward_) {
    const c10::FunctionSchema& schema = forward_->function().getSchema();
    const auto& args = schema.arguments();
    bool plain = !schema.is_vararg() && !args.empty();
    for (size_t i = 1; i < args.size() && plain; ++i) {  // 0 is self
      plain = args[i].type()->kind() == c10::TypeKind::TensorType && !args[i].kwarg_only();
    }
    plain_tensor_args_ = plain ? static_cast<int>(args.size()) - 1 : -1;
  }
  ResolveInputNames();
  weight_bytes_ = MeasureTensors();
}

int64_t Servable::Impl::MeasureTensors() const {
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

Tensors Servable::Impl::WarmupInputs(StringTensors& strings) const {
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

void Servable::Impl::Warmup() {
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

void Servable::Impl::ResolveInputNames() {
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

void Servable::Impl::CheckInputs(const Tensors& inputs, const std::vector<std::string>* names,
                                 const StringTensors* strings) const {
  inputs_.Check(inputs, names, strings);
}

RunResult Servable::Impl::Forward(const Tensors& inputs, const StringTensors* strings,
                                  int intra_op_threads, std::optional<Clock::time_point> deadline) {
  if (target_) return target_->Forward(inputs, strings, deadline);
  // Touch ATen's per-thread pool set-up first so that it does not undo the count set next.
  // The count is per thread; the caller's own setting comes back when the forward ends.
  (void)at::get_num_threads();
  struct IntraOpThreads {
    const int saved = omp_get_max_threads();
    const int n;
    explicit IntraOpThreads(int threads) : n(threads) {
      if (n != saved) omp_set_num_threads(n);
    }
    ~IntraOpThreads() {
      if (n != saved) omp_set_num_threads(saved);
    }
  } intra_op(intra_op_threads > 0 ? intra_op_threads : options_.intra_op_threads);
  c10::InferenceMode guard;
  try {
    RunResult r;
    const bool plain =
        forward_ && !strings && plain_tensor_args_ == static_cast<int>(inputs.size()) &&
        std::all_of(inputs.begin(), inputs.end(), [](const at::Tensor& t) { return t.defined(); });
    if (plain) {
      // Tensors for Tensor parameters: what the schema's check would find; self goes first.
      // The thread's stack keeps its capacity from one forward to the next; a forward nested in
      // another (which finds it in use) has its own.
      thread_local torch::jit::Stack reused;
      torch::jit::Stack nested;
      torch::jit::Stack& stack = reused.empty() ? reused : nested;
      struct Emptied {
        torch::jit::Stack& s;
        ~Emptied() { s.clear(); }
      } emptied{stack};
      stack.reserve(inputs.size() + 1);
      stack.emplace_back(module_._ivalue());
      for (const auto& t : inputs) stack.emplace_back(t);
      forward_->function().run(stack);
      ToOutputs(stack.front(), Who(), r.outputs, r.strings);
      return r;
    }
    std::vector<c10::IValue> args = ForwardArguments(inputs, strings);
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

void Servable::Impl::Execute(TicketSpan batch, int intra_op_threads) {
  // Forwards that run here count against the deployment's cores while they run.
  struct Running {
    explicit Running(CorePool* p) : pool(p) {
      if (pool) pool->Begin();
    }
    ~Running() {
      if (pool) pool->End();
    }
    CorePool* pool;
  } running(target_ ? nullptr : options_.cores.get());
  const auto start = Clock::now();
  int64_t rows = 0;
  // The batch's earliest deadline: a forward that runs elsewhere is given up on at it.
  std::optional<Clock::time_point> deadline;
  for (const auto& t : batch) {
    rows += t->rows;
    if (t->deadline && (!deadline || *t->deadline < *deadline)) deadline = t->deadline;
  }
  try {
    if (batch.size() == 1) {
      RunResult& r = batch[0]->result;
      RunResult out =
          Forward(batch[0]->inputs(), batch[0]->strings.get(), intra_op_threads, deadline);
      r.outputs = std::move(out.outputs);
      r.strings = std::move(out.strings);
    } else {
      Tensors joined;
      for (size_t i = 0; i < batch[0]->inputs().size(); ++i) {
        std::vector<at::Tensor> parts;
        parts.reserve(batch.size());
        for (const auto& t : batch) parts.push_back(t->inputs()[i]);
        joined.push_back(at::cat(parts, 0));
      }
      Tensors out = Forward(joined, nullptr, intra_op_threads, deadline).outputs;
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
        for (const auto& t : batch) t->result = Forward(t->inputs(), nullptr, 0, t->deadline);
      }
    }
  } catch (...) {
    const std::exception_ptr error = std::current_exception();
    for (const auto& t : batch) t->error = error;
  }
  const auto end = Clock::now();
  for (const auto& t : batch) {
    t->result.queue_s = QueuedFor(*t, start);
    t->result.compute_s = Seconds(end - start);
    t->result.batch_rows = static_cast<int>(rows);
    t->result.finished = end;
  }
}

void Servable::Impl::ExecuteCoalesced(TicketSpan group) {
  const auto start = Clock::now();
  std::vector<ForwardTarget::Call> calls;
  calls.reserve(group.size());
  for (const auto& t : group) {
    calls.push_back(
        {&t->inputs(), t->strings.get(), t->deadline, &t->result, &t->error, t->priority});
  }
  target_->ForwardEach(calls);
  const auto end = Clock::now();
  for (const auto& t : group) {
    t->result.queue_s = QueuedFor(*t, start);
    t->result.compute_s = Seconds(end - start);
    t->result.batch_rows = static_cast<int>(t->rows);
    t->result.finished = end;
  }
}

void ForwardTarget::ForwardEach(std::vector<Call>& calls) {
  for (Call& c : calls) {
    try {
      *c.result = Forward(*c.inputs, c.strings, c.deadline);
    } catch (...) {
      *c.error = std::current_exception();
    }
  }
}

std::shared_ptr<Servable> Servable::Load(std::string model, std::string version,
                                         std::string_view bytes, std::string sha256,
                                         std::optional<Signature> signature,
                                         ServableOptions options, bool verified,
                                         std::shared_ptr<void> owner, bool pooled) {
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
  impl->LoadModule(bytes, std::move(owner), pooled);
  impl->Warmup();
  {
    std::unique_lock<std::mutex> lk(impl->mu_);
    impl->health_ = Health::kReady;
  }
  return std::shared_ptr<Servable>(new Servable(std::move(impl)));
}

std::shared_ptr<Servable> Servable::Attach(std::string model, std::string version,
                                           std::string sha256, std::optional<Signature> signature,
                                           ServableOptions options, ForwardSignature forward,
                                           std::shared_ptr<ForwardTarget> target) {
  if (options.threads < 1) throw InvalidArgument("threads must be >= 1");
  auto impl = std::make_shared<Impl>(std::move(model), std::move(version), std::move(sha256),
                                     std::move(signature), std::move(options));
  impl->inputs_ = InputCheck(impl->Who(), impl->signature_, std::move(forward.names),
                             forward.required, std::move(forward.strings));
  impl->weight_bytes_ = forward.weight_bytes;
  impl->shared_code_ = forward.shared_code;
  impl->target_ = std::move(target);
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
  if (impl_->target_) impl_->target_->Stop();
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
ForwardSignature Servable::forward_signature() const {
  ForwardSignature f;
  f.names = impl_->inputs_.names();
  f.strings = impl_->inputs_.strings();
  f.required = impl_->inputs_.required();
  f.weight_bytes = impl_->weight_bytes_;
  f.shared_code = impl_->shared_code_;
  return f;
}
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
  return Impl::Queued(impl_->WaitLocked(lk, ticket));
}
bool Servable::Drain(double timeout_s) { return impl_->Drain(timeout_s); }
void Servable::SetThreads(int threads) { impl_->SetThreads(threads); }
Health Servable::health() const {
  std::lock_guard<std::mutex> lk(impl_->mu_);
  return impl_->health_;
}
ServableStats Servable::stats() const { return impl_->Stats(); }

}  // namespace lepton
