"""The engine: several versions of a model loaded side by side, routed by a policy, run in
parallel on oneTBB arenas with per-version CPU budgets, batched, and hot-swapped."""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import _core
from .logs import _start_log_bridge
from .errors import InvalidArgument, NotFound
from .policies import _Policy
from .registry import ModelVersion, Registry

Inputs = Union[
    torch.Tensor, np.ndarray, Sequence[str], Sequence[Union[torch.Tensor, np.ndarray, Sequence[str]]]
]


class Fixed(_Policy):
    """Every request goes to one version: ``version``, or the deployment's primary when omitted
    (the followed alias's target, or the first version deployed). A version pinned in the request
    overrides it."""

    def __init__(self, version: Optional[str] = None):
        self._build({"type": "fixed", "version": version})


class Ensemble(_Policy):
    """Every listed version answers each request, in parallel, and the outputs are combined.

    ``weights`` is a mapping ``{version: weight}``, or a sequence aligned with ``versions`` (or,
    without ``versions``, with the deployment's versions in order); without weights the members
    weigh the same. ``combine`` is ``"auto"`` (the default)
    (weighted mean of floating outputs, weighted vote over integer class labels), ``"mean"``,
    ``"vote"`` (on floating outputs: a vote over their argmax), or a callable
    ``fn(outputs, weights) -> tensor or list of tensors`` where ``outputs`` holds each member's
    list of output tensors and ``weights`` sums to one. ``on_error="skip"`` leaves a failing
    member out and renormalises the remaining weights; ``"fail"`` (the default) fails the request.
    ``balance`` (on by default): when the members do not divide evenly over the cores (three on two), they run
    in waves so that no core idles: one member per core while whole waves last, then the
    remaining members with their batches split by rows over the spare cores (rows must be
    independent, as dynamic batching also assumes; a member whose outputs do not follow the
    batch dimension runs whole). Requests with a timeout run each member whole
    on its own version's threads instead, so that the deadline can cut them off.
    """

    def __init__(
        self,
        weights: Union[Mapping[str, float], Sequence[float], None] = None,
        *,
        versions: Optional[Sequence[str]] = None,
        combine: Union[str, Callable[..., Any], None] = None,
        on_error: Optional[str] = None,
        balance: Optional[bool] = None,
    ):
        if isinstance(weights, Mapping):
            if versions is not None:
                raise InvalidArgument("give the versions in the weights mapping or in versions, not both")
            versions = list(weights.keys())
            weights = list(weights.values())
        if weights is not None and not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
            raise InvalidArgument(f"weights must be numbers, got {weights!r}")
        self.combiner = combine if callable(combine) else None
        self._build({
            "type": "ensemble", "versions": None if versions is None else [str(v) for v in versions],
            "weights": None if weights is None else [float(w) for w in weights],
            "combine": "custom" if callable(combine) else combine, "on_error": on_error, "balance": balance,
        })


Policy = _Policy


# The answer to one request (defined by the extension, where predict makes it): ``output`` and
# ``outputs`` (numpy arrays when the inputs were numpy), ``version``/``versions``, ``skipped``,
# ``policy``, ``route``, ``request_id``, ``cold_start``, ``latency``, ``queue_time`` and
# ``compute_time``.
Prediction = _core.Prediction


def _strings(item: Any) -> Optional[Tuple[List[int], List[Union[str, bytes]]]]:
    """A string input's shape and elements: a list of ``str`` or ``bytes``, or a numpy array of
    them (dtype ``str``, ``bytes`` or ``object``); None for anything else."""
    if isinstance(item, np.ndarray):
        if item.dtype.kind not in "USO":
            return None
        values = item.reshape(-1).tolist()
        shape = list(item.shape)
    elif isinstance(item, (list, tuple)) and item and all(isinstance(v, (str, bytes)) for v in item):
        values, shape = list(item), [len(item)]
    else:
        return None
    for v in values:
        if not isinstance(v, (str, bytes)):
            raise InvalidArgument(f"a string input holds {type(v).__name__}; expected str or bytes")
    return shape, values


