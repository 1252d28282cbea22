"""Registry macro-benchmarks, from Python, on each backend side by side: a directory (SQLite) and
a PostgreSQL server that the benchmark starts itself (Debian's, as the tests do).

  register  10,000 small TorchScript versions: one process, then four processes at once
  resolve   `name@alias` on a registry holding 10,000 versions of one model (median per call)
  list      `versions(name)` of those 10,000 versions (median per call)
  propagate an alias moved in one process, until each of 3 replica processes (a Deployment
            following the alias) serves the new target: p50 and p99
  predict   Deployment.predict on a tiny model served from the registry (median per call): the
            request path never touches the database, so the backends should not differ
  fetch     the first read of a 64 MB version by a process with an empty cache: from the
            directory, or from PostgreSQL into that machine's cache (postgresql_artifacts)
  policy    a canary shared by 3 replica processes (on a database server): how long after the
            leader takes a step every follower routes by it (p50, p99), and how long until
            another replica leads once the leader is killed

usage: .venv/bin/python benchmarks/registry_bench.py [--versions 10000] [--runs 5] [--moves 20]
                              [--backends sqlite,postgresql,postgresql_artifacts]
"""
import argparse
import io
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch

import lepton

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "python"))
import pg_server  # noqa: E402  (the tests' PostgreSQL server)


