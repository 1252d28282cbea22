#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "lepton/common/errors.h"
#include "lepton/policy/weighting.h"

namespace lepton::weights {
namespace {

Vector V(std::initializer_list<double> v) {
  Vector out(static_cast<Eigen::Index>(v.size()));
  Eigen::Index i = 0;
  for (double x : v) out[i++] = x;
  return out;
}

TEST(Weighting, FormulasAgainstHandComputedValues) {
  // 0.5*0.9 + 0.3*0.85 + 0.2*0.88 = 0.45 + 0.255 + 0.176 = 0.881
  EXPECT_NEAR(PerformanceAverage(V({0.9, 0.85, 0.88}), V({0.5, 0.3, 0.2})), 0.881, 1e-12);
  // Weights that do not sum to one are normalised by their sum.
  EXPECT_NEAR(PerformanceAverage(V({1, 0}), V({3, 1})), 0.75, 1e-12);
  const Vector t = TimeBased(V({2, 3, 4}), V({1, 2, 3}));
  EXPECT_NEAR(t[0], 1.0 / 3, 1e-12);
  EXPECT_NEAR(t[1], 0.2, 1e-12);
  EXPECT_NEAR(t[2], 1.0 / 7, 1e-12);
  const Vector q = RequestShare(V({100, 50, 30}));
  EXPECT_NEAR(q[0], 100.0 / 180, 1e-12);
  EXPECT_NEAR(q[2], 30.0 / 180, 1e-12);
  const Vector r = ResourceShare(V({2, 6}));
  EXPECT_NEAR(r[0], 0.25, 1e-12);
  const Vector f = Fuse(V({1, 2}), V({3, 6}), 0.25);
  EXPECT_NEAR(f[0], 0.25 * 1 + 0.75 * 3, 1e-12);
  EXPECT_NEAR(f[1], 0.25 * 2 + 0.75 * 6, 1e-12);
  EXPECT_NEAR(Normalize(V({1, 1, 2}))[2], 0.5, 1e-12);
  const Vector s = Softmax(V({1, 2, 3}), 1.0);
  const double z = std::exp(1) + std::exp(2) + std::exp(3);
  EXPECT_NEAR(s[2], std::exp(3) / z, 1e-12);
  const Vector hot = Softmax(V({1, 2}), 0.5);
  EXPECT_NEAR(hot[1], std::exp(4) / (std::exp(2) + std::exp(4)), 1e-12);
  // Large scores do not overflow.
  EXPECT_NEAR(Softmax(V({1000, 1000}))[0], 0.5, 1e-12);
}

TEST(Weighting, BadInputIsATypedErrorNamingIt) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(PerformanceAverage(V({1, 2}), V({1})), InvalidArgument);
  EXPECT_THROW(PerformanceAverage(V({1, 2}), V({-1, 2})), InvalidArgument);
  EXPECT_THROW(PerformanceAverage(V({1, 2}), V({0, 0})), InvalidArgument);
  EXPECT_THROW(Normalize(V({1, nan})), InvalidArgument);
  EXPECT_THROW(Normalize(Vector()), InvalidArgument);
  EXPECT_THROW(TimeBased(V({0}), V({0})), InvalidArgument);
  EXPECT_THROW(Fuse(V({1}), V({2}), 1.5), InvalidArgument);
  EXPECT_THROW(Fuse(V({1}), V({2}), -0.1), InvalidArgument);
  EXPECT_THROW(Fuse(V({1}), V({2, 3}), 0.5), InvalidArgument);
  EXPECT_THROW(Softmax(V({1}), 0), InvalidArgument);
  try {
    RequestShare(V({1, -3}));
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("request counts[1] is -3"), std::string::npos) << e.what();
  }
}

double EnsembleMse(const std::vector<Matrix>& p, const Matrix& y, const Vector& w) {
  Matrix mix = Matrix::Zero(y.rows(), y.cols());
  for (size_t k = 0; k < p.size(); ++k) mix += w[static_cast<Eigen::Index>(k)] * p[k];
  return (mix - y).squaredNorm() / double(y.size());
}

