"""Many versions under a memory budget, from Python and over HTTP: versions load on demand, the
least recently used idle one is unloaded to make room, pins and policies keep what they need."""
import io
import json
import random
import threading

import pytest
import requests
import torch

import lepton
from conftest import lepton_serve

TOKEN = "many-token"


class Wide(torch.nn.Module):
    """x @ w + n: 64 KiB of weights, an answer that says which version ran."""

    def __init__(self, n: float):
        super().__init__()
        self.w = torch.nn.Parameter(torch.eye(128), requires_grad=False)
        self.register_buffer("n", torch.tensor(float(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w + self.n


def wide_bytes(n: float) -> bytes:
    out = io.BytesIO()
    torch.jit.save(torch.jit.script(Wide(n)), out)
    return out.getvalue()


@pytest.fixture
def many(registry):
    for n in range(12):
        registry.register("m", wide_bytes(n), version=f"v{n}", example_inputs=torch.zeros(1, 128))
    return registry


def answer(dep, version):
    return int(dep.predict(torch.zeros(1, 128), version=version).output[0, 0])


def states(dep):
    return {v["version"]: v["state"] for v in dep.status()["versions"]}


def test_all_versions_load_on_demand_and_the_least_recently_used_go(many):
    size = many.get("m:v0").size
    dep = lepton.Deployment(many, "m", versions="all", memory_budget=int(4.5 * size))
    try:
        st = dep.status()
        assert st["primary"] == "v11" and len(st["versions"]) == 12
        assert states(dep) == {**{f"v{n}": "registered" for n in range(11)}, "v11": "loaded"}
        assert st["memory"]["limit_bytes"] == int(4.5 * size)
        assert st["versions"][-1]["memory_bytes"] == 128 * 128 * 4 + 4
        for n in (1, 2, 3):
            assert answer(dep, f"v{n}") == n
        answer(dep, "v1")
        answer(dep, "v4")  # no room: v2, the least recently used, goes
        s = states(dep)
        assert s["v2"] == "evicted" and s["v1"] == s["v3"] == s["v4"] == s["v11"] == "loaded"
        # One code, compiled by the first load: the others were built over it, their weights
        # pointing into the buffers the budget reads artifacts into (v4's is v2's, given back).
        loaded = {v["version"]: v for v in dep.status()["versions"] if v["state"] == "loaded"}
        assert all(v["pooled"] and not v["mapped"] for v in loaded.values())
        assert all(loaded[f"v{n}"]["shared_code"] for n in (1, 3, 4))
        assert dep.status()["memory"]["buffers_reused"] >= 1
        assert answer(dep, "v2") == 2
        v2 = next(v for v in dep.status()["versions"] if v["version"] == "v2")
        assert v2["loads"] == 2 and v2["evictions"] == 1 and v2["misses"] == 2
        # A reload of a version that loaded fast runs on the request's own thread.
        assert v2["inline_loads"] == 1
        m = dep.metrics()
        assert m["load_s"]["count"] >= 6 and m["memory_budget"]["limit_bytes"] == int(4.5 * size)
        assert 'lepton_version_evictions_total{model="m",version="v2"} 1' in dep.prometheus()
    finally:
        dep.close()


def test_many_threads_over_cold_versions_lose_nothing_and_stay_under_budget(many):
    size = many.get("m:v0").size
    budget = lepton.MemoryBudget(int(3.5 * size))
    dep = lepton.Deployment(many, "m", versions="all", memory_budget=budget)
    wrong, errors = [], []

    def client(seed):
        rng = random.Random(seed)
        for _ in range(60):
            n = rng.randrange(12)
            try:
                if answer(dep, f"v{n}") != n:
                    wrong.append(n)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                errors.append(e)

    try:
        threads = [threading.Thread(target=client, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not wrong and not errors, (wrong, errors[:3])
        stats = budget.stats()
        assert stats["peak_bytes"] <= stats["limit_bytes"] and stats["evictions"] > 0
        assert sum(s == "loaded" for s in states(dep).values()) <= 3
    finally:
        dep.close()


def test_a_shared_budget_spans_models_and_pins_from_python(many):
    for n in range(3):
        many.register("other", wide_bytes(100 + n), version=f"o{n}")
    size = many.get("m:v0").size
    budget = lepton.MemoryBudget(f"{int(4.5 * size)}B")
    a = lepton.Deployment(many, "m", versions="all", memory_budget=budget, pin=["v0"])
    b = lepton.Deployment(many, "other", versions="all", memory_budget=budget)
    try:
        assert budget.stats()["versions"] == 15
        assert states(a)["v0"] == "loaded" and states(b)["o2"] == "loaded"
        for n in range(3):
            assert int(b.predict(torch.zeros(1, 128), version=f"o{n}").output[0, 0]) == 100 + n
        for n in range(1, 6):
            answer(a, f"v{n}")
        assert states(a)["v0"] == "loaded"  # pinned
        assert budget.stats()["peak_bytes"] <= budget.limit
        with pytest.raises(lepton.InvalidArgument, match="must stay loaded"):
            for n in range(1, 6):
                a.pin(f"v{n}")
        a.unpin("v1")
        assert not next(v for v in a.status()["versions"] if v["version"] == "v1")["pinned"]
    finally:
        a.close()
        b.close()


def test_new_versions_are_served_and_bad_budgets_are_refused(many):
    size = many.get("m:v0").size
    dep = lepton.Deployment(many, "m", versions="all", memory_budget=3 * size)
    try:
        many.register("m", wide_bytes(12), version="v12")
        assert dep.refresh_versions() is True
        assert answer(dep, "v12") == 12
    finally:
        dep.close()
    with pytest.raises(lepton.InvalidArgument, match="m:v0"):
        lepton.Deployment(many, "m", versions="all", memory_budget=size // 2)
    with pytest.raises(lepton.InvalidArgument, match="unknown unit"):
        lepton.Deployment(many, "m", versions="all", memory_budget="12 parsecs")
    with pytest.raises(lepton.InvalidArgument, match='"all"'):
        lepton.Deployment(many, "m", versions="latest")
    with pytest.raises(lepton.InvalidArgument):
        lepton.MemoryBudget(0)


def test_a_thousand_versions_over_http_under_one_budget(registry):
    data = wide_bytes(7)
    for n in range(1000):
        registry.register("big", data, version=f"v{n}")
    size = registry.get("big:v0").size
    server = lepton.serve(registry, port=0, token=TOKEN, memory_budget=f"{10 * size}B", threads=2,
                          versions_poll_interval=3600)
    try:
        url = server.url
        body = {"inputs": [{"name": "x", "shape": [1, 128], "datatype": "FP32", "data": [0.0] * 128}]}
        rng = random.Random(7)
        asked = [f"v{rng.randrange(1000)}" for _ in range(40)]
        colds = []
        for v in asked:
            r = requests.post(f"{url}/v2/models/big/versions/{v}/infer", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["model_version"] == v and r.json()["outputs"][0]["data"][0] == 7.0
            colds.append(r.json()["parameters"]["lepton_cold_start"])
        # The answer says whether it waited for its version to load: the first of each did.
        assert colds[0] is True and colds.count(True) >= len(set(asked)) - 10
        again = requests.post(f"{url}/v2/models/big/versions/{asked[-1]}/infer", json=body).json()
        assert again["parameters"]["lepton_cold_start"] is False
        index = requests.post(f"{url}/v2/repository/index", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        mine = [e for e in index if e["name"] == "big"]
        assert len(mine) == 1000
        loaded = [e for e in mine if e["lepton_state"] == "loaded"]
        assert 1 <= len(loaded) <= 10 and all(e["state"] == "READY" for e in loaded)
        cold = next(e for e in mine if e["lepton_state"] == "registered")
        assert cold["state"] == "UNAVAILABLE" and "loads on its first request" in cold["reason"]
        # Any version answers ready: it loads on its first request.
        assert requests.get(f"{url}/v2/models/big/versions/{cold['version']}/ready").status_code == 200
        # load and unload pin and unpin.
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = requests.post(f"{url}/v2/repository/models/big/load", headers=auth,
                          json={"parameters": {"version": "v500"}})
        assert r.status_code == 200 and r.json()["lepton_pinned"] is True
        index = requests.post(f"{url}/v2/repository/index", headers=auth).json()
        v500 = next(e for e in index if e["name"] == "big" and e["version"] == "v500")
        assert v500["state"] == "READY" and v500["lepton_pinned"] is True
        for v in asked:
            requests.post(f"{url}/v2/models/big/versions/{v}/infer", json=body).raise_for_status()
        stats = requests.get(f"{url}/v2/lepton/models/big/stats", headers=auth).json()
        by_version = {v["version"]: v for v in stats["versions"]}
        assert by_version["v500"]["state"] == "loaded" and by_version["v500"]["evictions"] == 0
        assert stats["memory"]["peak_bytes"] <= stats["memory"]["limit_bytes"]
        r = requests.post(f"{url}/v2/repository/models/big/unload", headers=auth,
                          json={"parameters": {"version": "v500"}})
        assert r.status_code == 200 and r.json()["lepton_pinned"] is False
        metrics = requests.get(f"{url}/metrics").text
        assert 'lepton_version_loads_total{model="big",version="v500"} 1' in metrics
        assert "lepton_model_load_seconds_bucket" in metrics
        assert requests.post(f"{url}/v2/models/big/versions/v1000/infer", json=body).status_code == 404
    finally:
        server.stop()


def test_lepton_serve_memory_budget_flag(many, python_env):
    import signal

    size = many.get("m:v0").size
    env = dict(python_env, LEPTON_TOKEN=TOKEN)
    with lepton_serve(["--registry", many.path, "--port", "0", "--memory-budget", f"{3 * size}B",
                       "--eviction", "lfu", "--threads", "2"], env) as (proc, url):
        body = {"inputs": [{"name": "x", "shape": [1, 128], "datatype": "FP32", "data": [0.0] * 128}]}
        for n in (3, 5, 7, 9, 3):
            r = requests.post(f"{url}/v2/models/m/versions/v{n}/infer", json=body)
            assert r.status_code == 200 and r.json()["outputs"][0]["data"][0] == n
        stats = requests.get(f"{url}/v2/lepton/models/m/stats", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert stats["memory"]["limit_bytes"] == 3 * size and stats["memory"]["evictions"] > 0
        assert stats["memory"]["peak_bytes"] <= 3 * size
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
