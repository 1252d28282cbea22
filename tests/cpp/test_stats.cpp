#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>

#include "lepton/common/errors.h"
#include "lepton/policy/stats.h"

namespace lepton {
namespace {

// One A/B test looked at after every sample; true if it ever rejects.
bool RunTest(std::mt19937_64& rng, double pa, double pb, int max_per_arm, bool binary) {
  SequentialTest t(0.05, 0.1, 100);
  std::bernoulli_distribution ba(pa), bb(pb);
  std::normal_distribution<double> na(pa, 1), nb(pb, 1);
  for (int i = 0; i < max_per_arm; ++i) {
    t.Add(0, binary ? (ba(rng) ? 1.0 : 0.0) : na(rng));
    t.Add(1, binary ? (bb(rng) ? 1.0 : 0.0) : nb(rng));
    if (t.Evaluate().decided) return true;
  }
  return false;
}

TEST(SequentialTest, FalsePositiveRateAtMostAlphaUnderContinuousMonitoring) {
  std::mt19937_64 rng(2026);
  for (bool binary : {true, false}) {
    int rejected = 0;
    const int tests = 1000;
    for (int i = 0; i < tests; ++i) rejected += RunTest(rng, 0.3, 0.3, 1000, binary);
    const double fpr = double(rejected) / tests;
    std::printf("mSPRT false-positive rate (%s, 1000 tests, checked every sample): %.3f\n",
                binary ? "binary" : "continuous", fpr);
    EXPECT_LE(fpr, 0.05);
  }
}

TEST(SequentialTest, PowerUnderARealDifference) {
  std::mt19937_64 rng(7);
  int detected = 0;
  const int tests = 300;
  for (int i = 0; i < tests; ++i) detected += RunTest(rng, 0.30, 0.36, 3000, true);
  const double power = double(detected) / tests;
  std::printf("mSPRT power (p 0.30 vs 0.36, up to 3000 per arm): %.3f\n", power);
  EXPECT_GT(power, 0.6);
}

TEST(SequentialTest, ConfidenceIntervalCoversTheDifference) {
  std::mt19937_64 rng(9);
  SequentialTest t(0.05, 0.1, 100);
  std::normal_distribution<double> a(1.0, 1.0), b(1.5, 1.0);
  for (int i = 0; i < 2000; ++i) {
    t.Add(0, a(rng));
    t.Add(1, b(rng));
  }
  const auto r = t.Evaluate();
  EXPECT_TRUE(r.decided);
  EXPECT_EQ(r.winner, 1);
  EXPECT_LT(r.ci_low, 0.5);
  EXPECT_GT(r.ci_high, 0.5);
  EXPECT_NEAR(r.confidence, 1 - r.p_value, 1e-15);
  EXPECT_THROW(t.Add(2, 1), InvalidArgument);
  EXPECT_THROW(t.Add(0, std::nan("")), InvalidArgument);
  EXPECT_THROW(SequentialTest(1.5), InvalidArgument);
}

TEST(OutcomeWindow, QuantilesAndErrorRateOverTheWindow) {
  OutcomeWindow w(100);
  for (int i = 1; i <= 100; ++i) w.Add(i * 0.001, false);
  EXPECT_NEAR(w.Quantile(0.99), 0.099, 1e-12);
  EXPECT_NEAR(w.Quantile(0.5), 0.050, 1e-12);
  for (int i = 0; i < 50; ++i) w.Add(1.0, true);
  EXPECT_NEAR(w.error_rate(), 0.5, 1e-12);
  EXPECT_EQ(w.total(), 150);
  EXPECT_EQ(w.total_errors(), 50);
  for (int i = 0; i < 100; ++i) w.Add(0.001, false);
  EXPECT_EQ(w.error_rate(), 0);
}

}  // namespace
}  // namespace lepton

TEST(OutcomeWindowRecent, QuantileOverTheNewestEntries) {
  lepton::OutcomeWindow w(4);
  for (double v : {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}) w.Add(v, false);  // the ring holds 3, 4, 5, 6
  EXPECT_EQ(w.Quantile(1.0), 6.0);
  EXPECT_EQ(w.Quantile(0.0), 3.0);
  EXPECT_EQ(w.Quantile(0.0, 2), 5.0);  // the newest two: 5 and 6
  EXPECT_EQ(w.Quantile(1.0, 1), 6.0);
  lepton::OutcomeWindow partial(10);
  for (double v : {9.0, 1.0, 2.0}) partial.Add(v, false);
  EXPECT_EQ(partial.Quantile(1.0, 2), 2.0);
}

TEST(OutcomeWindowRecent, QuantileSinceAStamp) {
  lepton::OutcomeWindow w(8);
  for (uint64_t s = 1; s <= 6; ++s) w.Add(double(s), s == 5, s);
  size_t n = 0;
  EXPECT_EQ(w.QuantileSince(1.0, 4, &n), 6.0);
  EXPECT_EQ(n, 2u);  // stamps 4 and 6; 5 was an error
  EXPECT_EQ(w.oldest_stamp(), 1u);
  EXPECT_EQ(w.QuantileSince(0.5, 99, &n), 0.0);
  EXPECT_EQ(n, 0u);
}
