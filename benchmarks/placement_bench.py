"""Where a version runs, side by side in one run, medians of several runs: in this process against
in a worker process of its own (placement="process": each request goes through a slot of the
worker's shared ring, and by default each side waits for the other's post awake while the process
has cores to spare; "socket": worker={"shared_memory": False}, requests in exchanges over a
connection's socket; "sleeping": worker={"busy_poll_us": 0}, each side always sleeps), and against a remote
version (lepton.Remote) served by `lepton serve` in a child process on loopback, over HTTP with
binary tensor data, for a small MLP (64->256->256->8).

  latency     one client, batch 1 and batch 64: p50 and p99 of Deployment.predict, and what the
              worker adds at p50 (the median of each run's difference, the runs' own listed)
  throughput  8 client threads, batch 1 and batch 64, for a few seconds: requests per second,
              and each placement's share of in-process (the median of each run's ratio, the
              runs' own listed), and the CPU time each request took (user + system), in this
              process and in the worker or the server
  floor       what a hop between two processes costs this machine at least: a round trip of
              wakeup_pingpong (built with the benchmarks) over a Unix socket, over a futex in
              shared memory, and spinning; and how much CPU per request a hop may cost for a worker
              to keep 0.8x of in-process throughput when both cores are busy

usage: .venv/bin/python benchmarks/placement_bench.py [--runs 5] [--seconds 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import lepton
from engine_bench import load, mlp
from http_bench import free_port, wait_ready

OTHERS = ("process", "socket", "sleeping", "remote")


def latencies(dep, x, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        dep.predict(x)
        out.append(time.perf_counter() - t)
    out.sort()
    return out[len(out) // 2], out[int(len(out) * 0.99)]


def cpu_seconds(pid=None):
    """User + system CPU seconds of this process (all its threads, ended ones too) or of `pid`."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(dep, x, clients, seconds, other_pid=None):
    """Requests per second, and the CPU seconds per request here and in `other_pid`."""
    here, there = cpu_seconds(), cpu_seconds(other_pid) if other_pid else 0.0
    answered, errors = load(dep, clients, seconds, x)
    if errors:
        raise errors[0]
    n = len(answered)
    here, there = cpu_seconds() - here, (cpu_seconds(other_pid) - there) if other_pid else 0.0
    return n / seconds, here / n, there / n


def pingpong_binary():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for build in ("build/cmake", "build/dev"):
        path = os.path.join(root, build, "benchmarks", "wakeup_pingpong")
        if os.access(path, os.X_OK):
            return path
    return None


def worker_pid(dep):
    return dep.status()["versions"][0]["worker"]["pid"]


