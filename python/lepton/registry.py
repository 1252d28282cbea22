"""The model registry: durable storage of every version, with aliases, lineage and an audit log."""
from __future__ import annotations

import copy
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Union

from . import _core

if TYPE_CHECKING:
    import torch
from .errors import InvalidArgument

TensorSpec = _core.TensorSpec
Signature = _core.Signature

PathLike = Union[str, "os.PathLike[str]"]


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def default_registry_path() -> str:
    """``$LEPTON_HOME`` if set, else ``~/.lepton``."""
    return os.environ.get("LEPTON_HOME") or os.path.join(os.path.expanduser("~"), ".lepton")


class ModelVersion:
    """One registered version of a model. Read-only; change metadata with ``Registry.update``."""

    __slots__ = ("_v",)

    def __init__(self, core_version: "_core.ModelVersion"):
        self._v = core_version

    name = property(lambda self: self._v.model, doc="The model's name.")
    version = property(lambda self: self._v.version, doc="The version label, e.g. 'v1.1'.")
    seq = property(lambda self: self._v.seq, doc="1, 2, 3, ... in registration order.")
    sha256 = property(lambda self: self._v.sha256, doc="Hex sha256 of the artifact.")
    size = property(lambda self: self._v.size, doc="Artifact size in bytes.")
    format = property(lambda self: self._v.format, doc="Artifact format ('torchscript').")
    description = property(lambda self: self._v.description)
    parent = property(lambda self: self._v.parent, doc="'model:label' this derives from, or None.")
    aliases = property(lambda self: list(self._v.aliases), doc="Aliases pointing here.")
    signature = property(lambda self: self._v.signature, doc="Input/output Signature or None.")
    ref = property(lambda self: self._v.ref, doc="'model:label', a reference to exactly this.")

    @property
    def created_at(self) -> datetime:
        return _time(self._v.created_at)

    @property
    def updated_at(self) -> datetime:
        return _time(self._v.updated_at)

    @property
    def tags(self) -> Dict[str, str]:
        return dict(self._v.tags)

    @property
    def metrics(self) -> Dict[str, float]:
        return dict(self._v.metrics)

    def to_dict(self) -> Dict[str, Any]:
        sig = self.signature
        return {
            "name": self.name,
            "version": self.version,
            "seq": self.seq,
            "sha256": self.sha256,
            "size": self.size,
            "format": self.format,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "description": self.description,
            "tags": self.tags,
            "metrics": self.metrics,
            "parent": self.parent,
            "aliases": self.aliases,
            "signature": None
            if sig is None
            else {
                side: [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in specs]
                for side, specs in (("inputs", sig.inputs), ("outputs", sig.outputs))
            },
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelVersion):
            return NotImplemented
        return (self.ref, self.sha256, self._v.updated_at) == (
            other.ref,
            other.sha256,
            other._v.updated_at,
        )

    def __hash__(self) -> int:
        return hash((self.ref, self.sha256))

    def __repr__(self) -> str:
        return (
            f"ModelVersion({self.ref!r}, seq={self.seq}, sha256={self.sha256[:12]!r}, "
            f"aliases={self.aliases!r})"
        )


@dataclass(frozen=True)
class ModelInfo:
    """A model and a summary of its versions."""

    name: str
    description: str
    created_at: datetime
    version_count: int
    latest: Optional[str]
    aliases: Dict[str, str]


@dataclass(frozen=True)
class AuditEntry:
    """One change recorded in a model's history."""

    id: int
    time: datetime
    model: str
    actor: str
    action: str
    version: Optional[str]
    alias: Optional[str]
    from_version: Optional[str]
    to_version: Optional[str]
    reason: str
    details: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VerifyProblem:
    ref: str
    sha256: str
    problem: str  # "missing" or "corrupted"


@dataclass(frozen=True)
class VerifyReport:
    """What ``Registry.verify`` found: every artifact rehashed against its recorded sha256."""

    versions_checked: int
    blobs_checked: int
    problems: List[VerifyProblem]
    orphan_blobs: List[str]

    @property
    def ok(self) -> bool:
        """No artifact missing or corrupted, and none stored that no version refers to (which
        means metadata was lost: see ``lepton.recover``)."""
        return not self.problems and not self.orphan_blobs


