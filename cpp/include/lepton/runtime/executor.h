// Request execution: runs a routed request on the versions its route chose. One version runs it
// through its own queue and batcher; an ensemble's members run side by side and their outputs
// are combined. A balanced ensemble request running alone spreads its members over the
// deployment's cores (with batches split by rows where members outnumber cores); with other
// ensemble requests in flight, each member runs whole on one thread through its own queue and
// batcher, since the cores are busy anyway and splitting only adds work.
#pragma once

#include <c10/util/SmallVector.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lepton/policy/routing.h"
#include "lepton/runtime/arrangement.h"
#include "lepton/runtime/servable.h"
#include "lepton/runtime/version_set.h"

namespace lepton {

// The loaded servables of a request's targets, in the route's order (one for most requests);
// the caller's leases keep them loaded while they run.
using Members = c10::SmallVector<Servable*, 2>;

// A request's id: 128 random bits in hex, so that no client can guess another's. It is drawn
// when first read (most callers never read it); a copy draws it first, so copies agree.
class RequestId {
 public:
  RequestId() = default;
  RequestId(const RequestId& o) : id_(o.str()) {}
  RequestId(RequestId&&) noexcept = default;
  RequestId& operator=(const RequestId& o) {
    id_ = o.str();
    return *this;
  }
  RequestId& operator=(RequestId&&) noexcept = default;
  const std::string& str() const;
  operator const std::string&() const { return str(); }  // NOLINT

 private:
  mutable std::string id_;
};

struct PredictOptions {
  RequestContext context;           // key, pinned version, headers
  std::optional<double> timeout_s;  // per-request deadline
  std::optional<int> priority;      // overrides the version's default
  // The request's names for its inputs, in order (the HTTP API's); checked against the answering
  // version's input names. Empty: inputs are positional.
  std::vector<std::string> input_names;
  // String inputs by position (their tensors in `inputs` are undefined); null: none.
  std::shared_ptr<const StringTensors> strings;
};

struct Prediction {
  Tensors outputs;
  StringTensors strings;              // string outputs; their positions in `outputs` are undefined
  std::vector<std::string> versions;  // which versions answered (ensemble: every member used)
  std::vector<std::string> skipped;   // ensemble members left out after an error
  std::string policy;
  Reason route;  // why these versions (shared with the policy's own text)
  RequestId request_id;
  double latency_s = 0;
  double queue_s = 0;
  double compute_s = 0;
  int batch_rows = 0;       // rows in the batch it ran in (0 for an ensemble)
  bool cold_start = false;  // it waited for a version to load
};

class Executor {
 public:
  // `threads`: the deployment's cores, which a balanced ensemble spreads its members over.
  explicit Executor(int threads);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Runs `inputs` on the route's targets, whose loaded servables `members` holds in the same
  // order (leased by the caller); `start` is when the request arrived.
  Prediction Run(const VersionState& st, const Route& route, const Members& members,
                 const Tensors& inputs, const PredictOptions& options, Clock::time_point start);

  // How ensemble requests that ran alone were laid over the cores, per ensemble and batch size.
  std::vector<ArrangementStats> arrangements() const { return chooser_.Stats(); }

 private:
  void RunEnsemble(const VersionState& st, const Route& route, const Members& members,
                   const Tensors& inputs, RunOptions run, Prediction& p);
  bool SpreadsMembers(const Route& route, const RunOptions& run, size_t members,
                      int64_t rows) const;
  void RunSpread(const Members& members, const Tensors& inputs, std::vector<RunResult>& results,
                 std::vector<std::exception_ptr>& errors);
  void RunSequence(const Members& members, const Tensors& inputs, std::vector<RunResult>& results,
                   std::vector<std::exception_ptr>& errors);

  struct Arena;
  const int threads_;
  std::unique_ptr<Arena> arena_;
  // Ensemble requests running now: only one running alone spreads over the cores.
  std::atomic<int> ensembles_{0};
  ArrangementChooser chooser_;
  std::atomic<int64_t> sequence_end_ns_{0};  // when a request in sequence last ended (Clock)
};

}  // namespace lepton
