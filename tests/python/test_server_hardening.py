"""`lepton serve` against clients without the token, careless clients and broken artifacts."""
import os
import re
import socket
import time

import pytest
import requests
import torch

import lepton
from conftest import AddN, wait_for

TOKEN = "s3cret-token"


def auth():
    return {"Authorization": f"Bearer {TOKEN}"}


def infer_body(x, name="x", **extra):
    x = torch.as_tensor(x)
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                        "data": x.flatten().tolist()}], **extra}


@pytest.fixture
def reg(registry):
    for n in (1, 2):
        registry.register("m", AddN(n), version=f"v{n}", example_inputs=torch.zeros(1, 4))
    registry.set_alias("m", "prod", "v1", reason="first release")
    return registry


AB_TEST = {"type": "ab_test", "control": "v1", "treatment": "v2", "alias": "prod", "min_samples": 30}


def _drive_ab_test(url, headers):
    """Infer, and reward v2 only, until the test decides or 2,000 requests pass; the statuses of
    the feedback calls."""
    statuses = []
    for _ in range(2000):
        reply = requests.post(url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 4))).json()
        reward = 1.0 if reply["model_version"] == "v2" else 0.0
        f = requests.post(url + "/v2/lepton/models/m/feedback", headers=headers,
                          json={"request_id": reply["parameters"]["lepton_request_id"], "reward": reward})
        statuses.append(f.status_code)
        if f.status_code != 200:
            break
        report = requests.get(url + "/v2/lepton/models/m/policy", headers=auth()).json()["report"]
        if report.get("winner"):
            break
    return statuses


def test_feedback_without_the_token_cannot_move_production(reg):
    models = {"m": {"versions": ["v1", "v2"], "policy": AB_TEST}}
    with lepton.serve(reg, port=0, token=TOKEN, models=models, only=True) as s:
        assert _drive_ab_test(s.url, {}) == [401]
        time.sleep(0.2)  # a switch would have been applied by now (the controller ticks at 20 ms)
        assert reg.get("m@prod").version == "v1"
        assert not [e for e in reg.history("m") if e.action == "ab_promote"]
    # With open_feedback, feedback that can move an alias still needs the token.
    with lepton.serve(reg, port=0, token=TOKEN, models=models, only=True, open_feedback=True) as s:
        assert _drive_ab_test(s.url, {}) == [401]
    assert reg.get("m@prod").version == "v1"


def test_open_feedback_takes_rewards_that_move_no_alias(reg):
    models = {"m": {"versions": ["v1", "v2"], "policy": {"type": "bandit", "versions": ["v1", "v2"], "seed": 1}}}
    with lepton.serve(reg, port=0, token=TOKEN, models=models, only=True, open_feedback=True) as s:
        rid = requests.post(s.url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 4))).json()
        rid = rid["parameters"]["lepton_request_id"]
        assert requests.post(s.url + "/v2/lepton/models/m/feedback", json={"request_id": rid, "reward": 1}).status_code == 200


def test_an_automatic_switch_records_who_sent_the_feedback(reg):
    models = {"m": {"versions": ["v1", "v2"], "policy": AB_TEST}}
    with lepton.serve(reg, port=0, token=TOKEN, models=models, only=True) as s:
        statuses = _drive_ab_test(s.url, auth())
        assert set(statuses) == {200}
        assert wait_for(lambda: reg.get("m@prod").version == "v2")
    entry = [e for e in reg.history("m") if e.action == "ab_promote"][-1]
    sources = entry.details["feedback_sources"]
    assert len(sources) == 1
    assert sources == {"http 127.0.0.1 with the token": sources.get("http 127.0.0.1 with the token")}
    assert sources["http 127.0.0.1 with the token"] > 0


def test_request_ids_are_128_random_bits(reg):
    with lepton.serve(reg, port=0, token=TOKEN) as s:
        ids = [requests.post(s.url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 4))).json()
               ["parameters"]["lepton_request_id"] for _ in range(50)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == 50
    # No shared prefix or counter: neighbouring ids differ in about half their bits.
    distances = [bin(int(a, 16) ^ int(b, 16)).count("1") for a, b in zip(ids, ids[1:])]
    assert min(distances) > 30 and sum(distances) / len(distances) > 50


