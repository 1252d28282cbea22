#include "lepton/policy/weighting.h"

#include <glpk.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <sstream>

#include "lepton/common/errors.h"

namespace lepton::weights {
namespace {

std::string Num(double v) {
  std::ostringstream s;
  s.precision(6);
  s << v;
  return s.str();
}

void CheckFinite(const Vector& v, const char* what) {
  for (Eigen::Index i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i])) {
      throw InvalidArgument(std::string(what) + "[" + std::to_string(i) + "] is " + Num(v[i]) +
                            "; expected a finite number");
    }
  }
}

void CheckNonEmpty(const Vector& v, const char* what) {
  if (v.size() == 0) throw InvalidArgument(std::string(what) + " must not be empty");
}

void CheckNonNegative(const Vector& v, const char* what) {
  CheckNonEmpty(v, what);
  CheckFinite(v, what);
  for (Eigen::Index i = 0; i < v.size(); ++i) {
    if (v[i] < 0) {
      throw InvalidArgument(std::string(what) + "[" + std::to_string(i) + "] is " + Num(v[i]) +
                            "; expected a value >= 0");
    }
  }
}

void CheckSameLength(const Vector& a, const char* a_name, const Vector& b, const char* b_name) {
  if (a.size() != b.size()) {
    throw InvalidArgument(std::string(a_name) + " has " + std::to_string(a.size()) +
                          " values but " + b_name + " has " + std::to_string(b.size()) +
                          "; expected one per version");
  }
}

Vector Share(const Vector& v, const char* what) {
  CheckNonNegative(v, what);
  const double sum = v.sum();
  if (!(sum > 0)) throw InvalidArgument(std::string(what) + " are all zero; expected some > 0");
  return v / sum;
}

// Euclidean projection onto the probability simplex (sort-based).
Vector ProjectToSimplex(const Vector& v) {
  const Eigen::Index n = v.size();
  std::vector<double> u(v.data(), v.data() + n);
  std::sort(u.begin(), u.end(), std::greater<double>());
  double cumulative = 0, theta = 0;
  for (Eigen::Index j = 0; j < n; ++j) {
    cumulative += u[j];
    const double t = (cumulative - 1.0) / double(j + 1);
    if (u[j] - t > 0) theta = t;
  }
  return (v.array() - theta).max(0.0).matrix();
}

// A smooth convex objective over the simplex.
struct Objective {
  virtual ~Objective() = default;
  virtual double Value(const Vector& w) const = 0;
  virtual Vector Gradient(const Vector& w) const = 0;
};

struct MseObjective : Objective {
  Matrix gram;   // X^T X / N
  Vector cross;  // X^T y / N
  double y2 = 0;
  double Value(const Vector& w) const override {
    return std::max(0.0, w.dot(gram * w) - 2 * cross.dot(w) + y2);
  }
  Vector Gradient(const Vector& w) const override { return 2 * (gram * w - cross); }
};

struct LogLossObjective : Objective {
  // Momentum steps may leave the simplex, where a mix can reach zero or below; probabilities are
  // floored as the members' own are, so that the gradient stays finite.
  static constexpr double kFloor = 1e-15;
  Matrix a;  // n x k: each member's probability of the true class
  double Value(const Vector& w) const override { return -(a * w).array().max(kFloor).log().mean(); }
  Vector Gradient(const Vector& w) const override {
    const Vector p = (a * w).array().max(kFloor);
    return -(a.transpose() * p.cwiseInverse()) / double(a.rows());
  }
};

