// Weighting math: pure functions over vectors (Eigen), no state. The formulas of the reference
// documents, normalisation, ensemble-weight fitting on a simplex, and the resource-allocation LP.
// Bad input (length mismatch, negative, NaN, all-zero, out of range) throws InvalidArgument naming
// the argument and what was expected.
#pragma once

#include <Eigen/Core>
#include <optional>
#include <string>
#include <vector>

namespace lepton::weights {

using Vector = Eigen::VectorXd;
using Matrix = Eigen::MatrixXd;

// sum_i w_i * p_i / sum_i w_i.
double PerformanceAverage(const Vector& performance, const Vector& weights);
// w_i = 1 / (T_i + C_i), not normalised.
Vector TimeBased(const Vector& validity, const Vector& cycle);
// Q_i / sum_j Q_j.
Vector RequestShare(const Vector& counts);
// R_i / sum_j R_j.
Vector ResourceShare(const Vector& usage);
// alpha * y1 + (1 - alpha) * y2, element-wise; alpha in [0, 1].
Vector Fuse(const Vector& y1, const Vector& y2, double alpha);
// w / sum(w); non-negative, finite, not all zero.
Vector Normalize(const Vector& weights);
// exp(s_i / T) / sum_j exp(s_j / T), computed stably; temperature > 0.
Vector Softmax(const Vector& scores, double temperature = 1.0);

enum class Loss { kMse, kLogLoss };

struct FitResult {
  Vector weights;      // on the simplex: >= 0, summing to 1
  double loss = 0;     // the ensemble's loss at `weights`
  Vector member_loss;  // each member's own loss, for comparison
  int iterations = 0;
  double gap = 0;  // Frank-Wolfe duality gap at the solution (0 at the optimum)
};

// The simplex-constrained weights minimising the loss of the weighted ensemble.
// kMse: every prediction and `targets` are n x c (c = 1 for a scalar output).
// kLogLoss: predictions are class probabilities, n x c with c >= 2 (rows summing to 1), or n x 1
// with the probability of the positive class; `targets` is n x 1 with class indices (0/1 for the
// n x 1 form).
FitResult FitEnsembleWeights(const std::vector<Matrix>& predictions, const Matrix& targets,
                             Loss loss, int max_iterations = 5000, double tolerance = 1e-10);

struct Allocation {
  Vector shares;              // x_i
  double objective = 0;       // sum_i value_i * x_i
  Vector usage;               // sum_i demand_ij * x_i, per resource j
  std::vector<bool> binding;  // resource j is used to capacity
};

// Shares x_i in [min_share_i, max_share_i] maximising sum_i value_i * x_i subject to
// sum_i demand_ij * x_i <= capacity_j for every resource j (demand is n versions x m resources).
// Solved with GLPK's simplex. Infeasible input throws InvalidArgument naming the constraint that
// cannot hold.
Allocation Allocate(const Matrix& demands, const Vector& capacity, const Vector& value,
                    const std::optional<Vector>& min_share = std::nullopt,
                    const std::optional<Vector>& max_share = std::nullopt,
                    const std::vector<std::string>& resource_names = {});

}  // namespace lepton::weights
