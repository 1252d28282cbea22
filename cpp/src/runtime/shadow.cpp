#include "lepton/runtime/shadow.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "lepton/common/errors.h"

namespace lepton {
namespace {

struct Comparison {
  double max_abs = 0, mean_abs = 0;
  std::optional<double> agreement, kl;
};

Comparison Compare(const Tensors& a, const StringTensors& a_text, const RunResult& mirror) {
  const Tensors& b = mirror.outputs;
  if (a.size() != b.size()) throw ModelError("mirror gave a different number of outputs");
  Comparison c;
  int64_t elements = 0;
  double abs_sum = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const auto x_text = a_text.find(i), y_text = mirror.strings.find(i);
    if ((x_text == a_text.end()) != (y_text == mirror.strings.end())) {
      throw ModelError("mirror output is strings where the primary's is not, or the other way");
    }
    if (x_text != a_text.end()) {
      const StringTensor &x = x_text->second, &y = y_text->second;
      if (x.shape != y.shape) throw ModelError("mirror output shape differs");
      int64_t differ = 0;
      for (size_t k = 0; k < x.values.size(); ++k) differ += x.values[k] != y.values[k];
      if (differ) c.max_abs = 1;
      abs_sum += double(differ);
      elements += static_cast<int64_t>(x.values.size());
      continue;
    }
    if (!a[i].sizes().equals(b[i].sizes())) throw ModelError("mirror output shape differs");
    const at::Tensor x = a[i].to(at::kDouble), y = b[i].to(at::kDouble);
    const at::Tensor d = (x - y).abs();
    if (d.numel() == 0) continue;
    c.max_abs = std::max(c.max_abs, d.max().item<double>());
    abs_sum += d.sum().item<double>();
    elements += d.numel();
  }
  c.mean_abs = elements ? abs_sum / double(elements) : 0;
  if (!a.empty() && a[0].defined() && a[0].dim() >= 1 && a[0].size(-1) > 1 && a[0].numel() > 0) {
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

}  // namespace

ShadowComparator::ShadowComparator(size_t queue) : queue_(queue) {}

ShadowComparator::~ShadowComparator() { Stop(); }

void ShadowComparator::Mirror(const VersionState& st, const Route& route, const Tensors& inputs,
                              const std::shared_ptr<const StringTensors>& strings,
                              const Prediction& p) {
  for (const auto& v : route.mirrors) {
    auto it = st.slots.find(v);
    if (it == st.slots.end()) continue;
    const std::string& primary = p.versions.empty() ? route.targets[0].version : p.versions[0];
    // A mirror is not worth a load on its own: one that is not loaded now misses this copy.
    std::shared_ptr<Servable> mirror = it->second->loaded();
    std::unique_lock<std::mutex> lk(mu_);
    if (!mirror || jobs_.size() >= queue_ || stopping_) {
      ++StatsFor(primary, v).dropped;
      continue;
    }
    lk.unlock();
    std::shared_ptr<Servable::Ticket> ticket;
    try {
      RunOptions o;
      o.force_async = true;
      o.strings = strings;
      ticket = mirror->Submit(inputs, o);
    } catch (const Error&) {
      lk.lock();
      // The mirror's queue is full; the answer is already decided. (Looked up again: the stats
      // may have moved while the lock was released.)
      ++StatsFor(primary, v).dropped;
      continue;
    }
    lk.lock();
    jobs_.push_back({mirror, ticket, p.outputs, p.strings, primary, v});
    if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
    lk.unlock();
    cv_.notify_one();
  }
}

ShadowStats& ShadowComparator::StatsFor(const std::string& primary, const std::string& mirror) {
  for (auto& s : stats_) {
    if (s.primary == primary && s.mirror == mirror) return s;
  }
  stats_.push_back({});
  stats_.back().primary = primary;
  stats_.back().mirror = mirror;
  return stats_.back();
}

void ShadowComparator::Loop() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stopping_ || !jobs_.empty(); });
    if (jobs_.empty()) return;
    Job job = std::move(jobs_.front());
    jobs_.pop_front();
    lk.unlock();
    Comparison c;
    bool ok = false;
    try {
      RunResult r = job.servable->Wait(job.ticket);
      c = Compare(job.primary_outputs, job.primary_strings, r);
      ok = true;
    } catch (const std::exception&) {
    }
    lk.lock();
    ShadowStats& s = StatsFor(job.primary, job.mirror);
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

std::vector<ShadowStats> ShadowComparator::Stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

void ShadowComparator::Stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

}  // namespace lepton