// Accelerated projected gradient (FISTA) with backtracking and adaptive restart.
FitResult Minimise(const Objective& f, Eigen::Index k, int max_iterations, double tolerance) {
  FitResult out;
  Vector w = Vector::Constant(k, 1.0 / double(k));
  Vector y = w;
  double t = 1, step = 1;
  double fw = f.Value(w);
  int it = 0;
  for (; it < max_iterations; ++it) {
    const Vector g = f.Gradient(y);
    const double fy = f.Value(y);
    if (!g.allFinite() || !std::isfinite(fy)) {  // an extrapolated point out of reach: restart
      if (y == w) break;
      t = 1;
      y = w;
      continue;
    }
    Vector next;
    double fnext = 0;
    for (int tries = 0; tries < 60; ++tries) {
      next = ProjectToSimplex(y - step * g);
      fnext = f.Value(next);
      const Vector d = next - y;
      if (fnext <= fy + g.dot(d) + d.squaredNorm() / (2 * step) + 1e-15) break;
      step *= 0.5;
    }
    if (fnext > fw) {  // restart the momentum
      t = 1;
      y = w;
      continue;
    }
    const double change = (next - w).lpNorm<Eigen::Infinity>();
    const double t_next = (1 + std::sqrt(1 + 4 * t * t)) / 2;
    y = next + ((t - 1) / t_next) * (next - w);
    w = next;
    fw = fnext;
    t = t_next;
    step *= 1.5;
    if (change < tolerance) break;
  }
  const Vector g = f.Gradient(w);
  out.weights = w / w.sum();
  out.loss = f.Value(out.weights);
  out.iterations = it;
  out.gap = std::max(0.0, g.dot(w) - g.minCoeff());
  return out;
}

}  // namespace

double PerformanceAverage(const Vector& performance, const Vector& weights) {
  CheckNonEmpty(performance, "performance");
  CheckFinite(performance, "performance");
  CheckSameLength(performance, "performance", weights, "weights");
  const Vector w = Share(weights, "weights");
  return w.dot(performance);
}

Vector TimeBased(const Vector& validity, const Vector& cycle) {
  CheckNonNegative(validity, "validity");
  CheckNonNegative(cycle, "cycle");
  CheckSameLength(validity, "validity", cycle, "cycle");
  Vector out(validity.size());
  for (Eigen::Index i = 0; i < validity.size(); ++i) {
    const double span = validity[i] + cycle[i];
    if (!(span > 0)) {
      throw InvalidArgument("validity[" + std::to_string(i) + "] + cycle[" + std::to_string(i) +
                            "] is 0; expected a positive period");
    }
    out[i] = 1.0 / span;
  }
  return out;
}

Vector RequestShare(const Vector& counts) { return Share(counts, "request counts"); }

Vector ResourceShare(const Vector& usage) { return Share(usage, "resource usage"); }

Vector Fuse(const Vector& y1, const Vector& y2, double alpha) {
  if (!(alpha >= 0 && alpha <= 1)) {
    throw InvalidArgument("alpha is " + Num(alpha) + "; expected a value in [0, 1]");
  }
  if (y1.size() != y2.size()) {
    throw InvalidArgument("y1 has " + std::to_string(y1.size()) + " values but y2 has " +
                          std::to_string(y2.size()) + "; expected the same shape");
  }
  CheckFinite(y1, "y1");
  CheckFinite(y2, "y2");
  return alpha * y1 + (1 - alpha) * y2;
}

Vector Normalize(const Vector& weights) { return Share(weights, "weights"); }

Vector Softmax(const Vector& scores, double temperature) {
  CheckNonEmpty(scores, "scores");
  CheckFinite(scores, "scores");
  if (!(temperature > 0) || !std::isfinite(temperature)) {
    throw InvalidArgument("temperature is " + Num(temperature) + "; expected a finite value > 0");
  }
  const Vector z = (scores.array() - scores.maxCoeff()) / temperature;
  const Vector e = z.array().exp();
  return e / e.sum();
}

