#include <gtest/gtest.h>

#include <cmath>

#include "lepton/common/errors.h"
#include "lepton/runtime/arrangement.h"

namespace lepton {
namespace {

constexpr Arrangement kSpread = Arrangement::kSpread;
constexpr Arrangement kSequence = Arrangement::kSequence;

// Runs one request: asks which arrangement, and reports the time that one takes.
Arrangement Ask(ArrangementChooser& c, const std::string& key, double spread_s, double sequence_s) {
  const Arrangement a = c.Next(key);
  c.Record(key, a, a == kSpread ? spread_s : sequence_s);
  return a;
}

TEST(ArrangementChooserTest, MeasuresEachInARowThenKeepsTheFaster) {
  ArrangementOptions o;
  o.samples = 3;
  ArrangementChooser c(o);
  std::vector<Arrangement> seen;
  for (int i = 0; i < 6; ++i) seen.push_back(Ask(c, "k", 2e-3, 1e-3));
  EXPECT_EQ(seen,
            (std::vector<Arrangement>{kSpread, kSpread, kSpread, kSequence, kSequence, kSequence}));
  for (int i = 0; i < 20; ++i) EXPECT_EQ(Ask(c, "k", 2e-3, 1e-3), kSequence);
  const auto stats = c.Stats();
  ASSERT_EQ(stats.size(), 1u);
  EXPECT_EQ(stats[0].kept, "sequence");
  EXPECT_EQ(stats[0].spread_measured, 3);
  EXPECT_EQ(stats[0].sequence_measured, 23);
  EXPECT_DOUBLE_EQ(stats[0].spread_median_s, 2e-3);
  EXPECT_DOUBLE_EQ(stats[0].sequence_median_s, 1e-3);
  EXPECT_EQ(stats[0].rechecks, 0);
  // The median decides: one slow outlier of the faster one does not change the choice.
  ArrangementChooser d(o);
  for (double t : {1e-3, 9e-3, 1e-3}) ASSERT_EQ(Ask(d, "k", t, 2e-3), kSpread);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(Ask(d, "k", 1e-3, 2e-3), kSequence);
  EXPECT_EQ(d.Stats()[0].kept, "spread");
}

TEST(ArrangementChooserTest, InSequenceMustBeClearlyFasterToBeKept) {
  ArrangementOptions o;
  o.samples = 1;
  o.sequence_margin = 0.1;
  ArrangementChooser c(o);
  Ask(c, "close", 1e-3, 0.95e-3);
  Ask(c, "close", 1e-3, 0.95e-3);
  EXPECT_EQ(c.Next("close"), kSpread);
  Ask(c, "clear", 1e-3, 0.85e-3);
  Ask(c, "clear", 1e-3, 0.85e-3);
  EXPECT_EQ(c.Next("clear"), kSequence);
}

TEST(ArrangementChooserTest, AChangeToSequenceIsConfirmedSoon) {
  ArrangementOptions o;
  o.samples = 3;
  o.recheck_every = 1000;
  o.confirm_after = 4;
  ArrangementChooser c(o);
  // Spread measured slow (as while another team spun), sequence faster: kept, then confirmed.
  for (int i = 0; i < 6; ++i) Ask(c, "k", 3e-3, 2e-3);
  for (int i = 0; i < 4; ++i) ASSERT_EQ(Ask(c, "k", 1e-3, 2e-3), kSequence);
  EXPECT_EQ(c.Stats()[0].rechecks, 1);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(Ask(c, "k", 1e-3, 2e-3), kSpread);
  EXPECT_EQ(c.Stats()[0].kept, "spread");
  // Where sequence is faster, the confirmation keeps it, and the next recheck is a full period
  // away.
  ArrangementChooser d(o);
  for (int i = 0; i < 6; ++i) Ask(d, "k", 3e-3, 2e-3);
  for (int i = 0; i < 4; ++i) Ask(d, "k", 3e-3, 2e-3);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(Ask(d, "k", 3e-3, 2e-3), kSpread);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(Ask(d, "k", 3e-3, 2e-3), kSequence);
  EXPECT_EQ(d.Stats()[0].rechecks, 1);
}

TEST(ArrangementChooserTest, MeasuresTheOtherAgainEverySoOftenAndFollowsAChange) {
  ArrangementOptions o;
  o.samples = 3;
  o.recheck_every = 10;
  ArrangementChooser c(o);
  for (int i = 0; i < 6; ++i) Ask(c, "k", 1e-3, 2e-3);
  for (int i = 0; i < 10; ++i) ASSERT_EQ(Ask(c, "k", 1e-3, 2e-3), kSpread);
  EXPECT_EQ(c.Stats()[0].rechecks, 1);
  EXPECT_EQ(c.Stats()[0].kept, "");
  // The machine changed: the other one is now faster, and is kept after its fresh samples.
  for (int i = 0; i < 3; ++i) ASSERT_EQ(Ask(c, "k", 1e-3, 0.5e-3), kSequence);
  EXPECT_EQ(c.Stats()[0].kept, "sequence");
  EXPECT_EQ(Ask(c, "k", 1e-3, 0.5e-3), kSequence);
}

TEST(ArrangementChooserTest, AKeptArrangementThatSlowsDownIsComparedAgainAtOnce) {
  ArrangementOptions o;
  o.samples = 3;
  o.recheck_every = 1000;
  o.slowdown = 1.5;
  ArrangementChooser c(o);
  for (int i = 0; i < 6; ++i) Ask(c, "k", 1e-3, 2e-3);
  // Twice as slow from now on: once its median moves, the other is measured again.
  int spread_measured = 0;
  while (c.Next("k") == kSpread && spread_measured < 10) {
    c.Record("k", kSpread, 3e-3);
    ++spread_measured;
  }
  EXPECT_EQ(spread_measured, 2);  // the second slow sample moves the median of three
  EXPECT_EQ(c.Stats()[0].rechecks, 1);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(Ask(c, "k", 3e-3, 2e-3), kSequence);
  EXPECT_EQ(c.Stats()[0].kept, "sequence");
}

TEST(ArrangementChooserTest, EachEnsembleAndBatchClassIsMeasuredApart) {
  EXPECT_EQ(ArrangementChooser::Key({"v1", "v2", "v3"}, 1), "v1+v2+v3, rows <= 1");
  EXPECT_EQ(ArrangementChooser::Key({"v1", "v2", "v3"}, 33), "v1+v2+v3, rows <= 64");
  EXPECT_EQ(ArrangementChooser::Key({"v1", "v2", "v3"}, 64), "v1+v2+v3, rows <= 64");
  ArrangementOptions o;
  o.samples = 1;
  o.max_keys = 2;
  ArrangementChooser c(o);
  for (int i = 0; i < 2; ++i) Ask(c, "small", 1e-3, 2e-3);
  for (int i = 0; i < 2; ++i) Ask(c, "large", 2e-3, 1e-3);
  EXPECT_EQ(Ask(c, "small", 1e-3, 2e-3), kSpread);
  EXPECT_EQ(Ask(c, "large", 2e-3, 1e-3), kSequence);
  // A third key forgets the one used longest ago.
  Ask(c, "third", 1e-3, 1e-3);
  std::vector<std::string> keys;
  for (const auto& s : c.Stats()) keys.push_back(s.key);
  EXPECT_EQ(keys, (std::vector<std::string>{"large", "third"}));
}

TEST(ArrangementChooserTest, RefusesOptionsThatCannotWork) {
  ArrangementOptions o;
  o.samples = 0;
  EXPECT_THROW(ArrangementChooser{o}, InvalidArgument);
  o = {};
  o.recheck_every = 0;
  EXPECT_THROW(ArrangementChooser{o}, InvalidArgument);
  o = {};
  o.slowdown = 1;
  EXPECT_THROW(ArrangementChooser{o}, InvalidArgument);
  o = {};
  o.max_keys = 0;
  EXPECT_THROW(ArrangementChooser{o}, InvalidArgument);
  for (double margin : {-0.1, 1.0, std::nan("")}) {
    o = {};
    o.sequence_margin = margin;
    EXPECT_THROW(ArrangementChooser{o}, InvalidArgument);
  }
}

}  // namespace
}  // namespace lepton