TEST(Weighting, FitEnsembleWeightsRecoversAKnownMixture) {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal;
  const int n = 400;
  std::vector<Matrix> p(3, Matrix(n, 2));
  for (auto& m : p)
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < 2; ++j) m(i, j) = normal(rng);
  const Matrix y = 0.3 * p[0] + 0.7 * p[1];
  const FitResult fit = FitEnsembleWeights(p, y, Loss::kMse);
  EXPECT_NEAR(fit.weights[0], 0.3, 1e-6);
  EXPECT_NEAR(fit.weights[1], 0.7, 1e-6);
  EXPECT_NEAR(fit.weights[2], 0.0, 1e-6);
  EXPECT_NEAR(fit.loss, 0.0, 1e-9);
  EXPECT_NEAR(fit.weights.sum(), 1.0, 1e-12);
}

TEST(Weighting, FitEnsembleWeightsBeatsEveryPointOfAGrid) {
  std::mt19937_64 rng(11);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> unit(0.05, 0.95);
  const int n = 300;
  // MSE with noisy, correlated members.
  Matrix y(n, 1);
  std::vector<Matrix> p(3, Matrix(n, 1));
  for (int i = 0; i < n; ++i) {
    y(i, 0) = normal(rng);
    p[0](i, 0) = y(i, 0) + 0.5 * normal(rng);
    p[1](i, 0) = y(i, 0) + 0.8 * normal(rng) + 0.2;
    p[2](i, 0) = 0.5 * p[0](i, 0) + 0.7 * normal(rng);
  }
  // Logloss with binary probabilities.
  Matrix labels(n, 1);
  std::vector<Matrix> q(3, Matrix(n, 1));
  for (int i = 0; i < n; ++i) {
    const double truth = unit(rng);
    labels(i, 0) = std::bernoulli_distribution(truth)(rng) ? 1 : 0;
    q[0](i, 0) = std::clamp(truth + 0.2 * normal(rng), 0.01, 0.99);
    q[1](i, 0) = std::clamp(truth + 0.3 * normal(rng), 0.01, 0.99);
    q[2](i, 0) = unit(rng);
  }
  const FitResult mse = FitEnsembleWeights(p, y, Loss::kMse);
  const FitResult ll = FitEnsembleWeights(q, labels, Loss::kLogLoss);
  EXPECT_LT(mse.gap, 1e-6);
  EXPECT_LT(ll.gap, 1e-6);
  double best_mse = 1e300, best_ll = 1e300;
  for (int a = 0; a <= 100; ++a) {
    for (int b = 0; a + b <= 100; ++b) {
      const Vector w = V({a / 100.0, b / 100.0, (100 - a - b) / 100.0});
      best_mse = std::min(best_mse, EnsembleMse(p, y, w));
      Vector prob = Vector::Zero(n);
      for (int k = 0; k < 3; ++k) {
        for (int i = 0; i < n; ++i) {
          prob[i] += w[k] * (labels(i, 0) == 1 ? q[k](i, 0) : 1 - q[k](i, 0));
        }
      }
      best_ll = std::min(best_ll, -prob.array().log().mean());
    }
  }
  EXPECT_LE(mse.loss, best_mse + 1e-9);
  EXPECT_LE(ll.loss, best_ll + 1e-9);
  EXPECT_LE(mse.loss, mse.member_loss.minCoeff() + 1e-12);
}

TEST(Weighting, FitEnsembleWeightsMulticlassAndBadInput) {
  // Member 0 is always right, member 1 always wrong: all the weight goes to member 0.
  Matrix good(4, 3), bad(4, 3), labels(4, 1);
  for (int i = 0; i < 4; ++i) {
    labels(i, 0) = i % 3;
    good.row(i) = Eigen::RowVector3d::Constant(0.1);
    good(i, i % 3) = 0.8;
    bad.row(i) = Eigen::RowVector3d::Constant(0.45);
    bad(i, i % 3) = 0.1;
  }
  const FitResult fit = FitEnsembleWeights({good, bad}, labels, Loss::kLogLoss);
  EXPECT_NEAR(fit.weights[0], 1.0, 1e-6);
  labels(0, 0) = 3;
  EXPECT_THROW(FitEnsembleWeights({good, bad}, labels, Loss::kLogLoss), InvalidArgument);
  labels(0, 0) = 0.5;
  EXPECT_THROW(FitEnsembleWeights({good, bad}, labels, Loss::kLogLoss), InvalidArgument);
  EXPECT_THROW(FitEnsembleWeights({good, Matrix(3, 3)}, labels, Loss::kMse), InvalidArgument);
  EXPECT_THROW(FitEnsembleWeights({}, labels, Loss::kMse), InvalidArgument);
}

