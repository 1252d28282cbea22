import json
import math
import random
import time

import numpy as np
import pytest
import torch

import lepton
from conftest import AddN, wait_for


class FailsOnLargeInput(torch.nn.Module):
    """Adds 3, but fails when the input's mean is above 0.5 (warm-up uses zeros)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.mean() > 0.5):
            raise RuntimeError("broken on large inputs")
        return x + 3


@pytest.fixture
def reg(registry):
    for n in (1, 2, 3):
        registry.register("m", AddN(n), version=f"v{n}", example_inputs=torch.zeros(1, 4))
    registry.register("m", FailsOnLargeInput(), version="bad", example_inputs=torch.zeros(1, 4))
    registry.set_alias("m", "prod", "v1", reason="first release")
    return registry


def answered_by(pred):
    return {1.0: "v1", 2.0: "v2", 3.0: "v3"}[float(pred.output[0, 0])]


# --- weighting math ---


def test_weights_formulas_against_hand_computed_values():
    w = lepton.weights
    assert w.performance_average([0.9, 0.85, 0.88], [0.5, 0.3, 0.2]) == pytest.approx(0.881)
    np.testing.assert_allclose(w.time_based([2, 3, 4], [1, 2, 3]), [1 / 3, 1 / 5, 1 / 7])
    np.testing.assert_allclose(w.request_share([100, 50, 30]), [100 / 180, 50 / 180, 30 / 180])
    np.testing.assert_allclose(w.resource_share([1, 3]), [0.25, 0.75])
    np.testing.assert_allclose(w.normalize([2, 2, 4]), [0.25, 0.25, 0.5])
    np.testing.assert_allclose(w.softmax([0, math.log(3)]), [0.25, 0.75])
    np.testing.assert_allclose(w.softmax([0, math.log(3)], temperature=0.5), [0.1, 0.9])
    fused = w.fuse(np.array([[1.0, 2.0]]), np.array([[3.0, 4.0]]), 0.25)
    np.testing.assert_allclose(fused, [[2.5, 3.5]])
    t = w.fuse(torch.ones(2, 2), torch.zeros(2, 2), 0.7)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert torch.allclose(t, torch.full((2, 2), 0.7))


@pytest.mark.parametrize(
    "call",
    [
        lambda w: w.performance_average([1, 2], [1]),
        lambda w: w.normalize([1, -1]),
        lambda w: w.normalize([0, 0]),
        lambda w: w.normalize([1, float("nan")]),
        lambda w: w.fuse([1.0], [2.0], 1.5),
        lambda w: w.fuse([1.0], [2.0, 3.0], 0.5),
        lambda w: w.softmax([1, 2], temperature=0),
        lambda w: w.time_based([0], [0]),
        lambda w: w.request_share([[1, 2]]),
        lambda w: w.fit_ensemble_weights([], [1.0]),
        lambda w: w.fit_ensemble_weights([[0.5, 0.5]], [0, 1], loss="hinge"),
    ],
)
def test_weights_bad_input_is_a_typed_error(call):
    with pytest.raises(lepton.InvalidArgument):
        call(lepton.weights)


def test_fit_ensemble_weights_and_allocate():
    rng = np.random.default_rng(0)
    p = [rng.normal(size=200) for _ in range(3)]
    y = 0.25 * p[0] + 0.75 * p[2]
    fit = lepton.weights.fit_ensemble_weights(p, y, "mse")
    np.testing.assert_allclose(fit.weights, [0.25, 0.0, 0.75], atol=1e-6)
    assert fit.loss < 1e-10 and fit.gap < 1e-8
    labels = rng.integers(0, 2, size=300)
    good = np.where(labels == 1, 0.8, 0.2)
    noise = rng.uniform(0.01, 0.99, size=300)
    fit = lepton.weights.fit_ensemble_weights([good, noise], labels, "logloss")
    assert fit.weights[0] > 0.9
    a = lepton.weights.allocate([[2, 1], [1, 2]], [2, 2], [3, 2], resource_names=["cpu", "memory"])
    np.testing.assert_allclose(a.shares, [2 / 3, 2 / 3])
    assert a.objective == pytest.approx(10 / 3)
    with pytest.raises(lepton.InvalidArgument, match="resource 'memory'"):
        lepton.weights.allocate([[2, 1], [1, 2]], [2, 1], [1, 1], min_share=[0.5, 0.5], resource_names=["cpu", "memory"])


# --- splitting ---


def test_weighted_split_within_three_sigma_and_predictions_say_why(reg):
    weights = {"v1": 0.7, "v2": 0.2, "v3": 0.1}
    policy = lepton.Weighted(weights)
    n = 100_000
    counts = {v: 0 for v in weights}
    for _ in range(n):
        counts[policy.select(list(weights))[0]] += 1
    for v, w in weights.items():
        assert abs(counts[v] - n * w) <= 3 * math.sqrt(n * w * (1 - w)), (v, counts)
    with lepton.Deployment(reg, "m", ["v1", "v2", "v3"], policy=policy) as dep:
        seen = set()
        for _ in range(200):
            p = dep.predict(torch.zeros(1, 4))
            assert p.policy == "weighted" and "weighted split" in p.route
            assert answered_by(p) == p.version
            seen.add(p.version)
        assert seen == {"v1", "v2", "v3"}


def test_sticky_keys_stable_across_calls_and_restarts(reg):
    policy = lambda: lepton.Weighted({"v1": 1, "v2": 1, "v3": 1}, sticky=True)  # noqa: E731
    keys = [f"user-{i}" for i in range(60)]
    with lepton.Deployment(reg, "m", ["v1", "v2", "v3"], policy=policy()) as dep:
        first = {k: dep.predict(torch.zeros(1, 4), key=k).version for k in keys}
        for k in keys:
            assert dep.predict(torch.zeros(1, 4), key=k).version == first[k]
    with lepton.Deployment(reg, "m", ["v1", "v2", "v3"], policy=policy()) as dep:
        assert {k: dep.predict(torch.zeros(1, 4), key=k).version for k in keys} == first
    assert len(set(first.values())) == 3


def test_bad_policies_are_refused_and_the_deployment_keeps_serving(reg):
    with pytest.raises(lepton.InvalidArgument):
        lepton.Weighted({"v1": -1, "v2": 2})
    with pytest.raises(lepton.InvalidArgument):
        lepton.Weighted({"v1": 0})
    with pytest.raises(lepton.InvalidArgument):
        lepton.Canary("v1", "v2", steps=[0.5, 0.1])
    with pytest.raises(lepton.InvalidArgument):
        lepton.Bandit(["v1"], algorithm="softmax")
    with pytest.raises(lepton.InvalidArgument):
        lepton.TimeBased([(0, "v1")], mode="sometimes")
    with lepton.Deployment(reg, "m", ["v1", "v2"]) as dep:
        with pytest.raises(lepton.NotFound, match="v9"):
            dep.set_policy(lepton.Weighted({"v1": 1, "v9": 1}))
        with pytest.raises(lepton.InvalidArgument):
            dep.set_policy("weighted")
        with pytest.raises(lepton.NotFound):
            dep.feedback("no-such-request", 1.0)
        assert dep.predict(torch.zeros(1, 4)).version == "v1"


# --- canary ---


def test_canary_promotes_and_moves_the_alias(reg):
    with lepton.Deployment(reg, "m", alias="prod") as dep:
        canary = lepton.Canary(
            "v1", "v2", steps=[0.2, 0.5, 1.0], step_requests=60, guardrails=lepton.Guardrails(min_requests=10, max_latency_ratio=20)
        )
        dep.add("v2", policy=canary)
        shares = []
        for _ in range(6):
            got = [dep.predict(torch.zeros(1, 4)).version for _ in range(60)]
            shares.append(got.count("v2") / len(got))
            dep.tick()
        assert wait_for(lambda: canary.phase == "promoted"), dep.policy_report()
        assert shares[0] < shares[-1] == 1.0
        assert wait_for(lambda: any(e.action == "canary_promote" for e in reg.history("m")))
        assert reg.get("m@prod").version == "v2"
        entry = [e for e in reg.history("m") if e.action == "canary_promote"][-1]
        assert entry.to_version == "v2" and entry.details["v2"]["requests"] >= 10
        assert wait_for(lambda: len(dep.events()) == 1)
        [event] = dep.events()
        assert event["kind"] == "promote" and "moved m@prod to v2" in event["note"]
        assert dep.predict(torch.zeros(1, 4)).version == "v2"


def test_canary_breach_rolls_back_at_once_and_the_alias_is_back(reg):
    reg.set_alias("m", "prod", "bad", reason="release bad")
    with lepton.Deployment(reg, "m", ["v1", "bad"]) as dep:
        canary = lepton.Canary(
            "v1", "bad", steps=[0.5, 1.0], step_requests=10_000, alias="prod", guardrails=lepton.Guardrails(min_requests=10)
        )
        dep.set_policy(canary)
        failures = 0
        for _ in range(200):
            try:
                dep.predict(torch.ones(1, 4))
            except lepton.ModelError:
                failures += 1
        assert canary.phase == "rolled_back"
        assert 10 <= failures < 100  # it stopped sending traffic to the failing version at once
        assert wait_for(lambda: any(e.action == "canary_rollback" for e in reg.history("m")))
        assert reg.get("m@prod").version == "v1"
        entry = [e for e in reg.history("m") if e.action == "canary_rollback"][-1]
        assert "error rate" in entry.reason
        p = dep.predict(torch.ones(1, 4))
        assert p.version == "v1" and "rolled back" in p.route


# --- shadow ---


def test_shadow_mirrors_off_path_and_compares_outputs(reg):
    with lepton.Deployment(reg, "m", ["v1", "v2"], policy=lepton.Shadow("v1", ["v2"])) as dep:
        for _ in range(30):
            p = dep.predict(torch.zeros(2, 4))
            assert p.version == "v1" and float(p.output[0, 0]) == 1.0
        assert wait_for(lambda: sum(s["compared"] + s["dropped"] for s in dep.shadow_report()) == 30)
        [s] = dep.shadow_report()
        assert (s["primary"], s["mirror"]) == ("v1", "v2")
        assert s["compared"] >= 1 and s["failed"] == 0
        assert s["max_abs_diff"] == pytest.approx(1.0) and s["mean_abs_diff"] == pytest.approx(1.0)
        assert s["argmax_agreement"] == pytest.approx(1.0)


# --- learning policies ---


def test_bandit_learns_from_feedback_and_its_state_survives_a_restart(reg):
    rates = {"v1": 0.2, "v2": 0.5, "v3": 0.8}
    rng = random.Random(3)
    with lepton.Deployment(reg, "m", ["v1", "v2", "v3"], policy=lepton.Bandit(["v1", "v2", "v3"], seed=5)) as dep:
        chosen = []
        for _ in range(400):
            p = dep.predict(torch.zeros(1, 4))
            chosen.append(p.version)
            dep.feedback(p, 1.0 if rng.random() < rates[p.version] else 0.0)
        with pytest.raises(lepton.NotFound):
            dep.feedback(p.request_id, 1.0)  # already rewarded
        q = dep.predict(torch.zeros(1, 4))
        with pytest.raises(lepton.InvalidArgument):
            dep.feedback(q, 3.0)
        dep.feedback(q, 1.0)  # a refused reward can be sent again
        assert chosen[-200:].count("v3") > 120
        before = dep.policy_report()["arms"]
    with lepton.Deployment(reg, "m", ["v1", "v2", "v3"], policy=lepton.Bandit(["v1", "v2", "v3"], seed=6)) as dep:
        after = dep.policy_report()["arms"]
        assert after == before


def test_ab_test_promotes_the_winner_with_evidence(reg):
    rng = random.Random(1)
    rates = {"v1": 0.3, "v2": 0.7}
    policy = lepton.ABTest("v1", "v2", alias="prod", min_samples=30)
    with lepton.Deployment(reg, "m", ["v1", "v2"], policy=policy) as dep:
        for _ in range(2000):
            p = dep.predict(torch.zeros(1, 4))
            dep.feedback(p, 1.0 if rng.random() < rates[p.version] else 0.0)
            if policy.winner:
                break
        dep.tick()
        assert policy.winner == "v2"
        report = dep.policy_report()
        assert report["p_value"] <= 0.05 and report["confidence"] >= 0.95 and report["ci_low"] > 0
        assert wait_for(lambda: any(e.action == "ab_promote" for e in reg.history("m")))
        assert reg.get("m@prod").version == "v2"
        entry = [e for e in reg.history("m") if e.action == "ab_promote"][-1]
        assert entry.details["winner"] == "v2"
        assert dep.predict(torch.zeros(1, 4)).version == "v2"


def test_time_based_switches_on_schedule(reg):
    now = time.time()
    policy = lepton.TimeBased([(now - 60, "v1"), (now + 0.6, "v2")], alias="prod")
    with lepton.Deployment(reg, "m", ["v1", "v2"], policy=policy) as dep:
        assert dep.predict(torch.zeros(1, 4)).version == "v1"
        # The schedule switches at now + 0.6 s: requests go on reaching v1 until then.
        assert wait_for(lambda: dep.predict(torch.zeros(1, 4)).version == "v2")
        assert time.time() >= now + 0.6
        p = dep.predict(torch.zeros(1, 4))
        assert p.version == "v2" and "time-based" in p.route
        assert wait_for(lambda: any(e["action"] == "time_switch" and e["to"] == "v2" for e in dep.events()))
        assert wait_for(lambda: reg.get("m@prod").version == "v2")
    split = lepton.TimeBased([(0, "v1"), (0, "v2"), (0, "v3")], validity={"v1": 2e10, "v2": 3e10, "v3": 4e10},
                             cycle={"v1": 1e10, "v2": 2e10, "v3": 3e10}, mode="split")
    w = split.eligible()
    total = 1 / 3 + 1 / 5 + 1 / 7
    assert w["v1"] == pytest.approx((1 / 3) / total) and w["v3"] == pytest.approx((1 / 7) / total)


def test_least_loaded_and_balanced_route_every_request(reg):
    with lepton.Deployment(reg, "m", ["v1", "v2"], policy=lepton.LeastLoaded()) as dep:
        got = {dep.predict(torch.zeros(1, 4)).version for _ in range(50)}
        assert got <= {"v1", "v2"}
        assert "least loaded" in dep.predict(torch.zeros(1, 4)).route
        dep.set_policy(lepton.Balanced("resources", interval_s=0.01))
        assert wait_for(lambda: set(dep.policy_report().get("weights", {})) == {"v1", "v2"})
        assert "balanced by resources" in dep.predict(torch.zeros(1, 4)).route


def test_seed_makes_splits_repeat_and_refuses_bad_values():
    policy = lepton.Weighted({"v1": 1, "v2": 1, "v3": 1})
    runs = []
    for _ in range(2):
        lepton.seed(99)
        runs.append([policy.select(["v1", "v2", "v3"])[0] for _ in range(200)])
    assert runs[0] == runs[1] and len(set(runs[0])) == 3
    for bad in (-1, 2**64, 1.5, "7", True):
        with pytest.raises(lepton.InvalidArgument):
            lepton.seed(bad)


def test_each_policy_class_writes_the_json_spec_the_core_builds_it_from():
    canary = lepton.Canary("v1", "v2", steps=[0.5, 1.0], guardrails=lepton.Guardrails(min_requests=5))
    assert canary.spec == {"type": "canary", "stable": "v1", "candidate": "v2", "steps": [0.5, 1.0],
                           "guardrails": {"min_requests": 5}}
    # The spec is what the HTTP API and lepton serve's config take: the same policy either way.
    rebuilt = lepton._core.policy_from_json(json.dumps(canary.spec))
    assert type(rebuilt) is type(canary._core) and rebuilt.describe() == repr(canary)
    assert lepton.Weighted({"a": 3, "b": 1}).spec == {"type": "weighted", "weights": [["a", 3.0], ["b", 1.0]]}
    assert lepton.Ensemble([1, 2]).spec == {"type": "ensemble", "weights": [1.0, 2.0]}
    assert lepton.TimeBased([(0, "a")], validity={"a": 3600}, cycle={"a": 60}).spec == {
        "type": "time_based", "schedule": [{"version": "a", "start": 0.0, "validity": 3600, "cycle": 60}]}
    # Defaults live in the core: a spec without them is the policy with them.
    assert lepton.Canary("v1", "v2").report()["steps"] == [0.01, 0.05, 0.25, 1.0]


def test_renamed_options_still_work_with_a_warning():
    with pytest.warns(DeprecationWarning, match="interval_s"):
        assert lepton.Balanced(interval=2.0).spec["interval_s"] == 2.0
    with pytest.warns(DeprecationWarning, match="latency_slack_s"):
        assert lepton.Guardrails(latency_slack=0.01).spec == {"latency_slack_s": 0.01}
    with pytest.raises(lepton.InvalidArgument, match="not both"), pytest.warns(DeprecationWarning):
        lepton.Balanced(interval=2.0, interval_s=1.0)
    with pytest.raises(lepton.InvalidArgument, match="NaN"):
        lepton.Canary("v1", "v2", step_seconds=float("nan"))
