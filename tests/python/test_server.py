"""The HTTP server through real clients (requests, curl, raw sockets): every endpoint, every error
status, authentication, malformed requests, slow clients, hot swaps under load, `lepton serve`."""
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests
import torch

import lepton
from conftest import AddN, FailsOnNegative, Spin, lepton_serve, wait_for

TOKEN = "s3cret-token"


class Pair(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor):
        return a + b, (a * b).to(torch.int64)


@pytest.fixture
def reg(registry):
    for n in (1, 2, 3):
        registry.register("m", AddN(n), version=f"v{n}", example_inputs=torch.zeros(1, 4))
    registry.set_alias("m", "prod", "v1", reason="first release")
    registry.register("spin", Spin(), version="s1", example_inputs=torch.zeros(1, 2))
    registry.register("pair", Pair(), version="p1", example_inputs=(torch.zeros(1, 2), torch.zeros(1, 2)))
    registry.register("fragile", FailsOnNegative(), version="f1", example_inputs=torch.zeros(1, 2))
    return registry


@pytest.fixture
def server(reg):
    s = lepton.serve(reg, port=0, token=TOKEN, models={"m": "@prod"}, max_body_bytes=1 << 20,
                     read_timeout=1.0, threads=2)
    yield s
    s.stop()


def auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def infer_body(x, name="x", datatype="FP32", **extra):
    x = torch.as_tensor(x)
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype,
                        "data": x.flatten().tolist()}], **extra}


# --- health and metadata ---

def test_health_and_server_metadata(server):
    assert requests.get(server.url + "/v2/health/live").json() == {"live": True}
    r = requests.get(server.url + "/v2/health/ready")
    assert r.status_code == 200 and r.json()["ready"] is True
    meta = requests.get(server.url + "/v2").json()
    assert meta["name"] == "lepton" and meta["version"] == lepton.__version__


def test_triton_statistics_extension(server):
    assert "statistics" in requests.get(server.url + "/v2").json()["extensions"]
    before_ms = time.time() * 1000
    for _ in range(3):
        r = requests.post(server.url + "/v2/models/m/infer", json=infer_body(torch.zeros(2, 4)))
        assert r.status_code == 200
    r = requests.post(server.url + "/v2/models/fragile/infer", json=infer_body(-torch.ones(1, 2)))
    assert r.status_code == 500
    assert requests.get(server.url + "/v2/models/m/stats").status_code == 401
    stats = requests.get(server.url + "/v2/models/m/stats", headers=auth()).json()["model_stats"]
    assert [s["version"] for s in stats] == ["v1"]
    s = stats[0]
    assert s["name"] == "m" and s["inference_count"] == 6 and s["execution_count"] == 3
    assert before_ms - 1000 <= s["last_inference"] <= time.time() * 1000 + 1000
    inf = s["inference_stats"]
    assert inf["success"]["count"] == 3 and inf["success"]["ns"] > 0
    assert inf["fail"] == {"count": 0, "ns": 0}
    assert inf["queue"]["count"] == 3 and inf["compute_infer"]["count"] == 3 and inf["compute_infer"]["ns"] > 0
    assert inf["compute_infer"]["ns"] <= inf["success"]["ns"]
    assert inf["cache_hit"] == {"count": 0, "ns": 0} and s["batch_stats"] == []
    by_alias = requests.get(server.url + "/v2/models/m/versions/prod/stats", headers=auth()).json()
    assert by_alias["model_stats"][0]["version"] == "v1"
    fragile = requests.get(server.url + "/v2/models/fragile/stats", headers=auth()).json()["model_stats"][0]
    assert fragile["inference_stats"]["fail"]["count"] == 1 and fragile["inference_stats"]["fail"]["ns"] > 0
    everything = requests.get(server.url + "/v2/models/stats", headers=auth()).json()["model_stats"]
    assert {x["name"] for x in everything} >= {"m", "fragile", "spin", "pair"}
    # A version that exists but is not deployed, and one that does not exist: 404.
    assert requests.get(server.url + "/v2/models/m/versions/v2/stats", headers=auth()).status_code == 404
    assert requests.get(server.url + "/v2/models/m/versions/v9/stats", headers=auth()).status_code == 404
    assert requests.post(server.url + "/v2/models/m/stats", headers=auth()).status_code == 405


