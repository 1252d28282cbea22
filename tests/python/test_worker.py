"""Versions placed in their own process: they answer like any other, a crash fails only their own
requests in flight, the worker comes back, policies work across placements, and the server's
configuration places them."""
import json
import os
import pathlib
import signal
import threading

import pytest
import requests
import torch

import lepton
from conftest import AddN, wait_for

TOKEN = "worker-test-token"


@pytest.fixture
def reg(registry):
    for n in (1, 2):
        registry.register("m", torch.jit.script(AddN(n)), version=f"v{n}")
    return registry


def worker_of(dep, version):
    [v] = [v for v in dep.status()["versions"] if v["version"] == version]
    return v


def restarted(dep, version, old_pid):
    w = worker_of(dep, version)["worker"]
    return w["state"] == "running" and w["pid"] not in (0, old_pid)


def test_a_version_in_its_own_process_answers_and_reports_its_worker(reg):
    with lepton.Deployment(reg, "m", ["v1", "v2"], placement={"v2": "process"}) as dep:
        assert dep.predict(torch.zeros(2), version="v1").output.tolist() == [1.0, 1.0]
        p = dep.predict(torch.zeros(2), version="v2")
        assert p.output.tolist() == [2.0, 2.0] and p.version == "v2"
        assert worker_of(dep, "v1")["placement"] == "in_process" and worker_of(dep, "v1")["worker"] is None
        v2 = worker_of(dep, "v2")
        assert v2["placement"] == "process" and v2["health"] == "ready"
        w = v2["worker"]
        assert w["state"] == "running" and w["pid"] not in (0, os.getpid())
        assert w["restarts"] == 0 and w["crashes"] == 0
        os.kill(w["pid"], 0)  # alive
        pid = w["pid"]
        with pytest.raises(lepton.InvalidArgument):
            dep.predict([torch.zeros(2), torch.zeros(2)], version="v2")
    # Closing the deployment ends its workers.
    wait_for(lambda: not pathlib.Path(f"/proc/{pid}").exists())


def test_exchanges_go_through_a_shared_mailbox_or_the_socket_with_the_same_answers(reg):
    for shared in (True, False):
        with lepton.Deployment(reg, "m", ["v2"], placement="process", worker={"shared_memory": shared}) as dep:
            # Small exchanges fit the mailbox; 100,000 floats (400 KB) go over the socket.
            for n in (3, 100_000, 3):
                x = torch.arange(n, dtype=torch.float32)
                assert torch.equal(dep.predict(x).output, x + 2)
            pid = worker_of(dep, "v2")["worker"]["pid"]
            maps = pathlib.Path(f"/proc/{pid}/maps").read_text()
            assert ("lepton-worker-channel" in maps) == shared
    with pytest.raises(lepton.InvalidArgument, match="shared_memory"):
        lepton.Deployment(reg, "m", ["v2"], placement="process", worker={"shared_memory": "yes"})


def test_a_killed_worker_fails_only_its_own_requests_and_comes_back(reg):
    for _ in range(3):
        with lepton.Deployment(reg, "m", ["v1", "v2"], placement={"v2": "process"},
                               worker={"restart_backoff": 0.05}) as dep:
            stop = threading.Event()
            counts = {"v1": 0, "v2": 0, "v2_unavailable": 0}
            wrong = []
            lock = threading.Lock()

            def client(version):
                want = 2.0 if version == "v1" else 3.0
                while not stop.is_set():
                    try:
                        out = dep.predict(torch.ones(4), version=version).output
                        ok = out.tolist() == [want] * 4
                        with lock:
                            counts[version] += 1
                            if not ok:
                                wrong.append(out)
                    except lepton.Unavailable as e:
                        with lock:
                            counts["v2_unavailable"] += 1
                            if version == "v1":
                                wrong.append(e)
                    except Exception as e:  # noqa: BLE001 - anything else is a failure of the test
                        with lock:
                            wrong.append(e)

            threads = [threading.Thread(target=client, args=("v1" if i % 2 else "v2",)) for i in range(8)]
            for t in threads:
                t.start()
            try:
                wait_for(lambda: counts["v2"] >= 50, timeout=60)
                pid = worker_of(dep, "v2")["worker"]["pid"]
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda: restarted(dep, "v2", pid), timeout=60)
                served = counts["v2"]
                wait_for(lambda: counts["v2"] >= served + 50, timeout=60)
            finally:
                stop.set()
                for t in threads:
                    t.join()
            assert not wrong, wrong[:3]
            assert counts["v1"] > 100
            w = worker_of(dep, "v2")["worker"]
            assert w["crashes"] == 1 and w["restarts"] == 1
            assert w["last_exit"] == "killed by signal 9 (Killed)"
            assert worker_of(dep, "v1")["failed"] == 0
            kinds = [e["kind"] for e in lepton.logs.recent_events(1000, model="m") if e["version"] == "v2"]
            assert "worker_crashed" in kinds and "worker_restarted" in kinds


