#include "worker_pool.h"

#include <tbb/global_control.h>
#include <tbb/info.h>

#include <algorithm>
#include <memory>
#include <mutex>

namespace lepton {
namespace {

struct Pool {
  std::mutex mu;
  int reserved = 0;
  std::unique_ptr<tbb::global_control> control;

  void Apply() {
    // +1: the limit counts the thread that calls in, and callers also take part.
    const int wanted = std::max(tbb::info::default_concurrency(), reserved + 1);
    const int current = control ? static_cast<int>(tbb::global_control::active_value(
                                      tbb::global_control::max_allowed_parallelism))
                                : tbb::info::default_concurrency();
    if (control && current == wanted) return;
    // The most restrictive active control wins, so the old one goes before the new one starts.
    control.reset();
    control = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism,
                                                    static_cast<size_t>(wanted));
  }
};

Pool& TheProcessPool() {
  static Pool* pool = new Pool();  // never destroyed: arenas may outlive static destruction order
  return *pool;
}

}  // namespace

WorkerReservation::WorkerReservation(int workers) : workers_(std::max(0, workers)) {
  Pool& pool = TheProcessPool();
  std::lock_guard<std::mutex> lock(pool.mu);
  pool.reserved += workers_;
  pool.Apply();
}

WorkerReservation::~WorkerReservation() {
  Pool& pool = TheProcessPool();
  std::lock_guard<std::mutex> lock(pool.mu);
  pool.reserved -= workers_;
  pool.Apply();
}

void WorkerReservation::Resize(int workers) {
  Pool& pool = TheProcessPool();
  std::lock_guard<std::mutex> lock(pool.mu);
  pool.reserved += std::max(0, workers) - workers_;
  workers_ = std::max(0, workers);
  pool.Apply();
}

}  // namespace lepton