def test_model_and_version_metadata_by_label_and_alias(server):
    m = requests.get(server.url + "/v2/models/m").json()
    assert m["name"] == "m" and m["versions"] == ["v1"] and m["platform"] == "pytorch_torchscript"
    assert m["inputs"][0]["datatype"] == "FP32" and m["inputs"][0]["shape"] == [-1, 4]
    assert m["parameters"]["lepton_alias"] == "prod"
    assert requests.get(server.url + "/v2/models/m/versions/prod").json()["versions"] == ["v1"]
    assert requests.get(server.url + "/v2/models/m/versions/v2").json()["versions"] == ["v2"]
    assert requests.get(server.url + "/v2/models/m/ready").json()["ready"] is True
    assert requests.get(server.url + "/v2/models/m/versions/prod/ready").status_code == 200
    # v2 exists but is not deployed: not ready (503); an unknown version or model: 404.
    r = requests.get(server.url + "/v2/models/m/versions/v2/ready")
    assert r.status_code == 503 and r.json()["ready"] is False
    assert requests.get(server.url + "/v2/models/m/versions/v9/ready").status_code == 404
    r = requests.get(server.url + "/v2/models/nope")
    assert r.status_code == 404 and "not in the registry" in r.json()["error"]
    assert requests.get(server.url + "/v2/nothing/here").status_code == 404


# --- inference ---

def test_infer_answers_with_version_route_and_request_id(server):
    x = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    r = requests.post(server.url + "/v2/models/m/infer", json=infer_body(x, id="req-7"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "m" and body["model_version"] == "v1" and body["id"] == "req-7"
    out = body["outputs"][0]
    assert out["datatype"] == "FP32" and out["shape"] == [2, 4]
    assert torch.allclose(torch.tensor(out["data"]).reshape(2, 4), x + 1)
    params = body["parameters"]
    assert params["lepton_versions"] == "v1" and params["lepton_policy"] == "fixed"
    assert params["lepton_route"] and params["lepton_request_id"]
    assert r.headers["X-Lepton-Request-Id"] == params["lepton_request_id"]
    assert r.headers["X-Lepton-Version"] == "v1" and r.headers["X-Lepton-Route"]


def test_infer_on_a_pinned_version_nested_data_and_multiple_typed_io(server, reg):
    r = requests.post(server.url + "/v2/models/m/versions/prod/infer",
                      json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2, 3, 4]]}]})
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2, 3, 4, 5]
    # A version that is not deployed cannot be pinned.
    r = requests.post(server.url + "/v2/models/m/versions/v2/infer", json=infer_body(torch.zeros(1, 4)))
    assert r.status_code == 404
    # Two inputs, two outputs of different types; ask for one output only.
    body = {"inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [2, 3]},
                       {"name": "b", "shape": [1, 2], "datatype": "FP32", "data": [4, 5]}]}
    r = requests.post(server.url + "/v2/models/pair/infer", json=body)
    outs = {o["name"]: o for o in r.json()["outputs"]}
    assert outs["output_0"]["data"] == [6, 8] and outs["output_1"]["datatype"] == "INT64"
    assert outs["output_1"]["data"] == [8, 15]
    r = requests.post(server.url + "/v2/models/pair/infer", json={**body, "outputs": [{"name": "output_1"}]})
    assert [o["name"] for o in r.json()["outputs"]] == ["output_1"]
    r = requests.post(server.url + "/v2/models/pair/infer", json={**body, "outputs": [{"name": "nope"}]})
    assert r.status_code == 400 and "nope" in r.json()["error"]