def test_a_canary_rolls_back_when_its_candidates_worker_stays_down(reg):
    reg.set_alias("m", "prod", "v2", reason="release v2")
    with lepton.Deployment(reg, "m", ["v1", "v2"], placement={"v2": "process"},
                           worker={"max_restarts": 0}) as dep:
        canary = lepton.Canary("v1", "v2", steps=[0.5, 1.0], step_requests=10_000, alias="prod",
                               guardrails=lepton.Guardrails(min_requests=10))
        dep.set_policy(canary)
        assert dep.predict(torch.zeros(1)).output.item() in (1.0, 2.0)
        os.kill(worker_of(dep, "v2")["worker"]["pid"], signal.SIGKILL)
        wait_for(lambda: worker_of(dep, "v2")["worker"]["state"] == "crashed")
        assert worker_of(dep, "v2")["health"] == "failed"
        unavailable = 0
        for _ in range(200):
            try:
                dep.predict(torch.zeros(1))
            except lepton.Unavailable:
                unavailable += 1
        assert canary.phase == "rolled_back"
        assert 10 <= unavailable < 100
        assert wait_for(lambda: reg.get("m@prod").version == "v1")
        assert dep.predict(torch.zeros(1)).version == "v1"


def test_limits_are_applied_to_the_worker(reg):
    with lepton.Deployment(reg, "m", ["v2"], placement="process",
                           resources={"v2": {"memory": "6GiB", "cpus": [0]}}) as dep:
        w = worker_of(dep, "v2")["worker"]
        assert w["memory_limit_bytes"] == 6 << 30 and w["cpus"] == [0]
        proc = pathlib.Path(f"/proc/{w['pid']}")
        assert "Cpus_allowed_list:\t0\n" in (proc / "status").read_text()
        assert str(6 << 30) in (proc / "limits").read_text()
        assert dep.predict(torch.zeros(1)).output.item() == 2.0


def test_bad_placements_are_refused_with_their_reason(reg):
    with pytest.raises(lepton.InvalidArgument, match="placement"):
        lepton.Deployment(reg, "m", ["v1"], placement={"v1": "pod"})
    with pytest.raises(lepton.InvalidArgument, match="memory"):
        lepton.Deployment(reg, "m", ["v1"], placement="process", resources={"v1": {"memory": "lots"}})
    with pytest.raises(lepton.InvalidArgument, match="unknown field 'gpus'"):
        lepton.Deployment(reg, "m", ["v1"], placement="process", resources={"v1": {"gpus": 1}})
    with pytest.raises(lepton.LoadError, match="cannot start the worker program /nonexistent"):
        lepton.Deployment(reg, "m", ["v1"], placement="process", worker={"program": "/nonexistent"})
    with pytest.raises(lepton.LoadError, match="could not start in its own process"):
        lepton.Deployment(reg, "m", ["v1"], placement="process", resources={"v1": {"memory": "16MB"}})


def test_the_server_places_a_models_version_from_its_configuration(reg):
    models = {"m": {"versions": ["v1", "v2"], "placement": {"v2": "process"},
                    "resources": {"v2": {"cpus": [0]}}}}
    with lepton.serve(reg, port=0, models=models, only=True, token=TOKEN) as server:
        r = requests.post(server.url + "/v2/models/m/versions/v2/infer",
                          json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [0, 1]}]})
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [2.0, 3.0]
        stats = requests.get(server.url + "/v2/lepton/models/m/stats",
                             headers={"Authorization": f"Bearer {TOKEN}"}).json()
        text = json.dumps(stats)
        assert '"placement": "process"' in text and '"cpus": [0]' in text
    with pytest.raises(lepton.InvalidArgument, match="model 'm'.*placement"):
        lepton.serve(reg, port=0, models={"m": {"placement": "elsewhere"}}, only=True)


def test_the_management_api_loads_a_model_with_a_version_in_its_own_process(reg):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with lepton.serve(reg, port=0, models={}, only=True, token=TOKEN) as server:
        r = requests.post(server.url + "/v2/repository/models/m/load", headers=auth,
                          json={"parameters": {"versions": ["v1", "v2"], "placement": {"v2": "process"},
                                               "worker": {"max_restarts": 3}}})
        assert r.status_code == 200, r.text
        r = requests.post(server.url + "/v2/models/m/versions/v2/infer",
                          json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]})
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [3.0], r.text
        stats = requests.get(server.url + "/v2/lepton/models/m/stats", headers=auth).json()
        assert '"placement": "process"' in json.dumps(stats)
        r = requests.post(server.url + "/v2/repository/models/m/load", headers=auth,
                          json={"parameters": {"versions": ["v1"], "placement": {"v1": "pod"}}})
        assert r.status_code == 400 and "placement" in r.json()["error"]
