// The shadow comparator: mirrors get a copy of a request off the request path (submitted to
// their own arenas; the caller never waits for them), and one thread compares each mirror's
// outputs with the primary's answer. A bounded queue: beyond it mirrored requests are dropped and
// counted. Thread-safe; one mutex.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "lepton/runtime/executor.h"
#include "lepton/runtime/version_set.h"

namespace lepton {

// How a mirror's outputs compare with the primary's, over the mirrored requests so far.
struct ShadowStats {
  std::string primary, mirror;
  int64_t compared = 0;  // requests whose outputs were compared
  int64_t failed = 0;    // the mirror failed or its outputs could not be compared
  int64_t dropped = 0;   // not mirrored: the mirror or the comparison queue was full
  // String outputs count each element that differs as a difference of 1, each equal one as 0.
  double max_abs_diff = 0;
  double mean_abs_diff = 0;                // mean over requests of the mean |difference|
  std::optional<double> argmax_agreement;  // share of rows whose argmax agrees
  std::optional<double> kl_divergence;     // mean KL(primary || mirror) for probabilities
};

class ShadowComparator {
 public:
  explicit ShadowComparator(size_t queue);
  ~ShadowComparator();

  // Sends the request to each of the route's mirrors in `st`, to be compared with `p`.
  void Mirror(const VersionState& st, const Route& route, const Tensors& inputs,
              const std::shared_ptr<const StringTensors>& strings, const Prediction& p);
  std::vector<ShadowStats> Stats() const;
  // Compares what is queued, then stops the thread; later requests are not mirrored.
  void Stop();

 private:
  struct Job {
    std::shared_ptr<Servable> servable;
    std::shared_ptr<Servable::Ticket> ticket;
    Tensors primary_outputs;
    StringTensors primary_strings;
    std::string primary, mirror;
  };
  ShadowStats& StatsFor(const std::string& primary, const std::string& mirror);
  void Loop();

  const size_t queue_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  std::vector<ShadowStats> stats_;
  std::thread thread_;
  bool stopping_ = false;
};

}  // namespace lepton
