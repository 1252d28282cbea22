"""Registry macro-benchmarks, from Python, on each backend side by side: a directory (SQLite) and
a PostgreSQL server that the benchmark starts itself (Debian's, as the tests do).

  register  10,000 small TorchScript versions: one process, then four processes at once
  resolve   `name@alias` on a registry holding 10,000 versions of one model (median per call)
  list      `versions(name)` of those 10,000 versions (median per call)
  propagate an alias moved in one process, until each of 3 replica processes (a Deployment
            following the alias) serves the new target: p50 and p99
  predict   Deployment.predict on a tiny model served from the registry (median per call): the
            request path never touches the database, so the backends should not differ

usage: .venv/bin/python benchmarks/registry_bench.py [--versions 10000] [--runs 5]
                                                       [--backends sqlite,postgresql] [--moves 20]
"""
import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
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


def predict_us(location: str, runs: int) -> float:
    reg = lepton.Registry(location, actor="bench")
    reg.register("tiny", AddOne(), example_inputs=torch.zeros(1, 4))
    reg.set_alias("tiny", "prod", "v1")
    x = torch.zeros(1, 4)
    with lepton.Deployment(reg, "tiny", alias="prod") as d:
        for _ in range(2000):
            d.predict(x)
        return median_us(lambda: d.predict(x), 5000, runs)


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
    out["predict, tiny model (us)"] = predict_us(location, args.runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--moves", type=int, default=20)
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--replica", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))
        return
    if args.replica:
        replica(args.replica)
        return

    results = {}
    server = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for backend in args.backends.split(","):
                if backend == "sqlite":
                    location = os.path.join(tmp, "reg")
                elif backend == "postgresql":
                    server = server or pg_server.PostgresServer().start()
                    location = f"{server.url(server.create_database())}?blobs={os.path.join(tmp, 'shared')}"
                else:
                    raise SystemExit(f"unknown backend {backend!r}")
                results[backend] = bench(backend, location, args)
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