def _to_inputs(x: Inputs) -> Tuple[List[torch.Tensor], bool, Dict[int, Any]]:
    """Tensors for the core (numpy arrays are wrapped without copying), whether to answer numpy,
    and the string inputs by position (a list of ``str`` or a numpy array of strings)."""
    if type(x) is torch.Tensor:  # the common case, kept cheap
        return [x], False, {}
    single = _strings(x)
    items = [x] if single is not None else list(x) if isinstance(x, (list, tuple)) else [x]
    if not items:
        raise InvalidArgument("no inputs given")
    tensors, numpy_in, strings = [], False, {}
    for i, item in enumerate(items):
        if isinstance(item, torch.Tensor):
            tensors.append(item)
            continue
        text = _strings(item)
        if text is not None:
            numpy_in = numpy_in or isinstance(item, np.ndarray)
            strings[i] = text
            tensors.append(_PLACEHOLDER)
        elif isinstance(item, np.ndarray):
            numpy_in = True
            try:
                tensors.append(torch.from_numpy(item))
            except TypeError as e:
                raise InvalidArgument(f"input {i}: numpy dtype {item.dtype} has no torch equivalent") from e
            except ValueError as e:  # negative strides
                raise InvalidArgument(f"input {i}: {e}; pass np.ascontiguousarray(x)") from e
        else:
            raise InvalidArgument(
                f"input {i} is {type(item).__name__}; expected a torch.Tensor, a numpy.ndarray or a list of str"
            )
    return tensors, numpy_in, strings


# Stands in the tensor list where a string input goes (the core reads it from `strings`).
_PLACEHOLDER = torch.empty(0)


def _threads(threads: Optional[int]) -> int:
    if threads is None:
        return 0
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise InvalidArgument(f"threads must be a positive int, got {threads!r}")
    return threads


def _example(example_inputs: Any) -> List[torch.Tensor]:
    if example_inputs is None:
        return []
    tensors, _, strings = _to_inputs(example_inputs)
    if strings:
        raise InvalidArgument("example_inputs hold tensors only; give string inputs in the signature")
    return tensors


class Remote:
    """A version served anywhere that speaks the Open Inference Protocol v2 over HTTP (another
    ``lepton serve``, a pod, Triton, KServe), as a member of a deployment:
    ``Deployment(registry, "m", ["v1", Remote("http://host:8000", model="m", version="v3")])``.
    Every policy routes to it like to a local version (canaries, A/B tests, shadows, ensembles,
    whose members are asked in parallel).

    ``name`` is its label in the deployment (default: ``version``, else ``model``). Requests
    reuse keep-alive connections and carry their deadline (``timeout`` seconds for those without
    one); a request that never reached the endpoint is tried again up to ``retries`` times; after
    ``eject_after`` failures in a row the endpoint is ejected for ``eject_for`` seconds, and its
    requests fail at once with ``lepton.Unavailable``, which a canary's guardrails count against
    it. ``headers`` go with every request (``{"Authorization": "Bearer ..."}``); ``binary=False``
    sends tensors as JSON lists, for endpoints without the binary tensor data extension.
    """

    def __init__(self, url: str, *, model: str, version: Optional[str] = None, name: Optional[str] = None,
                 headers: Optional[Mapping[str, str]] = None, timeout: Optional[float] = None,
                 connect_timeout: Optional[float] = None, retries: Optional[int] = None,
                 eject_after: Optional[int] = None, eject_for: Optional[float] = None,
                 max_connections: Optional[int] = None, binary: Optional[bool] = None):
        self.name = name or version or model
        self.spec = {k: v for k, v in {
            "url": url, "model": model, "version": version,
            "headers": None if headers is None else dict(headers), "timeout": timeout,
            "connect_timeout": connect_timeout, "retries": retries, "eject_after": eject_after,
            "eject_for": eject_for, "max_connections": max_connections, "binary": binary,
        }.items() if v is not None}

    def __repr__(self) -> str:
        return f"Remote({self.spec['url']!r}, model={self.spec['model']!r}, name={self.name!r})"


