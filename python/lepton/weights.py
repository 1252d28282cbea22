"""Weighting math (C++ on Eigen, GLPK for the allocation LP): pure functions over vectors.

Bad input (length mismatch, negative, NaN, all zero, alpha outside [0, 1]) raises
``lepton.InvalidArgument`` naming it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import numpy as np

from . import _core
from .errors import InvalidArgument

_w = _core.weights

__all__ = [
    "performance_average",
    "time_based",
    "request_share",
    "resource_share",
    "fuse",
    "normalize",
    "softmax",
    "fit_ensemble_weights",
    "EnsembleFit",
    "allocate",
    "Allocation",
]


def _vector(x: Any, name: str) -> np.ndarray:
    try:
        a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{name} must be numbers, got {x!r}") from None
    if a.ndim != 1:
        raise InvalidArgument(f"{name} must be one-dimensional (one value per version), got shape {a.shape}")
    return a


def performance_average(performance: Sequence[float], weights: Sequence[float]) -> float:
    """sum_i w_i P_i / sum_i w_i."""
    return float(_w.performance_average(_vector(performance, "performance"), _vector(weights, "weights")))


def time_based(validity: Sequence[float], cycle: Sequence[float]) -> np.ndarray:
    """w_i = 1 / (T_i + C_i), not normalised."""
    return _w.time_based(_vector(validity, "validity"), _vector(cycle, "cycle"))


def request_share(counts: Sequence[float]) -> np.ndarray:
    """Q_i / sum_j Q_j."""
    return _w.request_share(_vector(counts, "counts"))


def resource_share(usage: Sequence[float]) -> np.ndarray:
    """R_i / sum_j R_j."""
    return _w.resource_share(_vector(usage, "usage"))


def normalize(weights: Sequence[float]) -> np.ndarray:
    """w / sum(w)."""
    return _w.normalize(_vector(weights, "weights"))


def softmax(scores: Sequence[float], temperature: float = 1.0) -> np.ndarray:
    """exp(s_i / T) / sum_j exp(s_j / T), computed stably."""
    return _w.softmax(_vector(scores, "scores"), float(temperature))


def fuse(y1: Any, y2: Any, alpha: float) -> Any:
    """alpha * y1 + (1 - alpha) * y2, element-wise, over arrays or tensors of one shape (a torch
    tensor in gives a tensor out)."""
    is_torch = hasattr(y1, "detach") or hasattr(y2, "detach")
    a = np.asarray(y1.detach().cpu().numpy() if hasattr(y1, "detach") else y1, dtype=np.float64)
    b = np.asarray(y2.detach().cpu().numpy() if hasattr(y2, "detach") else y2, dtype=np.float64)
    if a.shape != b.shape:
        raise InvalidArgument(f"y1 has shape {a.shape} but y2 has shape {b.shape}; expected the same shape")
    out = _w.fuse(a.reshape(-1), b.reshape(-1), float(alpha)).reshape(a.shape)
    if is_torch:
        import torch

        like = y1 if hasattr(y1, "detach") else y2
        dtype = like.dtype if like.is_floating_point() else torch.float64
        return torch.from_numpy(out).to(dtype)
    return out


@dataclass(frozen=True)
class EnsembleFit:
    weights: np.ndarray  # on the simplex
    loss: float  # the weighted ensemble's loss
    member_loss: np.ndarray  # each member's own loss
    iterations: int
    gap: float  # Frank-Wolfe duality gap: 0 at the optimum


def _matrix(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    if a.ndim != 2:
        a = a.reshape(a.shape[0], -1)
    return a


def fit_ensemble_weights(
    predictions: Sequence[Any], targets: Any, loss: str = "mse", *, max_iterations: int = 5000, tolerance: float = 1e-10
) -> EnsembleFit:
    """The weights on the simplex (>= 0, summing to 1) that minimise the loss of the weighted
    ensemble on validation data. ``predictions``: one array per member. ``loss="mse"``: each
    prediction has the targets' shape. ``loss="logloss"``: each prediction holds class
    probabilities, shape (n, classes) or (n,) for the positive class; ``targets`` are class
    indices (0/1 for the (n,) form)."""
    if len(predictions) == 0:
        raise InvalidArgument("predictions must not be empty")
    preds = [_matrix(p, f"predictions[{i}]") for i, p in enumerate(predictions)]
    t = _matrix(targets, "targets")
    r = _w.fit_ensemble_weights(preds, t, loss, int(max_iterations), float(tolerance))
    return EnsembleFit(r["weights"], float(r["loss"]), r["member_loss"], int(r["iterations"]), float(r["gap"]))


@dataclass(frozen=True)
class Allocation:
    shares: np.ndarray  # x_i
    objective: float  # sum_i value_i x_i
    usage: np.ndarray  # sum_i demand_ij x_i per resource
    binding: List[bool]  # resource j used to capacity


def allocate(
    demands: Any,
    capacity: Sequence[float],
    value: Sequence[float],
    min_share: Optional[Sequence[float]] = None,
    max_share: Any = 1.0,
    *,
    resource_names: Optional[Sequence[str]] = None,
) -> Allocation:
    """Shares x_i in [min_share_i, max_share_i] maximising sum_i value_i x_i subject to
    sum_i demand_ij x_i <= capacity_j for every resource j; ``demands`` is versions x resources.
    Solved with GLPK's simplex. Infeasible input raises ``InvalidArgument`` naming the constraint
    that cannot hold."""
    d = np.asarray(demands, dtype=np.float64)
    if d.ndim == 1:
        d = d.reshape(-1, 1)
    if d.ndim != 2:
        raise InvalidArgument(f"demands must be versions x resources, got shape {d.shape}")
    n = d.shape[0]
    lo = None if min_share is None else _broadcast(min_share, n, "min_share")
    hi = None if max_share is None else _broadcast(max_share, n, "max_share")
    r = _w.allocate(d, _vector(capacity, "capacity"), _vector(value, "value"), lo, hi, list(resource_names or []))
    return Allocation(r["shares"], float(r["objective"]), r["usage"], list(r["binding"]))


def _broadcast(x: Any, n: int, name: str) -> np.ndarray:
    if np.isscalar(x):
        return np.full(n, float(x))  # type: ignore[arg-type]  # a numpy scalar
    return _vector(x, name)
