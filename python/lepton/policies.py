"""Traffic policies and switching controllers. Each wraps a C++ policy; a deployment runs it on
every request (``Deployment(..., policy=...)`` or ``Deployment.set_policy``)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import _core
from .errors import InvalidArgument


def seed(value: int) -> None:
    """Seeds every policy's random draws (weighted splits, two-choice balancing, bandits without a
    seed of their own) so that a run repeats; ``seed(0)`` seeds from the system again."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise InvalidArgument(f"seed must be an integer in [0, 2**64), got {value!r}")
    _core.seed(value)


class _Policy:
    _core: Any
    combiner = None

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

    def __init__(self, weights: Union[Mapping[str, float], Sequence[Tuple[str, float]]], *, sticky: bool = False):
        versions, values = _split(weights)
        self._core = _core.WeightedPolicy(versions, values, bool(sticky))


@dataclass(frozen=True)
class Guardrails:
    """Limits a candidate must keep against its baseline: its error rate at most
    ``max_error_rate_increase`` above the baseline's, its p99 latency at most
    ``max_latency_ratio`` times the baseline's unless within ``latency_slack`` seconds of it (on a
    CPU the scheduler alone moves a p99 by milliseconds); judged once both sides have
    ``min_requests`` requests among their last ``window``."""

    max_error_rate_increase: float = 0.02
    max_latency_ratio: float = 1.5
    min_requests: int = 50
    window: int = 1000
    latency_slack: float = 0.002

    def _to_core(self) -> "_core.Guardrails":
        return _core.Guardrails(
            float(self.max_error_rate_increase), float(self.max_latency_ratio), int(self.min_requests), int(self.window),
            float(self.latency_slack),
        )


class Canary(_Policy):
    """A ramp from ``stable`` to ``candidate``: the candidate's share goes through ``steps``
    (fractions, e.g. ``[0.01, 0.05, 0.25, 1.0]``), each lasting ``step_requests`` requests or
    ``step_seconds`` seconds (neither: 1,000 requests, as in the JSON form). A guardrail breach rolls back at once: every request goes to
    ``stable``, and ``alias`` (default: the alias the deployment follows) is moved back if it
    points at the candidate. Completing the last step promotes: ``alias`` moves to the candidate.
    Both are written to the registry's audit log with their evidence."""

    def __init__(
        self,
        stable: str,
        candidate: str,
        *,
        steps: Sequence[float] = (0.01, 0.05, 0.25, 1.0),
        step_requests: int = 0,
        step_seconds: float = 0.0,
        guardrails: Optional[Guardrails] = None,
        alias: Optional[str] = None,
        sticky: bool = False,
    ):
        g = (guardrails or Guardrails())._to_core()
        self._core = _core.CanaryPolicy(
            stable, candidate, [float(s) for s in steps], int(step_requests), float(step_seconds), g, alias, bool(sticky)
        )

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
        self._core = _core.ShadowPolicy(primary or "", list(mirrors))


class Bandit(_Policy):
    """Routes by rewards that arrive later through ``Deployment.feedback(request_id, reward)``.
    ``algorithm``: ``"thompson"`` (Beta posteriors) or ``"ucb1"``, with rewards in [0, 1], or
    ``"epsilon_greedy"`` with any finite rewards. Its counts are saved in the registry and
    restored when a bandit with the same ``name`` (default: algorithm and versions) is set on the
    same model again, after a restart too."""

    def __init__(
        self,
        versions: Sequence[str],
        *,
        algorithm: str = "thompson",
        epsilon: float = 0.1,
        seed: Optional[int] = None,
        name: str = "",
    ):
        self._core = _core.BanditPolicy(list(versions), algorithm, float(epsilon), int(seed or 0), name)


class LeastLoaded(_Policy):
    """Power of two choices: two random versions, the one with fewer outstanding requests
    answers. ``versions`` defaults to every live version."""

    def __init__(self, versions: Optional[Sequence[str]] = None):
        self._core = _core.LeastLoadedPolicy(list(versions or []))


class Balanced(_Policy):
    """Weights that follow the versions' load (the reference documents' load balancing):
    ``by="requests"``: w_i = Q_i / sum Q with Q_i the requests per second version i can complete
    (its measured service rate times its cores); ``by="resources"``: w_i = R_i / sum R with R_i
    its CPU budget. Recomputed every ``interval`` seconds."""

    def __init__(
        self, by: str = "requests", versions: Optional[Sequence[str]] = None, *, interval: float = 1.0, sticky: bool = False
    ):
        self._core = _core.BalancedPolicy(by, list(versions or []), float(interval), bool(sticky))


class ABTest(_Policy):
    """Performance-based switching: ``control`` and ``treatment`` split the traffic (``split``
    is the treatment's share) and rewards arrive through ``Deployment.feedback`` (binary or
    continuous). An always-valid sequential test (mixture SPRT) is checked after every reward, so
    looking early is safe: when its p-value falls to ``alpha`` (with ``min_samples`` rewards per
    arm) the winner takes all traffic. A winning treatment is promoted (``alias`` moves to it) if
    the ``guardrails`` hold; ``report()`` gives the confidence and the interval for the
    difference."""

    def __init__(
        self,
        control: str,
        treatment: str,
        *,
        split: float = 0.5,
        alpha: float = 0.05,
        effect: float = 0.1,
        min_samples: int = 100,
        sticky: bool = False,
        guardrails: Optional[Guardrails] = None,
        alias: Optional[str] = None,
        name: str = "",
    ):
        self._core = _core.ABTestPolicy(
            control,
            treatment,
            float(split),
            float(alpha),
            float(effect),
            int(min_samples),
            bool(sticky),
            None if guardrails is None else guardrails._to_core(),
            alias,
            name,
        )

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
    request to the largest weight, ``"split"`` splits by the normalised weights. Without cycles
    the newest eligible version takes all. Each change of the chosen version is an audited
    event, and moves ``alias`` when given."""

    def __init__(
        self,
        schedule: Sequence[Tuple[Union[float, datetime], str]],
        *,
        validity: Optional[Mapping[str, float]] = None,
        cycle: Optional[Mapping[str, float]] = None,
        mode: str = "switch",
        alias: Optional[str] = None,
    ):
        validity = dict(validity or {})
        cycle = dict(cycle or {})
        entries = []
        for start, version in schedule:
            entries.append((version, _seconds(start), validity.get(version), cycle.get(version)))
        self._core = _core.TimeBasedPolicy(entries, mode, alias)

    def eligible(self, at: Union[float, datetime, None] = None) -> Dict[str, float]:
        """The versions eligible at ``at`` (default: now) and their normalised weights."""
        when = datetime.now().timestamp() if at is None else _seconds(at)
        return dict(self._core.eligible(when))
