"""Three `lepton serve` replicas on one PostgreSQL registry behind a real load balancer (Debian's
haproxy): an alias moved anywhere reaches every replica, a canary ramps as one and outlives its
leader, and no client request fails through the balancer, not when a replica is killed, not
while the database restarts."""
import json
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest
import requests
import torch

import lepton
import pg_server
from conftest import AddN, lepton_serve, wait_for

BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]}


def registry_of_two(tmp_path):
    """A PostgreSQL server of the test's own, and a registry on it whose model m has v1 (adds 1)
    and v2 (adds 2), with m@prod at v1."""
    server = pg_server.PostgresServer().start()
    try:
        reg = lepton.Registry(server.url(server.create_database()), blobs=tmp_path / "shared", actor="ci")
        for n in (1, 2):
            reg.register("m", AddN(n), example_inputs=torch.zeros(1, 4))
        reg.set_alias("m", "prod", "v1")
    except BaseException:
        server.close()
        raise
    return server, reg


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def version_at(url):
    r = requests.post(url + "/v2/models/m/infer", json=BODY, timeout=30)
    r.raise_for_status()
    return r.json()["model_version"]


def unreachable(url):
    """The replica's lepton_registry_unreachable gauge for m@prod."""
    for line in requests.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith('lepton_registry_unreachable{model="m",alias="prod"}'):
            return int(line.split()[-1])
    raise AssertionError("no lepton_registry_unreachable gauge for m@prod")


class Traffic:
    """Client threads sending requests through the balancer until stopped, each answer kept."""

    def __init__(self, url, clients=4):
        self.url, self.answers, self.failures = url, [], []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _run(self):
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    r = session.post(self.url + "/v2/models/m/infer", json=BODY, timeout=30)
                    if r.status_code == 200:
                        self.answers.append(r.json()["model_version"])
                    else:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                except requests.RequestException as e:
                    self.failures.append(repr(e))

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join()


@pytest.fixture
def haproxy(tmp_path):
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert os.path.exists(binary), "haproxy is not installed (scripts/bootstrap installs it)"
    procs = []

    def start(backends):
        port = free_port()
        servers = "\n".join(f"    server r{i} {u[len('http://'):]} check inter 100ms fall 2 rise 1"
                            for i, u in enumerate(backends))
        config = tmp_path / "haproxy.cfg"
        config.write_text(f"""global
    maxconn 512
    log stdout format raw local0
defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout 503
    option http-buffer-request
frontend replicas
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /v2/health/ready
    http-check expect status 200
{servers}
""")
        with open(tmp_path / "haproxy.log", "w") as log:  # each request, for a failure's post-mortem
            proc = subprocess.Popen([binary, "-f", str(config), "-db"], stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url), timeout=30)
        return url

    yield start
    for p in procs:
        p.kill()
        p.wait()


TOKEN = "replicas-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def sync_report(url):
    """The replica's view of its shared policy: its role and the leader it follows."""
    r = requests.get(url + "/v2/lepton/models/m/stats", headers=AUTH, timeout=30)
    r.raise_for_status()
    return r.json()["policy_sync"]


def canary_report(url):
    r = requests.get(url + "/v2/lepton/models/m/policy", headers=AUTH, timeout=30)
    r.raise_for_status()
    return r.json()["report"]


class Watch:
    """Polls each replica's canary report until stopped: (step, phase) as each replica saw them."""

    def __init__(self, urls):
        self.urls, self.seen = dict(urls), {name: [] for name in urls}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.1):
            for name, url in list(self.urls.items()):
                try:
                    r = canary_report(url)
                except requests.RequestException:
                    continue
                if not self.seen[name] or self.seen[name][-1] != (r["step"], r["phase"]):
                    self.seen[name].append((r["step"], r["phase"]))

    def forget(self, name):
        self.urls.pop(name)

    def stop(self):
        self._stop.set()
        self._thread.join()


