"""lepton under its caller's own threads and forks, careless input, lost metadata and full disks."""
import errno
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import lepton
from conftest import AddN

HERE = os.path.dirname(__file__)


class Scale(torch.nn.Module):
    def __init__(self, k: float):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) * self.k


# --- threads ---------------------------------------------------------------------------------


def test_registering_and_deploying_from_many_threads_for_many_rounds(tmp_path):
    """TorchScript's compiler is not thread-safe: every compilation lepton runs is serialised."""
    reg = lepton.Registry(tmp_path / "reg", actor="threads")
    reg.register("m", AddN(0.0))
    errors = []

    def work(round_, t):
        try:
            for i in range(5):
                # Scripting (AddN), tracing (Untraceable needs example inputs) and loading together.
                reg.register("m", AddN(round_ * 1000 + t * 10 + i) if i % 2 else Scale(float(i)))
            with lepton.Deployment(reg, "m", ["v1"]) as d:
                assert d.predict(torch.zeros(1, 4)).output.shape == (1, 4)
        except Exception as e:  # surfaced by the assertion below
            errors.append(repr(e))

    for round_ in range(40):
        threads = [threading.Thread(target=work, args=(round_, t)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [], f"round {round_}: {errors[:3]}"
    assert [v.seq for v in reg.versions("m")] == list(range(1, 1 + 1 + 40 * 4 * 5))


def test_no_two_threads_ever_compile_torchscript_at_once(registry, monkeypatch):
    """The race is rare (CPython's ast module and TorchScript's frontend keep shared state), so
    this watches the mechanism itself: scripting, tracing, saving and loading never overlap."""
    active, most = [0], [0]
    guard = threading.Lock()

    def watched(fn):
        def call(*args, **kwargs):
            with guard:
                active[0] += 1
                most[0] = max(most[0], active[0])
            try:
                time.sleep(0.001)  # widen the window a concurrent call would fall into
                return fn(*args, **kwargs)
            finally:
                with guard:
                    active[0] -= 1
        return call

    for name in ("script", "trace", "save", "load"):
        monkeypatch.setattr(torch.jit, name, watched(getattr(torch.jit, name)))
    errors = []

    def work(t):
        try:
            for i in range(10):
                registry.register("m", AddN(t * 100 + i), example_inputs=torch.zeros(1, 4))
                registry.load("m")
        except Exception as e:  # surfaced by the assertion below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert most[0] == 1, f"{most[0]} TorchScript compilations ran at once"


class OwnCode(torch.nn.Module):
    """Code no other test loads, so that loading it in this process compiles it."""

    def __init__(self, n: float):
        super().__init__()
        self.register_buffer("n", torch.tensor(float(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0 + self.n - 0.0


def test_a_deployment_loads_only_while_no_python_thread_compiles(registry):
    registry.register("m", OwnCode(1.0))
    registry.register("m", OwnCode(2.0))

    def deploy(version, made):
        with lepton.Deployment(registry, "m", [version]) as d:
            made.set()
            return d.status()["versions"][0]

    made = threading.Event()
    lock = lepton._core.TorchScriptLock()
    with lock:
        t = threading.Thread(target=deploy, args=("v1", made))
        t.start()
        assert not made.wait(0.5), "a C++ load ran while Python held the compile lock"
    assert made.wait(60)
    t.join()
    # v2 has v1's code, compiled now: building it compiles nothing, so it need not wait.
    with lock:
        again = threading.Event()
        t = threading.Thread(target=deploy, args=("v2", again))
        t.start()
        assert again.wait(60), "a version over compiled code waited for the compile lock"
    t.join()


# --- fork ------------------------------------------------------------------------------------


def _register_file_50_times(path, artifact, queue):
    failures = []
    reg = _inherited_registry  # noqa: F821 - the object the parent made, inherited through fork
    for _ in range(50):
        try:
            reg.register("forked", artifact)
        except Exception as e:  # counted by the parent
            failures.append(repr(e))
    queue.put(failures)


def test_forked_workers_register_with_the_parents_registry(tmp_path, registry_location):
    global _inherited_registry
    path = registry_location  # both backends: a child must never use the parent's connection
    artifact = str(tmp_path / "m.pt")
    torch.jit.script(AddN(1.0)).save(artifact)
    _inherited_registry = lepton.Registry(path, actor="parent")
    _inherited_registry.register("forked", artifact)  # the parent has used its connection
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_register_file_50_times, args=(path, artifact, queue)) for _ in range(4)]
    for w in workers:
        w.start()
    failures = [f for _ in workers for f in queue.get(timeout=300)]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert failures == []
    # The parent's registry still works, and saw every child's registration.
    assert [v.seq for v in _inherited_registry.versions("forked")] == list(range(1, 202))
    assert _inherited_registry.verify().ok


def _use_inherited_deployment(queue):
    try:
        _inherited_deployment.predict(torch.zeros(1, 4))  # noqa: F821
        queue.put("predicted")
    except lepton.Unavailable as e:
        queue.put(f"Unavailable: {e}")
    # A new deployment made in the child works.
    with lepton.Deployment(_inherited_registry, "m", ["v1"]) as d:  # noqa: F821
        queue.put(float(d.predict(torch.zeros(1, 4)).output.sum()))


def test_an_inherited_deployment_raises_in_the_child_and_a_new_one_works(tmp_path):
    global _inherited_registry, _inherited_deployment
    _inherited_registry = lepton.Registry(tmp_path / "reg")
    _inherited_registry.register("m", AddN(1.0))
    _inherited_deployment = lepton.Deployment(_inherited_registry, "m", ["v1"])
    _inherited_deployment.predict(torch.zeros(1, 4))
    try:
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_use_inherited_deployment, args=(queue,))
        child.start()
        said = queue.get(timeout=120)
        assert said.startswith("Unavailable:") and "fork" in said
        assert queue.get(timeout=120) == 4.0
        child.join(timeout=60)
        assert child.exitcode == 0
        # The parent's deployment is untouched.
        assert float(_inherited_deployment.predict(torch.zeros(1, 4)).output.sum()) == 4.0
    finally:
        _inherited_deployment.close()


FORK_EXIT_CHILD = r"""
import os, sys, time, torch, lepton
sys.path.insert(0, sys.argv[2])
from conftest import AddN
reg = lepton.Registry(sys.argv[1])
reg.register("m", AddN(1.0))
d = lepton.Deployment(reg, "m", ["v1"])
server = lepton.serve(reg, port=0, token="t")
d.predict(torch.zeros(1, 4))
pid = os.fork()
if pid == 0:
    reg.get("m")          # the registry works in the child
    try:
        server.stop()     # the inherited server says it cannot
    except lepton.Unavailable:
        pass
    sys.exit(0)           # the interpreter tears every inherited object down
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.05)
else:
    os.kill(pid, 9)
    raise SystemExit("the child hung")
server.stop()
d.close()
print("child exit", os.waitstatus_to_exitcode(status), flush=True)
"""


def test_a_child_that_exits_normally_does_not_hang_on_inherited_objects(tmp_path, python_env):
    script = tmp_path / "fork_exit.py"
    script.write_text(FORK_EXIT_CHILD)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "reg"), HERE], env=python_env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "child exit 0" in out.stdout


