import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import lepton
from conftest import AddN, FailsOnNegative, Spin, assert_releases_gil, wait_for


class Pair(torch.nn.Module):
    """Two inputs, two outputs."""

    def forward(self, a: torch.Tensor, b: torch.Tensor):
        return a + b, a * b


@pytest.fixture
def reg(registry):
    for n in range(1, 5):
        registry.register("m", AddN(n), version=f"v{n}", example_inputs=torch.zeros(2, 3))
    return registry


def answer(p):
    return int(p.output.flatten()[0].item())


def test_fixed_pinned_and_prediction_fields(reg):
    with lepton.Deployment(reg, "m", ["v1", "v2"], adaptive=False) as d:
        p = d.predict(torch.zeros(1, 3))
        assert answer(p) == 1 and p.version == "v1" and p.policy == "fixed"
        assert p.route == "primary version v1"
        assert p.latency > 0 and p.compute_time >= 0 and p.request_id
        assert answer(d.predict(torch.zeros(1, 3), version="v2")) == 2
        with pytest.raises(lepton.NotFound, match="not deployed"):
            d.predict(torch.zeros(1, 3), version="v3")
        d.set_policy(lepton.Fixed("v2"))
        assert answer(d.predict(torch.zeros(1, 3))) == 2
        assert d(torch.zeros(1, 3)).flatten()[0].item() == 2
        assert d.versions == ["v1", "v2"] and d.policy == "Fixed(v2)"
        ids = {d.predict(torch.zeros(1, 3)).request_id for _ in range(50)}
        assert len(ids) == 50
    with pytest.raises(lepton.Unavailable):
        d.predict(torch.zeros(1, 3))


def test_numpy_in_numpy_out_without_copy(reg):
    d = lepton.Deployment(reg, "m", ["v1"])
    x = np.zeros((2, 3), dtype=np.float32)
    out = d.predict(x).output
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.ones((2, 3), dtype=np.float32))
    with pytest.raises(lepton.InvalidArgument, match="expected float32"):
        d.predict(np.zeros((2, 3)))  # float64


def test_multi_input_multi_output(registry):
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    registry.register("pair", Pair(), example_inputs=(a, b))
    d = lepton.Deployment(registry, "pair", ["v1"])
    s, prod = d.predict((a, b)).output
    torch.testing.assert_close(s, a + b)
    torch.testing.assert_close(prod, a * b)
    with pytest.raises(lepton.InvalidArgument, match="takes 2 inputs"):
        d.predict(a)


def test_ensemble_matches_plain_pytorch(registry):
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).eval() for _ in range(3)]
    for i, m in enumerate(models):
        registry.register("ens", m, version=f"v{i}", example_inputs=torch.zeros(1, 10))
    weights = {"v0": 0.5, "v1": 0.3, "v2": 0.2}
    d = lepton.Deployment(registry, "ens", list(weights), policy=lepton.Ensemble(weights))
    x = torch.randn(10, 10)
    p = d.predict(x)
    with torch.no_grad():
        expected = sum(w * m(x) for w, m in zip(weights.values(), models))
    torch.testing.assert_close(p.output, expected)
    assert p.output.shape == (10, 2)
    assert p.version == ["v0", "v1", "v2"] and p.policy == "ensemble"
    d.set_policy(lepton.Ensemble([1, 1, 1]))  # aligned with the deployment's versions
    with torch.no_grad():
        torch.testing.assert_close(d.predict(x).output, sum(m(x) for m in models) / 3)


