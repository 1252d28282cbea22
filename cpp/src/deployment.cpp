#include "lepton/deployment.h"

#include <ATen/ATen.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "lepton/errors.h"
#include "lepton/events.h"
#include "lepton/metrics.h"
#include "lepton/names.h"
#include "lepton/policies.h"
#include "lepton/process.h"

namespace lepton {
namespace {

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// The failure reason of the exception being handled.
// The failure reason of the exception being handled, from the error table.
FailureReason CurrentFailure() { return KindOf(CurrentErrorOf().code).failure; }

std::string Json(const nlohmann::json& j) { return j.dump(); }

// Clamped, so that a timeout of 1e10 s or infinity is a distant deadline, not an overflow.
Clock::duration Duration(double seconds) { return ClampedDuration<Clock::duration>(seconds); }

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
    if (!(options_.anomaly_interval_s > 0)) {
      throw InvalidArgument("anomaly_interval must be > 0 seconds");
    }
    for (const auto& [v, t] : options_.version_threads) {
      if (t < 1) throw InvalidArgument("threads for version '" + v + "' must be >= 1");
    }
    // All slots reserved for callers: each request's caller joins and works; no TBB workers needed
    // beyond what the process already has.
    ensemble_arena_ = std::make_unique<tbb::task_arena>(options_.threads, 1);
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
    const auto t0 = Clock::now();
    try {
      auto s = Servable::Load(model_, a.label, a.bytes, a.sha256, a.signature, o);
      EmitEvent("info", "load", model_, a.label, "loaded and warmed up " + model_ + ":" + a.label,
                Json({{"seconds", Seconds(Clock::now() - t0)},
                      {"threads", o.threads},
                      {"warmup_runs", o.warmup_runs},
                      {"weight_bytes", s->stats().weight_bytes},
                      {"sha256", a.sha256}}));
      return s;
    } catch (const std::exception& e) {
      EmitEvent("error", "load_failed", model_, a.label,
                "could not load " + model_ + ":" + a.label + ": " + e.what());
      throw;
    }
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
    RestoreState(*st->policy);
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

  // 128 random bits: a request id is what feedback is sent against, so no client may guess
  // another request's id.
  static std::string NextRequestId() { return RandomHex(16); }