FitResult FitEnsembleWeights(const std::vector<Matrix>& predictions, const Matrix& targets,
                             Loss loss, int max_iterations, double tolerance) {
  if (predictions.empty()) throw InvalidArgument("predictions must not be empty");
  if (max_iterations < 1) throw InvalidArgument("max_iterations must be >= 1");
  const Eigen::Index k = static_cast<Eigen::Index>(predictions.size());
  const Eigen::Index n = predictions[0].rows(), c = predictions[0].cols();
  if (n == 0 || c == 0) throw InvalidArgument("predictions must not be empty");
  for (Eigen::Index m = 0; m < k; ++m) {
    const Matrix& p = predictions[m];
    if (p.rows() != n || p.cols() != c) {
      throw InvalidArgument("predictions[" + std::to_string(m) + "] is " +
                            std::to_string(p.rows()) + "x" + std::to_string(p.cols()) +
                            "; expected " + std::to_string(n) + "x" + std::to_string(c) +
                            " like predictions[0]");
    }
    if (!p.allFinite()) {
      throw InvalidArgument("predictions[" + std::to_string(m) + "] holds NaN or infinity");
    }
  }
  if (!targets.allFinite()) throw InvalidArgument("targets hold NaN or infinity");
  FitResult out;
  if (loss == Loss::kMse) {
    if (targets.rows() != n || targets.cols() != c) {
      throw InvalidArgument("targets is " + std::to_string(targets.rows()) + "x" +
                            std::to_string(targets.cols()) + "; expected " + std::to_string(n) +
                            "x" + std::to_string(c) + " like each prediction");
    }
    const Eigen::Index total = n * c;
    Matrix x(total, k);
    for (Eigen::Index m = 0; m < k; ++m) {
      x.col(m) = Eigen::Map<const Vector>(predictions[m].data(), total);
    }
    const Eigen::Map<const Vector> y(targets.data(), total);
    MseObjective f;
    f.gram = x.transpose() * x / double(total);
    f.cross = x.transpose() * y / double(total);
    f.y2 = y.squaredNorm() / double(total);
    out = Minimise(f, k, max_iterations, tolerance);
    out.member_loss.resize(k);
    for (Eigen::Index m = 0; m < k; ++m) {
      out.member_loss[m] = (x.col(m) - y).squaredNorm() / double(total);
    }
    return out;
  }
  if (targets.rows() != n || targets.cols() != 1) {
    throw InvalidArgument("targets is " + std::to_string(targets.rows()) + "x" +
                          std::to_string(targets.cols()) + "; expected " + std::to_string(n) +
                          " class labels");
  }
  LogLossObjective f;
  f.a.resize(n, k);
  for (Eigen::Index i = 0; i < n; ++i) {
    const double label = targets(i, 0);
    const double classes = c == 1 ? 2 : double(c);
    if (label != std::floor(label) || label < 0 || label >= classes) {
      throw InvalidArgument("targets[" + std::to_string(i) + "] is " + Num(label) +
                            "; expected a class index in [0, " + Num(classes - 1) + "]");
    }
    for (Eigen::Index m = 0; m < k; ++m) {
      const Matrix& p = predictions[m];
      for (Eigen::Index j = 0; j < c; ++j) {
        if (p(i, j) < 0 || p(i, j) > 1) {
          throw InvalidArgument("predictions[" + std::to_string(m) + "][" + std::to_string(i) +
                                "] holds " + Num(p(i, j)) +
                                "; expected probabilities in [0, 1] for logloss");
        }
      }
      const double q =
          c == 1 ? (label == 1 ? p(i, 0) : 1 - p(i, 0)) : p(i, static_cast<Eigen::Index>(label));
      f.a(i, m) = std::clamp(q, 1e-15, 1.0);
    }
  }
  out = Minimise(f, k, max_iterations, tolerance);
  out.member_loss.resize(k);
  for (Eigen::Index m = 0; m < k; ++m) out.member_loss[m] = -f.a.col(m).array().log().mean();
  return out;
}