def test_ensemble_vote_and_custom_combiner(reg):
    d = lepton.Deployment(reg, "m", ["v1", "v2", "v3"])
    # Scores x + n with a one-hot x: argmax is the hot class for every member.
    x = torch.tensor([[0.0, 5.0, 0.0], [9.0, 0.0, 0.0]])
    d.set_policy(lepton.Ensemble([0.2, 0.5, 0.3], combine="vote"))
    assert d.predict(x).output.tolist() == [1, 0]
    seen = {}

    def maximum(outputs, weights):
        seen["weights"] = weights
        return torch.stack([o[0] for o in outputs]).max(0).values

    d.set_policy(lepton.Ensemble({"v1": 1, "v3": 3}, combine=maximum))
    assert d.predict(torch.zeros(1, 3)).output.flatten()[0].item() == 3
    assert seen["weights"] == pytest.approx([0.25, 0.75])

    def broken(outputs, weights):
        raise ValueError("combiner bug")

    d.set_policy(lepton.Ensemble({"v1": 1, "v3": 3}, combine=broken))
    with pytest.raises(lepton.ModelError, match="combiner bug"):
        d.predict(torch.zeros(1, 3))
    d.set_policy(lepton.Fixed())
    assert answer(d.predict(torch.zeros(1, 3))) == 1


def test_ensemble_on_error_skip_or_fail(reg):
    reg.register("m", FailsOnNegative(), version="bad")
    d = lepton.Deployment(reg, "m", ["v1", "v2", "bad"])
    d.set_policy(lepton.Ensemble({"v1": 1, "v2": 1, "bad": 2}, on_error="skip"))
    p = d.predict(-torch.ones(1, 3))
    assert p.skipped == ["bad"] and p.version == ["v1", "v2"]
    assert p.output.flatten()[0].item() == pytest.approx(0.5)
    d.set_policy(lepton.Ensemble({"v1": 1, "v2": 1, "bad": 2}))
    with pytest.raises(lepton.ModelError, match="negative input"):
        d.predict(-torch.ones(1, 3))
    assert d.predict(torch.ones(1, 3)).version == ["v1", "v2", "bad"]


def test_bad_weights_and_policies(reg):
    d = lepton.Deployment(reg, "m", ["v1", "v2"])
    for weights, message in [([-1, 1], "finite and >= 0"), ([0, 0], "all zero"), ([float("nan"), 1], "NaN"), (["a", 1], "numbers")]:
        with pytest.raises(lepton.InvalidArgument, match=message):
            lepton.Ensemble(weights)
    with pytest.raises(lepton.InvalidArgument, match="3 weights for 2 live versions"):
        d.set_policy(lepton.Ensemble([1, 1, 1]))
    with pytest.raises(lepton.NotFound, match="not deployed"):
        d.set_policy(lepton.Ensemble({"v1": 1, "v9": 1}))
    with pytest.raises(lepton.InvalidArgument, match="combine"):
        lepton.Ensemble([1, 1], combine="median")
    with pytest.raises(lepton.InvalidArgument, match="on_error"):
        lepton.Ensemble([1, 1], on_error="ignore")
    with pytest.raises(lepton.InvalidArgument):
        d.set_policy("fixed")
    assert answer(d.predict(torch.zeros(1, 3))) == 1  # still serving


def test_bad_inputs_are_typed_and_serving_continues(reg):
    d = lepton.Deployment(reg, "m", ["v1"])
    cases = [
        (torch.zeros(2, 3, dtype=torch.int64), "dtype int64, expected float32"),
        (torch.zeros(2, 4), r"expected \[-1, 3\]"),
        (torch.zeros(2, 3, 1), r"expected \[-1, 3\]"),
        (torch.zeros(0, 3), "empty batch"),
        (torch.zeros(3, 2).t(), "not contiguous"),
        (torch.empty(2, 3, device="meta"), "is on meta"),
        ("text", "expected a torch.Tensor"),
        ([], "no inputs"),
    ]
    for x, message in cases:
        with pytest.raises(lepton.InvalidArgument, match=message):
            d.predict(x)
    with pytest.raises(lepton.InvalidArgument, match="timeout"):
        d.predict(torch.zeros(1, 3), timeout=0)
    assert answer(d.predict(torch.zeros(1, 3))) == 1
    with pytest.raises(lepton.NotFound):
        lepton.Deployment(reg, "m", ["v9"])
    with pytest.raises(lepton.InvalidArgument):
        lepton.Deployment(reg, "m")
    with pytest.raises(lepton.InvalidArgument):
        lepton.Deployment(reg, "m", ["v1"], threads=0)


