"""lepton's exceptions: one Python class per C++ error kind, all under LeptonError.

``InvalidArgument`` is also a ``ValueError``, ``NotFound`` a ``LookupError``, ``StorageError`` an
``OSError`` and ``Timeout`` a ``TimeoutError``, so generic handlers catch them too.
"""
from ._core import (
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

__all__ = [
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
