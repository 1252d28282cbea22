"""Where a version runs, side by side in one run, medians of several runs: in this process against
in a worker process of its own (placement="process": by default each side waits for the other's
frame awake while the process has cores to spare; with worker={"busy_poll_us": 0} it always
sleeps), and against a remote version (lepton.Remote) served by
`lepton serve` in a child process on loopback, over HTTP with binary tensor data, for a small MLP
(64->256->256->8).

  latency     one client, batch 1 and batch 64: p50 and p99 of Deployment.predict, and what the
              worker adds at p50 (the median of each run's difference, the runs' own listed)
  throughput  8 client threads, batch 1 and batch 64, for a few seconds: requests per second,
              and each placement's share of in-process (the median of each run's ratio, the
              runs' own listed)

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

OTHERS = ("process", "sleeping", "remote")


def latencies(dep, x, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        dep.predict(x)
        out.append(time.perf_counter() - t)
    out.sort()
    return out[len(out) // 2], out[int(len(out) * 0.99)]


def throughput(dep, x, clients, seconds):
    answered, errors = load(dep, clients, seconds, x)
    if errors:
        raise errors[0]
    return len(answered) / seconds


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
            for batch in (1, 64):
                x = torch.randn(batch, 64)
                tput = {k: [] for k in deps}
                for _ in range(args.runs):
                    for name, dep in deps.items():
                        tput[name].append(throughput(dep, x, 8, args.seconds))
                med = {k: statistics.median(v) for k, v in tput.items()}
                for k in deps:
                    print(f"  batch {batch:>2} 8 clients  {k:<10}  {med[k]:9.0f} req/s")
                for k in OTHERS:
                    ratios = [t / i for t, i in zip(tput[k], tput["in_process"])]
                    goal = " (goal for a worker: at least 0.8x)" if k != "remote" else ""
                    print(f"  batch {batch:>2} {k} / in_process throughput: {statistics.median(ratios):.2f}x{goal} "
                          f"(runs: {', '.join(f'{r:.2f}' for r in ratios)})")
        finally:
            for d in deps.values():
                d.close()
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