@pytest.mark.parametrize("body, fragment", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"inputs": []}), "non-empty"),
    (json.dumps(infer_body(torch.zeros(1, 4), datatype="UINT64")), "not supported"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ["a", "b", "c", "d"]}]}),
     "expected a number"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}]}),
     "holds 4 elements but data has 3"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]}),
     "more data than the shape"),
    (json.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2, 3], [4]]}]}),
     "nested data"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, -4], "datatype": "FP32", "data": []}]}), "non-negative"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT8", "data": [1, 2, 3, 300]}]}),
     "out of range"),
    (json.dumps({**infer_body(torch.zeros(1, 4)), "colour": "red"}), "unknown field 'colour'"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4], "extra": 1}]}),
     "unknown field 'extra'"),
    (json.dumps(infer_body(torch.zeros(1, 5))), "expected [-1, 4]"),
    (json.dumps({**infer_body(torch.zeros(1, 4)), "parameters": {"timeout": -1}}), "timeout"),
])
def test_malformed_requests_get_400_and_the_server_keeps_serving(server, body, fragment):
    r = requests.post(server.url + "/v2/models/m/infer", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]
    ok = requests.post(server.url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 4)))
    assert ok.status_code == 200


def test_huge_and_truncated_bodies(server):
    host, port = "127.0.0.1", server.port
    r = requests.post(server.url + "/v2/models/m/infer", data=b"x" * (2 << 20))
    assert r.status_code == 413 and "limit" in r.json()["error"]
    # A body shorter than its Content-Length, then silence: the server gives up after its read
    # timeout and keeps serving everyone else meanwhile.
    s = socket.create_connection((host, port))
    s.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 500\r\n\r\n{\"inputs\": [")
    t0 = time.monotonic()
    ok = requests.post(server.url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 4)))
    assert ok.status_code == 200 and time.monotonic() - t0 < 0.5
    s.settimeout(5)
    reply = s.recv(4096)
    s.close()
    assert reply == b"" or reply.startswith(b"HTTP/1.1 4")
    # Garbage that is not HTTP at all.
    s = socket.create_connection((host, port))
    s.sendall(b"\x00\x01garbage\r\n\r\n")
    s.settimeout(5)
    assert s.recv(4096)[:12] in (b"", b"HTTP/1.1 400")
    s.close()
    assert requests.get(server.url + "/v2/health/live").status_code == 200


def test_slow_clients_do_not_stall_others(server):
    # Ten clients that send half a request line and stop.
    stalled = []
    for _ in range(10):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(b"GET /v2/health/li")
        stalled.append(s)
    t0 = time.monotonic()
    for _ in range(20):
        assert requests.post(server.url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 4))).status_code == 200
    assert time.monotonic() - t0 < 2.0
    for s in stalled:
        s.close()


def test_overloaded_timeout_and_model_error_statuses(reg):
    with lepton.serve(reg, port=0, token=TOKEN, models={"spin": None, "fragile": None}, only=True,
                      max_queue=1, threads=1) as s:
        slow = infer_body(torch.full((1, 2), 200.0))
        # A deadline the model cannot meet: 504.
        r = requests.post(s.url + "/v2/models/spin/infer", json={**slow, "parameters": {"timeout": 5000}})  # microseconds
        assert r.status_code == 504 and "deadline" in r.json()["error"].lower() or r.status_code == 504
        # One running, one queued, the rest refused at once: 429.
        codes = []

        def call():
            codes.append(requests.post(s.url + "/v2/models/spin/infer", json=slow).status_code)

        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
        # The model raises: 500 with a short message and an id; the model's source lines, its
        # traceback and file paths go to the event log only. The next request is fine.
        since = lepton._core.last_event_seq()
        r = requests.post(s.url + "/v2/models/fragile/infer", json=infer_body(-torch.ones(1, 2)))
        assert r.status_code == 500 and r.json()["error"].startswith("the model failed on this request")
        for leak in ("negative input", "Traceback", "RaiseException", "raise ", ".py", "/"):
            assert leak not in r.json()["error"], leak
        rid = r.json()["request_id"]
        assert len(rid) == 32 and r.headers["X-Lepton-Request-Id"] == rid
        logged = requests.get(s.url + f"/v2/lepton/events?since={since}", headers=auth()).json()
        assert any(rid in e["message"] and "negative input" in e["message"] for e in logged)
        assert requests.post(s.url + "/v2/models/fragile/infer", json=infer_body(torch.ones(1, 2))).status_code == 200