# --- the caller's model ----------------------------------------------------------------------


class NumpyRound(torch.nn.Module):
    """Goes through numpy: a trace freezes the result."""

    def forward(self, x):
        return torch.from_numpy(np.asarray(x.detach().numpy()).sum(axis=1, keepdims=True) * 2)


class CountsCalls(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.bn(x) + float(np.float32(1.0))  # a Python number: traced, not scripted


def test_register_leaves_the_callers_model_exactly_as_it_was(registry):
    model = CountsCalls().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    registry.register("bn", model, example_inputs=torch.randn(8, 4), accept_trace_warnings=True)
    assert model.calls == 0
    assert model.training
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k

    scripted_bn = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)).train()
    before = {k: v.clone() for k, v in scripted_bn.state_dict().items()}
    registry.register("bn2", scripted_bn, example_inputs=torch.randn(8, 4))
    for k, v in before.items():
        assert torch.equal(scripted_bn.state_dict()[k], v), k
    assert scripted_bn.training


def test_load_returns_a_module_in_eval_mode(registry):
    registry.register("bn", torch.nn.Sequential(torch.nn.BatchNorm1d(4)).train())
    assert registry.load("bn").training is False


def test_a_trace_that_may_be_wrong_is_refused_unless_accepted(registry):
    with pytest.raises(lepton.InvalidArgument, match="may not match"):
        registry.register("np", NumpyRound(), example_inputs=torch.ones(2, 3))
    assert registry.models() == []
    registry.register("np", NumpyRound(), example_inputs=torch.ones(2, 3), accept_trace_warnings=True)
    assert len(registry.versions("np")) == 1


# --- deadlines -------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [1e10, 1e300, math.inf])
def test_very_large_timeouts_do_not_expire_at_once(registry, timeout):
    registry.register("m", AddN(1.0))
    with lepton.Deployment(registry, "m", ["v1"], max_batch_size=4) as d:
        assert float(d.predict(torch.zeros(1, 4), timeout=timeout).output.sum()) == 4.0


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["モデル", "a" * 30 + "é" * 60, "mod\u00e9le"])
def test_non_ascii_names_give_a_readable_error(registry, name):
    with pytest.raises(lepton.InvalidArgument) as caught:
        registry.register(name, AddN(1.0))
    message = str(caught.value)
    assert message and "allowed are" in message or "limit is 128" in message
    assert "\ufffd" not in message


# --- register after its commit ---------------------------------------------------------------


def test_register_never_reports_failure_for_a_version_it_committed(tmp_path):
    reg = lepton.Registry(tmp_path / "reg")
    collector = lepton.Registry(tmp_path / "reg")
    data = [torch.jit.script(AddN(float(i))) for i in range(8)]
    stop = threading.Event()
    failures = []

    def collect():
        while not stop.is_set():
            collector.gc(0)

    g = threading.Thread(target=collect)
    g.start()
    try:
        for i in range(4000):
            try:
                reg.register("churn", data[i % 8])
            except lepton.LeptonError as e:
                failures.append(repr(e))
    finally:
        stop.set()
        g.join()
    assert failures == []
    registered = [e for e in reg.history("churn") if e.action == "register"]
    assert len(registered) == 4000


