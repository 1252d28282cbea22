#include "lepton/runtime/arrangement.h"

#include <algorithm>

#include "lepton/common/errors.h"

namespace lepton {
namespace {

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  const auto mid = v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2);
  std::nth_element(v.begin(), mid, v.end());
  return *mid;
}

}  // namespace

const char* ArrangementName(Arrangement a) {
  return a == Arrangement::kSpread ? "spread" : "sequence";
}

ArrangementChooser::ArrangementChooser(ArrangementOptions options) : options_(options) {
  if (options_.samples < 1) throw InvalidArgument("arrangement samples must be >= 1");
  if (options_.recheck_every < 1) throw InvalidArgument("arrangement recheck_every must be >= 1");
  if (!(options_.slowdown > 1)) throw InvalidArgument("arrangement slowdown must be > 1");
  if (options_.max_keys < 1) throw InvalidArgument("arrangement max_keys must be >= 1");
  if (options_.confirm_after < 1) throw InvalidArgument("arrangement confirm_after must be >= 1");
  if (!(options_.sequence_margin >= 0 && options_.sequence_margin < 1)) {
    throw InvalidArgument("arrangement sequence_margin must be in [0, 1)");
  }
}

std::string ArrangementChooser::Key(const std::vector<std::string>& members, int64_t rows) {
  std::string key;
  for (const auto& m : members) key += (key.empty() ? "" : "+") + m;
  int64_t bound = 1;
  while (bound < rows && bound < (int64_t{1} << 40)) bound *= 2;
  return key + ", rows <= " + std::to_string(bound);
}

ArrangementChooser::Entry& ArrangementChooser::EntryLocked(const std::string& key) {
  auto it = entries_.find(key);
  if (it == entries_.end()) {
    if (entries_.size() >= options_.max_keys) {
      auto oldest = std::min_element(entries_.begin(), entries_.end(), [](auto& a, auto& b) {
        return a.second.used < b.second.used;
      });
      entries_.erase(oldest);
    }
    it = entries_.emplace(key, Entry{}).first;
  }
  it->second.used = ++clock_;
  return it->second;
}

Arrangement ArrangementChooser::Next(const std::string& key) {
  std::lock_guard<std::mutex> lk(mu_);
  Entry& e = EntryLocked(key);
  if (e.kept >= 0) return static_cast<Arrangement>(e.kept);
  // Measuring: one arrangement's samples in a row, then the other's, so that each sample runs
  // after its own kind (an intra-op team still spinning after a request in sequence would slow
  // a spread one that follows at once).
  const size_t need = static_cast<size_t>(options_.samples);
  // First the one not kept before (spread, the first time); then the other.
  const int first = e.kept_before < 0 ? 0 : 1 - e.kept_before;
  return static_cast<Arrangement>(e.times[first].size() < need ? first : 1 - first);
}

void ArrangementChooser::Record(const std::string& key, Arrangement a, double seconds) {
  std::lock_guard<std::mutex> lk(mu_);
  Entry& e = EntryLocked(key);
  const int i = static_cast<int>(a);
  auto& times = e.times[i];
  times.push_back(seconds);
  if (times.size() > static_cast<size_t>(options_.samples)) times.erase(times.begin());
  ++e.runs[i];
  if (e.kept < 0) {
    ChooseLocked(e);
    return;
  }
  if (i != e.kept) return;  // a request chosen before the choice changed
  ++e.since_choice;
  const bool due = e.since_choice >= options_.recheck_every;
  const bool slower = times.size() >= static_cast<size_t>(options_.samples) &&
                      Median(times) > e.kept_median * options_.slowdown;
  if (due || slower) {
    // Measure the other afresh; the kept one's recent times stay.
    e.times[1 - e.kept].clear();
    e.kept = -1;
    ++e.rechecks;
  }
}

void ArrangementChooser::ChooseLocked(Entry& e) const {
  const size_t need = static_cast<size_t>(options_.samples);
  if (e.times[0].size() < need || e.times[1].size() < need) return;
  const double m0 = Median(e.times[0]), m1 = Median(e.times[1]);
  const int was = e.kept_before;
  e.kept = m1 < m0 * (1 - options_.sequence_margin) ? 1 : 0;
  e.kept_before = e.kept;
  e.kept_median = e.kept == 1 ? m1 : m0;
  e.since_choice = 0;
  // A change to sequence is measured again soon: spread samples taken while another OpenMP team
  // of the process (the caller's own torch work) still spun would have made spread look slow.
  if (e.kept == 1 && was != 1) {
    e.since_choice = std::max<int64_t>(0, options_.recheck_every - options_.confirm_after);
  }
}

std::vector<ArrangementStats> ArrangementChooser::Stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<ArrangementStats> out;
  for (const auto& [key, e] : entries_) {
    ArrangementStats s;
    s.key = key;
    s.kept = e.kept < 0 ? "" : ArrangementName(static_cast<Arrangement>(e.kept));
    s.spread_median_s = Median(e.times[0]);
    s.sequence_median_s = Median(e.times[1]);
    s.spread_measured = e.runs[0];
    s.sequence_measured = e.runs[1];
    s.rechecks = e.rechecks;
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace lepton
