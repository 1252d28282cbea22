"""Traffic policies and switching controllers. Each writes its JSON specification (``spec``, the
form ``PUT /v2/lepton/models/{m}/policy`` and ``lepton serve``'s config take) and the C++ core
builds the policy from it, with its defaults; a deployment runs it on every request
(``Deployment(..., policy=...)`` or ``Deployment.set_policy``)."""
from __future__ import annotations

import json
import math
import warnings
from datetime import datetime
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import _core
from .errors import InvalidArgument


def seed(value: int) -> None:
    """Seeds every policy's random draws (weighted splits, two-choice balancing, bandits without a
    seed of their own) so that a run repeats; ``seed(0)`` seeds from the system again."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise InvalidArgument(f"seed must be an integer in [0, 2**64), got {value!r}")
    _core.seed(value)


def _finite(value: Any, where: str) -> Any:
    """``value`` unchanged; InvalidArgument where it holds a float JSON cannot carry."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgument(f"{where} is {'NaN' if math.isnan(value) else value}: a policy's numbers must be finite")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _finite(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _finite(v, f"{where}[{i}]")
    return value


def _renamed(new: Any, old: Any, old_name: str, new_name: str) -> Any:
    if old is None:
        return new
    warnings.warn(f"{old_name} is now {new_name}", DeprecationWarning, stacklevel=3)
    if new is not None:
        raise InvalidArgument(f"give {new_name} or {old_name}, not both")
    return old


class _Policy:
    _core: Any
    combiner: Optional[Callable[..., Any]] = None
    spec: Dict[str, Any]

    def _build(self, spec: Dict[str, Any]) -> None:
        """Builds the C++ policy from ``spec`` (fields that are None take the core's defaults)."""
        self.spec = {k: _finite(v, k) for k, v in spec.items() if v is not None}
        self._core = _core.policy_from_json(json.dumps(self.spec), self.combiner is not None)

    def report(self) -> Dict[str, Any]:
        """What the policy knows now (counts, evidence, phase), as a dict."""
        return json.loads(self._core.report())

    def select(self, versions: Sequence[str], *, key: Optional[str] = None) -> Tuple[str, str]:
        """The version this policy would route a request to among ``versions``, and why."""
        return tuple(self._core.select(list(versions), key, None))  # type: ignore[return-value]

    def __repr__(self) -> str:
        return self._core.describe()


def _split(weights: Union[Mapping[str, float], Sequence[Tuple[str, float]]]) -> Tuple[List[str], List[float]]:
    items = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
    try:
        return [str(v) for v, _ in items], [float(w) for _, w in items]
    except (TypeError, ValueError):
        raise InvalidArgument(f"weights must map versions to numbers, got {weights!r}") from None


class Weighted(_Policy):
    """An N-way split (A/B/n) by ``weights`` (``{version: weight}``, any positive scale).

    With ``sticky=True`` a request's ``key`` (``predict(x, key=user_id)``) always reaches the same
    version, across calls and restarts, by weighted rendezvous hashing: raising one version's
    share moves keys only to it, never back and never between the others. Requests without a key
    are split at random."""

    def __init__(self, weights: Union[Mapping[str, float], Sequence[Tuple[str, float]]], *, sticky: Optional[bool] = None):
        versions, values = _split(weights)
        self._build({"type": "weighted", "weights": [[v, w] for v, w in zip(versions, values)], "sticky": sticky})