@dataclass(frozen=True)
class GcReport:
    deleted_versions: List[str]
    blobs_removed: int
    bytes_freed: int
    dry_run: bool


ModelLike = Union[PathLike, bytes, "torch.nn.Module", "torch.jit.ScriptModule"]
Ref = Union[str, ModelVersion]


def _ref(ref: Ref) -> str:
    if isinstance(ref, ModelVersion):
        return ref.ref
    if not isinstance(ref, str):
        raise InvalidArgument(
            f"a reference must be a str ('name', 'name:LABEL' or 'name@ALIAS') or a ModelVersion, "
            f"not {type(ref).__name__}"
        )
    return ref


def _checked(values: Optional[Mapping[str, Any]], what: str) -> Mapping[str, Any]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise InvalidArgument(f"{what} must be a mapping, not {type(values).__name__}")
    return values


def _str_map(values: Optional[Mapping[str, Any]], what: str) -> Dict[str, str]:
    return {str(k): str(v) for k, v in _checked(values, what).items()}


def _float(value: Any, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{what} is {value!r}, which is not a number") from None


def _float_map(values: Optional[Mapping[str, Any]], what: str) -> Dict[str, float]:
    return {str(k): _float(v, f"{what} {k!r}") for k, v in _checked(values, what).items()}


def _private_copy(model: Any) -> Any:
    """A copy of ``model`` that scripting and tracing may run and change; the caller's is untouched."""
    try:
        return copy.deepcopy(model)
    except Exception as error:  # modules holding locks, files or C handles cannot be copied
        raise InvalidArgument(
            f"{type(model).__name__} cannot be copied ({error}); lepton scripts or traces a copy so "
            "that your model is left exactly as it was. Pass a torch.jit.ScriptModule, a "
            "TorchScript file or its bytes instead"
        ) from error


def _trace(model: Any, example_inputs: Any, accept_trace_warnings: bool) -> Any:
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, _as_tuple(example_inputs))
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    for w in caught:
        if w not in tracer:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if tracer and not accept_trace_warnings:
        said = "; ".join(sorted({str(w.message).splitlines()[0] for w in tracer}))
        raise InvalidArgument(
            f"tracing {type(model).__name__} recorded a trace that may not match the model for other "
            f"inputs: {said}. Make the model scriptable, or pass accept_trace_warnings=True if the "
            "trace is right for every input it will get"
        )
    return traced


def _serialize(model: Any, example_inputs: Any, accept_trace_warnings: bool = False) -> bytes:
    """TorchScript bytes for a module. Called with the TorchScript lock held."""
    import torch

    if isinstance(model, torch.jit.ScriptModule):
        scripted = model
    elif isinstance(model, torch.nn.Module):
        private = _private_copy(model)
        private.eval()  # served in eval mode, so traced (and scripted) as it will run
        try:
            scripted = torch.jit.script(private)
        except Exception as script_error:  # scripting failures come in many exception types
            if example_inputs is None:
                raise InvalidArgument(
                    f"{type(model).__name__} cannot be scripted ({script_error}); pass "
                    "example_inputs so it can be traced instead"
                ) from script_error
            scripted = _trace(private, example_inputs, accept_trace_warnings)
    else:
        raise InvalidArgument(
            "model must be a torch.nn.Module, a torch.jit.ScriptModule, a path to a TorchScript "
            f"file or its bytes, not {type(model).__name__}"
        )
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    return buffer.getvalue()


def _load(source: Any, map_location: Any = "cpu") -> Any:
    """A fresh module from TorchScript bytes or a path, in eval mode. Takes the TorchScript lock."""
    import torch

    with _core.TorchScriptLock():
        module = torch.jit.load(io.BytesIO(source) if isinstance(source, bytes) else source,
                                map_location=map_location)
    module.eval()
    return module