  // A client's malformed request is refused before any version runs it: it counts under no
  // version (so never against a canary's guardrails, an A/B test or an anomaly flag), and no
  // policy observes it.
  void CheckRequest(const State& st, const Route& route, const Tensors& inputs,
                    const PredictOptions& o, Clock::time_point start) {
    try {
      if (o.timeout_s && !(*o.timeout_s > 0)) throw InvalidArgument("timeout must be > 0 seconds");
      const std::vector<std::string>* names = o.input_names.empty() ? nullptr : &o.input_names;
      for (const auto& t : route.targets) {
        auto it = st.servables.find(t.version);
        if (it != st.servables.end()) it->second->CheckInputs(inputs, names);
      }
    } catch (const InvalidArgument&) {
      metrics_.Series({model_, "", alias_.value_or(""), route.policy})
          .Failed(FailureReason::kInvalidInput, Seconds(Clock::now() - start));
      throw;
    }
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
        metrics_.Series({model_, "", alias_.value_or(""), ""})
            .Failed(FailureReason::kUnavailable, Seconds(Clock::now() - start));
        throw;
      }
    }
  }

  Prediction PredictOn(const std::shared_ptr<const State>& st, const Tensors& inputs,
                       const PredictOptions& o, Clock::time_point start) {
    Route route;
    const Policy& policy = *st->policy;
    const bool routed = !o.context.version;
    if (!routed) {
      route.policy = policy.name();
      route.targets.push_back({*o.context.version, 1.0});
      route.reason = "version pinned by the request";
    } else {
      route = policy.Select(o.context, st->live);
    }
    if (route.targets.empty()) throw Unavailable("policy " + route.policy + " chose no version");
    CheckRequest(*st, route, inputs, o, start);
    // One series per answering version (an ensemble's members joined by '+'); a pinned version
    // that is not live counts under "" so that requests cannot mint label values.
    std::string label;
    for (const auto& t : route.targets) {
      if (!st->live.Has(t.version)) {
        label.clear();
        break;
      }
      label += (label.empty() ? "" : "+") + t.version;
    }
    RequestSeries& series = metrics_.Series({model_, label, alias_.value_or(""), route.policy});
    try {
      Prediction p = Routed(st, route, routed, inputs, o, start);
      series.Succeeded(p.queue_s, p.compute_s, p.latency_s, p.batch_rows);
      return p;
    } catch (const Unavailable&) {
      throw;  // counted by Predict unless a retry answers it
    } catch (...) {
      const FailureReason reason = CurrentFailure();
      series.Failed(reason, Seconds(Clock::now() - start));
      if (reason == FailureReason::kModelError || reason == FailureReason::kInternal) {
        NoteModelError(label);
      }
      throw;
    }
  }

  // A model error is an event, at most one per version and second so that a failing version
  // cannot flood the log; the rest are counted in the metrics.
  void NoteModelError(const std::string& version) {
    std::string what = "request failed";
    try {
      throw;
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    const double now = WallSeconds();
    {
      std::lock_guard<std::mutex> lk(error_event_mu_);
      double& last = last_error_event_[version];
      if (now - last < 1.0) return;
      last = now;
    }
    EmitEvent("error", "model_error", model_, version, what);
  }

  Prediction Routed(const std::shared_ptr<const State>& st, const Route& route, bool routed,
                    const Tensors& inputs, const PredictOptions& o, Clock::time_point start) {
    const Policy& policy = *st->policy;
    if (!routed || !policy.observes() || route.combine) {
      Prediction p = Answer(*st, route, inputs, o, start);
      if (routed && policy.takes_feedback()) Remember(p, st->policy);
      return p;
    }
    // The policy learns from how its requests end: every exit reports an outcome.
    const std::string& version = route.targets[0].version;
    try {
      Prediction p = Answer(*st, route, inputs, o, start);
      policy.Observe({version, p.latency_s, false});
      if (policy.takes_feedback()) Remember(p, st->policy);
      return p;
    } catch (const ModelError&) {
      policy.Observe({version, Seconds(Clock::now() - start), true});
      throw;
    } catch (const Timeout&) {
      policy.Observe({version, Seconds(Clock::now() - start), true});
      throw;
    } catch (...) {
      // Bad input or a version that left: not the version's fault, but the request is over.
      policy.Observe({version, Seconds(Clock::now() - start), false});
      throw;
    }
  }

  Prediction Answer(const State& st_ref, const Route& route, const Tensors& inputs,
                    const PredictOptions& o, Clock::time_point start) {
    const State* st = &st_ref;

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
      p.batch_rows = r.batch_rows;
    } else {
      RunEnsemble(*st, route, inputs, run, p);
    }
    p.latency_s = Seconds(Clock::now() - start);
    if (!route.mirrors.empty()) Mirror(*st, route, inputs, p);
    return p;
  }

  // --- feedback ---

  void Remember(const Prediction& p, const std::shared_ptr<const Policy>& policy) {
    std::lock_guard<std::mutex> lk(feedback_mu_);
    if (feedback_order_.size() >= std::max<size_t>(1, options_.feedback_window)) {
      feedback_.erase(feedback_order_.front());
      feedback_order_.pop_front();
    }
    feedback_[p.request_id] = {policy, p.versions};
    feedback_order_.push_back(p.request_id);
  }

  void Feedback(const std::string& request_id, double reward, const std::string& source) {
    if (!std::isfinite(reward)) throw InvalidArgument("a reward must be a finite number");
    Remembered r;
    {
      std::lock_guard<std::mutex> lk(feedback_mu_);
      auto it = feedback_.find(request_id);
      if (it == feedback_.end()) {
        throw NotFound("request '" + request_id + "' is unknown to " + model_ +
                       ", older than the last " + std::to_string(options_.feedback_window) +
                       " requests, or already has its reward (only requests routed by a policy "
                       "that learns take feedback)");
      }
      r = it->second;
      // Validate before forgetting, so a rejected reward can be sent again.
      for (const auto& v : r.versions) r.policy->Feedback(v, reward);
      feedback_.erase(it);
      // Who sent the evidence is recorded with the automatic switch it leads to.
      const std::string who = source.empty() ? "in-process" : source;
      if (feedback_sources_.size() < kMaxFeedbackSources || feedback_sources_.count(who)) {
        ++feedback_sources_[who];
      } else {
        ++feedback_sources_["(other sources)"];
      }
    }
    Wake();
  }

  // The rows every input shares along dim 0, or -1 when they share none (no inputs, a scalar,
  // or first dimensions that disagree): such a request cannot be split by rows.
  static int64_t SharedRows(const Tensors& inputs) {
    if (inputs.empty()) return -1;
    for (const auto& t : inputs) {
      if (t.dim() == 0 || t.size(0) != inputs[0].size(0)) return -1;
    }
    return inputs[0].size(0);
  }

  // Whether a balanced ensemble spreads its members over the deployment's cores (RunSpread)
  // rather than running each whole on its own version's threads.
  bool SpreadsMembers(const Route& route, const RunOptions& run, size_t members,
                      int64_t rows) const {
    const int64_t cores = options_.threads;
    return route.balance && !run.deadline && cores > 1 && rows > 0 &&
           members % static_cast<size_t>(cores) != 0;
  }

  // Runs the members on the deployment's TBB arena so that every core works: one member per core
  // while whole rounds last, then the remaining members with their batches split by rows over
  // the cores. The pieces form one ordered list that each core takes from as it comes free.
  // Every forward keeps one intra-op thread: OpenMP teams would spin into the next piece's
  // cores. A member whose outputs turn out not to follow the batch dimension is run again whole,
  // and runs whole from then on.
  void RunSpread(const std::vector<std::shared_ptr<Servable>>& members, const Tensors& inputs,
                 std::vector<RunResult>& results, std::vector<std::exception_ptr>& errors) {
    const int64_t cores = options_.threads;
    const int64_t rows = SharedRows(inputs);
    const size_t whole = members.size() - members.size() % static_cast<size_t>(cores);
    const int64_t rest = static_cast<int64_t>(members.size() - whole);
    const int64_t chunks = std::max<int64_t>(1, std::min(rows, cores / rest));
    struct Piece {
      Piece(size_t m, int64_t b, int64_t e) : member(m), begin(b), end(e) {}
      size_t member;
      int64_t begin, end;  // rows
      RunResult result;
      std::exception_ptr error;
    };
    std::vector<Piece> pieces;
    std::vector<size_t> first(members.size() + 1);  // member m's pieces: [first[m], first[m + 1])
    for (size_t m = 0; m < members.size(); ++m) {
      first[m] = pieces.size();
      const int64_t n = m < whole || !members[m]->rows_independent() ? 1 : chunks;
      for (int64_t c = 0; c < n; ++c) pieces.emplace_back(m, rows * c / n, rows * (c + 1) / n);
    }
    first[members.size()] = pieces.size();
    std::atomic<size_t> next{0};
    auto work = [&](int64_t) {
      for (size_t i; (i = next.fetch_add(1)) < pieces.size();) {
        Piece& piece = pieces[i];
        try {
          Tensors slice;
          for (const auto& t : inputs) {
            slice.push_back(piece.end - piece.begin == rows
                                ? t
                                : t.narrow(0, piece.begin, piece.end - piece.begin));
          }
          piece.result = members[piece.member]->RunHere(slice, 1);
        } catch (...) {
          piece.error = std::current_exception();
        }
      }
    };
    ensemble_arena_->execute([&] { tbb::parallel_for(int64_t{0}, cores, int64_t{1}, work); });
    for (size_t m = 0; m < members.size(); ++m) {
      const auto begin = pieces.begin() + static_cast<std::ptrdiff_t>(first[m]);
      const auto end = pieces.begin() + static_cast<std::ptrdiff_t>(first[m + 1]);
      for (auto it = begin; it != end && !errors[m]; ++it) errors[m] = it->error;
      if (errors[m]) continue;
      if (end - begin == 1) {
        results[m] = std::move(begin->result);
        continue;
      }
      bool follows = true;
      for (auto it = begin; it != end; ++it) {
        follows &= it->result.outputs.size() == begin->result.outputs.size();
        for (const auto& o : it->result.outputs)
          follows &= o.dim() > 0 && o.size(0) == it->end - it->begin;
      }
      if (!follows) {
        // The outputs are not per row (a pooled or scalar output): this member runs whole.
        members[m]->MarkRowsDependent();
        try {
          results[m] = members[m]->RunHere(inputs, 1);
        } catch (...) {
          errors[m] = std::current_exception();
        }
        continue;
      }
      for (size_t o = 0; o < begin->result.outputs.size(); ++o) {
        std::vector<at::Tensor> parts;
        for (auto it = begin; it != end; ++it) parts.push_back(it->result.outputs[o]);
        results[m].outputs.push_back(at::cat(parts, 0));
      }
      for (auto it = begin; it != end; ++it) results[m].compute_s += it->result.compute_s;
    }
  }

  void RunEnsemble(const State& st, const Route& route, const Tensors& inputs, RunOptions run,
                   Prediction& p) {
    std::vector<std::shared_ptr<Servable>> members;
    for (const auto& t : route.targets) members.push_back(Lookup(st, t.version));
    if (SpreadsMembers(route, run, members.size(), SharedRows(inputs))) {
      std::vector<RunResult> results(members.size());
      std::vector<std::exception_ptr> errors(members.size());
      RunSpread(members, inputs, results, errors);
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

  // Mirrors get a copy off the request path: submitted to their own arenas and compared with the
  // primary's answer by the shadow thread; the caller never waits for them.
  void Mirror(const State& st, const Route& route, const Tensors& inputs, const Prediction& p) {
    for (const auto& v : route.mirrors) {
      auto it = st.servables.find(v);
      if (it == st.servables.end()) continue;
      const std::string& primary = p.versions.empty() ? route.targets[0].version : p.versions[0];
      std::unique_lock<std::mutex> lk(shadow_mu_);
      ShadowStats& stats = ShadowFor(primary, v);
      if (shadow_jobs_.size() >= options_.shadow_queue || stopping_shadow_) {
        ++stats.dropped;
        continue;
      }
      lk.unlock();
      std::shared_ptr<Servable::Ticket> ticket;
      try {
        RunOptions o;
        o.force_async = true;
        ticket = it->second->Submit(inputs, o);
      } catch (const Error&) {
        lk.lock();
        ++stats.dropped;  // the mirror's queue is full; the answer is already decided
        continue;
      }
      lk.lock();
      shadow_jobs_.push_back({it->second, ticket, p.outputs, primary, v});
      if (!shadow_thread_.joinable()) shadow_thread_ = std::thread([this] { ShadowLoop(); });
      lk.unlock();
      shadow_cv_.notify_one();
    }
  }

  ShadowStats& ShadowFor(const std::string& primary, const std::string& mirror) {
    for (auto& s : shadow_stats_) {
      if (s.primary == primary && s.mirror == mirror) return s;
    }
    shadow_stats_.push_back({});
    shadow_stats_.back().primary = primary;
    shadow_stats_.back().mirror = mirror;
    return shadow_stats_.back();
  }

  struct ShadowJob {
    std::shared_ptr<Servable> servable;
    std::shared_ptr<Servable::Ticket> ticket;
    Tensors primary_outputs;
    std::string primary, mirror;
  };

  void ShadowLoop() {
    std::unique_lock<std::mutex> lk(shadow_mu_);
    for (;;) {
      shadow_cv_.wait(lk, [&] { return stopping_shadow_ || !shadow_jobs_.empty(); });
      if (shadow_jobs_.empty()) return;
      ShadowJob job = std::move(shadow_jobs_.front());
      shadow_jobs_.pop_front();
      lk.unlock();
      Comparison c;
      bool ok = false;
      try {
        RunResult r = job.servable->Wait(job.ticket);
        c = Compare(job.primary_outputs, r.outputs);
        ok = true;
      } catch (const std::exception&) {
      }
      lk.lock();
      ShadowStats& s = ShadowFor(job.primary, job.mirror);
      if (!ok) {
        ++s.failed;
        continue;
      }
      const double n = double(++s.compared);
      s.max_abs_diff = std::max(s.max_abs_diff, c.max_abs);
      s.mean_abs_diff += (c.mean_abs - s.mean_abs_diff) / n;
      if (c.agreement) {
        const double prev = s.argmax_agreement.value_or(0);
        s.argmax_agreement = prev + (*c.agreement - prev) / n;
      }
      if (c.kl) {
        const double prev = s.kl_divergence.value_or(0);
        s.kl_divergence = prev + (*c.kl - prev) / n;
      }
    }
  }

  struct Comparison {
    double max_abs = 0, mean_abs = 0;
    std::optional<double> agreement, kl;
  };

  static Comparison Compare(const Tensors& a, const Tensors& b) {
    if (a.size() != b.size()) throw ModelError("mirror gave a different number of outputs");
    Comparison c;
    int64_t elements = 0;
    double abs_sum = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      if (!a[i].sizes().equals(b[i].sizes())) throw ModelError("mirror output shape differs");
      const at::Tensor x = a[i].to(at::kDouble), y = b[i].to(at::kDouble);
      const at::Tensor d = (x - y).abs();
      if (d.numel() == 0) continue;
      c.max_abs = std::max(c.max_abs, d.max().item<double>());
      abs_sum += d.sum().item<double>();
      elements += d.numel();
    }
    c.mean_abs = elements ? abs_sum / double(elements) : 0;
    if (!a.empty() && a[0].dim() >= 1 && a[0].size(-1) > 1 && a[0].numel() > 0) {
      const at::Tensor x = a[0].to(at::kDouble), y = b[0].to(at::kDouble);
      c.agreement = x.argmax(-1).eq(y.argmax(-1)).to(at::kDouble).mean().item<double>();
      auto is_probability = [](const at::Tensor& t) {
        return t.min().item<double>() >= 0 && (t.sum(-1) - 1).abs().max().item<double>() < 1e-3;
      };
      if (is_probability(x) && is_probability(y)) {
        const at::Tensor p = x.clamp_min(1e-12), q = y.clamp_min(1e-12);
        c.kl = (x * (p.log() - q.log())).sum(-1).mean().item<double>();
      }
    }
    return c;
  }

  std::vector<ShadowStats> Shadows() const {
    std::lock_guard<std::mutex> lk(shadow_mu_);
    return shadow_stats_;
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
    const bool new_policy = policy != nullptr;
    if (policy) next->policy = std::move(policy);
    auto servable = LoadServable(a, next->live.versions.size());
    next->servables.emplace(a.label, servable);
    next->policy->Validate(next->live);
    if (new_policy) Replacing(*st->policy, *next->policy);
    Publish(next);
    EmitEvent("info", "add", model_, a.label, a.label + " takes traffic in " + model_,
              Json({{"live", next->live.versions}, {"policy", next->policy->Describe()}}));
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
      const bool new_policy = policy != nullptr;
      if (policy) next->policy = std::move(policy);
      try {
        next->policy->Validate(next->live);
      } catch (const Error& e) {
        throw Conflict("cannot remove '" + version + "': " + e.what() +
                       "; set a policy without it first or pass one along");
      }
      if (new_policy) Replacing(*st->policy, *next->policy);
      Publish(next);
    }
    const bool drained = gone->Drain(options_.drain_timeout_s);
    EmitEvent(drained ? "info" : "warning", "remove", model_, version,
              version + " left " + model_ +
                  (drained ? ", every request answered" : ", drain deadline reached"));
  }

  void Swap(const std::string& from, const std::string& to_spec) {
    std::shared_ptr<Servable> old;
    {
      std::lock_guard<std::mutex> admin(admin_mu_);
      SwapLocked(from, to_spec, &old);
    }
    if (old) DrainSwapped(old);
  }

  void DrainSwapped(const std::shared_ptr<Servable>& old) {
    const bool drained = old->Drain(options_.drain_timeout_s);
    EmitEvent(drained ? "info" : "warning", "drained", model_, old->version(),
              drained ? old->version() + " finished its requests and was unloaded"
                      : old->version() + " reached its drain deadline; queued requests failed");
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
    EmitEvent("info", "swap", model_, a.label, "swapped " + from + " for " + a.label,
              Json({{"from", from}, {"to", a.label}}));
  }

  void SetPolicy(std::shared_ptr<const Policy> policy) {
    if (!policy) throw InvalidArgument("policy must not be None");
    std::lock_guard<std::mutex> admin(admin_mu_);
    auto st = Snapshot();
    if (!st || closed_) throw Unavailable("deployment of " + model_ + " is closed");
    policy->Validate(st->live);
    Replacing(*st->policy, *policy);
    auto next = Copy(*st);
    next->policy = std::move(policy);
    Publish(next);
    Wake();
    EmitEvent("info", "policy", model_, "", "policy set to " + next->policy->Describe());
  }

  // --- stateful policies ---

  // The outgoing policy's state is saved; the incoming one's is restored.
  void Replacing(const Policy& out, const Policy& in) {
    if (&out == &in) return;
    SaveState(out, true);
    RestoreState(in);
  }

  void RestoreState(const Policy& policy) {
    const std::string key = policy.state_key();
    if (!registry_ || key.empty()) return;
    if (auto state = registry_->GetState(model_, key)) policy.LoadState(*state);
  }

  void SaveState(const Policy& policy, bool force) {
    const std::string key = policy.state_key();
    if (!registry_ || key.empty()) return;
    const std::string state = policy.SaveState();
    std::lock_guard<std::mutex> lk(saved_mu_);
    if (!force && saved_state_[key] == state) return;
    registry_->PutState(model_, key, state);
    saved_state_[key] = state;
  }

  void Wake() {
    {
      std::lock_guard<std::mutex> lk(control_mu_);
      wake_ = true;
    }
    control_cv_.notify_all();
  }

  VersionLoad LoadOf(const State& st, const std::string& version) const {
    VersionLoad l;
    auto it = st.servables.find(version);
    if (it == st.servables.end()) return l;
    const ServableStats s = it->second->stats();
    l.threads = s.threads;
    l.completed = s.succeeded;
    l.outstanding = s.in_flight + s.queued;
    l.busy_s = s.busy_s;
    return l;
  }

  void TickPolicy() {
    auto st = Snapshot();
    if (!st || closed_) return;
    const LoadFn load = [&](const std::string& v) { return LoadOf(*st, v); };
    std::vector<PolicyEvent> events;
    try {
      events = st->policy->Tick(st->live, load, WallSeconds());
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lk(error_mu_);
      last_error_ = std::string("policy controller: ") + e.what();
      return;
    }
    for (const auto& e : events) ApplyEvent(*st->policy, e);
  }

  void ApplyEvent(const Policy& policy, const PolicyEvent& e) {
    AppliedEvent applied{e, policy.name(), policy.alias() ? policy.alias() : alias_, ""};
    std::vector<std::string> notes;
    const bool moves_primary =
        e.kind == PolicyEvent::Kind::kPromote || e.kind == PolicyEvent::Kind::kSwitch;
    if (registry_ && applied.alias) {
      const std::string& alias = *applied.alias;
      try {
        if (moves_primary) {
          std::optional<std::string> expected;
          if (e.kind == PolicyEvent::Kind::kPromote) expected = e.from;
          registry_->SetAlias(model_, alias, e.to, expected, e.reason);
          notes.push_back("moved " + model_ + "@" + alias + " to " + e.to);
        } else if (e.kind == PolicyEvent::Kind::kRollback) {
          std::optional<std::string> current;
          try {
            current = registry_->Get(model_ + "@" + alias).version;
          } catch (const NotFound&) {
          }
          if (current == e.from) {
            registry_->SetAlias(model_, alias, e.to, e.from, e.reason);
            notes.push_back("moved " + model_ + "@" + alias + " back to " + e.to);
          } else {
            notes.push_back(model_ + "@" + alias + " stays at " + current.value_or("(none)"));
          }
        }
      } catch (const std::exception& ex) {
        notes.push_back(std::string("alias not moved: ") + ex.what());
      }
    }
    nlohmann::json evidence =
        nlohmann::json::parse(e.evidence.empty() ? "{}" : e.evidence, nullptr, false);
    if (evidence.is_discarded() || !evidence.is_object()) {
      evidence = nlohmann::json{{"evidence", e.evidence}};
    }
    {
      std::lock_guard<std::mutex> lk(feedback_mu_);
      if (!feedback_sources_.empty()) {
        evidence["feedback_sources"] = feedback_sources_;
        feedback_sources_.clear();
      }
    }
    if (registry_) {
      try {
        registry_->Record(model_, e.action, e.to,
                          e.from.empty() ? std::nullopt : std::optional(e.from), e.to, e.reason,
                          evidence.dump());
      } catch (const std::exception& ex) {
        notes.push_back(std::string("audit entry not written: ") + ex.what());
      }
    }
    if (moves_primary) {
      std::lock_guard<std::mutex> admin(admin_mu_);
      auto st = Snapshot();
      if (st && !closed_ && st->live.Has(e.to) && st->live.primary != e.to) {
        auto next = Copy(*st);
        next->live.primary = e.to;
        Publish(next);
      }
    }
    for (size_t i = 0; i < notes.size(); ++i) applied.note += (i ? "; " : "") + notes[i];
    {
      nlohmann::json details = {{"from", e.from}, {"to", e.to}, {"policy", policy.name()}};
      details["evidence"] = evidence;
      if (applied.alias) details["alias"] = *applied.alias;
      if (!applied.note.empty()) details["note"] = applied.note;
      EmitEvent(e.kind == PolicyEvent::Kind::kRollback ? "warning" : "info", e.action, model_, e.to,
                e.reason, Json(details));
    }
    std::lock_guard<std::mutex> lk(events_mu_);
    if (events_.size() >= 1000) events_.pop_front();
    events_.push_back(std::move(applied));
  }

  std::vector<AppliedEvent> Events() const {
    std::lock_guard<std::mutex> lk(events_mu_);
    return {events_.begin(), events_.end()};
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
    controller_ = std::thread([this] { ControlLoop(); });
  }

  void ControlLoop() {
    std::unique_lock<std::mutex> lk(control_mu_);
    const auto now0 = Clock::now();
    auto next_poll = now0;
    auto next_balance = now0 + Duration(options_.rebalance_interval_s);
    auto next_tick = now0;
    auto next_save = now0 + Duration(options_.state_save_s);
    auto next_watch = now0 + Duration(options_.anomaly_interval_s);
    while (!stopping_) {
      auto wake = std::min({next_tick, next_save, next_watch});
      if (alias_) wake = std::min(wake, next_poll);
      if (options_.adaptive) wake = std::min(wake, next_balance);
      control_cv_.wait_until(lk, wake, [&] { return stopping_ || wake_; });
      if (stopping_) break;
      const bool woken = wake_;
      wake_ = false;
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
      if (woken || now >= next_tick) {
        TickPolicy();
        next_tick = now + Duration(options_.policy_tick_s);
      }
      if (now >= next_watch) {
        WatchForAnomalies();
        next_watch = now + Duration(options_.anomaly_interval_s);
      }
      if (now >= next_save) {
        SaveCurrentState(false);
        next_save = now + Duration(options_.state_save_s);
      }
      lk.lock();
    }
  }

  // Each interval, every live version's error rate and p99 latency over that interval go to its
  // detector; a version leaving (or coming back into) its band is an event.
  void WatchForAnomalies() {
    auto st = Snapshot();
    if (!st || closed_) return;
    std::map<std::string, std::pair<uint64_t, uint64_t>> counts;  // requests, failed (by model)
    std::map<std::string, Histogram::Snapshot> totals;
    for (const auto& x : metrics_.Snapshot()) {
      if (!st->live.Has(x.key.version)) continue;
      auto& c = counts[x.key.version];
      c.first += x.requests;
      c.second += x.failures[size_t(FailureReason::kModelError)] +
                  x.failures[size_t(FailureReason::kTimeout)] +
                  x.failures[size_t(FailureReason::kInternal)];
      auto it = totals.find(x.key.version);
      if (it == totals.end()) {
        totals.emplace(x.key.version, x.total);
      } else {
        for (size_t i = 0; i < it->second.counts.size(); ++i)
          it->second.counts[i] += x.total.counts[i];
        it->second.count += x.total.count;
        it->second.sum += x.total.sum;
      }
    }
    std::lock_guard<std::mutex> lk(anomaly_mu_);
    for (const auto& [version, c] : counts) {
      Watch& w = watches_[version];
      const Histogram::Snapshot& total = totals.at(version);
      const uint64_t requests = c.first - std::min(c.first, w.requests);
      const uint64_t failed = c.second - std::min(c.second, w.failed);
      const double p99 = total.Minus(w.total).Quantile(0.99);
      w.requests = c.first;
      w.failed = c.second;
      w.total = total;
      for (const auto& change : w.detector.Update(requests, failed, p99)) {
        const bool error = change.signal == "error_rate";
        std::ostringstream msg;
        msg << version << (change.anomalous ? " left" : " is back in") << " its band of "
            << (error ? "error rate" : "p99 latency") << ": " << change.value << " against "
            << change.mean << " +- " << change.sd;
        EmitEvent(change.anomalous ? "warning" : "info",
                  change.anomalous ? "anomaly" : "anomaly_cleared", model_, version, msg.str(),
                  Json({{"signal", change.signal},
                        {"value", change.value},
                        {"mean", change.mean},
                        {"sd", change.sd},
                        {"requests", requests}}));
      }
    }
  }

  MetricsSnapshot Metrics() const {
    MetricsSnapshot m;
    m.series = metrics_.Snapshot();
    auto st = Snapshot();
    if (!st) return m;
    std::lock_guard<std::mutex> lk(anomaly_mu_);
    for (const auto& v : st->live.versions) {
      const ServableStats s = st->servables.at(v)->stats();
      VersionGauges g;
      g.model = model_;
      g.version = v;
      g.health = HealthName(s.health);
      g.threads = s.threads;
      g.in_flight = s.in_flight;
      g.queued = s.queued;
      g.weight_bytes = s.weight_bytes;
      auto it = watches_.find(v);
      g.anomalous = it != watches_.end() && it->second.detector.anomalous();
      m.versions.push_back(std::move(g));
    }
    return m;
  }

  void SaveCurrentState(bool force) {
    auto st = Snapshot();
    if (!st) return;
    try {
      SaveState(*st->policy, force);
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lk(error_mu_);
      last_error_ = std::string("saving policy state: ") + e.what();
    }
  }

  void FollowAliasOnce() {
    std::optional<ModelVersion> target;
    std::string from;
    try {
      target = registry_->Get(model_ + "@" + *alias_);
      if (FollowBackingOff(*target)) return;
      std::shared_ptr<Servable> old;
      {
        std::lock_guard<std::mutex> admin(admin_mu_);
        auto st = Snapshot();
        if (!st || closed_ || st->live.primary == target->version) return;
        from = st->live.primary;
        if (st->live.Has(target->version)) {
          // Already live (a canary's candidate): it becomes the primary, nothing is loaded.
          auto next = Copy(*st);
          next->live.primary = target->version;
          Publish(next);
        } else {
          SwapLocked(st->live.primary, target->version, &old);
        }
      }
      // Said once the move has happened, not each time it is attempted.
      EmitEvent("info", "alias", model_, target->version,
                model_ + "@" + *alias_ + " moved from " + from + " to " + target->version,
                Json({{"alias", *alias_}, {"from", from}, {"to", target->version}}));
      if (old) DrainSwapped(old);
      std::lock_guard<std::mutex> lk(error_mu_);
      last_error_.clear();
      unfollowable_.reset();
    } catch (const std::exception& e) {
      NoteUnfollowable(target, from, e.what());
    }
  }

  // A target that failed to load is tried again after a growing pause (1 s to 1 min), and its
  // failure is said once, as an error, rather than on every poll.
  bool FollowBackingOff(const ModelVersion& target) {
    std::lock_guard<std::mutex> lk(error_mu_);
    if (!unfollowable_ || unfollowable_->version != target.version ||
        unfollowable_->sha256 != target.sha256) {
      return false;
    }
    return Clock::now() < unfollowable_->retry_at;
  }

  void NoteUnfollowable(const std::optional<ModelVersion>& target, const std::string& from,
                        const std::string& what) {
    std::lock_guard<std::mutex> lk(error_mu_);
    if (!target) {  // the registry could not be read: say what, try again at the next poll
      last_error_ = what;
      return;
    }
    const bool same = unfollowable_ && unfollowable_->version == target->version &&
                      unfollowable_->sha256 == target->sha256;
    if (!same) unfollowable_ = Unfollowable{target->version, target->sha256, 0.5, {}};
    unfollowable_->backoff_s = std::min(unfollowable_->backoff_s * 2, 60.0);
    unfollowable_->retry_at = Clock::now() + Duration(unfollowable_->backoff_s);
    ++alias_follow_failures_;
    last_error_ = model_ + "@" + *alias_ + " points to " + target->version +
                  ", which cannot be served (" + what + "); still serving " +
                  (from.empty() ? std::string("the previous version") : from);
    if (!same) {
      EmitEvent("error", "alias_follow_failed", model_, target->version, last_error_,
                Json({{"alias", *alias_}, {"to", target->version}, {"error", what}}));
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
    {
      std::lock_guard<std::mutex> lk(shadow_mu_);
      stopping_shadow_ = true;
    }
    shadow_cv_.notify_all();
    if (shadow_thread_.joinable()) shadow_thread_.join();
    if (!closed_) SaveCurrentState(true);
    std::shared_ptr<const State> st;
    {
      std::lock_guard<std::mutex> admin(admin_mu_);
      if (closed_) return;
      closed_ = true;
      st = Snapshot();
    }
    if (!st) return;
    for (const auto& [v, s] : st->servables) s->Drain(options_.drain_timeout_s);
    EmitEvent("info", "close", model_, "", "deployment of " + model_ + " closed");
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
      out.alias_follow_failures = alias_follow_failures_;
      if (unfollowable_) out.alias_target_failed = unfollowable_->version;
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
  std::atomic<int64_t> swaps_{0};

  std::shared_ptr<const State> state_;
  std::unique_ptr<tbb::task_arena> ensemble_arena_;
  std::mutex admin_mu_;
  std::atomic<bool> closed_{false};

  std::thread controller_;
  std::mutex control_mu_;
  std::condition_variable control_cv_;
  bool stopping_ = false;
  bool wake_ = false;
  std::map<std::string, double> last_busy_;
  mutable std::mutex error_mu_;
  std::string last_error_;
  // The target of the followed alias that failed to load, while the alias still points to it.
  struct Unfollowable {
    std::string version, sha256;
    double backoff_s;
    Clock::time_point retry_at;
  };
  std::optional<Unfollowable> unfollowable_;
  int64_t alias_follow_failures_ = 0;

  struct Remembered {
    std::shared_ptr<const Policy> policy;
    std::vector<std::string> versions;
  };
  std::mutex feedback_mu_;
  std::unordered_map<std::string, Remembered> feedback_;
  std::deque<std::string> feedback_order_;
  // Rewards received per sender since the last automatic switch, bounded in senders.
  static constexpr size_t kMaxFeedbackSources = 32;
  std::map<std::string, int64_t> feedback_sources_;

  mutable std::mutex shadow_mu_;
  std::condition_variable shadow_cv_;
  std::deque<ShadowJob> shadow_jobs_;
  std::vector<ShadowStats> shadow_stats_;
  std::thread shadow_thread_;
  bool stopping_shadow_ = false;

  std::mutex saved_mu_;
  std::map<std::string, std::string> saved_state_;
  mutable std::mutex events_mu_;
  std::deque<AppliedEvent> events_;

  RequestMetrics metrics_;
  std::mutex error_event_mu_;
  std::map<std::string, double> last_error_event_;
  struct Watch {
    AnomalyDetector detector;
    uint64_t requests = 0, failed = 0;
    Histogram::Snapshot total;
  };
  mutable std::mutex anomaly_mu_;
  std::map<std::string, Watch> watches_;
};

Deployment::Deployment(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)), generation_(ForkGeneration()) {}

