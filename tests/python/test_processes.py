"""Several processes on one registry, on each backend: gap-free seqs under contention, and SIGKILL
safety."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import lepton

WORKER = os.path.join(os.path.dirname(__file__), "registering_worker.py")


def spawn(path, model, count, offset, env):
    return subprocess.Popen(
        [sys.executable, WORKER, str(path), model, str(count), str(offset)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_four_processes_register_1000_versions_without_gaps(registry_location, python_env):
    path = registry_location
    lepton.Registry(path).create_model("shared")
    procs = [spawn(path, "shared", 250, 10_000 * p, python_env) for p in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    reg = lepton.Registry(path)
    versions = reg.versions("shared")
    assert [v.seq for v in versions] == list(range(1, 1001))
    assert len({v.version for v in versions}) == 1000
    assert len({v.sha256 for v in versions}) == 1000
    assert sorted(v.metrics["i"] for v in versions) == sorted(
        float(10_000 * p + i) for p in range(4) for i in range(250)
    )
    report = reg.verify()
    assert report.ok and report.orphan_blobs == []


def test_sigkill_while_registering_never_leaves_partial_state(registry_location, python_env):
    path = registry_location
    lepton.Registry(path).create_model("crash")
    rng = random.Random(7)
    seen = 0
    for round_ in range(12):
        proc = spawn(path, "crash", 100_000, round_ * 100_000, python_env)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(rng.uniform(0.02, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL

        reg = lepton.Registry(path)  # opening cleans what the dead writer left
        versions = reg.versions("crash")
        assert [v.seq for v in versions] == list(range(1, len(versions) + 1))
        assert len(versions) >= seen
        seen = len(versions)
        for v in versions:
            assert v.metrics and v.tags  # every visible version is whole
        report = reg.verify()
        assert report.ok, report.problems
        assert report.orphan_blobs == []
        assert os.listdir(os.path.join(reg.path, "blobs", "tmp")) == []
    assert seen > 0
    reg.load("crash")  # the newest survivor loads
