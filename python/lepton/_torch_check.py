"""Run on import by the package, before the C++ extension is loaded."""


def _check_torch() -> None:
    """Refuses, before the extension loads, a torch other than the one lepton was built against:
    the extension would bring its own LibTorch into a process that has imported another."""
    try:
        from ._build_info import TORCH_VERSION as built
    except ImportError:  # a build without the record (an in-tree CMake build): nothing to compare
        return
    import re

    import torch

    def release(v: str) -> str:
        m = re.match(r"\d+\.\d+\.\d+", v)
        return m.group(0) if m else v

    if release(torch.__version__) != release(built):
        raise ImportError(
            f"lepton was built against torch {built}, but this Python imports torch {torch.__version__} "
            f"({torch.__file__}); reinstall lepton with this torch (pip install --no-binary lepton lepton, "
            f"or build it from source with this interpreter)"
        )


_check_torch()