# --- authentication ---

def test_management_needs_the_token_and_inference_can(reg, server):
    url = server.url + "/v2/lepton/models/m/aliases"
    assert requests.get(url).status_code == 401
    assert requests.get(url, headers=auth("wrong")).status_code == 401
    assert requests.get(url, headers={"Authorization": TOKEN}).status_code == 401
    r = requests.get(url, headers=auth())
    assert r.status_code == 200 and r.json() == {"prod": "v1"}
    assert requests.post(server.url + "/v2/repository/index").status_code == 401
    with lepton.serve(reg, port=0, token=TOKEN, token_for_inference=True, models={"m": None}, only=True) as s:
        body = infer_body(torch.zeros(1, 4))
        assert requests.post(s.url + "/v2/models/m/infer", json=body).status_code == 401
        assert requests.post(s.url + "/v2/models/m/infer", json=body, headers=auth()).status_code == 200
        assert requests.get(s.url + "/v2/health/ready").status_code == 200  # health stays open


def test_a_generated_token_when_none_is_given(reg, monkeypatch):
    monkeypatch.delenv("LEPTON_TOKEN", raising=False)
    with lepton.serve(reg, port=0, models={"m": None}, only=True) as s:
        assert len(s.token) >= 32
        assert requests.post(s.url + "/v2/repository/index", headers=auth(s.token)).status_code == 200


def test_binds_loopback_by_default(server):
    assert server.url.startswith("http://127.0.0.1:")


# --- repository and management ---

def test_repository_index_load_and_unload(server):
    r = requests.post(server.url + "/v2/repository/index", headers=auth())
    states = {x["name"]: x["state"] for x in r.json()}
    assert states == {"m": "READY", "spin": "READY", "pair": "READY", "fragile": "READY"}
    assert requests.post(server.url + "/v2/repository/models/spin/unload", headers=auth()).status_code == 200
    r = requests.post(server.url + "/v2/models/spin/infer", json=infer_body(torch.zeros(1, 2)))
    assert r.status_code == 404 and "not loaded" in r.json()["error"]
    ready = requests.post(server.url + "/v2/repository/index", headers=auth(), json={"ready": True}).json()
    assert "spin" not in {x["name"] for x in ready}
    r = requests.post(server.url + "/v2/repository/models/spin/load", headers=auth())
    assert r.status_code == 200 and r.json()["version"] == "s1"
    # Loading it again with nothing to change leaves it as it is (Triton's clients load before use);
    # asking for another configuration while it is served is a conflict.
    again = requests.post(server.url + "/v2/repository/models/spin/load", headers=auth())
    assert again.status_code == 200 and again.json()["version"] == "s1"
    assert requests.post(server.url + "/v2/repository/models/spin/load", headers=auth(),
                         json={"parameters": {"versions": ["s1"]}}).status_code == 409
    assert requests.post(server.url + "/v2/repository/models/nope/load", headers=auth()).status_code == 404
    assert requests.post(server.url + "/v2/repository/models/nope/unload", headers=auth()).status_code == 404
    r = requests.post(server.url + "/v2/repository/models/m/unload", headers=auth())
    r = requests.post(server.url + "/v2/repository/models/m/load", headers=auth(),
                      json={"parameters": {"versions": ["v1", "v2"],
                                           "policy": {"type": "weighted", "weights": {"v1": 1, "v2": 1}}}})
    assert r.status_code == 200, r.text
    seen = {requests.post(server.url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 4))).json()["model_version"]
            for _ in range(40)}
    assert seen == {"v1", "v2"}


