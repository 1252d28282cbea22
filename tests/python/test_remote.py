"""Versions served by another process over the Open Inference Protocol (a real `lepton serve`),
as members of a local deployment: they answer, take part in canaries that complete and that roll
back, in ensembles and shadows, time out at the request's deadline, and an endpoint that goes
away fails only its own requests (Unavailable) and is ejected."""
import json
import subprocess
import sys

import pytest
import requests
import torch

import lepton
from conftest import AddN, FailsOnNegative, Spin, lepton_serve, wait_for


@pytest.fixture
def endpoint(tmp_path, python_env):
    """`lepton serve` in a child process over a registry of its own: m:v3 (x + 3), m:bad (raises on
    negative input), m:slow (busy for as long as asked)."""
    far = lepton.Registry(tmp_path / "far", actor="tester")
    far.register("m", torch.jit.script(AddN(3)), version="v3", example_inputs=torch.zeros(1, 4))
    far.register("m", torch.jit.script(FailsOnNegative()), version="bad", example_inputs=torch.zeros(1, 4))
    far.register("m", torch.jit.script(Spin()), version="slow", example_inputs=torch.zeros(1, 4))
    config = tmp_path / "far.json"
    config.write_text(json.dumps({"models": {"m": {"versions": ["v3", "bad", "slow"]}}, "only": True}))
    with lepton_serve(["--registry", far.path, "--port", "0", "--config", str(config), "--no-ui"],
                      python_env) as (proc, url):
        yield proc, url


@pytest.fixture
def near(registry):
    registry.register("m", torch.jit.script(AddN(1)), version="v1", example_inputs=torch.zeros(1, 4))
    return registry


def test_a_remote_version_answers_like_a_local_one(near, endpoint):
    _, url = endpoint
    with lepton.Deployment(near, "m", ["v1", lepton.Remote(url, model="m", version="v3")]) as dep:
        assert dep.versions == ["v1", "v3"]
        assert dep.predict(torch.zeros(2, 4), version="v1").output.tolist() == [[1.0] * 4] * 2
        p = dep.predict(torch.zeros(2, 4), version="v3")
        assert p.version == "v3" and p.output.tolist() == [[3.0] * 4] * 2
        [v3] = [v for v in dep.status()["versions"] if v["version"] == "v3"]
        assert v3["placement"] == "remote" and v3["health"] == "ready" and v3["succeeded"] == 1
        # Its inputs are checked here, from the endpoint's metadata, before anything is sent.
        with pytest.raises(lepton.InvalidArgument):
            dep.predict(torch.zeros(2, 5, dtype=torch.int64), version="v3")
        # JSON lists instead of binary data give the same answer.
    with lepton.Deployment(near, "m", [lepton.Remote(url, model="m", version="v3", binary=False)]) as dep:
        assert dep.predict(torch.ones(1, 4)).output.tolist() == [[4.0] * 4]


def test_a_canary_to_a_remote_version_completes(near, endpoint):
    _, url = endpoint
    with lepton.Deployment(near, "m", ["v1", lepton.Remote(url, model="m", version="v3")]) as dep:
        canary = lepton.Canary("v1", "v3", steps=[0.5, 1.0], step_requests=20,
                               guardrails=lepton.Guardrails(min_requests=5, max_latency_ratio=1000,
                                                            latency_slack_s=1.0))
        dep.set_policy(canary)
        for _ in range(400):
            dep.predict(torch.zeros(1, 4))
            if canary.phase == "promoted":
                break
            dep.tick()
        assert canary.phase == "promoted", dep.policy_report()
        assert dep.predict(torch.zeros(1, 4)).version == "v3"


def test_a_canary_to_a_failing_remote_version_rolls_back(near, endpoint):
    _, url = endpoint
    with lepton.Deployment(near, "m", ["v1", lepton.Remote(url, model="m", version="bad")]) as dep:
        canary = lepton.Canary("v1", "bad", steps=[0.5, 1.0], step_requests=10_000,
                               guardrails=lepton.Guardrails(min_requests=10))
        dep.set_policy(canary)
        failures = 0
        for _ in range(200):
            try:
                dep.predict(-torch.ones(1, 4))
            except lepton.ModelError as e:
                assert "answered HTTP 500: the model failed" in str(e)
                failures += 1
        assert canary.phase == "rolled_back"
        assert 10 <= failures < 100


def test_an_ensemble_over_a_local_and_a_remote_member_and_a_remote_shadow(near, endpoint):
    _, url = endpoint
    with lepton.Deployment(near, "m", ["v1", lepton.Remote(url, model="m", version="v3")],
                           policy=lepton.Ensemble({"v1": 0.5, "v3": 0.5})) as dep:
        p = dep.predict(torch.zeros(3, 4))
        assert p.output.tolist() == [[2.0] * 4] * 3 and sorted(p.versions) == ["v1", "v3"]
        dep.set_policy(lepton.Shadow("v1", ["v3"]))
        for _ in range(10):
            assert dep.predict(torch.zeros(1, 4)).version == "v1"
        assert wait_for(lambda: sum(s["compared"] + s["dropped"] for s in dep.shadow_report()) == 10)
        [s] = dep.shadow_report()
        assert s["compared"] >= 1 and s["failed"] == 0 and s["max_abs_diff"] == pytest.approx(2.0)


