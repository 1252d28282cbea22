#include "lepton/deployment.h"

#include <ATen/ATen.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <thread>

#include "lepton/errors.h"
#include "lepton/names.h"

namespace lepton {
namespace {

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

Clock::duration Duration(double seconds) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw NotFound("model file '" + path + "' cannot be opened");
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// Largest-remainder split of `total` cores in proportion to `demand`, each at least `minimum`.
std::vector<int> Apportion(const std::vector<double>& demand, int total, int minimum) {
  const size_t n = demand.size();
  std::vector<int> out(n, minimum);
  int left = total - minimum * static_cast<int>(n);
  if (left <= 0 || n == 0) return out;
  double sum = std::accumulate(demand.begin(), demand.end(), 0.0);
  std::vector<double> share(n);
  for (size_t i = 0; i < n; ++i) share[i] = sum > 0 ? demand[i] / sum * left : double(left) / n;
  std::vector<std::pair<double, size_t>> remainders;
  int given = 0;
  for (size_t i = 0; i < n; ++i) {
    const int whole = static_cast<int>(std::floor(share[i]));
    out[i] += whole;
    given += whole;
    remainders.emplace_back(share[i] - whole, i);
  }
  std::sort(remainders.begin(), remainders.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  for (size_t k = 0; given < left && k < remainders.size(); ++k, ++given)
    ++out[remainders[k].second];
  return out;
}

}  // namespace

struct Deployment::State {
  LiveVersions live;
  std::map<std::string, std::shared_ptr<Servable>> servables;
  std::shared_ptr<const Policy> policy;
  Combiner combiner;
};

class Deployment::Impl {
 public:
  Impl(std::shared_ptr<Registry> registry, std::string model, DeploymentOptions options)
      : registry_(std::move(registry)), model_(std::move(model)), options_(std::move(options)) {
    ValidateName(model_, "model name");
    if (options_.threads < 0) throw InvalidArgument("threads must be >= 0");
    if (options_.threads == 0) {
      options_.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    }
    if (options_.min_threads < 1) throw InvalidArgument("min_threads must be >= 1");
    if (!(options_.drain_timeout_s >= 0)) throw InvalidArgument("drain_timeout must be >= 0");
    for (const auto& [v, t] : options_.version_threads) {
      if (t < 1) throw InvalidArgument("threads for version '" + v + "' must be >= 1");
    }
    // All slots reserved for callers: each request's caller joins and works; no TBB workers needed
    // beyond what the process already has.
    ensemble_arena_ = std::make_unique<tbb::task_arena>(options_.threads, 1);
    std::random_device rd;
    std::ostringstream prefix;
    prefix << std::hex << (static_cast<uint64_t>(rd()) << 16 ^ rd());
    id_prefix_ = prefix.str().substr(0, 8);
  }

  ~Impl() { Close(); }

  // --- loading ---

  struct Artifact {
    std::string label;
    std::string bytes;
    std::string sha256;
    std::optional<Signature> signature;
  };

  Artifact Fetch(const std::string& spec) {
    if (registry_) {
      const Reference ref = ParseVersionIn(model_, spec);
      ModelVersion v = registry_->Get(ref.ToString());
      Artifact a{v.version, registry_->ReadArtifact(v.ref()), v.sha256, v.signature};
      return a;
    }
    auto it = files_.find(spec);
    if (it == files_.end()) {
      throw NotFound("no model file is known for version '" + spec + "'");
    }
    return Artifact{spec, ReadFile(it->second), "", std::nullopt};
  }

  int InitialThreads(const std::string& label, size_t live_count) const {
    auto it = options_.version_threads.find(label);
    if (it != options_.version_threads.end()) return it->second;
    return std::max(options_.min_threads,
                    options_.threads / static_cast<int>(std::max<size_t>(1, live_count)));
  }

  std::shared_ptr<Servable> LoadServable(const Artifact& a, size_t live_count) {
    ServableOptions o = options_.servable;
    o.threads = InitialThreads(a.label, live_count);
    auto p = options_.version_priority.find(a.label);
    if (p != options_.version_priority.end()) o.priority = p->second;
    return Servable::Load(model_, a.label, a.bytes, a.sha256, a.signature, o);
  }

  std::shared_ptr<const State> Snapshot() const { return std::atomic_load(&state_); }

  void Publish(std::shared_ptr<const State> next) { std::atomic_store(&state_, std::move(next)); }

