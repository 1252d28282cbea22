import json
import logging
import time

import pytest
import torch

import lepton
from conftest import AddN, FailsOnNegative


@pytest.fixture
def reg(registry):
    registry.register("m", AddN(1), version="v1", example_inputs=torch.zeros(1, 4))
    registry.register("m", AddN(2), version="v2", example_inputs=torch.zeros(1, 4))
    registry.register("f", FailsOnNegative(), version="f1", example_inputs=torch.zeros(1, 4))
    return registry


def test_metrics_dicts_frame_and_prometheus(reg):
    with lepton.Deployment(reg, "m", ["v1", "v2"], policy=lepton.Weighted({"v1": 1, "v2": 1})) as d:
        for _ in range(40):
            d.predict(torch.zeros(2, 4))
        with pytest.raises(lepton.InvalidArgument):
            d.predict(torch.zeros(2, 5), version="v1")
        m = d.metrics()
        by_version = {(x["version"], x["policy"]): x for x in m["series"]}
        assert sum(x["succeeded"] for x in m["series"]) == 40
        # A client's bad input counts under no version.
        assert [x["version"] for x in m["series"] if x["failures"].get("invalid_input")] == [""]
        series = by_version[("v1", "weighted")]
        assert series["total_s"]["p99"] >= series["total_s"]["p50"] > 0
        assert series["batch_rows"]["mean"] == 2
        assert {v["version"] for v in m["versions"]} == {"v1", "v2"}
        assert all(v["health"] == "ready" and v["weight_bytes"] > 0 for v in m["versions"])
        frame = d.metrics_frame()
        assert set(frame["version"]) == {"v1", "v2", ""}
        assert frame["requests"].sum() == 41 and "total_p99_ms" in frame.columns
        text = d.prometheus()
        assert 'lepton_requests_total{model="m",version="v1",alias="",policy="weighted"}' in text
        assert "# TYPE lepton_request_duration_seconds histogram" in text


def test_model_errors_count_by_reason_and_reach_logging(reg, caplog, tmp_path):
    path = tmp_path / "events.jsonl"
    lepton.logs.log_to_file(path)
    try:
        with caplog.at_level(logging.INFO, logger="lepton"):
            with lepton.Deployment(reg, "f", ["f1"]) as d:
                for _ in range(3):
                    with pytest.raises(lepton.ModelError):
                        d.predict(-torch.ones(1, 4))
                d.predict(torch.ones(1, 4))
                series = d.metrics()["series"][0]
                assert series["failures"]["model_error"] == 3 and series["succeeded"] == 1
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and not any(
                        "model_error" in r.getMessage() for r in caplog.records):
                    time.sleep(0.05)
    finally:
        lepton.logs.log_to_file(None)
    messages = [r.getMessage() for r in caplog.records if r.name == "lepton"]
    # One model-error event per second at most: three failures, one event.
    assert sum("model_error f:f1" in m for m in messages) == 1
    assert any(r.levelno == logging.ERROR and "negative input" in r.getMessage() for r in caplog.records)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert {"load", "model_error", "close"} <= {e["kind"] for e in lines}
    assert lepton.logs.recent_events(200, model="f")[-1]["kind"] == "close"
    assert all(e["model"] == "f" for e in lepton.logs.events(model="f"))


def test_swaps_and_alias_moves_are_events(reg):
    reg.set_alias("m", "prod", "v1")
    seq = lepton.logs.recent_events(1)[-1]["seq"] if lepton.logs.recent_events(1) else 0
    with lepton.Deployment(reg, "m", alias="prod", alias_poll_interval=0.02) as d:
        reg.set_alias("m", "prod", "v2")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and d.status()["primary"] != "v2":
            time.sleep(0.02)
        d.predict(torch.zeros(1, 4))
    kinds = [(e["kind"], e["version"]) for e in lepton.logs.events(seq, model="m")]
    assert ("alias", "v2") in kinds and ("swap", "v2") in kinds and ("drained", "v1") in kinds
    alias_event = [e for e in lepton.logs.events(seq, model="m") if e["kind"] == "alias"][0]
    assert alias_event["details"] == {"alias": "prod", "from": "v1", "to": "v2"}