TEST(Weighting, AllocateSolvesTheLinearProgram) {
  // Two versions, two resources (CPU cores, GiB of memory).
  //   max 3 x0 + 2 x1  s.t.  2 x0 + 1 x1 <= 2,  1 x0 + 2 x1 <= 2,  0 <= x <= 1
  // Vertices: (1, 0) -> 3, (2/3, 2/3) -> 10/3, (0, 1) -> 2; the optimum is (2/3, 2/3).
  Matrix d(2, 2);
  d << 2, 1, 1, 2;
  const Allocation a =
      Allocate(d, V({2, 2}), V({3, 2}), std::nullopt, std::nullopt, {"cpu", "memory"});
  EXPECT_NEAR(a.shares[0], 2.0 / 3, 1e-9);
  EXPECT_NEAR(a.shares[1], 2.0 / 3, 1e-9);
  EXPECT_NEAR(a.objective, 10.0 / 3, 1e-9);
  EXPECT_TRUE(a.binding[0]);
  EXPECT_TRUE(a.binding[1]);
  // A minimum share for version 1 moves the optimum along the cpu constraint.
  const Allocation b = Allocate(d, V({2, 2}), V({3, 2}), V({0, 0.9}), std::nullopt);
  EXPECT_NEAR(b.shares[1], 0.9, 1e-9);
  EXPECT_NEAR(b.shares[0], std::min((2 - 0.9) / 2, 2 - 2 * 0.9), 1e-9);
}

TEST(Weighting, AllocateSaysWhichConstraintCannotHold) {
  Matrix d(2, 2);
  d << 2, 1, 1, 2;
  try {
    Allocate(d, V({2, 1}), V({1, 1}), V({0.5, 0.5}), std::nullopt, {"cpu", "memory"});
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("resource 'memory'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Allocate(d, V({2, 2}), V({1, 1}), V({0.6, 0}), V({0.5, 1})), InvalidArgument);
  EXPECT_THROW(Allocate(d, V({2}), V({1, 1})), InvalidArgument);
  EXPECT_THROW(Allocate(-d, V({2, 2}), V({1, 1})), InvalidArgument);
  EXPECT_THROW(Allocate(d, V({2, std::nan("")}), V({1, 1})), InvalidArgument);
}

}  // namespace
}  // namespace lepton::weights

namespace lepton::weights {
TEST(FitEnsembleWeights, LogLossStaysFiniteWithConfidentWrongMembers) {
  // Members that give the true class probability 0 on some rows, as a confident classifier does.
  const int n = 300, c = 10;
  std::vector<Matrix> preds;
  Matrix targets(n, 1);
  for (int i = 0; i < n; ++i) targets(i, 0) = i % c;
  for (int m = 0; m < 3; ++m) {
    Matrix p = Matrix::Zero(n, c);
    for (int i = 0; i < n; ++i) {
      const bool wrong = (i + m) % (4 + m) == 0;
      p(i, wrong ? (i + 1) % c : i % c) = 1.0;  // all mass on one class, sometimes the wrong one
    }
    preds.push_back(p);
  }
  const auto fit = FitEnsembleWeights(preds, targets, Loss::kLogLoss);
  EXPECT_TRUE(fit.weights.allFinite());
  EXPECT_NEAR(fit.weights.sum(), 1.0, 1e-9);
  EXPECT_TRUE(std::isfinite(fit.loss));
}
}  // namespace lepton::weights