def _is_strings(x: Any) -> bool:
    """A list of ``str``: what a TorchScript model takes and returns for a string tensor."""
    return isinstance(x, list) and bool(x) and all(isinstance(v, str) for v in x)


def _as_tuple(example_inputs: Any) -> tuple:
    if _is_strings(example_inputs):  # one string input
        return (example_inputs,)
    return tuple(example_inputs) if isinstance(example_inputs, (list, tuple)) else (example_inputs,)


def infer_signature(module: Any, example_inputs: Any) -> Signature:
    """Runs ``module`` on ``example_inputs`` and records names, dtypes and shapes.

    The first dimension is recorded as dynamic (-1): it is the batch dimension. A list of ``str``
    (``List[str]`` in TorchScript) is a one-dimensional string tensor (dtype ``"string"``, the
    protocol's BYTES).
    """
    import torch

    inputs = _as_tuple(example_inputs)
    names: List[str] = []
    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is not None:
        names = [a.name for a in schema.arguments[1:]]
    if len(names) != len(inputs):
        names = [f"input_{i}" for i in range(len(inputs))]

    def spec(name: str, t: Any) -> TensorSpec:
        if _is_strings(t):
            return TensorSpec(name, "string", [-1])
        if not isinstance(t, torch.Tensor):
            raise InvalidArgument(f"{name} is {type(t).__name__}; signatures describe tensors and lists of str")
        shape = list(t.shape)
        if shape:
            shape[0] = -1
        return TensorSpec(name, str(t.dtype).replace("torch.", ""), shape)

    with torch.no_grad():
        result = module(*inputs)
    outputs = list(result) if isinstance(result, (list, tuple)) and not _is_strings(result) else [result]
    out_names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    return Signature(
        [spec(n, t) for n, t in zip(names, inputs)],
        [spec(n, t) for n, t in zip(out_names, outputs)],
    )


