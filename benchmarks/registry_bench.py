"""Registry macro-benchmarks, from Python.

  resolve  `name@alias` on a registry holding 10,000 versions of one model (median per call)
  list     `versions(name)` of those 10,000 versions (median per call)
  register 10,000 small TorchScript versions: one process, then four processes at once

usage: .venv/bin/python benchmarks/registry_bench.py [--versions 10000] [--runs 5]
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


def median_us(fn, calls: int, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))
        return

    n = args.versions
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "reg")
        data = artifacts(n)
        seconds = register_all(path, data, "model")
        print(f"register  1 process : {n} versions in {seconds:.1f} s = {n / seconds:,.0f} versions/s")

        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", path, str(n // 4), str(1_000_000 * (p + 1))],
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
        reg = lepton.Registry(path)
        assert [v.seq for v in reg.versions("parallel")] == list(range(1, n + 1))
        print(f"register  4 processes: {n} versions in {seconds:.1f} s = {n / seconds:,.0f} versions/s")

        reg.set_alias("model", "production", f"v{n // 2}")
        for _ in range(1000):
            reg.get("model@production")
        resolve = median_us(lambda: reg.get("model@production"), 2000, args.runs)
        print(f"resolve   name@alias with {n} versions: median {resolve:.1f} us (goal < 50 us)")
        listing = median_us(lambda: reg.versions("model"), 5, args.runs) / 1000
        print(f"list      {n} versions: median {listing:.1f} ms (goal < 50 ms)")


if __name__ == "__main__":
    main()