# --- opening: tests/cpp RegistryProcesses.ABrandNewRegistryOpensFromEightProcessesAtOnce ----------


# --- integrity -------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_a_lost_database_beside_blobs_is_refused_and_recovered(tmp_path, damage):
    path = tmp_path / "reg"
    reg = lepton.Registry(path)
    for i in range(3):
        reg.register("m", AddN(float(i)))
    del reg
    db = path / "registry.db"
    for suffix in ("-wal", "-shm"):
        if os.path.exists(str(db) + suffix):
            os.remove(str(db) + suffix)
    if damage == "deleted":
        os.remove(db)
    else:
        open(db, "w").close()
    with pytest.raises(lepton.IntegrityError, match="lepton recover"):
        lepton.Registry(path)
    with pytest.raises(lepton.IntegrityError):
        lepton.Registry(path)  # refused again: nothing was created that hides the loss
    assert len(os.listdir(path / "blobs" / "sha256")) > 0

    report = lepton.recover(path)
    assert len(report.recovered) == 3
    reg = lepton.Registry(path)
    versions = reg.versions("recovered")
    assert len(versions) == 3
    assert sorted(float(reg.load(v).n) for v in versions) == [0.0, 1.0, 2.0]
    assert reg.verify().ok
    assert report.moved_aside and os.path.exists(report.moved_aside)
    assert lepton.recover(path).recovered == []  # nothing left to recover


def test_verify_fails_on_unreferenced_blobs(registry, tmp_path):
    registry.register("m", AddN(1.0))
    assert registry.verify().ok
    stray = torch.jit.script(AddN(7.0))
    # Store bytes the way a registration whose metadata was lost would leave them.
    other = lepton.Registry(tmp_path / "other")
    v = other.register("x", stray)
    digest = v.sha256
    src = os.path.join(other.path, "blobs", "sha256", digest[:2], digest)
    dst_dir = os.path.join(registry.path, "blobs", "sha256", digest[:2])
    os.makedirs(dst_dir, exist_ok=True)
    shutil.copy(src, os.path.join(dst_dir, digest))
    report = registry.verify()
    assert report.orphan_blobs == [digest]
    assert not report.ok


def test_cli_verify_exits_non_zero_on_unreferenced_blobs(registry, tmp_path, python_env):
    registry.register("m", AddN(1.0))
    blob_dir = os.path.join(registry.path, "blobs", "sha256", "ab")
    os.makedirs(blob_dir, exist_ok=True)
    with open(os.path.join(blob_dir, "ab" + "0" * 62), "wb") as f:
        f.write(b"lost")
    out = subprocess.run(
        [sys.executable, "-m", "lepton", "--registry", registry.path, "verify"],
        env=python_env, capture_output=True, text=True,
    )
    assert out.returncode != 0, out.stdout


FULL_DISK_CHILD = r"""
import os, sys, torch, lepton
sys.path.insert(0, sys.argv[2])
from conftest import AddN
root = sys.argv[1]
reg = lepton.Registry(os.path.join(root, "reg"))
big = torch.nn.Linear(512, 512)          # about 1 MiB an artifact
made = 0
try:
    for i in range(1000):
        torch.nn.init.constant_(big.bias, float(i))
        reg.register("big", big)
        made += 1
except lepton.StorageError as e:
    assert e.errno == 28, (e.errno, str(e))
    print("full after", made, flush=True)
else:
    raise SystemExit("the disk never filled")
# Filling the rest of the disk, so that nothing at all is free.
with open(os.path.join(root, "filler"), "wb") as f:
    try:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    except OSError:
        pass
try:
    reg.register("big", AddN(1.0))
    raise SystemExit("registered on a full disk")
except lepton.StorageError as e:
    assert e.errno == 28
reg.delete("big:v1")
report = reg.gc(1)
assert report.bytes_freed > 0, report
assert [v.version for v in reg.versions("big")] == ["v%d" % made]
os.remove(os.path.join(root, "filler"))
reg.register("big", AddN(2.0))
assert reg.verify().ok
print("freed", report.bytes_freed, flush=True)
"""


def test_a_full_disk_can_be_freed_with_lepton_itself(tmp_path, python_env):
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is missing")
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = tmp_path / "child.py"
    script.write_text(FULL_DISK_CHILD)
    # A 48 MiB tmpfs of our own, in a user and mount namespace: no root needed, nothing outside.
    cmd = (
        f"mount -t tmpfs -o size=48m tmpfs {mnt} && "
        f"exec {sys.executable} {script} {mnt} {HERE}"
    )
    out = subprocess.run(["unshare", "-Urm", "sh", "-c", cmd], env=python_env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "full after" in out.stdout and "freed" in out.stdout


def test_storage_errors_carry_the_os_errno(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(lepton.StorageError) as caught:
        lepton.Registry(blocker / "reg")
    assert caught.value.errno == errno.ENOTDIR
