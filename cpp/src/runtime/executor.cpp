#include "lepton/runtime/executor.h"

#include <ATen/ATen.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <atomic>
#include <numeric>

#include "lepton/common/errors.h"
#include "lepton/common/names.h"
#include "lepton/common/process.h"

namespace lepton {
namespace {

// How long an OpenMP team keeps spinning after its work, at most (libgomp's default of 300,000
// spins, with room for slower pause instructions).
constexpr std::chrono::milliseconds kTeamSettles{50};

// The rows every input shares along dim 0, or -1 when they share none (no inputs, a scalar,
// or first dimensions that disagree): such a request cannot be split by rows.
int64_t SharedRows(const Tensors& inputs) {
  if (inputs.empty()) return -1;
  for (const auto& t : inputs) {
    if (!t.defined() || t.dim() == 0 || t.size(0) != inputs[0].size(0)) return -1;
  }
  return inputs[0].size(0);
}

void CombineMembers(const Route& route, const VersionState& st, const Members& members,
                    std::vector<RunResult>& results, const std::vector<std::exception_ptr>& errors,
                    Prediction& p) {
  std::vector<Tensors> outputs;
  std::vector<double> weights;
  for (size_t i = 0; i < members.size(); ++i) {
    const std::string& v = route.targets[i].version;
    if (errors[i]) {
      if (route.on_error == OnError::kFail) std::rethrow_exception(errors[i]);
      p.skipped.push_back(v);
      continue;
    }
    if (!results[i].strings.empty()) {
      throw ModelError("ensemble member " + v +
                       " returned strings; an ensemble combines tensors only");
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
    if (!st.combiner) throw InvalidArgument("the ensemble asks for a custom combiner; none is set");
    const double total = std::accumulate(weights.begin(), weights.end(), 0.0);
    for (auto& w : weights) w /= total;
    p.outputs = st.combiner(outputs, weights);
  } else {
    p.outputs = CombineOutputs(outputs, weights, route.combine_mode);
  }
  if (!p.skipped.empty()) {
    p.route = p.route.str() + "; skipped after errors: " + JoinNames(p.skipped);
  }
}

}  // namespace

const std::string& RequestId::str() const {
  if (id_.empty()) id_ = RandomHex(16);
  return id_;
}

struct Executor::Arena {
  // All slots reserved for callers: each request's caller joins and works; no TBB workers are
  // needed beyond what the process already has.
  explicit Arena(int threads) : arena(threads, 1) {}
  tbb::task_arena arena;
};

Executor::Executor(int threads) : threads_(threads), arena_(std::make_unique<Arena>(threads)) {}

Executor::~Executor() = default;

Prediction Executor::Run(const VersionState& st, const Route& route, const Members& members,
                         const Tensors& inputs, const PredictOptions& o, Clock::time_point start) {
  RunOptions run;
  if (o.timeout_s) {
    if (!(*o.timeout_s > 0)) throw InvalidArgument("timeout must be > 0 seconds");
    run.deadline = start + DeadlineIn(*o.timeout_s);
  }
  run.priority = o.priority;
  run.strings = o.strings;
  run.inputs_checked = true;  // the deployment checked them against every member

  Prediction p;
  p.policy = route.policy;
  p.route = route.reason;
  Clock::time_point answered{};
  if (!route.combine) {
    RunResult r = members[0]->Run(inputs, run);
    p.outputs = std::move(r.outputs);
    p.strings = std::move(r.strings);
    p.versions.push_back(route.targets[0].version);
    p.queue_s = r.queue_s;
    p.compute_s = r.compute_s;
    p.batch_rows = r.batch_rows;
    answered = r.finished;  // its forward's end is its answer's (no clock read again)
  } else {
    RunEnsemble(st, route, members, inputs, run, p);
  }
  if (answered == Clock::time_point{}) answered = Clock::now();
  p.latency_s = Seconds(answered - start);
  return p;
}

// Whether a balanced ensemble is laid over the deployment's cores (RunSpread or RunSequence,
// whichever measured faster) rather than running each member whole on its own version's threads.
bool Executor::SpreadsMembers(const Route& route, const RunOptions& run, size_t members,
                              int64_t rows) const {
  const int64_t cores = threads_;
  return route.balance && !run.deadline && cores > 1 && rows > 0 &&
         members % static_cast<size_t>(cores) != 0;
}

// Runs the members on the deployment's TBB arena so that every core works: one member per core
// while whole rounds last, then the remaining members with their batches split by rows over
// the cores. The pieces form one ordered list that each core takes from as it comes free.
// Every forward keeps one intra-op thread: OpenMP teams would spin into the next piece's
// cores. A member whose outputs turn out not to follow the batch dimension is run again whole,
// and runs whole from then on.
void Executor::RunSpread(const Members& members, const Tensors& inputs,
                         std::vector<RunResult>& results, std::vector<std::exception_ptr>& errors) {
  const int64_t cores = threads_;
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
  arena_->arena.execute([&] { tbb::parallel_for(int64_t{0}, cores, int64_t{1}, work); });
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

// Runs the members one after another on the calling thread, each forward with an intra-op
// thread per core: what a plain loop with torch's threads does. Alone on the machine the team's
// threads have nothing else to keep from the cores.
void Executor::RunSequence(const Members& members, const Tensors& inputs,
                           std::vector<RunResult>& results,
                           std::vector<std::exception_ptr>& errors) {
  for (size_t m = 0; m < members.size(); ++m) {
    try {
      results[m] = members[m]->RunHere(inputs, threads_);
    } catch (...) {
      errors[m] = std::current_exception();
    }
  }
}

void Executor::RunEnsemble(const VersionState& st, const Route& route, const Members& members,
                           const Tensors& inputs, RunOptions run, Prediction& p) {
  struct Counted {
    explicit Counted(std::atomic<int>& n) : n(n), alone(n.fetch_add(1) == 0) {}
    ~Counted() { n.fetch_sub(1); }
    std::atomic<int>& n;
    const bool alone;
  } counted(ensembles_);
  // Alone, the members are laid over every core (spread, or in sequence with intra-op threads,
  // as measured); under load, each runs whole on one thread, side by side with the other
  // requests' members, through its own queue (and batcher).
  const int64_t rows = SharedRows(inputs);
  if (counted.alone && SpreadsMembers(route, run, members.size(), rows)) {
    std::vector<RunResult> results(members.size());
    std::vector<std::exception_ptr> errors(members.size());
    std::vector<std::string> versions;
    for (const auto& t : route.targets) versions.push_back(t.version);
    const std::string key = ArrangementChooser::Key(versions, rows);
    // Intra-op teams pay only on an idle machine: with any other request in flight in this
    // process the members spread, one thread per forward, and nothing is measured.
    const bool idle = CountedRequest::InFlight() <= 1;
    const Arrangement arrangement = idle ? chooser_.Next(key) : Arrangement::kSpread;
    const auto begin = Clock::now();
    if (arrangement == Arrangement::kSpread) {
      RunSpread(members, inputs, results, errors);
    } else {
      RunSequence(members, inputs, results, errors);
    }
    const auto end = Clock::now();
    // After a request in sequence its intra-op team spins for a while, taking cores from a
    // spread request that follows: such a request's time says more of the team than of its own
    // arrangement. Times of requests that failed somewhere say nothing of either.
    const auto settled =
        begin.time_since_epoch() - std::chrono::nanoseconds(sequence_end_ns_.load());
    if (arrangement == Arrangement::kSequence) {
      sequence_end_ns_.store(
          std::chrono::duration_cast<std::chrono::nanoseconds>(end.time_since_epoch()).count());
    }
    if (idle && (arrangement == Arrangement::kSequence || settled >= kTeamSettles) &&
        std::none_of(errors.begin(), errors.end(), [](const auto& e) { return e != nullptr; })) {
      chooser_.Record(key, arrangement, Seconds(end - begin));
    }
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

}  // namespace lepton