  void Start(const std::vector<std::string>& specs, std::shared_ptr<const Policy> policy) {
    if (specs.empty()) throw InvalidArgument("a deployment needs at least one version");
    auto st = std::make_shared<State>();
    for (const auto& spec : specs) {
      Artifact a = Fetch(spec);
      if (st->servables.count(a.label)) {
        throw InvalidArgument("version '" + a.label + "' is listed twice");
      }
      st->servables.emplace(a.label, LoadServable(a, specs.size()));
      st->live.versions.push_back(a.label);
    }
    st->live.primary = st->live.versions.front();
    st->policy = policy ? std::move(policy) : std::make_shared<FixedPolicy>();
    st->policy->Validate(st->live);
    Publish(st);
    StartController();
  }

  // --- requests ---

  std::shared_ptr<Servable> Lookup(const State& st, const std::string& version) const {
    auto it = st.servables.find(version);
    if (it == st.servables.end()) {
      throw NotFound("version '" + version + "' of " + model_ +
                     " is not deployed (live: " + JoinNames(st.live.versions) + ")");
    }
    return it->second;
  }

  std::string NextRequestId() {
    static const char* kHex = "0123456789abcdef";
    char digits[16];
    int n = 0;
    for (uint64_t v = ++request_counter_; v; v >>= 4) digits[n++] = kHex[v & 0xf];
    std::string id = id_prefix_;
    id += '-';
    while (n) id += digits[--n];
    return id;
  }

  Prediction Predict(const Tensors& inputs, const PredictOptions& o) {
    const auto start = Clock::now();
    for (int attempt = 0;; ++attempt) {
      std::shared_ptr<const State> st = Snapshot();
      if (!st || closed_) throw Unavailable("deployment of " + model_ + " is closed");
      try {
        return PredictOn(st, inputs, o, start);
      } catch (const Unavailable&) {
        // The version this request picked was swapped out and drained before it got there; the
        // new state has its replacement.
        if (attempt < 8 && Snapshot() != st && !closed_) continue;
        throw;
      }
    }
  }

  Prediction PredictOn(const std::shared_ptr<const State>& st, const Tensors& inputs,
                       const PredictOptions& o, Clock::time_point start) {
    Route route;
    if (o.context.version) {
      route.policy = st->policy->name();
      route.targets.push_back({*o.context.version, 1.0});
      route.reason = "version pinned by the request";
    } else {
      route = st->policy->Select(o.context, st->live);
    }
    if (route.targets.empty()) throw Unavailable("policy " + route.policy + " chose no version");

    RunOptions run;
    if (o.timeout_s) {
      if (!(*o.timeout_s > 0)) throw InvalidArgument("timeout must be > 0 seconds");
      run.deadline = start + Duration(*o.timeout_s);
    }
    run.priority = o.priority;

    Prediction p;
    p.policy = route.policy;
    p.route = route.reason;
    p.request_id = NextRequestId();
    if (!route.combine) {
      auto servable = Lookup(*st, route.targets[0].version);
      RunResult r = servable->Run(inputs, run);
      p.outputs = std::move(r.outputs);
      p.versions.push_back(route.targets[0].version);
      p.queue_s = r.queue_s;
      p.compute_s = r.compute_s;
    } else {
      RunEnsemble(*st, route, inputs, run, p);
    }
    Mirror(*st, route, inputs);
    p.latency_s = Seconds(Clock::now() - start);
    return p;
  }

