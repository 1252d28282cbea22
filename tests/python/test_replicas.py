"""Three `lepton serve` replicas on one PostgreSQL registry behind a real load balancer (Debian's
haproxy): an alias moved anywhere reaches every replica, and no client request fails through the
balancer, not when a replica is killed, not while the database restarts."""
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


def _answers(url):
    try:
        return requests.post(url + "/v2/models/m/infer", json=BODY, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def test_replicas_behind_a_balancer_act_on_one_registry(tmp_path, python_env, haproxy):
    server = pg_server.PostgresServer().start()
    try:
        reg = lepton.Registry(server.url(server.create_database()), blobs=tmp_path / "shared", actor="ci")
        for n in (1, 2):
            reg.register("m", AddN(n), example_inputs=torch.zeros(1, 4))
        reg.set_alias("m", "prod", "v1")
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