class MemoryBudget:
    """Memory that loaded versions share, in bytes or a size such as ``"512MB"`` or ``"2GiB"``.

    Give one to several deployments (``memory_budget=budget``) to put them all under it; a
    number or a string given to one deployment is a budget of its own. Under a budget a version
    loads when a request needs it, and the least recently used version that is idle and that
    nothing needs (a pin, the policy's versions, the followed alias's target) is unloaded to make
    room; with ``eviction="lfu"`` the least frequently used instead (uses counted with a one-minute
    half-life, ties to the least recent), which keeps a skewed workload's hot versions loaded
    through bursts of rare ones. What a loaded version takes is measured: the bytes of its tensors
    (parameters, buffers and tensor attributes, each storage once).
    """

    def __init__(self, size: Union[int, str], *, eviction: Optional[str] = None):
        self._core = _core.MemoryBudget(size, eviction)

    @property
    def limit(self) -> int:
        return int(self._core.limit)

    @property
    def eviction(self) -> str:
        return str(self._core.eviction)

    def stats(self) -> Dict[str, int]:
        """``limit_bytes``, ``used_bytes`` (loaded and being loaded), ``peak_bytes``,
        ``evictions``, ``waits`` (loads that waited for a version to go idle), ``exhausted``
        (loads refused for want of room), ``versions`` (how many it covers), ``buffers_reused``
        (loads that read their artifact into a buffer an unload gave back) and
        ``buffers_kept_bytes`` (such buffers held now, waiting for the next load)."""
        return dict(self._core.stats())

    def __repr__(self) -> str:
        s = self.stats()
        return f"MemoryBudget(limit={s['limit_bytes']}, used={s['used_bytes']})"