def test_timeout_cuts_off_a_hanging_version_and_others_are_unaffected(reg):
    reg.register("m", Spin(), version="slow")
    d = lepton.Deployment(reg, "m", ["slow", "v1"], adaptive=False)
    start = time.perf_counter()
    with pytest.raises(lepton.Timeout):
        d.predict(torch.full((1, 1), 150.0), timeout=0.05)  # the forward takes about 0.4 s
    assert time.perf_counter() - start < 0.25
    assert answer(d.predict(torch.zeros(1, 3), version="v1")) == 1
    assert d.status()["versions"][0]["timed_out"] == 1


def test_full_queue_raises_overloaded_at_once(reg):
    reg.register("m", Spin(), version="slow")
    d = lepton.Deployment(reg, "m", ["slow"], max_queue=1, threads=1, adaptive=False)
    results = []

    def call(ms):
        try:
            results.append(d.predict(torch.full((1, 1), float(ms))).output is not None)
        except lepton.Overloaded:
            results.append("overloaded")

    threads = [threading.Thread(target=call, args=(80,)) for _ in range(4)]  # about 0.2 s each
    stats = lambda: d.status()["versions"][0]  # noqa: E731
    threads[0].start()
    wait_for(lambda: stats()["in_flight"] == 1)  # running
    threads[1].start()
    wait_for(lambda: stats()["queued"] == 1)  # waiting in the one queue slot
    for t in threads[2:]:
        t.start()
    for t in threads:
        t.join()
    assert results.count("overloaded") == 2
    assert results.count(True) == 2
    assert d.status()["versions"][0]["rejected"] == results.count("overloaded")


def test_dynamic_batching(reg):
    d = lepton.Deployment(reg, "m", ["v1"], max_batch_size=16, max_queue_delay_ms=5, threads=1)
    outputs = {}

    def client(i):
        outputs[i] = d.predict(torch.full((1, 3), float(i))).output

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, out in outputs.items():
        torch.testing.assert_close(out, torch.full((1, 3), float(i + 1)))
    stats = d.status()["versions"][0]
    assert stats["batched_rows"] == 32 and stats["batches"] < 32


def test_hot_swap_under_load_drops_nothing(reg):
    """8 client threads for 10 s while versions are swapped repeatedly."""
    d = lepton.Deployment(reg, "m", ["v1"], drain_timeout=10)
    stop = threading.Event()
    errors, answers = [], []
    live = {"v1"}
    live_lock = threading.Lock()

    def client():
        while not stop.is_set():
            try:
                p = d.predict(torch.zeros(1, 3))
                answers.append((answer(p), p.version))
            except Exception as e:  # counted, and the test fails on any
                errors.append(e)

    clients = [threading.Thread(target=client) for _ in range(8)]
    for c in clients:
        c.start()
    deadline = time.monotonic() + 10
    current, i = "v1", 0
    while time.monotonic() < deadline:
        nxt = f"v{1 + (i + 1) % 4}"
        with live_lock:
            live.add(nxt)
        d.swap(current, nxt)
        current, i = nxt, i + 1
    stop.set()
    for c in clients:
        c.join()
    assert errors == []
    assert len(answers) > 1000 and i > 10
    assert all(f"v{value}" == version and version in live for value, version in answers)
    assert d.status()["swaps"] == i


def test_follows_an_alias_moved_by_another_process(reg, python_env):
    reg.set_alias("m", "production", "v1")
    d = lepton.Deployment(reg, "m", alias="production", alias_poll_interval=0.02)
    assert answer(d.predict(torch.zeros(1, 3))) == 1
    lepton_cmd = os.path.join(os.path.dirname(sys.executable), "lepton")
    subprocess.run([lepton_cmd, "--registry", reg.path, "alias", "set", "m", "production", "v3"], check=True, env=python_env, capture_output=True)
    deadline = time.monotonic() + 10
    while d.status()["primary"] != "v3" and time.monotonic() < deadline:
        time.sleep(0.01)
    p = d.predict(torch.zeros(1, 3))
    assert answer(p) == 3 and p.version == "v3"
    assert d.status()["alias"] == "production"
    with pytest.raises(lepton.InvalidArgument):
        lepton.Deployment(reg, "m", ["v1"], alias="production")