class Const(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("value", torch.zeros(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.value


def artifacts(n: int, offset: int = 0):
    """n distinct small TorchScript archives (about 2 KB each)."""
    m = torch.jit.script(Const())
    out = []
    for i in range(n):
        m.value.fill_(float(offset + i))
        buf = io.BytesIO()
        torch.jit.save(m, buf)
        out.append(buf.getvalue())
    return out


def register_all(path: str, data, model: str) -> float:
    reg = lepton.Registry(path, actor="bench")
    start = time.perf_counter()
    for blob in data:
        reg.register(model, blob)
    return time.perf_counter() - start


def worker(path: str, count: int, offset: int) -> None:
    data = artifacts(count, offset)
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    register_all(path, data, "parallel")


def replica(location: str) -> None:
    """A replica: serves `m@prod` and prints each new primary with the time it started serving."""
    reg = lepton.Registry(location, actor="replica")
    with lepton.Deployment(reg, "m", alias="prod") as d:
        seen = d.status()["primary"]
        print("ready", seen, flush=True)
        while True:
            now = d.status()["primary"]
            if now != seen:
                seen = now
                print(now, time.time(), flush=True)
            time.sleep(0.001)


class AddOne(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


def policy_replica(location: str, name: str) -> None:
    """A replica of a shared canary: sends requests all along, and prints each step it routes
    by and each change of its role, with the time."""
    reg = lepton.Registry(location, actor="replica")
    canary = lepton.Canary("v1", "v2", steps=[i / 20 for i in range(1, 21)], step_requests=50,
                           guardrails=lepton.Guardrails(max_latency_ratio=1000, latency_slack_s=10))
    x = torch.zeros(1, 4)
    with lepton.Deployment(reg, "c", ["v1", "v2"], policy=canary, share_policies=True, replica=name) as d:
        print("ready", flush=True)
        sys.stdin.readline()  # requests start together
        step, role = None, None
        while True:
            d.predict(x)
            report = d.policy_report()
            sync = d.status()["policy_sync"] or {}
            if report.get("step") != step:
                step = report.get("step")
                print("step", step, time.time(), flush=True)
            if sync.get("role") != role:
                role = sync.get("role")
                print("role", role, time.time(), flush=True)
            time.sleep(0.002)


def policy_sync(location: str):
    """(p50 and p99 seconds from a leader's step to every follower's, seconds to a new leader)."""
    reg = lepton.Registry(location, actor="bench")
    for _ in range(2):
        reg.register("c", AddOne(), example_inputs=torch.zeros(1, 4))
    names = ["r0", "r1", "r2"]
    procs = {n: subprocess.Popen([sys.executable, __file__, "--policy-replica", location, n],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for n in names}
    for p in procs.values():
        assert p.stdout.readline().strip() == "ready"
    for p in procs.values():
        p.stdin.write("go\n")
        p.stdin.flush()
    lines = queue.Queue()

    def read(name, p):
        for line in p.stdout:
            lines.put((name, line.split()))

    for n, p in procs.items():
        threading.Thread(target=read, args=(n, p), daemon=True).start()
    try:
        steps, roles = {n: {} for n in names}, {n: None for n in names}
        killed, killed_at, takeover, last = None, None, None, 0
        deadline = time.time() + 300
        while time.time() < deadline:
            name, words = lines.get(timeout=60)
            if words[0] == "step" and words[1] != "None":
                steps[name].setdefault(int(words[1]), float(words[2]))
            elif words[0] == "role":
                roles[name] = words[1]
                if killed and words[1] == "leader" and name != killed:
                    takeover = float(words[2]) - killed_at
                    break
            leader = next((n for n, r in roles.items() if r == "leader"), None)
            if not killed and leader and max(steps[leader], default=0) >= 12:
                killed, killed_at, last = leader, time.time(), max(steps[leader])
                procs[leader].kill()
        lags = []
        for n in names:
            if n == killed:
                continue
            # A follower's first step is where it joined, not one it followed; the leader's last
            # reaches the followers through its successor.
            for step, at in sorted(steps[n].items())[1:]:
                if step in steps[killed] and step < last:
                    lags.append(at - steps[killed][step])
        lags.sort()
        return statistics.median(lags), lags[min(len(lags) - 1, int(0.99 * len(lags)))], takeover
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def first_read_ms(location: str, cache: str) -> float:
    """Reading a 64 MB version from a registry opened with an empty cache (for artifacts kept in
    the database; a directory registry reads its own files)."""
    reg = lepton.Registry(location, actor="bench")
    big = torch.nn.Linear(4096, 4096)
    v = reg.register("big", big, example_inputs=torch.zeros(1, 4096))
    fresh = lepton.Registry(location, blobs=cache) if "artifacts=database" in location else reg
    start = time.perf_counter()
    data = fresh.read_artifact(f"big:{v.version}")
    seconds = time.perf_counter() - start
    assert len(data) > 64 << 20
    return seconds * 1e3


def propagation(location: str, moves: int):
    """Seconds from an alias move until each of 3 replicas serves the new target."""
    reg = lepton.Registry(location, actor="bench")
    for _ in range(2):
        reg.register("m", AddOne(), example_inputs=torch.zeros(1, 4))
    reg.set_alias("m", "prod", "v1")
    procs = [subprocess.Popen([sys.executable, __file__, "--replica", location], stdout=subprocess.PIPE,
                              text=True) for _ in range(3)]
    try:
        for p in procs:
            assert p.stdout.readline().split()[0] == "ready"
        samples = []
        for i in range(moves):
            target = "v2" if i % 2 == 0 else "v1"
            moved = time.time()
            reg.set_alias("m", "prod", target)
            for p in procs:
                label, at = p.stdout.readline().split()
                assert label == target
                samples.append(float(at) - moved)
        samples.sort()
        return statistics.median(samples), samples[min(len(samples) - 1, int(0.99 * len(samples)))]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def predict_us(locations: dict, runs: int) -> dict:
    """Deployment.predict on a tiny model from each backend, in interleaved rounds (every backend
    once per round) so that a database busy with what came before, or the machine's drift, weighs
    on all of them alike: the median per call over the rounds."""
    x = torch.zeros(1, 4)
    deployments = {}
    try:
        for backend, location in locations.items():
            reg = lepton.Registry(location, actor="bench")
            reg.register("tiny", AddOne(), example_inputs=torch.zeros(1, 4))
            reg.set_alias("tiny", "prod", "v1")
            deployments[backend] = d = lepton.Deployment(reg, "tiny", alias="prod")
            for _ in range(2000):
                d.predict(x)
        samples = {b: [] for b in deployments}
        for _ in range(runs):
            for b, d in deployments.items():
                samples[b].append(median_us(lambda: d.predict(x), 5000, 1))
        return {b: statistics.median(s) for b, s in samples.items()}
    finally:
        for d in deployments.values():
            d.close()


def median_us(fn, calls: int, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def bench(backend: str, location: str, args) -> dict:
    n = args.versions
    out = {}
    data = artifacts(n)
    seconds = register_all(location, data, "model")
    out["register, 1 process (versions/s)"] = n / seconds
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", location, str(n // 4), str(1_000_000 * (p + 1))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for p in range(4)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    start = time.perf_counter()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        p.wait()
        assert p.returncode == 0
    seconds = time.perf_counter() - start
    reg = lepton.Registry(location)
    assert [v.seq for v in reg.versions("parallel")] == list(range(1, n + 1))
    out["register, 4 processes (versions/s)"] = n / seconds

    reg.set_alias("model", "production", f"v{n // 2}")
    for _ in range(1000):
        reg.get("model@production")
    out["resolve name@alias (us, goal < 50 on SQLite)"] = median_us(
        lambda: reg.get("model@production"), 2000, args.runs)
    out[f"list {n} versions (ms, goal < 50 on SQLite)"] = median_us(
        lambda: reg.versions("model"), 5, args.runs) / 1000
    p50, p99 = propagation(location, args.moves)
    out["alias to 3 replicas, p50 (ms)"] = p50 * 1e3
    out["alias to 3 replicas, p99 (ms, goal < 1000)"] = p99 * 1e3
    out["first read of a 64 MB version (ms)"] = first_read_ms(location, args.cache)
    if backend == "sqlite":
        out["shared canary step to 2 followers, p50 (ms)"] = float("nan")
        out["shared canary step to 2 followers, p99 (ms)"] = float("nan")
        out["leader killed: a new one leads after (s)"] = float("nan")
    else:
        p50, p99, takeover = policy_sync(location)
        out["shared canary step to 2 followers, p50 (ms)"] = p50 * 1e3
        out["shared canary step to 2 followers, p99 (ms)"] = p99 * 1e3
        out["leader killed: a new one leads after (s)"] = takeover
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--moves", type=int, default=20)
    ap.add_argument("--backends", default="sqlite,postgresql,postgresql_artifacts")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--replica", help=argparse.SUPPRESS)
    ap.add_argument("--policy-replica", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.policy_replica:
        policy_replica(*args.policy_replica)
        return
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))
        return
    if args.replica:
        replica(args.replica)
        return

    results, locations = {}, {}
    server = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for backend in args.backends.split(","):
                if backend == "sqlite":
                    location = os.path.join(tmp, "reg")
                elif backend in ("postgresql", "postgresql_artifacts"):
                    server = server or pg_server.PostgresServer().start()
                    location = f"{server.url(server.create_database())}?blobs={os.path.join(tmp, backend)}"
                    if backend == "postgresql_artifacts":
                        location += "&artifacts=database"
                else:
                    raise SystemExit(f"unknown backend {backend!r}")
                args.cache = os.path.join(tmp, backend + "-another-machine")
                results[backend] = bench(backend, location, args)
                locations[backend] = location
            for backend, us in predict_us(locations, args.runs).items():
                results[backend]["predict, tiny model (us)"] = us
    finally:
        if server:
            server.close()
    backends = list(results)
    print(f"{'':48}" + "".join(f"{b:>14}" for b in backends))
    for key in results[backends[0]]:
        print(f"{key:48}" + "".join(f"{results[b][key]:>14,.1f}" for b in backends))
    if "sqlite" in results and "postgresql" in results:
        a, b = results["sqlite"]["predict, tiny model (us)"], results["postgresql"]["predict, tiny model (us)"]
        print(f"predict on PostgreSQL / on SQLite: {b / a:.3f} (goal within 5%)")


if __name__ == "__main__":
    main()