def test_aliases_rollback_and_conflicts_move_the_deployment(server, reg):
    base = server.url + "/v2/lepton/models/m/aliases/prod"
    r = requests.put(base, headers=auth(), json={"version": "v2", "expected": "v3", "reason": "x"})
    assert r.status_code == 409
    r = requests.put(base, headers=auth(), json={"version": "v2", "expected": "v1", "reason": "promote v2"})
    assert r.status_code == 200 and r.json()["version"] == "v2"
    wait_for(lambda: infer_version(server) == "v2")
    r = requests.post(server.url + "/v2/lepton/models/m/rollback", headers=auth(), json={"alias": "prod"})
    assert r.status_code == 200 and r.json()["version"] == "v1"
    wait_for(lambda: infer_version(server) == "v1")
    assert [e.action for e in reg.history("m")][-2:] == ["set_alias", "rollback"]
    r = requests.put(server.url + "/v2/lepton/models/m/aliases/staging", headers=auth(), json={"version": "v3"})
    assert r.status_code == 200
    r = requests.delete(server.url + "/v2/lepton/models/m/aliases/staging", headers=auth())
    assert r.status_code == 200 and reg.aliases("m") == {"prod": "v1"}
    r = requests.put(base, headers=auth(), json={"version": "v2", "colour": 1})
    assert r.status_code == 400
    r = requests.put(server.url + "/v2/lepton/models/m/aliases/prod", headers=auth(), json={"version": "v9"})
    assert r.status_code == 404


def test_policy_get_set_and_feedback(reg):
    with lepton.serve(reg, port=0, token=TOKEN, models={"m": {"versions": ["v1", "v2", "v3"]}}, only=True) as s:
        url = s.url + "/v2/lepton/models/m/policy"
        assert requests.get(url, headers=auth()).json()["name"] == "fixed"
        assert requests.put(url, headers=auth(), data="{bad").status_code == 400
        r = requests.put(url, headers=auth(), json={"type": "weighted", "weights": {"v1": 1, "v9": 1}})
        assert r.status_code == 404 and "v9" in r.json()["error"]
        r = requests.put(url, headers=auth(), json={"type": "weighted", "weights": {"v1": 1}, "stiky": True})
        assert r.status_code == 400 and "stiky" in r.json()["error"]
        r = requests.put(url, headers=auth(), json={"type": "bandit", "versions": ["v1", "v2", "v3"], "seed": 3})
        assert r.status_code == 200 and r.json()["name"] == "bandit" and r.json()["spec"]["seed"] == 3
        for _ in range(30):
            reply = requests.post(s.url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 4))).json()
            rid = reply["parameters"]["lepton_request_id"]
            reward = 1.0 if reply["model_version"] == "v3" else 0.0
            f = requests.post(s.url + "/v2/lepton/models/m/feedback", json={"request_id": rid, "reward": reward},
                              headers=auth())
            assert f.status_code == 200
        again = requests.post(s.url + "/v2/lepton/models/m/feedback", json={"request_id": rid, "reward": 1},
                              headers=auth())
        assert again.status_code == 404
        assert requests.post(s.url + "/v2/lepton/models/m/feedback", json={"request_id": rid},
                             headers=auth()).status_code == 400
        report = requests.get(url, headers=auth()).json()["report"]
        assert sum(a["pulls"] for a in report["arms"].values()) == 30 if "arms" in report else True