class Deployment:
    """The live versions of one model and the policy that routes requests to them.

    ``versions`` lists labels (or ``@alias`` or ``name:label`` references); with ``alias`` the
    deployment serves what the alias points to and hot-swaps when it moves in the registry, from
    this process or another. ``threads`` is the CPU budget shared by the versions (default: every
    core); each version's share is adapted to its measured demand unless ``adaptive=False`` or the
    version has a fixed budget in ``version_threads``. Each forward runs on one intra-op thread
    by default (``intra_op_threads``): versions run side by side instead of fighting over one
    process-wide pool. ``max_batch_size`` > 1 enables dynamic batching, waiting up to
    ``max_queue_delay_ms`` for a batch to fill; more than ``max_queue`` waiting requests per
    version are refused with ``Overloaded``. ``priorities`` gives versions a default request
    priority (higher is served first and refused last).

    The options become the deployment's JSON specification (``options``), which the C++ core
    reads with its defaults: 1 intra-op thread, no batching (``max_batch_size`` 1, no delay), a
    queue of 1,024, adaptive budgets of at least ``min_threads`` 1, 30 s for a version to drain
    (``drain_timeout``), and an alias polled every 0.2 s (``alias_poll_interval``). A version holds
    threads only while it has queued work: its executors leave after ``idle_thread_timeout``
    seconds (2) without any, so a deployment over many versions does not hold a thread for each.

    ``versions="all"`` serves every version of the model, including versions registered later;
    the newest is the primary. With ``memory_budget`` (bytes, a size such as ``"512MB"``, or a
    shared ``MemoryBudget``) versions load on demand: a request for a version that is not loaded
    waits for its load (one load however many wait, bounded by the request's ``timeout``), and
    the least recently used idle version is unloaded when a load needs room (``eviction="lfu"``:
    the least frequently used; see ``MemoryBudget``). What the policy
    routes to, the followed alias's target and the versions in ``pin`` stay loaded; a change
    that would need more than the budget holds is refused with ``InvalidArgument``.

    A policy that keeps state (``Canary``, ``ABTest``, ``Bandit``) is shared with every process
    that serves the model with the same policy from the same registry when ``share_policies``
    (default: when the registry is on PostgreSQL): one of them, the leader, decides on everyone's
    outcomes and rewards, and the others route by the state it stores. ``replica`` names this
    process among them (default: ``$LEPTON_REPLICA``, else host:pid); ``status()["policy_sync"]``
    says its role.
    """

    def __init__(
        self,
        registry: Registry,
        name: str,
        versions: Union[None, str, Sequence[Union[str, ModelVersion, "Remote"]]] = None,
        *,
        alias: Optional[str] = None,
        memory_budget: Union[None, int, str, MemoryBudget] = None,
        eviction: Optional[str] = None,
        pin: Optional[Sequence[str]] = None,
        load_threads: Optional[int] = None,
        policy: Optional[Policy] = None,
        max_batch_size: Optional[int] = None,
        max_queue_delay_ms: Optional[float] = None,
        max_queue: Optional[int] = None,
        threads: Optional[int] = None,
        intra_op_threads: Optional[int] = None,
        adaptive: Optional[bool] = None,
        version_threads: Optional[Mapping[str, int]] = None,
        priorities: Optional[Mapping[str, int]] = None,
        min_threads: Optional[int] = None,
        drain_timeout: Optional[float] = None,
        alias_poll_interval: Optional[float] = None,
        idle_thread_timeout: Optional[float] = None,
        share_policies: Optional[bool] = None,
        replica: Optional[str] = None,
        placement: Union[None, str, Mapping[str, str]] = None,
        resources: Optional[Mapping[str, Mapping[str, Any]]] = None,
        worker: Optional[Mapping[str, Any]] = None,
        example_inputs: Any = None,
    ):
        if not isinstance(registry, Registry):
            raise InvalidArgument(f"registry must be a lepton.Registry, not {type(registry).__name__}")
        if (versions is None) == (alias is None):
            raise InvalidArgument("give either versions=[...] or alias=...")
        every = isinstance(versions, str) and versions == "all"
        if isinstance(versions, str) and not every:
            raise InvalidArgument(f'versions must be a list of versions or "all", not {versions!r}')
        listed = [] if every else list(versions or [])
        remotes = {v.name: v.spec for v in listed if isinstance(v, Remote)}
        if len(remotes) != sum(isinstance(v, Remote) for v in listed):
            raise InvalidArgument("two remote versions have the same name; give each its own name=")
        specs = [v.name if isinstance(v, Remote) else v.version if isinstance(v, ModelVersion) else v
                 for v in listed]
        shared = memory_budget._core if isinstance(memory_budget, MemoryBudget) else None
        own_budget = None if shared is not None else memory_budget
        if isinstance(own_budget, bool) or not (own_budget is None or isinstance(own_budget, (int, str))):
            raise InvalidArgument("memory_budget must be a number of bytes, a size such as '512MB' or a MemoryBudget")
        _start_log_bridge()
        self.options = {k: v for k, v in {
            "threads": None if threads is None else _threads(threads),
            "intra_op_threads": intra_op_threads, "max_batch_size": max_batch_size,
            "max_queue_delay_ms": max_queue_delay_ms, "max_queue": max_queue,
            "version_threads": None if version_threads is None else dict(version_threads),
            "priorities": None if priorities is None else dict(priorities), "adaptive": adaptive,
            "min_threads": min_threads, "drain_timeout": drain_timeout, "alias_poll_interval": alias_poll_interval,
            "idle_thread_timeout": idle_thread_timeout, "share_policies": share_policies, "replica": replica,
            "all_versions": True if every else None, "memory_budget": own_budget, "eviction": eviction,
            "pin": None if pin is None else [str(v) for v in pin], "load_threads": load_threads,
            "placement": placement if placement is None or isinstance(placement, str) else dict(placement),
            "resources": None if resources is None else {k: dict(v) for k, v in resources.items()},
            "worker": None if worker is None else dict(worker),
            "remotes": remotes or None,
        }.items() if v is not None}
        self._core = _core.Deployment(registry._core, name, specs, alias, json.dumps(self.options),
                                      _example(example_inputs), shared)
        self.registry = registry
        if policy is not None:
            self.set_policy(policy)

    @classmethod
    def _from_core(cls, core: "_core.Deployment") -> "Deployment":
        self = cls.__new__(cls)
        self._core = core
        self.registry = None  # type: ignore[assignment]  # made from files, not from a registry
        return self

    def predict(
        self,
        x: Inputs,
        *,
        version: Optional[str] = None,
        key: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
        priority: Optional[int] = None,
    ) -> Prediction:
        """Runs one request. ``x`` is a tensor, a numpy array (the answer is numpy too), or a list
        or tuple of them for multi-input models. ``version`` pins a version; ``key`` routes
        sticky policies; ``timeout`` (seconds) raises ``lepton.Timeout`` when passed. The GIL is
        released while the request runs."""
        if (
            type(x) is torch.Tensor
            and version is None
            and key is None
            and headers is None
            and timeout is None
            and priority is None
        ):
            return self._core.predict_tensor(x)
        tensors, numpy_in, strings = _to_inputs(x)
        h = None if headers is None else dict(headers)
        if strings:
            return self._core.predict(tensors, version, key, h, timeout, priority, strings, numpy_in)
        return self._core.predict(tensors, version, key, h, timeout, priority, numpy=numpy_in)

    def __call__(self, x: Inputs, **kwargs: Any) -> Any:
        """The output alone: ``deployment(x)`` is ``deployment.predict(x).output``."""
        return self.predict(x, **kwargs).output

    def add(self, version: Union[str, ModelVersion], *, policy: Optional[Policy] = None) -> None:
        """Loads, verifies and warms ``version``, then makes it live (with ``policy`` if given)."""
        if policy is not None and policy.combiner is not None:
            self._core.set_combiner(policy.combiner)
        self._core.add(_label(version), None if policy is None else policy._core)

    def remove(self, version: str, *, policy: Optional[Policy] = None) -> None:
        """Takes ``version`` out of routing, then waits for its requests to finish and frees it."""
        self._core.remove(version, None if policy is None else policy._core)

    def swap(self, old: str, new: Union[str, ModelVersion]) -> None:
        """Loads and warms ``new``, switches atomically, then drains ``old``: no request is dropped."""
        self._core.swap(old, _label(new))

    def set_policy(self, policy: Policy) -> None:
        if not isinstance(policy, _Policy):
            raise InvalidArgument(
                f"policy must be a lepton policy (Fixed, Ensemble, Weighted, Canary, ...), not {type(policy).__name__}"
            )
        if policy.combiner is not None:
            self._core.set_combiner(policy.combiner)
        self._core.set_policy(policy._core)

    def pin(self, version: str) -> None:
        """Keeps ``version`` loaded whatever the memory budget needs (loading it now). Raises
        ``InvalidArgument`` when what must stay loaded would no longer fit the budget."""
        self._core.pin(version)

    def unpin(self, version: str) -> None:
        """Lets a pinned version be unloaded again when the budget needs room."""
        self._core.unpin(version)

    def refresh_versions(self) -> bool:
        """With ``versions="all"``: takes in versions registered (and lets go of versions deleted)
        since, now rather than at the next poll. Returns whether anything changed."""
        return bool(self._core.refresh_versions())

    @property
    def policy(self) -> str:
        return self._core.policy.describe()

    @property
    def versions(self) -> List[str]:
        return list(self._core.versions)

    @property
    def name(self) -> str:
        return self._core.model

    def status(self) -> Dict[str, Any]:
        """Versions with their health, CPU budget and counters; the policy; the swaps so far."""
        return json.loads(self._core.status())

    def feedback(self, request_id: Union[str, "Prediction"], reward: float, *, source: str = "",
                 version: Optional[str] = None) -> None:
        """A reward (binary or continuous) for an earlier request, for policies that learn
        (``Bandit``, ``ABTest``). Raises ``NotFound`` for an unknown or already rewarded request,
        ``InvalidArgument`` for a reward the policy cannot take. ``source`` names the sender; the
        senders are recorded in the audit entry of the automatic switch their rewards lead to.
        A request that another replica answered is taken with the ``version`` that answered it
        when the policy is shared between replicas (``share_policies``)."""
        if isinstance(request_id, Prediction) and version is None and isinstance(request_id.version, str):
            version = request_id.version
        rid = request_id.request_id if isinstance(request_id, Prediction) else request_id
        try:
            value = float(reward)
        except (TypeError, ValueError):
            raise InvalidArgument(f"reward must be a number, got {reward!r}") from None
        self._core.feedback(rid, value, str(source), version)

    def metrics(self) -> Dict[str, Any]:
        """Request metrics as plain dicts: ``series`` (one per version, alias and policy: requests,
        successes, failures by reason, and queue / compute / total latency and batch-size
        histograms with p50, p90 and p99) and ``versions`` (health, CPU budget, in-flight and
        queued requests, weight memory, anomaly flag)."""
        return json.loads(self._core.metrics())

    def metrics_frame(self) -> Any:
        """The metrics series as a pandas DataFrame, one row per version, alias and policy, with
        latency quantiles in milliseconds."""
        return metrics_frame(self.metrics())

    def prometheus(self) -> str:
        """This deployment's metrics in the Prometheus text exposition format."""
        return self._core.prometheus()

    def shadow_report(self) -> List[Dict[str, Any]]:
        """Per (primary, mirror) pair: requests compared, failed and dropped, max and mean
        absolute difference, argmax agreement and KL divergence (for probability outputs)."""
        return json.loads(self._core.shadows())

    def events(self) -> List[Dict[str, Any]]:
        """The automatic switches applied so far (promotions, rollbacks, schedule switches),
        with their reasons, evidence and what happened to the alias."""
        return json.loads(self._core.events())

    def policy_report(self) -> Dict[str, Any]:
        """What the current policy knows now (a canary's phase and evidence, a bandit's counts,
        an A/B test's confidence)."""
        return json.loads(self._core.policy.report())

    def tick(self) -> None:
        """Runs the policy's controller now (it also runs on its own every few milliseconds)."""
        self._core.tick_policy()

    def close(self) -> None:
        """Drains every version; later requests raise ``lepton.Unavailable``."""
        self._core.close()

    def __enter__(self) -> "Deployment":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Deployment({self.name!r}, versions={self.versions!r}, policy={self.policy})"