def test_a_very_large_timeout_is_no_deadline_in_the_past(reg):
    with lepton.serve(reg, port=0, token=TOKEN) as s:
        for name in ("timeout", "lepton_timeout"):  # microseconds, as Triton's; seconds
            for timeout in (1e10, 1e300):
                r = requests.post(s.url + "/v2/models/m/infer",
                                  json=infer_body(torch.zeros(1, 4), parameters={name: timeout}))
                assert r.status_code == 200, r.text


def test_wrong_input_names_are_refused_and_charged_to_no_version(reg):
    with lepton.serve(reg, port=0, token=TOKEN, models={"m": "@prod"}, only=True) as s:
        r = requests.post(s.url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 4), name="zzz"))
        assert r.status_code == 400 and "zzz" in r.json()["error"] and "'x'" in r.json()["error"]
        r = requests.post(s.url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 5)))
        assert r.status_code == 400
        assert requests.post(s.url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 4))).status_code == 200
        stats = requests.get(s.url + "/v2/lepton/models/m/stats", headers=auth()).json()
        by_version = {x["version"]: x for x in stats["series"]}
        assert by_version["v1"]["failures"] == {} and by_version["v1"]["succeeded"] == 1
        assert by_version[""]["failures"] == {"invalid_input": 2}


def test_a_followed_alias_that_cannot_load_is_said_once_as_an_error(reg):
    bad = reg.register("m", AddN(9.0), version="v9")
    path = os.path.join(reg.path, "blobs", "sha256", bad.sha256[:2], bad.sha256)
    with open(path, "rb") as f:
        data = f.read()
    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(data[:-10] + b"corrupted!")
    since = lepton._core.last_event_seq()
    with lepton.serve(reg, port=0, token=TOKEN, models={"m": "@prod"}, only=True) as s:
        reg.set_alias("m", "prod", "v9")
        status_url = s.url + "/v2/lepton/models/m/stats"
        assert wait_for(lambda: requests.get(status_url, headers=auth()).json().get("alias_target_failed") == "v9")
        time.sleep(1.0)  # five polls of the alias
        status = requests.get(status_url, headers=auth()).json()
        assert status["primary"] == "v1" and "v9" in status["last_error"]
        events = requests.get(s.url + f"/v2/lepton/events?model=m&since={since}", headers=auth()).json()
        failed = [e for e in events if e["kind"] == "alias_follow_failed"]
        assert len(failed) == 1 and failed[0]["level"] == "error"
        assert not [e for e in events if e["kind"] == "alias" and "v9" in e["message"]]
        text = requests.get(s.url + "/metrics").text
        assert 'lepton_alias_target_unloadable{model="m",alias="prod"} 1' in text
        # The previous version goes on answering.
        r = requests.post(s.url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 4)))
        assert r.status_code == 200 and r.json()["model_version"] == "v1"
        # Moving the alias to a good version clears it.
        reg.set_alias("m", "prod", "v2")
        assert wait_for(lambda: requests.get(status_url, headers=auth()).json()["primary"] == "v2")
        status = requests.get(status_url, headers=auth()).json()
        assert status["alias_target_failed"] is None
        assert 'lepton_alias_target_unloadable{model="m",alias="prod"} 0' in requests.get(s.url + "/metrics").text


def test_prometheus_bucket_labels_match_hand_written_selectors(reg):
    with lepton.serve(reg, port=0, token=TOKEN) as s:
        requests.post(s.url + "/v2/models/m/infer", json=infer_body(torch.zeros(1, 4)))
        text = requests.get(s.url + "/metrics").text
    assert re.search(r'lepton_request_duration_seconds_bucket\{[^}]*le="0\.1"\} \d', text)
    assert "0000000000" not in text


def test_request_smuggling_gets_one_400_and_a_closed_connection(reg):
    with lepton.serve(reg, port=0, token=TOKEN) as s:
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            c.sendall(b"POST /v2/health/ready HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
                      b"0\r\n\r\nGET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    break
                data += chunk
    assert data.startswith(b"HTTP/1.1 400") and data.count(b"HTTP/1.1") == 1, data