def test_stats_events_and_prometheus_metrics(server):
    for _ in range(5):
        requests.post(server.url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 4)))
    requests.post(server.url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 5)))
    stats = requests.get(server.url + "/v2/lepton/models/m/stats", headers=auth()).json()
    series = [x for x in stats["series"] if x["version"] == "v1"][0]
    assert series["succeeded"] == 5 and series["failures"] == {}
    # The bad request is counted, under no version.
    refused = [x for x in stats["series"] if x["version"] == ""][0]
    assert refused["failures"] == {"invalid_input": 1}
    assert series["alias"] == "prod" and series["total_s"]["p99"] > 0
    events = requests.get(server.url + "/v2/lepton/events?model=m", headers=auth()).json()
    assert any(e["kind"] == "load" and e["version"] == "v1" for e in events)
    text = requests.get(server.url + "/metrics").text
    assert '# TYPE lepton_requests_total counter' in text
    rss = re.search(r"^process_resident_memory_bytes (\d+)$", text, re.M)
    threads = re.search(r"^process_threads (\d+)$", text, re.M)
    assert rss and int(rss.group(1)) > 50 << 20 and threads and int(threads.group(1)) > 2, text[-400:]
    assert re.search(r'lepton_requests_total\{model="m",version="v1",alias="prod",policy="fixed"\} 5', text)
    assert re.search(r'lepton_request_failures_total\{model="m",version="",alias="prod",policy="fixed",'
                     r'reason="invalid_input"\} 1', text)
    assert not re.search(r'lepton_request_failures_total\{model="m",version="v1",[^}]*\} [1-9]', text)
    assert 'lepton_request_duration_seconds_bucket{model="m",version="v1",alias="prod",policy="fixed",le="+Inf"} 5' in text
    assert re.search(r'lepton_cpu_threads\{model="m",version="v1"\} \d', text)
    # Requests refused before any version was chosen are counted at the HTTP level.
    requests.post(server.url + "/v2/models/m/infer", data="{bad")
    requests.get(server.url + "/v2/lepton/models/m/stats")  # no token
    text = requests.get(server.url + "/metrics").text
    assert 'lepton_http_requests_total{endpoint="infer",code="200"} 5' in text
    assert 'lepton_http_requests_total{endpoint="infer",code="400"} 2' in text
    assert 'lepton_http_requests_total{endpoint="management",code="401"} 1' in text
    assert 'lepton_http_request_duration_seconds_count{endpoint="infer"} 7' in text
    assert requests.get(server.url + "/v2/lepton/events?since=x", headers=auth()).status_code == 400


def test_curl_works_unchanged(server):
    out = subprocess.run(["curl", "-s", "-X", "POST", server.url + "/v2/models/m/infer", "-H",
                          "Content-Type: application/json", "-d",
                          json.dumps(infer_body(torch.ones(1, 4)))], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["outputs"][0]["data"] == [2, 2, 2, 2]
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", server.url + "/v2/repository/index",
                          "-X", "POST", "-d", "{}"], capture_output=True, text=True, check=True)
    assert out.stdout == "401"


# --- concurrency ---

def test_concurrent_clients_during_hot_swaps_lose_nothing(server, reg):
    stop = threading.Event()
    failures, answered = [], []

    def client():
        with requests.Session() as session:
            while not stop.is_set():
                r = session.post(server.url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 4)))
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    answered.append(r.json()["model_version"])

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        for target, expected in (("v2", "v1"), ("v3", "v2"), ("v1", "v3")):
            r = requests.put(server.url + "/v2/lepton/models/m/aliases/prod", headers=auth(),
                             json={"version": target, "expected": expected})
            assert r.status_code == 200
            wait_for(lambda: answered and answered[-1] == target)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures
    assert {"v1", "v2", "v3"} <= set(answered) and len(answered) > 30


# --- lepton serve ---