  // Runs the members in waves on the deployment's TBB arena so that every core works: whole
  // waves of `cores` members, then the remaining members with their batches split by rows over
  // the spare cores. Every forward keeps one intra-op thread: OpenMP teams for the last wave would
  // spin into the next request's cores.
  void RunInWaves(const std::vector<std::shared_ptr<Servable>>& members, const Tensors& inputs,
                  std::vector<RunResult>& results, std::vector<std::exception_ptr>& errors) {
    const size_t cores = static_cast<size_t>(options_.threads);
    const size_t whole = members.size() - members.size() % cores;
    const size_t rest = members.size() - whole;
    const int64_t rows = inputs[0].size(0);
    const int64_t chunks = rest ? std::min<int64_t>(rows, static_cast<int64_t>(cores / rest)) : 1;
    // Tasks: one per member of the whole waves, then `chunks` per remaining member.
    const size_t tasks = whole + rest * static_cast<size_t>(chunks);
    std::vector<Tensors> parts(rest * chunks);
    std::vector<std::exception_ptr> part_errors(rest * chunks);
    std::vector<double> part_compute(rest * chunks, 0);
    auto run_task = [&](size_t task) {
      if (task < whole) {
        try {
          results[task] = members[task]->RunHere(inputs, 1);
        } catch (...) {
          errors[task] = std::current_exception();
        }
        return;
      }
      const size_t k = task - whole;
      const size_t member = whole + k / chunks;
      const int64_t chunk = static_cast<int64_t>(k % chunks);
      const int64_t begin = rows * chunk / chunks, end = rows * (chunk + 1) / chunks;
      Tensors slice;
      for (const auto& t : inputs) slice.push_back(t.narrow(0, begin, end - begin));
      try {
        RunResult r = members[member]->RunHere(slice, 1);
        parts[k] = std::move(r.outputs);
        part_compute[k] = r.compute_s;
      } catch (...) {
        part_errors[k] = std::current_exception();
      }
    };
    ensemble_arena_->execute([&] {
      for (size_t begin = 0; begin < whole; begin += cores) {
        tbb::parallel_for(begin, begin + cores, size_t{1}, run_task);
      }
      tbb::parallel_for(whole, tasks, size_t{1}, run_task);
    });
    for (size_t r = 0; r < rest; ++r) {
      const size_t member = whole + r;
      for (int64_t c = 0; c < chunks && !errors[member]; ++c)
        errors[member] = part_errors[r * chunks + c];
      if (errors[member]) continue;
      try {
        for (size_t o = 0; o < parts[r * chunks].size(); ++o) {
          std::vector<at::Tensor> pieces;
          for (int64_t c = 0; c < chunks; ++c) pieces.push_back(parts[r * chunks + c][o]);
          results[member].outputs.push_back(chunks == 1 ? pieces[0] : at::cat(pieces, 0));
        }
        for (int64_t c = 0; c < chunks; ++c)
          results[member].compute_s += part_compute[r * chunks + c];
      } catch (const std::exception& e) {
        errors[member] =
            std::make_exception_ptr(ModelError("version '" + members[member]->version() +
                                               "' gave outputs that do not follow the "
                                               "batch dimension, so its rows cannot be split: " +
                                               e.what() + " (use Ensemble(..., balance=False))"));
      }
    }
  }