def test_a_canary_ramps_as_one_and_outlives_its_leader(tmp_path, python_env, haproxy):
    """Every replica routes by the one ramp its leader decides from all replicas' outcomes; the
    leader killed mid-ramp is replaced within its lease, and the ramp goes on from where it was:
    one promotion, no rollback, no step taken twice or back."""
    server, reg = registry_of_two(tmp_path)
    try:
        # Guardrails on errors only: a loaded two-core machine's latency says nothing here.
        canary = {"type": "canary", "stable": "v1", "candidate": "v2", "steps": [0.2, 0.5, 1.0],
                  "step_seconds": 3, "alias": "prod",
                  "guardrails": {"max_latency_ratio": 1000, "latency_slack_s": 10, "min_requests": 20}}
        config = tmp_path / "lepton.json"
        config.write_text(json.dumps({"models": {"m": {"versions": ["v1", "v2"], "policy": canary}},
                                      "only": True, "policy_sync_interval": 0.2, "policy_lease": 2}))
        args = ["--registry", reg.location, "--port", "0", "--config", str(config)]
        names = ["r0", "r1", "r2"]
        serves = [lepton_serve(args, {**python_env, "LEPTON_REPLICA": n, "LEPTON_TOKEN": TOKEN}) for n in names]
        started = [s.__enter__() for s in serves]
        try:
            urls = {n: url for n, (_, url) in zip(names, started)}
            procs = {n: proc for n, (proc, _) in zip(names, started)}
            balancer = haproxy(list(urls.values()))
            watch = Watch(urls)
            traffic = Traffic(balancer)
            try:
                # One leader, followed by the others.
                wait_for(lambda: [sync_report(u).get("role") for u in urls.values()].count("leader") == 1,
                         timeout=30)
                leader = next(n for n, u in urls.items() if sync_report(u).get("role") == "leader")
                for n, u in urls.items():
                    if n != leader:
                        wait_for(lambda: sync_report(u).get("leader") == leader, timeout=30)
                # Mid-ramp, the leader dies.
                wait_for(lambda: canary_report(urls[leader])["step"] >= 2, timeout=60)
                assert canary_report(urls[leader])["phase"] == "ramping"
                procs[leader].kill()
                procs[leader].wait()
                killed_at = time.monotonic()
                watch.forget(leader)
                survivors = {n: u for n, u in urls.items() if n != leader}
                wait_for(lambda: [sync_report(u).get("role") for u in survivors.values()].count("leader") == 1,
                         timeout=30)
                takeover = time.monotonic() - killed_at
                # The ramp goes on and completes as one.
                for u in survivors.values():
                    wait_for(lambda: canary_report(u)["phase"] == "promoted", timeout=90)
                seen = len(traffic.answers)
                wait_for(lambda: len(traffic.answers) > seen + 50, timeout=60)
            finally:
                traffic.stop()
                watch.stop()
        finally:
            for s in reversed(serves):
                s.__exit__(None, None, None)
        assert traffic.failures == []
        assert {"v1", "v2"} <= set(traffic.answers)
        assert takeover < 15
        # No replica ever saw the ramp go back or take another way.
        for name, steps in watch.seen.items():
            ranked = [(step, phase != "ramping") for step, phase in steps]
            assert ranked == sorted(ranked), (name, steps)
            assert all(phase != "rolled_back" for _, phase in steps), (name, steps)
        history = reg.history("m")
        promotions = [e for e in history if e.action == "canary_promote"]
        assert len(promotions) == 1, [(e.action, e.details) for e in history]
        assert not [e for e in history if e.action == "canary_rollback"]
        decided = promotions[0].details
        assert decided["decided_by"] in names and decided["decided_by"] != leader
        assert decided["term"] >= 2
        assert len(decided["evidence_from"]) >= 2  # the outcomes of more than one replica
        assert reg.get("m@prod").version == "v2"
    finally:
        server.close()


def test_feedback_reaches_a_shared_bandit_through_any_replica(tmp_path, python_env):
    """A reward sent to the replica that did not answer the request, with the version that did,
    reaches the bandit that both replicas share: only with that version, and once per request
    whichever replicas it is sent to."""
    server, reg = registry_of_two(tmp_path)
    try:
        config = tmp_path / "lepton.json"
        config.write_text(json.dumps({
            "models": {"m": {"versions": ["v1", "v2"],
                             "policy": {"type": "bandit", "versions": ["v1", "v2"], "seed": 3}}},
            # A lease long enough that the lead never changes here: a new leader would not know
            # the requests rewarded before it.
            "only": True, "policy_sync_interval": 0.1, "policy_lease": 60}))
        args = ["--registry", reg.location, "--port", "0", "--config", str(config)]
        env = {**python_env, "LEPTON_TOKEN": TOKEN}
        with lepton_serve(args, {**env, "LEPTON_REPLICA": "a"}) as (_, a), \
                lepton_serve(args, {**env, "LEPTON_REPLICA": "b"}) as (_, b):
            wait_for(lambda: sorted(sync_report(u).get("role", "") for u in (a, b)) == ["follower", "leader"],
                     timeout=30)

            def feedback(url, body):
                return requests.post(url + "/v2/lepton/models/m/feedback", json=body, headers=AUTH, timeout=30)

            rewards, repeats = {"v1": 0, "v2": 0}, 0
            for i in range(20):
                answer = requests.post(a + "/v2/models/m/infer", json=BODY, timeout=30).json()
                rid, version = answer["parameters"]["lepton_request_id"], answer["model_version"]
                if i == 0:
                    # Unknown at b without the version that answered it.
                    assert feedback(b, {"request_id": rid, "reward": 1}).status_code == 404
                assert feedback(b, {"request_id": rid, "reward": 1, "version": version}).status_code == 200
                rewards[version] += 1
                # Once: the replica that took it refuses it again; the one that answered it may
                # take it (a follower cannot know yet), but the leader counts it once.
                assert feedback(b, {"request_id": rid, "reward": 1, "version": version}).status_code == 404
                r = feedback(a, {"request_id": rid, "reward": 1})
                assert r.status_code in (200, 404), r.text
                repeats += r.status_code == 200

            def arms(url):
                return {v: (arm["n"], arm["sum"]) for v, arm in canary_report(url)["arms"].items()}

            expected = {v: (n, float(n)) for v, n in rewards.items()}
            for url in (a, b):
                wait_for(lambda: arms(url) == expected, timeout=30)
            # The repeats leave the arms as they are: they are counted once taken in.
            leader = next(u for u in (a, b) if sync_report(u)["role"] == "leader")
            wait_for(lambda: sync_report(leader)["duplicate_rewards"] == repeats, timeout=30)
    finally:
        server.close()