class Registry:
    """A registry of model versions: in a local directory, or on a PostgreSQL server.

    ``path`` is a directory (metadata in SQLite, artifacts in a content-addressed blob store beside
    it), or a URL ``postgresql://user@host:port/dbname`` (metadata in PostgreSQL, shared by every
    process and machine that opens it; artifacts in the directory ``blobs`` names, which they all
    must reach: a shared volume; else the URL's ``?blobs=/path``, else ``$LEPTON_BLOBS``). With
    ``?artifacts=database`` in the URL the artifacts live in PostgreSQL too, and ``blobs`` is only
    this machine's cache of them (default ``$LEPTON_CACHE``, else ``~/.cache/lepton``). A
    password comes from the URL, ``PGPASSWORD`` or a password file, and is never shown. Several
    processes may use one registry at once.

    References name a version: ``"name"`` (the latest), ``"name:LABEL"`` or ``"name@ALIAS"``.
    """

    def __init__(
        self, path: Optional[PathLike] = None, *, actor: Optional[str] = None, blobs: Optional[PathLike] = None
    ):
        self._path = os.fspath(path) if path is not None else default_registry_path()
        self._core = _core.Registry(self._path, actor or "", "" if blobs is None else os.fspath(blobs))

    @property
    def path(self) -> str:
        """The directory of the artifacts (and, for SQLite, of the database)."""
        return self._core.root

    @property
    def location(self) -> str:
        """What opens this registry again, from any process: its directory, or its PostgreSQL URL
        (without the password, with the artifact directory as ``?blobs=``)."""
        return self._core.location

    @property
    def actor(self) -> str:
        """The name recorded in the audit log for changes made through this object."""
        return self._core.actor

    def create_model(self, name: str, description: str = "", *, exist_ok: bool = True) -> None:
        self._core.create_model(name, description, exist_ok)

    def register(
        self,
        name: str,
        model: ModelLike,
        *,
        version: Optional[str] = None,
        example_inputs: Any = None,
        description: str = "",
        tags: Optional[Mapping[str, str]] = None,
        metrics: Optional[Mapping[str, float]] = None,
        parent: Optional[Ref] = None,
        signature: Optional[Signature] = None,
        reason: str = "",
        accept_trace_warnings: bool = False,
    ) -> ModelVersion:
        """Stores ``model`` as a new version of ``name`` and returns it.

        ``model`` is an ``nn.Module`` (scripted, or traced with ``example_inputs`` when scripting
        fails), a ``torch.jit.ScriptModule``, a path to a TorchScript file, or the bytes of one.
        Modules are scripted or traced from a copy in eval mode, so the caller's object is left
        exactly as it was. A trace that torch warns may not fit other inputs (a model that goes
        through numpy or Python numbers) is refused unless ``accept_trace_warnings``. With
        ``example_inputs`` and no ``signature``, the signature is inferred by running a copy
        loaded from the stored bytes. ``parent`` is a label of this model or a reference to any
        version. Safe to call from many threads at once.
        """
        tags_ = _str_map(tags, "tags")
        metrics_ = _float_map(metrics, "metrics")
        parent_ = None if parent is None else _ref(parent)
        if signature is not None and not isinstance(signature, Signature):
            raise InvalidArgument(f"signature must be a lepton.Signature, not {type(signature).__name__}")
        if isinstance(model, (str, os.PathLike)):
            if signature is None and example_inputs is not None:
                signature = infer_signature(_load(os.fspath(model)), example_inputs)
            return ModelVersion(
                self._core.register_file(name, os.fspath(model), version, description, tags_, metrics_, parent_,
                                         signature, reason)
            )
        if isinstance(model, (bytes, bytearray, memoryview)):
            data = bytes(model)
        else:
            # TorchScript's compiler is not thread-safe: one compilation at a time per process.
            with _core.TorchScriptLock():
                data = _serialize(model, example_inputs, accept_trace_warnings)
        if signature is None and example_inputs is not None:
            # Inferred on a copy loaded from the bytes, so the caller's module never runs.
            signature = infer_signature(_load(data), example_inputs)
        return ModelVersion(
            self._core.register_bytes(name, data, version, description, tags_, metrics_, parent_, signature, reason)
        )

    def get(self, ref: Ref) -> ModelVersion:
        """The version a reference names."""
        return ModelVersion(self._core.get(_ref(ref)))

    def versions(self, name: str) -> List[ModelVersion]:
        """Every version of ``name``, oldest first."""
        return [ModelVersion(v) for v in self._core.versions(name)]

    def models(self) -> List[ModelInfo]:
        return [
            ModelInfo(m.name, m.description, _time(m.created_at), m.version_count, m.latest, dict(m.aliases))
            for m in self._core.models()
        ]

    def aliases(self, name: str) -> Dict[str, str]:
        """Alias -> version label for model ``name``."""
        return dict(self._core.aliases(name))

    def load(self, ref: Ref, *, map_location: Any = "cpu") -> "torch.jit.ScriptModule":
        """Loads a version as a ScriptModule in eval mode (as the engine serves it), after checking
        its bytes against their sha256."""
        return _load(self._core.read_artifact(_ref(ref)), map_location)

    def read_artifact(self, ref: Ref) -> bytes:
        """The artifact's bytes, verified against the recorded sha256 (IntegrityError if not)."""
        return self._core.read_artifact(_ref(ref))

    def set_alias(
        self,
        name: str,
        alias: str,
        version: Union[str, ModelVersion],
        *,
        expected: Optional[str] = None,
        reason: str = "",
    ) -> ModelVersion:
        """Points ``alias`` at ``version`` (a label, ``@OTHER`` alias, or a reference).

        With ``expected``, the move happens only if the alias currently points at that version
        (``""``: only if the alias does not exist yet); otherwise ``Conflict`` is raised.
        """
        expected_ = None if expected is None else _ref(expected)
        return ModelVersion(self._core.set_alias(name, alias, _ref(version), expected_, reason))

    def remove_alias(self, name: str, alias: str, *, reason: str = "") -> None:
        self._core.remove_alias(name, alias, reason)

    def rollback(self, name: str, alias: str, *, reason: str = "") -> ModelVersion:
        """Moves ``alias`` back to the version it pointed at before its last move."""
        return ModelVersion(self._core.rollback(name, alias, reason))

    def history(self, name: str, *, limit: Optional[int] = None) -> List[AuditEntry]:
        """The audit log of ``name``, oldest first (the newest ``limit`` entries if given)."""
        return [
            AuditEntry(
                e.id,
                _time(e.time),
                e.model,
                e.actor,
                e.action,
                e.version,
                e.alias,
                e.from_version,
                e.to_version,
                e.reason,
                json.loads(e.details),
            )
            for e in self._core.history(name, limit or 0)
        ]

    def update(
        self,
        ref: Ref,
        *,
        tags: Optional[Mapping[str, Optional[str]]] = None,
        metrics: Optional[Mapping[str, Optional[float]]] = None,
        description: Optional[str] = None,
        reason: str = "",
    ) -> ModelVersion:
        """Merges tags and metrics (a value of None removes the key) and sets the description."""
        tags_ = {str(k): None if v is None else str(v) for k, v in _checked(tags, "tags").items()}
        metrics_ = {
            str(k): None if v is None else _float(v, f"metric {k!r}")
            for k, v in _checked(metrics, "metrics").items()
        }
        return ModelVersion(self._core.update(_ref(ref), tags_, metrics_, description, reason))

    def delete(self, ref: Ref, *, force: bool = False, reason: str = "") -> None:
        """Deletes a version; refused (Conflict) while an alias points at it unless ``force``."""
        self._core.delete(_ref(ref), bool(force), reason)

    def gc(self, keep_latest: int, *, name: Optional[str] = None, dry_run: bool = False) -> GcReport:
        """Deletes unaliased versions older than the newest ``keep_latest``, then unused blobs."""
        if not isinstance(keep_latest, int) or isinstance(keep_latest, bool):
            raise InvalidArgument(f"keep_latest must be an int, not {type(keep_latest).__name__}")
        r = self._core.gc(keep_latest, name, bool(dry_run))
        return GcReport(list(r.deleted_versions), r.blobs_removed, r.bytes_freed, r.dry_run)

    def verify(self) -> VerifyReport:
        """Rehashes every artifact and reports what is missing or corrupted."""
        r = self._core.verify()
        return VerifyReport(
            r.versions_checked,
            r.blobs_checked,
            [VerifyProblem(p.ref, p.sha256, p.problem) for p in r.problems],
            list(r.orphan_blobs),
        )

    def __repr__(self) -> str:
        return f"Registry({self.location!r})"