  void RunEnsemble(const State& st, const Route& route, const Tensors& inputs, RunOptions run,
                   Prediction& p) {
    std::vector<std::shared_ptr<Servable>> members;
    for (const auto& t : route.targets) members.push_back(Lookup(st, t.version));
    for (const auto& m : members) m->CheckInputs(inputs);
    const size_t cores = static_cast<size_t>(options_.threads);
    if (route.balance && !run.deadline && cores > 1 && members.size() % cores != 0) {
      std::vector<RunResult> results(members.size());
      std::vector<std::exception_ptr> errors(members.size());
      RunInWaves(members, inputs, results, errors);
      CombineMembers(route, st, members, results, errors, p);
      return;
    }
    // Every member but the first goes to its own arena; the caller runs the first itself.
    std::vector<std::shared_ptr<Servable::Ticket>> tickets(members.size());
    RunOptions async = run;
    async.force_async = true;
    std::vector<std::exception_ptr> errors(members.size());
    for (size_t i = 1; i < members.size(); ++i) {
      try {
        tickets[i] = members[i]->Submit(inputs, async);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
    std::vector<RunResult> results(members.size());
    try {
      results[0] = members[0]->Run(inputs, run);
    } catch (...) {
      errors[0] = std::current_exception();
    }
    for (size_t i = 1; i < members.size(); ++i) {
      if (!tickets[i]) continue;
      try {
        results[i] = members[i]->Wait(tickets[i]);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
    CombineMembers(route, st, members, results, errors, p);
  }

  void CombineMembers(const Route& route, const State& st,
                      const std::vector<std::shared_ptr<Servable>>& members,
                      std::vector<RunResult>& results,
                      const std::vector<std::exception_ptr>& errors, Prediction& p) {
    std::vector<Tensors> outputs;
    std::vector<double> weights;
    for (size_t i = 0; i < members.size(); ++i) {
      const std::string& v = route.targets[i].version;
      if (errors[i]) {
        if (route.on_error == OnError::kFail) std::rethrow_exception(errors[i]);
        p.skipped.push_back(v);
        continue;
      }
      outputs.push_back(std::move(results[i].outputs));
      weights.push_back(route.targets[i].weight);
      p.versions.push_back(v);
      p.queue_s = std::max(p.queue_s, results[i].queue_s);
      p.compute_s = std::max(p.compute_s, results[i].compute_s);
    }
    if (outputs.empty()) {
      for (const auto& e : errors) {
        if (e) std::rethrow_exception(e);
      }
    }
    if (std::accumulate(weights.begin(), weights.end(), 0.0) <= 0) {
      throw ModelError("every ensemble member with a weight above zero failed");
    }
    if (route.combine_mode == Combine::kCustom) {
      if (!st.combiner)
        throw InvalidArgument("the ensemble asks for a custom combiner; none is set");
      const double total = std::accumulate(weights.begin(), weights.end(), 0.0);
      for (auto& w : weights) w /= total;
      p.outputs = st.combiner(outputs, weights);
    } else {
      p.outputs = CombineOutputs(outputs, weights, route.combine_mode);
    }
    if (!p.skipped.empty()) p.route += "; skipped after errors: " + JoinNames(p.skipped);
  }

  // Mirrors get a copy off the request path: submitted, never waited for.
  void Mirror(const State& st, const Route& route, const Tensors& inputs) {
    for (const auto& v : route.mirrors) {
      auto it = st.servables.find(v);
      if (it == st.servables.end()) continue;
      try {
        RunOptions o;
        o.force_async = true;
        it->second->Submit(inputs, o);
      } catch (const Error&) {
        // A mirror that cannot take the copy is skipped; the answer is already decided.
      }
    }
  }

  // --- changes ---

  std::shared_ptr<State> Copy(const State& st) const { return std::make_shared<State>(st); }

  void Add(const std::string& spec, std::shared_ptr<const Policy> policy) {
    std::lock_guard<std::mutex> admin(admin_mu_);
    auto st = Snapshot();
    if (!st || closed_) throw Unavailable("deployment of " + model_ + " is closed");
    Artifact a = Fetch(spec);
    if (st->servables.count(a.label)) {
      throw Conflict("version '" + a.label + "' is already deployed");
    }
    auto next = Copy(*st);
    next->live.versions.push_back(a.label);
    if (policy) next->policy = std::move(policy);
    auto servable = LoadServable(a, next->live.versions.size());
    next->servables.emplace(a.label, servable);
    next->policy->Validate(next->live);
    Publish(next);
  }

  void Remove(const std::string& version, std::shared_ptr<const Policy> policy) {
    std::shared_ptr<Servable> gone;
    {
      std::lock_guard<std::mutex> admin(admin_mu_);
      auto st = Snapshot();
      if (!st || closed_) throw Unavailable("deployment of " + model_ + " is closed");
      gone = Lookup(*st, version);
      if (st->live.versions.size() == 1) {
        throw Conflict("cannot remove '" + version + "', the only version deployed");
      }
      if (alias_ && st->live.primary == version) {
        throw Conflict("cannot remove '" + version + "': it is the target of the followed alias " +
                       *alias_);
      }
      auto next = Copy(*st);
      auto& v = next->live.versions;
      v.erase(std::find(v.begin(), v.end(), version));
      next->servables.erase(version);
      if (next->live.primary == version) next->live.primary = v.front();
      if (policy) next->policy = std::move(policy);
      try {
        next->policy->Validate(next->live);
      } catch (const Error& e) {
        throw Conflict("cannot remove '" + version + "': " + e.what() +
                       "; set a policy without it first or pass one along");
      }
      Publish(next);
    }
    gone->Drain(options_.drain_timeout_s);
  }

  void Swap(const std::string& from, const std::string& to_spec) {
    std::shared_ptr<Servable> old;
    {
      std::lock_guard<std::mutex> admin(admin_mu_);
      SwapLocked(from, to_spec, &old);
    }
    if (old) old->Drain(options_.drain_timeout_s);
  }

  void SwapLocked(const std::string& from, const std::string& to_spec,
                  std::shared_ptr<Servable>* old) {
    auto st = Snapshot();
    if (!st || closed_) throw Unavailable("deployment of " + model_ + " is closed");
    *old = Lookup(*st, from);
    Artifact a = Fetch(to_spec);
    if (a.label == from) {
      old->reset();
      return;
    }
    if (st->servables.count(a.label)) {
      throw Conflict("version '" + a.label + "' is already deployed");
    }
    // Load and warm before anything changes: a failure here leaves the deployment as it was.
    auto fresh = LoadServable(a, st->live.versions.size());
    auto next = Copy(*st);
    std::replace(next->live.versions.begin(), next->live.versions.end(), from, a.label);
    if (next->live.primary == from) next->live.primary = a.label;
    next->servables.erase(from);
    next->servables.emplace(a.label, fresh);
    next->policy = next->policy->Renamed(from, a.label);
    next->policy->Validate(next->live);
    Publish(next);
    ++swaps_;
  }

  void SetPolicy(std::shared_ptr<const Policy> policy) {
    if (!policy) throw InvalidArgument("policy must not be None");
    std::lock_guard<std::mutex> admin(admin_mu_);
    auto st = Snapshot();
    if (!st || closed_) throw Unavailable("deployment of " + model_ + " is closed");
    policy->Validate(st->live);
    auto next = Copy(*st);
    next->policy = std::move(policy);
    Publish(next);
  }

  void SetCombiner(Combiner combiner) {
    std::lock_guard<std::mutex> admin(admin_mu_);
    auto st = Snapshot();
    if (!st) throw Unavailable("deployment of " + model_ + " is closed");
    auto next = Copy(*st);
    next->combiner = std::move(combiner);
    Publish(next);
  }

  // --- background control: alias following and adaptive budgets ---

  void StartController() {
    const bool adaptive = options_.adaptive;
    if (!alias_ && !adaptive) return;
    controller_ = std::thread([this] { ControlLoop(); });
  }

  void ControlLoop() {
    std::unique_lock<std::mutex> lk(control_mu_);
    auto next_poll = Clock::now();
    auto next_balance = Clock::now() + Duration(options_.rebalance_interval_s);
    while (!stopping_) {
      const auto wake = std::min(alias_ ? next_poll : Clock::time_point::max(),
                                 options_.adaptive ? next_balance : Clock::time_point::max());
      control_cv_.wait_until(lk, wake, [&] { return stopping_; });
      if (stopping_) break;
      lk.unlock();
      const auto now = Clock::now();
      if (alias_ && now >= next_poll) {
        FollowAliasOnce();
        next_poll = now + Duration(options_.alias_poll_s);
      }
      if (options_.adaptive && now >= next_balance) {
        Rebalance();
        next_balance = now + Duration(options_.rebalance_interval_s);
      }
      lk.lock();
    }
  }

  void FollowAliasOnce() {
    try {
      const ModelVersion target = registry_->Get(model_ + "@" + *alias_);
      std::shared_ptr<Servable> old;
      {
        std::lock_guard<std::mutex> admin(admin_mu_);
        auto st = Snapshot();
        if (!st || closed_ || st->live.primary == target.version) return;
        SwapLocked(st->live.primary, target.version, &old);
      }
      if (old) old->Drain(options_.drain_timeout_s);
      std::lock_guard<std::mutex> lk(error_mu_);
      last_error_.clear();
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lk(error_mu_);
      last_error_ = e.what();
    }
  }

  void Rebalance() {
    auto st = Snapshot();
    if (!st || closed_) return;
    std::vector<std::string> flexible;
    int fixed = 0;
    for (const auto& v : st->live.versions) {
      auto it = options_.version_threads.find(v);
      if (it != options_.version_threads.end()) {
        fixed += it->second;
      } else {
        flexible.push_back(v);
      }
    }
    if (flexible.empty()) return;
    std::vector<double> demand;
    for (const auto& v : flexible) {
      const ServableStats s = st->servables.at(v)->stats();
      double& last = last_busy_[v];
      const double busy = std::max(0.0, s.busy_s - last) / options_.rebalance_interval_s;
      last = s.busy_s;
      // Cores in use, plus a push from waiting work so a starved version can grow.
      demand.push_back(busy + 0.5 * static_cast<double>(s.queued + s.in_flight));
    }
    const int pool =
        std::max(options_.threads - fixed, options_.min_threads * int(flexible.size()));
    const std::vector<int> budgets = Apportion(demand, pool, options_.min_threads);
    for (size_t i = 0; i < flexible.size(); ++i) {
      st->servables.at(flexible[i])->SetThreads(budgets[i]);
    }
  }

  void Close() {
    {
      std::lock_guard<std::mutex> lk(control_mu_);
      stopping_ = true;
    }
    control_cv_.notify_all();
    if (controller_.joinable()) controller_.join();
    std::shared_ptr<const State> st;
    {
      std::lock_guard<std::mutex> admin(admin_mu_);
      if (closed_) return;
      closed_ = true;
      st = Snapshot();
    }
    if (!st) return;
    for (const auto& [v, s] : st->servables) s->Drain(options_.drain_timeout_s);
  }

  DeploymentStatus Status() const {
    DeploymentStatus out;
    auto st = Snapshot();
    out.model = model_;
    out.alias = alias_;
    out.threads = options_.threads;
    out.adaptive = options_.adaptive;
    out.swaps = swaps_;
    {
      std::lock_guard<std::mutex> lk(error_mu_);
      out.last_error = last_error_;
    }
    if (!st) return out;
    out.primary = st->live.primary;
    out.policy = st->policy->Describe();
    for (const auto& v : st->live.versions) out.versions.push_back(st->servables.at(v)->stats());
    return out;
  }

  std::shared_ptr<Registry> registry_;
  std::string model_;
  DeploymentOptions options_;
  std::map<std::string, std::string> files_;
  std::optional<std::string> alias_;
  std::string id_prefix_;
  std::atomic<uint64_t> request_counter_{0};
  std::atomic<int64_t> swaps_{0};

  std::shared_ptr<const State> state_;
  std::unique_ptr<tbb::task_arena> ensemble_arena_;
  std::mutex admin_mu_;
  std::atomic<bool> closed_{false};

  std::thread controller_;
  std::mutex control_mu_;
  std::condition_variable control_cv_;
  bool stopping_ = false;
  std::map<std::string, double> last_busy_;
  mutable std::mutex error_mu_;
  std::string last_error_;
};

Deployment::Deployment(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Deployment::Deployment(std::shared_ptr<Registry> registry, std::string model,
                       std::vector<std::string> versions, DeploymentOptions options) {
  if (!registry) throw InvalidArgument("registry must not be null");
  impl_ = std::make_unique<Impl>(std::move(registry), std::move(model), std::move(options));
  impl_->Start(versions, nullptr);
}

std::unique_ptr<Deployment> Deployment::FollowAlias(std::shared_ptr<Registry> registry,
                                                    std::string model, std::string alias,
                                                    DeploymentOptions options) {
  if (!registry) throw InvalidArgument("registry must not be null");
  ValidateName(alias, "alias");
  auto impl = std::make_unique<Impl>(std::move(registry), std::move(model), std::move(options));
  impl->alias_ = alias;
  impl->Start({"@" + alias}, nullptr);
  return std::unique_ptr<Deployment>(new Deployment(std::move(impl)));
}

Deployment::Deployment(std::string model, std::vector<std::pair<std::string, std::string>> files,
                       DeploymentOptions options) {
  impl_ = std::make_unique<Impl>(nullptr, std::move(model), std::move(options));
  std::vector<std::string> labels;
  for (const auto& [label, path] : files) {
    ValidateName(label, "version label");
    if (!impl_->files_.emplace(label, path).second) {
      throw InvalidArgument("version '" + label + "' is listed twice");
    }
    labels.push_back(label);
  }
  impl_->Start(labels, nullptr);
}

Deployment::~Deployment() = default;

Prediction Deployment::Predict(const Tensors& inputs, const PredictOptions& options) {
  return impl_->Predict(inputs, options);
}
void Deployment::Add(const std::string& version, std::shared_ptr<const Policy> policy) {
  impl_->Add(version, std::move(policy));
}
void Deployment::Remove(const std::string& version, std::shared_ptr<const Policy> policy) {
  impl_->Remove(version, std::move(policy));
}
void Deployment::Swap(const std::string& from, const std::string& to) { impl_->Swap(from, to); }
void Deployment::SetPolicy(std::shared_ptr<const Policy> policy) {
  impl_->SetPolicy(std::move(policy));
}
void Deployment::SetCombiner(Combiner combiner) { impl_->SetCombiner(std::move(combiner)); }
std::shared_ptr<const Policy> Deployment::policy() const {
  auto st = impl_->Snapshot();
  return st ? st->policy : nullptr;
}
std::vector<std::string> Deployment::versions() const {
  auto st = impl_->Snapshot();
  return st ? st->live.versions : std::vector<std::string>{};
}
DeploymentStatus Deployment::Status() const { return impl_->Status(); }
const std::string& Deployment::model() const { return impl_->model_; }
void Deployment::Close() { impl_->Close(); }

}  // namespace lepton