def floor(cpu_in):
    """A hop's least cost here, against what 0.8x of in-process throughput leaves for it."""
    binary = pingpong_binary()
    if not binary:
        print("wakeup_pingpong is not built (scripts/bootstrap builds it): no floor figures")
        return
    out = json.loads(subprocess.run([binary, "2"], capture_output=True, text=True, check=True).stdout)
    print("one round trip between two processes (wakeup_pingpong), each side asleep until the other's message:")
    for mode, r in out.items():
        print(f"  {mode:<7} {r['wall_us']:6.2f} us wall, CPU {r['caller_cpu_us']:.2f} + {r['answerer_cpu_us']:.2f} us")
    for batch, c in cpu_in.items():
        # With both cores busy, throughput is the cores over the CPU each request takes: at 0.8x a
        # request may take 1.25x what it takes in process, so the hop may add a quarter of it.
        print(f"  batch {batch:>2}: in process a request takes {c * 1e6:.1f} us of CPU at 8 clients; a worker "
              f"keeps 0.8x only if its hop adds at most {c * 0.25 * 1e6:.1f} us per request, both sides together")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        reg = lepton.Registry(tmp + "/reg")
        reg.register("m", torch.jit.script(mlp([64, 256, 256, 8], seed=0)), version="v1",
                     example_inputs=torch.zeros(1, 64))
        config = os.path.join(tmp, "serve.json")
        with open(config, "w") as f:
            json.dump({"models": {"m": {"versions": ["v1"]}}, "threads": 2, "only": True}, f)
        url = f"http://127.0.0.1:{free_port()}"
        server = subprocess.Popen([sys.executable, "-m", "lepton", "serve", "--registry", reg.path, "--port",
                                   url.rsplit(":", 1)[1], "--config", config, "--no-ui"])
        wait_ready(url, server)
        deps = {
            "in_process": lepton.Deployment(reg, "m", ["v1"], threads=2, adaptive=False),
            "process": lepton.Deployment(reg, "m", ["v1"], threads=2, adaptive=False, placement="process"),
            "socket": lepton.Deployment(reg, "m", ["v1"], threads=2, adaptive=False, placement="process",
                                        worker={"shared_memory": False}),
            "sleeping": lepton.Deployment(reg, "m", ["v1"], threads=2, adaptive=False, placement="process",
                                          worker={"busy_poll_us": 0}),
            "remote": lepton.Deployment(reg, "m", [lepton.Remote(url, model="m", version="v1")], threads=2,
                                        adaptive=False),
        }
        try:
            print(f"small MLP 64->256->256->8, {args.runs} runs, medians")
            for batch in (1, 64):
                x = torch.randn(batch, 64)
                res = {k: [] for k in deps}
                for _ in range(args.runs):
                    for name, dep in deps.items():  # interleaved: both see the same machine
                        latencies(dep, x, 200)
                        res[name].append(latencies(dep, x, args.calls))
                p50 = {k: statistics.median(r[0] for r in v) for k, v in res.items()}
                p99 = {k: statistics.median(r[1] for r in v) for k, v in res.items()}
                for k in deps:
                    print(f"  batch {batch:>2} latency  {k:<10}  p50 {p50[k] * 1e6:8.1f} us  p99 {p99[k] * 1e6:8.1f} us")
                for k in OTHERS:
                    # Each run's columns are measured back to back: the median of the runs' own
                    # differences is what drift between runs moves least.
                    added = statistics.median(r[0] - i[0] for r, i in zip(res[k], res["in_process"]))
                    goal = " (goal for a worker at batch 1: under 30 us)" if k != "remote" and batch == 1 else ""
                    print(f"  batch {batch:>2} {k}: adds {added * 1e6:.1f} us at p50{goal} "
                          f"(runs: {', '.join(f'{(r[0] - i[0]) * 1e6:.0f}' for r, i in zip(res[k], res['in_process']))})")
            others = {k: worker_pid(deps[k]) for k in ("process", "socket", "sleeping")}
            others["remote"] = server.pid
            cpu_in = {}
            for batch in (1, 64):
                x = torch.randn(batch, 64)
                tput = {k: [] for k in deps}
                cpu = {k: [] for k in deps}
                for _ in range(args.runs):
                    for name, dep in deps.items():
                        rps, here, there = throughput(dep, x, 8, args.seconds, others.get(name))
                        tput[name].append(rps)
                        cpu[name].append((here, there))
                med = {k: statistics.median(v) for k, v in tput.items()}
                for k in deps:
                    here = statistics.median(c[0] for c in cpu[k]) * 1e6
                    there = statistics.median(c[1] for c in cpu[k]) * 1e6
                    where = f" + {there:.1f} in the {'server' if k == 'remote' else 'worker'}" if k in others else ""
                    print(f"  batch {batch:>2} 8 clients  {k:<10}  {med[k]:9.0f} req/s  "
                          f"CPU per request {here:.1f} us here{where}")
                cpu_in[batch] = statistics.median(c[0] for c in cpu["in_process"])
                for k in OTHERS:
                    ratios = [t / i for t, i in zip(tput[k], tput["in_process"])]
                    goal = " (goal for a worker: at least 0.8x)" if k != "remote" else ""
                    print(f"  batch {batch:>2} {k} / in_process throughput: {statistics.median(ratios):.2f}x{goal} "
                          f"(runs: {', '.join(f'{r:.2f}' for r in ratios)})")
            floor(cpu_in)
        finally:
            for d in deps.values():
                d.close()
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