def test_a_remote_request_times_out_at_its_deadline(near, endpoint):
    _, url = endpoint
    with lepton.Deployment(near, "m", [lepton.Remote(url, model="m", version="slow")]) as dep:
        with pytest.raises(lepton.Timeout):
            dep.predict(torch.full((1, 4), 2000.0), timeout=0.1)
        assert dep.predict(torch.zeros(1, 4)).output.tolist() == [[0.0] * 4]


def test_an_endpoint_that_goes_away_fails_only_its_requests_and_is_ejected(near, endpoint):
    proc, url = endpoint
    remote = lepton.Remote(url, model="m", version="v3", eject_after=3, eject_for=60, retries=1)
    with lepton.Deployment(near, "m", ["v1", remote]) as dep:
        assert dep.predict(torch.zeros(1, 4), version="v3").output.tolist() == [[3.0] * 4]
        proc.kill()
        proc.wait()
        errors = []
        for _ in range(5):
            with pytest.raises(lepton.Unavailable) as e:
                dep.predict(torch.zeros(1, 4), version="v3")
            errors.append(str(e.value))
            assert dep.predict(torch.zeros(1, 4), version="v1").output.tolist() == [[1.0] * 4]
        assert "cannot be reached" in errors[0]
        assert "ejected after 3 failures in a row" in errors[-1]
        [v3] = [v for v in dep.status()["versions"] if v["version"] == "v3"]
        assert v3["health"] == "failed"


def test_an_unreachable_endpoint_is_a_load_error_and_bad_specs_are_refused(near):
    with pytest.raises(lepton.LoadError, match="cannot be reached"):
        lepton.Deployment(near, "m", [lepton.Remote("http://127.0.0.1:1", model="m", connect_timeout=2)])
    with pytest.raises(lepton.InvalidArgument, match="https"):
        lepton.Deployment(near, "m", [lepton.Remote("https://example.com", model="m")])
    with pytest.raises(lepton.InvalidArgument, match="same name"):
        lepton.Deployment(near, "m", [lepton.Remote("http://a:1", model="m"), lepton.Remote("http://b:1", model="m")])


def test_kubernetes_manifests_put_each_version_in_its_own_pods_behind_a_router(near, endpoint, tmp_path):
    import yaml

    import test_deploy

    test_deploy.MODELS.setdefault(("v1", "ConfigMap"), "V1ConfigMap")
    test_deploy.MODELS.setdefault(("v1", "Namespace"), "V1Namespace")
    out = tmp_path / "m.yaml"
    policy = {"type": "canary", "stable": "v3", "candidate": "bad", "steps": [0.1, 1.0]}
    r = subprocess.run([sys.executable, "-m", "lepton", "k8s", "m", "v3", "bad", "--namespace", "ml",
                        "--namespace-per-version", "--policy", json.dumps(policy), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    objects = [d for d in yaml.safe_load_all(out.read_text()) if d is not None]
    for o in objects:
        test_deploy.validate_kubernetes(o)
    kinds = [(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in objects]
    assert kinds == [
        ("Namespace", "ml-v3", None), ("Deployment", "lepton-m-v3", "ml-v3"), ("Service", "lepton-m-v3", "ml-v3"),
        ("Namespace", "ml-bad", None), ("Deployment", "lepton-m-bad", "ml-bad"), ("Service", "lepton-m-bad", "ml-bad"),
        ("ConfigMap", "lepton-m-router", "ml"), ("Deployment", "lepton-m-router", "ml"),
        ("Service", "lepton-m-router", "ml")]
    by = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    # Each version's pods serve that version alone; the Services find them.
    for v in ("v3", "bad"):
        dep = by[("Deployment", f"lepton-m-{v}")]
        assert dep["spec"]["template"]["spec"]["containers"][0]["args"] == ["--model", f"m={v}", "--only"]
        assert by[("Service", f"lepton-m-{v}")]["spec"]["selector"].items() <= \
            dep["spec"]["template"]["metadata"]["labels"].items()
    router = by[("Deployment", "lepton-m-router")]["spec"]["template"]["spec"]
    assert router["containers"][0]["args"] == ["--config", "/etc/lepton/router.json"]
    assert router["volumes"][1]["configMap"]["name"] == "lepton-m-router"
    config = json.loads(by[("ConfigMap", "lepton-m-router")]["data"]["router.json"])
    remotes = config["models"]["m"]["remotes"]
    assert remotes["v3"]["url"] == "http://lepton-m-v3.ml-v3.svc.cluster.local:8000"
    assert config["models"]["m"]["policy"] == policy
    # The router's configuration runs: pointed at a real endpoint, it serves the canary over it.
    _, url = endpoint
    for spec in remotes.values():
        spec["url"] = url
    with lepton.serve(near, port=0, **config) as server:
        answers = set()
        for _ in range(40):
            res = requests.post(server.url + "/v2/models/m/infer",
                                json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                                  "data": [1, 1, 1, 1]}]})
            assert res.status_code == 200, res.text
            answers.add(res.json()["model_version"])
        assert answers == {"v3", "bad"}