class Guardrails:
    """Limits a candidate must keep against its baseline: its error rate at most
    ``max_error_rate_increase`` above the baseline's (default 0.02), its p99 latency at most
    ``max_latency_ratio`` times the baseline's (1.5) unless within ``latency_slack_s`` seconds of it
    (0.002: on a CPU the scheduler alone moves a p99 by milliseconds); judged once both sides have
    ``min_requests`` requests (50) among their last ``window`` (1000). Fields left None take
    those defaults, which live in the C++ core."""

    __slots__ = ("spec",)

    def __init__(
        self,
        max_error_rate_increase: Optional[float] = None,
        max_latency_ratio: Optional[float] = None,
        min_requests: Optional[int] = None,
        window: Optional[int] = None,
        latency_slack_s: Optional[float] = None,
        *,
        latency_slack: Optional[float] = None,
    ):
        latency_slack_s = _renamed(latency_slack_s, latency_slack, "latency_slack", "latency_slack_s")
        spec = {
            "max_error_rate_increase": max_error_rate_increase,
            "max_latency_ratio": max_latency_ratio,
            "min_requests": min_requests,
            "window": window,
            "latency_slack_s": latency_slack_s,
        }
        self.spec = {k: v for k, v in spec.items() if v is not None}

    def __repr__(self) -> str:
        return f"Guardrails({', '.join(f'{k}={v!r}' for k, v in self.spec.items())})"


class Canary(_Policy):
    """A ramp from ``stable`` to ``candidate``: the candidate's share goes through ``steps``
    (fractions; default ``[0.01, 0.05, 0.25, 1.0]``), each lasting ``step_requests`` requests or
    ``step_seconds`` seconds (neither: 1,000 requests). A guardrail breach rolls back at once: every request goes to
    ``stable``, and ``alias`` (default: the alias the deployment follows) is moved back if it
    points at the candidate. Completing the last step promotes: ``alias`` moves to the candidate.
    Both are written to the registry's audit log with their evidence. Where it is (phase, step,
    requests in the step) is saved in the registry: a canary with the same ``name`` (default: the
    two versions) set on the same model again resumes there, after a restart too, and replicas
    that share a registry ramp it as one."""

    def __init__(
        self,
        stable: str,
        candidate: str,
        *,
        steps: Optional[Sequence[float]] = None,
        step_requests: Optional[int] = None,
        step_seconds: Optional[float] = None,
        guardrails: Optional[Guardrails] = None,
        alias: Optional[str] = None,
        sticky: Optional[bool] = None,
        name: Optional[str] = None,
    ):
        self._build({
            "type": "canary", "stable": stable, "candidate": candidate,
            "steps": None if steps is None else list(steps), "step_requests": step_requests,
            "step_seconds": step_seconds, "guardrails": None if guardrails is None else guardrails.spec,
            "alias": alias, "sticky": sticky, "name": name,
        })

    @property
    def phase(self) -> str:
        """``"ramping"``, ``"promoted"`` or ``"rolled_back"``."""
        return self._core.phase


class Shadow(_Policy):
    """``primary`` (default: the deployment's primary) answers every request; each of
    ``mirrors`` gets a copy off the request path. Their outputs are compared with the primary's
    (``Deployment.shadow_report()``); a mirror never delays or changes the answer."""

    def __init__(self, primary: Optional[str] = None, mirrors: Sequence[str] = ()):
        if isinstance(mirrors, str):
            mirrors = [mirrors]
        self._build({"type": "shadow", "primary": primary, "mirrors": list(mirrors)})


class Bandit(_Policy):
    """Routes by rewards that arrive later through ``Deployment.feedback(request_id, reward)``.
    ``algorithm``: ``"thompson"`` (Beta posteriors) or ``"ucb1"``, with rewards in [0, 1], or
    ``"epsilon_greedy"`` (``epsilon`` 0.1 by default) with any finite rewards. Its counts are saved in the registry and
    restored when a bandit with the same ``name`` (default: algorithm and versions) is set on the
    same model again, after a restart too."""

    def __init__(
        self,
        versions: Sequence[str],
        *,
        algorithm: Optional[str] = None,
        epsilon: Optional[float] = None,
        seed: Optional[int] = None,
        name: Optional[str] = None,
    ):
        self._build({"type": "bandit", "versions": list(versions), "algorithm": algorithm, "epsilon": epsilon,
                     "seed": seed, "name": name})


class LeastLoaded(_Policy):
    """Power of two choices: two random versions, the one with fewer outstanding requests
    answers. ``versions`` defaults to every live version."""

    def __init__(self, versions: Optional[Sequence[str]] = None):
        self._build({"type": "least_loaded", "versions": None if versions is None else list(versions)})