def _label(version: Union[str, ModelVersion]) -> str:
    return version.version if isinstance(version, ModelVersion) else version


class LeptonAI:
    """A weighted ensemble straight from TorchScript files, without a registry.

    ``LeptonAI(["a.pt", "b.pt", "c.pt"], [0.5, 0.3, 0.2]).predict(x)`` runs the three models in
    parallel and returns the weighted mean of their outputs.
    """

    def __init__(
        self,
        model_paths: Sequence[Union[str, "os.PathLike[str]"]],
        weights: Optional[Sequence[float]] = None,
        *,
        threads: Optional[int] = None,
        combine: Union[str, Callable[..., Any]] = "auto",
    ):
        paths = [os.fspath(p) for p in model_paths]
        if not paths:
            raise InvalidArgument("LeptonAI needs at least one model path")
        for p in paths:
            if not os.path.isfile(p):
                raise NotFound(f"model file '{p}' does not exist")
        labels = [f"m{i}" for i in range(len(paths))]
        options = {} if threads is None else {"threads": _threads(threads)}
        core = _core.Deployment("lepton-ai", list(zip(labels, paths)), json.dumps(options))
        self._deployment = Deployment._from_core(core)
        self._deployment.set_policy(
            Ensemble(list(weights) if weights is not None else [], versions=labels, combine=combine)
        )

    def predict(self, x: Inputs) -> Any:
        """The combined output."""
        return self._deployment.predict(x).output

    @property
    def deployment(self) -> Deployment:
        return self._deployment

    def close(self) -> None:
        self._deployment.close()


def metrics_frame(metrics: Dict[str, Any]) -> Any:
    """A DataFrame of ``Deployment.metrics()``'s series (pandas is imported on first use)."""
    import pandas as pd

    rows = []
    for x in metrics["series"]:
        row = {k: x[k] for k in ("model", "version", "alias", "policy", "requests", "succeeded", "failed")}
        row["error_rate"] = x["failed"] / x["requests"] if x["requests"] else None
        for name, h in (("total", x["total_s"]), ("queue", x["queue_s"]), ("compute", x["compute_s"])):
            for q in ("p50", "p90", "p99"):
                row[f"{name}_{q}_ms"] = None if h[q] is None else h[q] * 1e3
        row["mean_batch_rows"] = x["batch_rows"]["mean"]
        for reason in _core.failure_reasons():
            row[f"failed_{reason}"] = x["failures"].get(reason, 0)
        rows.append(row)
    return pd.DataFrame(rows)