def test_a_policy_set_through_one_replica_is_set_on_every_replica(tmp_path, python_env):
    """PUT .../policy on one replica: kept in the registry with an audit entry, and set on the
    other replicas within seconds, and on one started afterwards."""
    server, reg = registry_of_two(tmp_path)
    try:
        config = tmp_path / "lepton.json"
        config.write_text(json.dumps({"models": {"m": {"versions": ["v1", "v2"]}}, "only": True}))
        args = ["--registry", reg.location, "--port", "0", "--config", str(config)]
        env = {**python_env, "LEPTON_TOKEN": TOKEN}
        with lepton_serve(args, {**env, "LEPTON_REPLICA": "a"}) as (_, a), \
                lepton_serve(args, {**env, "LEPTON_REPLICA": "b"}) as (_, b):
            assert version_at(a) == version_at(b) == "v1"
            r = requests.put(a + "/v2/lepton/models/m/policy", json={"type": "fixed", "version": "v2"},
                             headers=AUTH, timeout=30)
            r.raise_for_status()
            assert version_at(a) == "v2"
            wait_for(lambda: version_at(b) == "v2", timeout=30)
            with lepton_serve(args, {**env, "LEPTON_REPLICA": "c"}) as (_, c):
                wait_for(lambda: version_at(c) == "v2", timeout=30)
                r = requests.get(c + "/v2/lepton/models/m/policy", headers=AUTH, timeout=30)
                assert r.json()["spec"] == {"type": "fixed", "version": "v2"}
        entries = [e for e in reg.history("m") if e.action == "set_policy"]
        assert len(entries) == 1
        assert entries[0].details["replica"] == "a"
        assert entries[0].details["policy"] == {"type": "fixed", "version": "v2"}
    finally:
        server.close()


def _answers(url):
    try:
        return requests.post(url + "/v2/models/m/infer", json=BODY, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def test_replicas_behind_a_balancer_act_on_one_registry(tmp_path, python_env, haproxy):
    server, reg = registry_of_two(tmp_path)
    try:
        args = ["--registry", reg.location, "--port", "0", "--model", "m=@prod", "--only"]
        with lepton_serve(args, python_env) as (_, a), lepton_serve(args, python_env) as (_, b), \
                lepton_serve(args, python_env) as (killed, c):
            replicas = [a, b, c]
            balancer = haproxy(replicas)
            traffic = Traffic(balancer)
            try:
                wait_for(lambda: len(traffic.answers) > 50, timeout=60)
                # An alias moved through another connection reaches every replica.
                moved = time.monotonic()
                lepton.Registry(reg.location, actor="release").set_alias("m", "prod", "v2", expected="v1")
                for url in replicas:
                    wait_for(lambda: version_at(url) == "v2", timeout=30)
                propagation = time.monotonic() - moved
                # A replica killed mid-traffic: the balancer sends its requests to the others.
                killed.kill()
                killed.wait()
                replicas.remove(c)
                seen = len(traffic.answers)
                wait_for(lambda: len(traffic.answers) > seen + 100, timeout=60)
                # The database restarts under live traffic: the replicas keep answering, and
                # follow the next move once it is back.
                server.stop()
                seen = len(traffic.answers)
                wait_for(lambda: len(traffic.answers) > seen + 50, timeout=60)
                # Each replica says so in its metrics, and keeps answering.
                for url in replicas:
                    wait_for(lambda: unreachable(url) == 1, timeout=30)
                server.start_again()
                lepton.Registry(reg.location, actor="release").set_alias("m", "prod", "v1", expected="v2")
                for url in replicas:
                    wait_for(lambda: version_at(url) == "v1", timeout=60)
                    assert unreachable(url) == 0
                seen = len(traffic.answers)
                wait_for(lambda: len(traffic.answers) > seen + 50, timeout=60)
            finally:
                traffic.stop()
        assert traffic.failures == []
        assert set(traffic.answers) == {"v1", "v2"}
        assert propagation < 30
        moves = [(e.from_version, e.to_version, e.actor) for e in reg.history("m") if e.action == "set_alias"]
        assert moves == [(None, "v1", "ci"), ("v1", "v2", "release"), ("v2", "v1", "release")]
    finally:
        server.close()