def test_add_remove(reg):
    d = lepton.Deployment(reg, "m", ["v1"])
    d.add("v2", policy=lepton.Fixed("v2"))
    assert answer(d.predict(torch.zeros(1, 3))) == 2
    with pytest.raises(lepton.Conflict):
        d.add("v2")
    with pytest.raises(lepton.Conflict, match="set a policy without it"):
        d.remove("v2")
    d.remove("v2", policy=lepton.Fixed())
    assert d.versions == ["v1"]
    with pytest.raises(lepton.Conflict, match="only version"):
        d.remove("v1")


def test_priorities(reg):
    reg.register("m", Spin(), version="slow")
    d = lepton.Deployment(reg, "m", ["slow"], threads=1, max_queue=1, adaptive=False)
    order = []

    def call(priority, tag, units=1.0):
        try:
            d.predict(torch.full((1, 1), units), priority=priority)
            order.append(tag)
        except lepton.Overloaded:
            order.append(tag + "-refused")

    stats = lambda: d.status()["versions"][0]  # noqa: E731
    blocker = threading.Thread(target=call, args=(0, "first", 60.0))
    blocker.start()
    wait_for(lambda: stats()["in_flight"] == 1)  # running
    low = threading.Thread(target=call, args=(0, "low"))
    low.start()
    wait_for(lambda: stats()["queued"] == 1)  # holding the one queue slot
    high = threading.Thread(target=call, args=(5, "high"))
    high.start()
    for t in (blocker, low, high):
        t.join()
    # The full queue held "low"; "high" evicted it and ran after the blocker.
    assert sorted(order) == ["first", "high", "low-refused"]
    assert order.index("high") > order.index("first")


def test_predict_releases_the_gil(reg):
    reg.register("m", Spin(), version="slow")
    d = lepton.Deployment(reg, "m", ["slow"])
    assert_releases_gil(lambda: d.predict(torch.full((1, 1), 60.0)))  # about 0.15 s


def test_lepton_ai_reference_example(tmp_path):
    """Three models, weights 0.5, 0.3 and 0.2, a 10x10 input giving a 10x2 output."""
    torch.manual_seed(0)
    models = [torch.nn.Linear(10, 2).eval() for _ in range(3)]
    paths = []
    for i, m in enumerate(models):
        path = tmp_path / f"model_{i}.pt"
        torch.jit.script(m).save(str(path))
        paths.append(path)
    ai = lepton.LeptonAI(paths, [0.5, 0.3, 0.2])
    x = torch.randn(10, 10)
    out = ai.predict(x)
    with torch.no_grad():
        expected = 0.5 * models[0](x) + 0.3 * models[1](x) + 0.2 * models[2](x)
    assert out.shape == (10, 2)
    torch.testing.assert_close(out, expected)
    with pytest.raises(lepton.NotFound):
        lepton.LeptonAI([tmp_path / "missing.pt"], [1.0])
    with pytest.raises(lepton.InvalidArgument):
        lepton.LeptonAI(paths, [0.5, 0.5])
    ai.close()


