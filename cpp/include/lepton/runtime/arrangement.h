// How an ensemble request that runs alone is laid over the cores, chosen by measuring. Two
// arrangements compete: the members spread over the cores in waves, the remainder split by rows
// (one intra-op thread per forward), and the members in sequence on the caller's thread, each
// with an intra-op thread per core. Which is faster depends on the machine, the model and the
// batch: on two cores spreading wins; on many cores, splitting a small batch into many row
// slices repacks the weights for each, and intra-op threads win. For each ensemble (its members
// and a batch-size class) the chooser runs both a few times, keeps the faster by median, and
// measures the other again every so often, or at once when the kept one slows down, so that a
// change in the machine's behaviour changes the choice.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace lepton {

enum class Arrangement { kSpread, kSequence };
const char* ArrangementName(Arrangement a);

struct ArrangementOptions {
  int samples = 5;  // wall times kept, and measured, of each arrangement
  // Requests in the kept arrangement before the other is measured again.
  int64_t recheck_every = 500;
  // The kept arrangement's recent median past this many times the median it was chosen at
  // measures the other again at once.
  double slowdown = 1.5;
  // In sequence is kept only when at least this much faster than spread: its intra-op team
  // spins for a few milliseconds after each request, a cost its own time does not show.
  double sequence_margin = 0.1;
  // A change to sequence is confirmed by measuring spread again after this many requests.
  int64_t confirm_after = 50;
  size_t max_keys = 256;  // ensembles and batch-size classes remembered (oldest forgotten)
};

struct ArrangementStats {
  std::string key;             // "v1+v2+v3, rows <= 64"
  std::string kept;            // "spread", "sequence", or "" while both are being measured
  double spread_median_s = 0;  // of its latest samples
  double sequence_median_s = 0;
  int64_t spread_measured = 0;  // requests whose time was recorded
  int64_t sequence_measured = 0;
  int64_t rechecks = 0;
};

// Thread-safe. A request asks Next, runs that arrangement, then reports its wall time to Record.
class ArrangementChooser {
 public:
  explicit ArrangementChooser(ArrangementOptions options = {});

  // The key of an ensemble of `members` at `rows` rows: rows are classed by the next power of
  // two.
  static std::string Key(const std::vector<std::string>& members, int64_t rows);

  Arrangement Next(const std::string& key);
  void Record(const std::string& key, Arrangement a, double seconds);

  std::vector<ArrangementStats> Stats() const;

 private:
  struct Entry {
    std::vector<double> times[2];  // the latest `samples` of each, oldest first
    int64_t runs[2] = {0, 0};
    int kept = -1;             // -1 while measuring
    int kept_before = -1;      // the last choice, through a recheck
    double kept_median = 0;    // the kept one's median when chosen
    int64_t since_choice = 0;  // runs of the kept one since
    int64_t rechecks = 0;
    uint64_t used = 0;  // for forgetting the oldest key
  };
  Entry& EntryLocked(const std::string& key);
  void ChooseLocked(Entry& e) const;

  const ArrangementOptions options_;
  mutable std::mutex mu_;
  std::map<std::string, Entry> entries_;
  uint64_t clock_ = 0;
};

}  // namespace lepton
