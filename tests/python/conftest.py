import os
import sys

import pytest
import torch

import lepton

torch.manual_seed(0)


class AddN(torch.nn.Module):
    def __init__(self, n: float):
        super().__init__()
        self.register_buffer("n", torch.tensor(float(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.n


class Untraceable(torch.nn.Module):
    """Not scriptable (it calls a plain Python function), but traceable."""

    def forward(self, x):
        return _python_only(x)


def _python_only(x, *args, **kwargs):
    return x * 2


@pytest.fixture
def registry(tmp_path):
    return lepton.Registry(tmp_path / "reg", actor="tester")


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()


def save_scripted(path, n=1.0):
    torch.jit.script(AddN(n)).save(str(path))
    return str(path)


@pytest.fixture
def python_env():
    """Environment for child processes that import lepton."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__)] + sys.path)
    return env