Allocation Allocate(const Matrix& demands, const Vector& capacity, const Vector& value,
                    const std::optional<Vector>& min_share, const std::optional<Vector>& max_share,
                    const std::vector<std::string>& resource_names) {
  const Eigen::Index n = demands.rows(), m = demands.cols();
  if (n == 0) throw InvalidArgument("demands must have one row per version; got none");
  if (m == 0) throw InvalidArgument("demands must have one column per resource; got none");
  if (capacity.size() != m) {
    throw InvalidArgument("capacity has " + std::to_string(capacity.size()) + " values but " +
                          "demands has " + std::to_string(m) + " resources");
  }
  if (value.size() != n) {
    throw InvalidArgument("value has " + std::to_string(value.size()) + " values but demands has " +
                          std::to_string(n) + " versions");
  }
  if (!resource_names.empty() && static_cast<Eigen::Index>(resource_names.size()) != m) {
    throw InvalidArgument("resource_names has " + std::to_string(resource_names.size()) +
                          " names but demands has " + std::to_string(m) + " resources");
  }
  if (!demands.allFinite()) throw InvalidArgument("demands hold NaN or infinity");
  if ((demands.array() < 0).any()) throw InvalidArgument("demands must be >= 0");
  CheckNonNegative(capacity, "capacity");
  CheckFinite(value, "value");
  const Vector lo = min_share.value_or(Vector::Zero(n));
  const Vector hi = max_share.value_or(Vector::Ones(n));
  CheckSameLength(value, "value", lo, "min_share");
  CheckSameLength(value, "value", hi, "max_share");
  CheckNonNegative(lo, "min_share");
  CheckNonNegative(hi, "max_share");
  auto resource = [&](Eigen::Index j) {
    return resource_names.empty() ? "resource " + std::to_string(j)
                                  : "resource '" + resource_names[j] + "'";
  };
  for (Eigen::Index i = 0; i < n; ++i) {
    if (lo[i] > hi[i]) {
      throw InvalidArgument("version " + std::to_string(i) + ": min_share " + Num(lo[i]) +
                            " is above max_share " + Num(hi[i]) + "; the bounds cannot both hold");
    }
  }
  // With demands >= 0 the least use of a resource is at the minimum shares: if that overflows a
  // capacity, that constraint is the one that cannot hold.
  for (Eigen::Index j = 0; j < m; ++j) {
    const double need = demands.col(j).dot(lo);
    if (need > capacity[j] * (1 + 1e-12) + 1e-12) {
      throw InvalidArgument("infeasible: " + resource(j) + " has capacity " + Num(capacity[j]) +
                            " but the minimum shares already need " + Num(need));
    }
  }

  static std::mutex glpk_mu;  // GLPK's environment is per thread, but keep calls serial
  std::lock_guard<std::mutex> lock(glpk_mu);
  glp_prob* lp = glp_create_prob();
  struct Free {
    glp_prob* p;
    ~Free() {
      glp_delete_prob(p);
      glp_free_env();
    }
  } guard{lp};
  glp_set_obj_dir(lp, GLP_MAX);
  glp_add_rows(lp, static_cast<int>(m));
  for (Eigen::Index j = 0; j < m; ++j) {
    glp_set_row_bnds(lp, static_cast<int>(j + 1), GLP_UP, 0.0, capacity[j]);
  }
  glp_add_cols(lp, static_cast<int>(n));
  for (Eigen::Index i = 0; i < n; ++i) {
    const int col = static_cast<int>(i + 1);
    glp_set_col_bnds(lp, col, lo[i] == hi[i] ? GLP_FX : GLP_DB, lo[i], hi[i]);
    glp_set_obj_coef(lp, col, value[i]);
  }
  std::vector<int> ia{0}, ja{0};
  std::vector<double> ar{0};
  for (Eigen::Index j = 0; j < m; ++j) {
    for (Eigen::Index i = 0; i < n; ++i) {
      if (demands(i, j) == 0) continue;
      ia.push_back(static_cast<int>(j + 1));
      ja.push_back(static_cast<int>(i + 1));
      ar.push_back(demands(i, j));
    }
  }
  glp_load_matrix(lp, static_cast<int>(ar.size() - 1), ia.data(), ja.data(), ar.data());
  glp_smcp parm;
  glp_init_smcp(&parm);
  parm.msg_lev = GLP_MSG_OFF;
  parm.presolve = GLP_ON;
  const int rc = glp_simplex(lp, &parm);
  if (rc == GLP_ENOPFS) throw InvalidArgument("infeasible: no shares satisfy every constraint");
  if (rc != 0) throw Error("GLPK's simplex failed with code " + std::to_string(rc));
  const int status = glp_get_status(lp);
  if (status == GLP_NOFEAS || status == GLP_INFEAS) {
    throw InvalidArgument("infeasible: no shares satisfy every constraint");
  }
  if (status != GLP_OPT) {
    throw Error("GLPK found no optimum (status " + std::to_string(status) + ")");
  }
  Allocation out;
  out.shares.resize(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    out.shares[i] = std::clamp(glp_get_col_prim(lp, static_cast<int>(i + 1)), lo[i], hi[i]);
  }
  out.objective = value.dot(out.shares);
  out.usage = demands.transpose() * out.shares;
  for (Eigen::Index j = 0; j < m; ++j) {
    out.binding.push_back(out.usage[j] >= capacity[j] - 1e-9 * std::max(1.0, capacity[j]));
  }
  return out;
}

}  // namespace lepton::weights
