"""lepton: run many versions of a model side by side.

The registry stores every version durably, with aliases, lineage, metrics and an audit log::

    import lepton
    reg = lepton.Registry("./models")
    v1 = reg.register("classifier", model, version="v1.0", metrics={"accuracy": 0.91})
    reg.set_alias("classifier", "production", "v1.0", reason="first release")
    model = reg.load("classifier@production")
"""

from . import _torch_check  # noqa: F401  (refuses a mismatched torch before _core loads)
from . import _core
from .errors import (
    Conflict,
    IntegrityError,
    InvalidArgument,
    LeptonError,
    LoadError,
    ModelError,
    NotFound,
    Overloaded,
    StorageError,
    Timeout,
    Unavailable,
)
from . import logs, weights
from .engine import Deployment, Ensemble, Fixed, LeptonAI, MemoryBudget, Prediction, Remote
from .server import Server, serve
from .policies import ABTest, Balanced, Bandit, Canary, Guardrails, LeastLoaded, Shadow, TimeBased, Weighted, seed
from .registry import (
    AuditEntry,
    GcReport,
    ModelInfo,
    ModelVersion,
    RecoverReport,
    Registry,
    Signature,
    TensorSpec,
    VerifyProblem,
    VerifyReport,
    default_registry_path,
    diff_metrics,
    infer_signature,
    recover,
)

__version__: str = _core.__version__

__all__ = [
    "__version__",
    "Registry",
    "Deployment",
    "MemoryBudget",
    "Remote",
    "Prediction",
    "Fixed",
    "Ensemble",
    "LeptonAI",
    "Weighted",
    "Canary",
    "Guardrails",
    "Shadow",
    "Bandit",
    "LeastLoaded",
    "Balanced",
    "ABTest",
    "TimeBased",
    "seed",
    "weights",
    "logs",
    "Server",
    "serve",
    "ModelVersion",
    "ModelInfo",
    "AuditEntry",
    "VerifyReport",
    "VerifyProblem",
    "GcReport",
    "RecoverReport",
    "recover",
    "Signature",
    "TensorSpec",
    "default_registry_path",
    "diff_metrics",
    "infer_signature",
    "LeptonError",
    "InvalidArgument",
    "NotFound",
    "Conflict",
    "IntegrityError",
    "StorageError",
    "Overloaded",
    "Timeout",
    "ModelError",
    "LoadError",
    "Unavailable",
]