def test_predict_leaves_the_callers_torch_threads_alone(reg):
    d = lepton.Deployment(reg, "m", ["v1"])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        d.predict(torch.zeros(1, 3))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_balanced_and_unbalanced_ensembles_agree(registry):
    torch.manual_seed(1)
    models = [torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).eval() for _ in range(3)]
    for i, m in enumerate(models):
        registry.register("s", m, version=f"v{i}", example_inputs=torch.zeros(1, 8))
    x = torch.randn(33, 8)
    waves = lepton.Deployment(registry, "s", ["v0", "v1", "v2"], threads=2, policy=lepton.Ensemble([1, 2, 3]))
    plain = lepton.Deployment(registry, "s", ["v0", "v1", "v2"], threads=2, policy=lepton.Ensemble([1, 2, 3], balance=False))
    a, b = waves.predict(x), plain.predict(x)
    torch.testing.assert_close(a.output, b.output)
    with torch.no_grad():
        torch.testing.assert_close(a.output, sum(w * m(x) for w, m in zip([1 / 6, 2 / 6, 3 / 6], models)))
    assert a.version == b.version == ["v0", "v1", "v2"]
    assert waves.predict(x, timeout=5).version == ["v0", "v1", "v2"]
    # Alone, the balanced one is measured spread over the cores and in sequence with intra-op
    # threads, and keeps the faster; both give the same answer, and the caller's torch threads
    # are left as they were.
    threads = torch.get_num_threads()

    def measured():
        arr = waves.status()["arrangements"]
        return arr[0] if arr else {"spread_measured": 0, "sequence_measured": 0}

    for _ in range(500):
        torch.testing.assert_close(waves.predict(x).output, b.output)
        if measured()["spread_measured"] >= 5 and measured()["sequence_measured"] >= 5:
            break
    assert torch.get_num_threads() == threads
    (a,) = waves.status()["arrangements"]
    assert a["ensemble"] == "v0+v1+v2, rows <= 64"
    assert a["spread_measured"] >= 5 and a["sequence_measured"] >= 5
    assert a["kept"] in ("spread", "sequence")
    assert a["spread_median_s"] > 0 and a["sequence_median_s"] > 0
    assert plain.status()["arrangements"] == []


def test_an_ensemble_under_load_runs_its_members_through_their_batchers(registry):
    # Alone, a request spreads its members over the cores; with others in flight, each member
    # runs whole through its own queue, where requests that wait together are batched.
    for i in range(3):
        registry.register("e", torch.jit.script(Spin()), version=f"v{i}", example_inputs=torch.ones(1, 2))
    d = lepton.Deployment(registry, "e", ["v0", "v1", "v2"], threads=2, max_batch_size=16,
                          policy=lepton.Ensemble([1, 1, 1]))
    start = threading.Barrier(8)
    wrong = []

    def client(k):
        start.wait()
        for j in range(10):
            x = torch.tensor([[4.0, k * 100.0 + j]])  # about 10 ms per forward, an id per request
            out = d.predict(x).output
            if not torch.allclose(out, x):
                wrong.append((k, j, out))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not wrong
        versions = d.status()["versions"]
        assert sum(v["batched_rows"] for v in versions) == 3 * 80
        assert sum(v["batches"] for v in versions) < 3 * 80
    finally:
        d.close()


def test_a_deployment_counts_the_cores_it_may_run_on(reg, python_env):
    # Confined to one CPU (taskset, a cpuset), a deployment's default is one thread.
    code = (
        "import lepton, sys; reg = lepton.Registry(sys.argv[1]); "
        "d = lepton.Deployment(reg, 'm', ['v1']); print(d.status()['versions'][0]['threads'])"
    )
    first = min(os.sched_getaffinity(0))
    out = subprocess.run([sys.executable, "-c", code, reg.path], env=python_env, capture_output=True, text=True,
                         check=True, preexec_fn=lambda: os.sched_setaffinity(0, {first}))
    assert out.stdout.split() == ["1"]


