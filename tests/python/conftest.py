import contextlib
import os
import sys
import threading
import time

import pytest
import torch

import lepton
import pg_server

torch.manual_seed(0)


def wait_for(condition, timeout=10.0):
    """Polls `condition` until it holds (returns True) or `timeout` seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    if condition():
        return True
    raise AssertionError("condition not reached")


class AddN(torch.nn.Module):
    def __init__(self, n: float):
        super().__init__()
        self.register_buffer("n", torch.tensor(float(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.n


class Spin(torch.nn.Module):
    """Busy for about x[0, 0] * 2.5 ms (on the machine this was written on): a forward that
    takes as long as asked."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for _ in range(int(x[0, 0].item()) * 1000):
            y = y + 0
        return y


class Pair(torch.nn.Module):
    """Two inputs; their sum and their product as integers."""

    def forward(self, a: torch.Tensor, b: torch.Tensor):
        return a + b, (a * b).to(torch.int64)


class Twice(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


class FailsOnNegative(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()):
            raise RuntimeError("negative input")
        return x * 2


class Untraceable(torch.nn.Module):
    """Not scriptable (it calls a plain Python function), but traceable."""

    def forward(self, x):
        return _python_only(x)


def _python_only(x, *args, **kwargs):
    return x * 2


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same seeds, so statistical checks repeat exactly."""
    lepton.seed(20261123)
    torch.manual_seed(0)
    yield
    lepton.seed(0)


@pytest.fixture
def registry(tmp_path):
    return lepton.Registry(tmp_path / "reg", actor="tester")


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (see pg_server.py)."""
    assert pg_server.available(), "PostgreSQL's server is not installed (scripts/bootstrap installs it)"
    server = pg_server.PostgresServer().start()
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_location(request, tmp_path):
    """Where a registry lives, once for each backend: a directory, or a fresh PostgreSQL database
    with its artifacts in a directory of this test's own. The conformance tests take it."""
    if request.param == "sqlite":
        return str(tmp_path / "reg")
    server = request.getfixturevalue("postgres")
    return f"{server.url(server.create_database())}?blobs={tmp_path / 'shared'}"


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


def assert_releases_gil(call):
    """Runs `call` while another Python thread spins, and fails unless that thread made progress
    strictly inside the call: a call that held the GIL would have frozen it."""
    stamps, stop = [], threading.Event()

    def spin():
        while not stop.is_set():
            stamps.append(time.perf_counter())
            for _ in range(200):
                pass

    t = threading.Thread(target=spin)
    t.start()
    time.sleep(0.02)
    start = time.perf_counter()
    call()
    end = time.perf_counter()
    stop.set()
    t.join()
    assert end - start > 0.03, "the call was too short to tell"
    assert [s for s in stamps if start + 0.01 < s < end - 0.01], "the GIL was held during the call"


class ServerLog:
    """A child's log, read as it comes (so that a chatty child never blocks on a full pipe)."""

    def __init__(self, stream):
        self.lines = []
        self._ended = False
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _read(self, stream):
        for line in stream:
            with self._cv:
                self.lines.append(line)
                self._cv.notify_all()
        with self._cv:
            self._ended = True
            self._cv.notify_all()

    def wait_for(self, pattern, timeout=120.0):
        """The first match of `pattern` in a line so far or to come; AssertionError if the log ends
        or `timeout` passes without one."""
        import re

        deadline = time.monotonic() + timeout
        seen = 0
        with self._cv:
            while True:
                for line in self.lines[seen:]:
                    m = re.search(pattern, line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                assert not self._ended and left > 0, f"no {pattern!r} in the log:\n{''.join(self.lines)[-3000:]}"
                self._cv.wait(left)

    def join(self):
        self._reader.join(timeout=10)


@contextlib.contextmanager
def lepton_serve(args, env, command="serve"):
    """Runs `python -m lepton serve ARGS` (or another COMMAND) as a child and yields (process, URL) once its log says
    where it listens; `process.log` (a ServerLog) has the rest. The child is killed on the way out
    unless the test stopped it."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "lepton", command, *args], stderr=subprocess.PIPE,
                            text=True, env=env)
    proc.log = ServerLog(proc.stderr)
    try:
        url = proc.log.wait_for(r"on (http://\S+)").group(1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.log.join()
        proc.stderr.close()