@dataclass(frozen=True)
class RecoverReport:
    """What ``recover`` did."""

    moved_aside: Optional[str]  # where the lost database went, if it was moved
    recovered: List[str]  # refs of the versions registered from unreferenced artifacts
    skipped: List[str]  # "<sha256>: <why>" for artifacts that could not be registered


def recover(path: Optional[PathLike] = None, *, model: str = "recovered", actor: Optional[str] = None) -> RecoverReport:
    """Makes a registry whose database was lost (deleted, emptied, or rows lost with its WAL) usable
    again without losing an artifact.

    A database without lepton's tables is moved aside (``registry.db.lost-<time>``), then every
    stored artifact that no version refers to is registered as a version of ``model``, labelled
    ``sha256-<first 12 hex digits>``, oldest first. Aliases, tags and metrics are not in the blobs
    and cannot be recovered; restore ``registry.db`` from a backup to get them back.
    """
    root = os.fspath(path) if path is not None else default_registry_path()
    r = _core.Registry.recover(root, model, actor or "")
    return RecoverReport(r.moved_aside or None, list(r.recovered), list(r.skipped))


def diff_metrics(a: ModelVersion, b: ModelVersion) -> Dict[str, Sequence[Optional[float]]]:
    """Metric name -> (value in a, value in b, b - a) for every metric either version has."""
    out: Dict[str, Sequence[Optional[float]]] = {}
    for key in sorted(set(a.metrics) | set(b.metrics)):
        va, vb = a.metrics.get(key), b.metrics.get(key)
        out[key] = (va, vb, None if va is None or vb is None else vb - va)
    return out