def test_deployment_options_are_one_json_spec_read_by_the_core(reg):
    with pytest.raises(lepton.InvalidArgument, match="'max_batch_size' must be an integer"):
        lepton.Deployment(reg, "m", ["v1"], max_batch_size="8")
    with pytest.raises(lepton.InvalidArgument, match="'drain_timeout' must be a finite number >= 0"):
        lepton.Deployment(reg, "m", ["v1"], drain_timeout=-1)
    with pytest.raises(lepton.InvalidArgument, match="unknown field 'max_batch'"):
        lepton._core.Deployment(reg._core, "m", ["v1"], None, '{"max_batch": 2}')
    d = lepton.Deployment(reg, "m", ["v1"], max_batch_size=4, max_queue_delay_ms=1.5, priorities={"v1": 3})
    try:
        assert d.options == {"max_batch_size": 4, "max_queue_delay_ms": 1.5, "priorities": {"v1": 3}}
        assert d.predict(torch.ones(1, 3)).version == "v1"
    finally:
        d.close()


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_a_version_runs_on_the_cores_its_share_leaves_idle(registry):
    # Two versions share two cores, one thread each; all traffic goes to the first. Requests
    # that find its thread busy run at once on the second core (counted as borrowed), and the
    # answers are its own; with both budgets fixed, it keeps to its one thread.
    registry.register("m", Spin(), version="spin", example_inputs=torch.zeros(1, 1))
    registry.register("m", AddN(1), version="v1", example_inputs=torch.zeros(1, 1))
    x = torch.full((1, 1), 4.0)
    for fixed in (False, True):
        kwargs = {"version_threads": {"spin": 1, "v1": 1}} if fixed else {}
        with lepton.Deployment(registry, "m", ["spin", "v1"], threads=2, adaptive=False, **kwargs) as d:
            spin = lambda: next(v for v in d.status()["versions"] if v["version"] == "spin")
            assert spin()["threads"] == 1
            stop = threading.Event()
            wrong = []

            def client():
                while not stop.is_set():
                    p = d.predict(x)
                    if p.version != "spin" or not torch.equal(p.output, x):
                        wrong.append(p)

            clients = [threading.Thread(target=client) for _ in range(2)]
            for c in clients:
                c.start()
            try:
                if fixed:
                    wait_for(lambda: spin()["succeeded"] >= 20)
                else:
                    wait_for(lambda: spin()["borrowed"] > 0, timeout=20)
            finally:
                stop.set()
                for c in clients:
                    c.join()
            assert not wrong
            if fixed:
                assert spin()["borrowed"] == 0


def test_threads_do_not_grow_with_versions(registry):
    for i in range(60):
        registry.register("many", AddN(1), version=f"v{i}", example_inputs=torch.zeros(1, 3))
    before = _threads()
    d = lepton.Deployment(registry, "many", [f"v{i}" for i in range(60)], idle_thread_timeout=0.05)
    try:
        assert _threads() - before <= 3  # the control thread, not one per version
        for i in range(60):
            assert answer(d.predict(torch.zeros(1, 3), version=f"v{i}", timeout=10)) == 1
        # Executors that queued work started leave once idle.
        assert wait_for(lambda: _threads() - before <= 3, timeout=10)
        assert all(v["executors"] == 0 for v in d.status()["versions"])
    finally:
        d.close()


def test_an_idle_deployment_sleeps_until_a_request_wakes_it(registry):
    """A thousand idle deployments in one process cost little: after a few seconds without
    requests, a deployment's control chores sleep until the next request (or change) wakes them,
    unless something must be polled or ticked."""
    registry.register("m", AddN(1), version="v1", example_inputs=torch.zeros(1, 4))
    registry.register("m", AddN(2), version="v2", example_inputs=torch.zeros(1, 4))
    d = lepton.Deployment(registry, "m", ["v1"])
    canary = lepton.Deployment(registry, "m", ["v1", "v2"], policy=lepton.Canary("v1", "v2", steps=[0.1, 1.0]))
    try:
        wait_for(lambda: d.status()["idle"], timeout=30)
        assert d.predict(torch.zeros(1, 4)).output[0, 0] == 1
        assert not d.status()["idle"]  # the request woke its chores
        wait_for(lambda: d.status()["idle"], timeout=30)  # and they sleep again
        assert not canary.status()["idle"]  # a canary's clock keeps its chores awake
    finally:
        d.close()
        canary.close()