def test_lepton_serve_command_serves_and_stops_on_sigterm(reg, tmp_path, python_env):
    config = tmp_path / "serve.json"
    config.write_text(json.dumps({"models": {"m": {"versions": ["v1", "v2"],
                                                  "policy": {"type": "weighted", "weights": {"v1": 1, "v2": 0}}}},
                                  "only": True}))
    env = dict(python_env, LEPTON_TOKEN=TOKEN)
    log = tmp_path / "events.jsonl"
    with lepton_serve(["--registry", reg.path, "--port", "0", "--config", str(config), "--log-file", str(log)],
                      env) as (proc, url):
        r = requests.post(url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 4)))
        assert r.json()["model_version"] == "v1" and r.json()["parameters"]["lepton_policy"] == "weighted"
        assert requests.get(url + "/v2/lepton/models", headers=auth()).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    kinds = [json.loads(line)["kind"] for line in log.read_text().splitlines()]
    assert "stop" in kinds and "close" in kinds


def test_serve_refuses_bad_configuration(reg):
    with pytest.raises(lepton.InvalidArgument, match="unknown policy type"):
        lepton.serve(reg, port=0, models={"m": {"policy": {"type": "coin"}}})
    with pytest.raises(lepton.NotFound):
        lepton.serve(reg, port=0, models={"ghost": None}, only=True)
    with lepton.serve(reg, port=0, models={"m": None}, only=True) as s:
        with pytest.raises(lepton.Unavailable):
            lepton.serve(reg, port=s.port, models={"m": None}, only=True)
    with pytest.raises(lepton.InvalidArgument, match="io_threads"):
        lepton.serve(reg, port=0, models={"m": None}, only=True, io_threads=0)
    with pytest.raises(lepton.InvalidArgument, match="busy_poll_us"):
        lepton.serve(reg, port=0, models={"m": None}, only=True, busy_poll_us=-1)


def test_a_slow_model_does_not_hold_up_its_event_loop(reg):
    # One event loop and no polling: while a slow forward blocks the loop's thread, a helper
    # serves the loop's other connections.
    with lepton.serve(reg, port=0, token=TOKEN, models={"spin": None, "m": None}, only=True,
                      io_threads=1, busy_poll_us=0) as s:
        slow = threading.Thread(target=lambda: requests.post(
            s.url + "/v2/models/spin/infer", json=infer_body(torch.full((1, 2), 400.0))))
        slow.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        for _ in range(10):
            assert requests.post(s.url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 4))).status_code == 200
        quick = time.monotonic() - t0
        slow.join()
        total = time.monotonic() - t0
        assert quick < total / 2, (quick, total)


def infer_version(server):
    return requests.post(server.url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 4))).json()["model_version"]


def test_listen_backlog_takes_many_simultaneous_connections(server):
    # Connections that arrive together all complete their handshake (a short backlog would drop
    # some and make them retry a second later).
    out = subprocess.run(["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True, text=True, check=True).stdout
    backlog = int(out.split()[2])  # State Recv-Q Send-Q ...: Send-Q is the backlog of a listener
    assert backlog >= 128
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(64)]
    try:
        for s in socks:
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        for s in socks:
            s.settimeout(10)
            assert s.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        for s in socks:
            s.close()


def test_serve_takes_policy_objects_and_refuses_a_bad_configuration_by_name(reg):
    models = {"m": {"versions": ["v1", "v2"], "policy": lepton.Weighted({"v1": 0, "v2": 1})}}
    with lepton.serve(reg, port=0, token=TOKEN, models=models, only=True) as s:
        r = requests.post(s.url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 4)))
        assert r.json()["model_version"] == "v2" and r.json()["parameters"]["lepton_policy"] == "weighted"
    with pytest.raises(lepton.InvalidArgument, match="'io_threads' must be in"):
        lepton.serve(reg, port=0, io_threads=0)
    with pytest.raises(lepton.InvalidArgument, match="unknown field 'max_batch'"):
        lepton.serve(reg, port=0, max_batch=3)
    with pytest.raises(lepton.InvalidArgument, match="model 'm': .*unknown policy type"):
        lepton.serve(reg, port=0, models={"m": {"policy": {"type": "nope"}}})