class Balanced(_Policy):
    """Weights that follow the versions' load (the reference documents' load balancing):
    ``by="requests"``: w_i = Q_i / sum Q with Q_i the requests per second version i can complete
    (its measured service rate times its cores); ``by="resources"``: w_i = R_i / sum R with R_i
    its CPU budget. ``by`` defaults to ``"requests"``. Recomputed every ``interval_s`` seconds
    (default 1)."""

    def __init__(
        self,
        by: Optional[str] = None,
        versions: Optional[Sequence[str]] = None,
        *,
        interval_s: Optional[float] = None,
        sticky: Optional[bool] = None,
        interval: Optional[float] = None,
    ):
        interval_s = _renamed(interval_s, interval, "interval", "interval_s")
        self._build({"type": "balanced", "by": by, "versions": None if versions is None else list(versions),
                     "interval_s": interval_s, "sticky": sticky})


class ABTest(_Policy):
    """Performance-based switching: ``control`` and ``treatment`` split the traffic (``split``
    is the treatment's share, 0.5 by default) and rewards arrive through ``Deployment.feedback`` (binary or
    continuous). An always-valid sequential test (mixture SPRT) is checked after every reward, so
    looking early is safe: when its p-value falls to ``alpha`` (0.05, with ``min_samples``
    rewards per arm, 100, and ``effect`` the mixture's scale, 0.1) the winner takes all traffic. A winning treatment is promoted (``alias`` moves to it) if
    the ``guardrails`` hold; ``report()`` gives the confidence and the interval for the
    difference."""

    def __init__(
        self,
        control: str,
        treatment: str,
        *,
        split: Optional[float] = None,
        alpha: Optional[float] = None,
        effect: Optional[float] = None,
        min_samples: Optional[int] = None,
        sticky: Optional[bool] = None,
        guardrails: Optional[Guardrails] = None,
        alias: Optional[str] = None,
        name: Optional[str] = None,
    ):
        self._build({
            "type": "ab_test", "control": control, "treatment": treatment, "split": split, "alpha": alpha,
            "effect": effect, "min_samples": min_samples, "sticky": sticky,
            "guardrails": None if guardrails is None else guardrails.spec, "alias": alias, "name": name,
        })

    @property
    def winner(self) -> Optional[str]:
        return self._core.winner


def _seconds(t: Union[float, datetime]) -> float:
    return t.timestamp() if isinstance(t, datetime) else float(t)


class TimeBased(_Policy):
    """Time-based switching. ``schedule`` lists ``(start, version)`` pairs (``start``: a
    ``datetime`` or seconds since the epoch): a version is eligible from its start, until
    ``validity[version]`` seconds later when given. With ``cycle`` (the versions' update cycles,
    seconds) each eligible version weighs w_i = 1 / (T_i + C_i): ``mode="switch"`` sends every
    request to the largest weight (the default), ``"split"`` splits by the normalised weights. Without cycles
    the newest eligible version takes all. Each change of the chosen version is an audited
    event, and moves ``alias`` when given."""

    def __init__(
        self,
        schedule: Sequence[Tuple[Union[float, datetime], str]],
        *,
        validity: Optional[Mapping[str, float]] = None,
        cycle: Optional[Mapping[str, float]] = None,
        mode: Optional[str] = None,
        alias: Optional[str] = None,
    ):
        validity = dict(validity or {})
        cycle = dict(cycle or {})
        entries = [{"version": version, "start": _seconds(start), "validity": validity.get(version),
                    "cycle": cycle.get(version)} for start, version in schedule]
        self._build({"type": "time_based", "schedule": [{k: v for k, v in e.items() if v is not None} for e in entries],
                     "mode": mode, "alias": alias})

    def eligible(self, at: Union[float, datetime, None] = None) -> Dict[str, float]:
        """The versions eligible at ``at`` (default: now) and their normalised weights."""
        when = datetime.now().timestamp() if at is None else _seconds(at)
        return dict(self._core.eligible(when))