Deployment::Deployment(std::shared_ptr<Registry> registry, std::string model,
                       std::vector<std::string> versions, DeploymentOptions options)
    : generation_(ForkGeneration()) {
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
                       DeploymentOptions options)
    : generation_(ForkGeneration()) {
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

Deployment::~Deployment() {
  // The parent's threads do not exist in a forked child: joining them would hang, so a copy
  // inherited through fork is left as it is.
  if (generation_ != ForkGeneration()) (void)impl_.release();
}

Deployment::Impl* Deployment::Live() const {
  if (generation_ != ForkGeneration()) {
    throw Unavailable("the deployment of " + impl_->model_ +
                      " was made in the parent of this forked process, and its threads and "
                      "loaded versions do not exist here; create a new Deployment in this "
                      "process");
  }
  return impl_.get();
}

Prediction Deployment::Predict(const Tensors& inputs, const PredictOptions& options) {
  return Live()->Predict(inputs, options);
}
void Deployment::Add(const std::string& version, std::shared_ptr<const Policy> policy) {
  Live()->Add(version, std::move(policy));
}
void Deployment::Remove(const std::string& version, std::shared_ptr<const Policy> policy) {
  Live()->Remove(version, std::move(policy));
}
void Deployment::Swap(const std::string& from, const std::string& to) { Live()->Swap(from, to); }
void Deployment::SetPolicy(std::shared_ptr<const Policy> policy) {
  Live()->SetPolicy(std::move(policy));
}
void Deployment::SetCombiner(Combiner combiner) { Live()->SetCombiner(std::move(combiner)); }
void Deployment::Feedback(const std::string& request_id, double reward, const std::string& source) {
  Live()->Feedback(request_id, reward, source);
}
std::vector<ShadowStats> Deployment::Shadows() const { return Live()->Shadows(); }
std::vector<AppliedEvent> Deployment::Events() const { return Live()->Events(); }
void Deployment::TickPolicy() { Live()->TickPolicy(); }
std::shared_ptr<const Policy> Deployment::policy() const {
  auto st = Live()->Snapshot();
  return st ? st->policy : nullptr;
}
std::vector<std::string> Deployment::versions() const {
  auto st = Live()->Snapshot();
  return st ? st->live.versions : std::vector<std::string>{};
}
DeploymentStatus Deployment::Status() const { return Live()->Status(); }
MetricsSnapshot Deployment::Metrics() const { return Live()->Metrics(); }
const std::string& Deployment::model() const { return Live()->model_; }
void Deployment::Close() { Live()->Close(); }

}  // namespace lepton
