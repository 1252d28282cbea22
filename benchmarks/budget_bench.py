"""Many versions under a memory budget, side by side in one run, medians of several runs.

200 versions of a 512->1024->512 MLP (4.2 MB of weights each), Zipf-distributed traffic over
the versions (s = 1.1, a fixed random ranking of versions), 8 client threads sending batch-1
requests. Three ways to serve them, each in a fresh process so that its peak RSS is its own:

  all        every version loaded (no budget): the ceiling
  lru        lepton under a memory budget (100 MB by default): load on demand, evict the least
             recently used idle version
  lfu        the same, evicting the least frequently used (MemoryBudget(eviction="lfu"))
  per_req    what a script without a server does: torch.jit.load of the version's file, then the
             forward, for every request

Each process first asks every version once, then sends --warmup requests (neither measured:
the budgeted cache fills), then the measured ones. Everything loaded loads, and so checks, every
artifact at start; the registry hashes an artifact once per process, so asking each version once
keeps that check outside the measurement in the budgeted modes too. Reported per mode: throughput, hit rate, p50 and p99 of hits and of misses (cold
starts), peak RSS (and how far it rose above the process's RSS after importing torch), and the
most threads the process had.

With --misses, what one miss costs instead: one client asks 40 versions in turn under a budget
that holds two (the primary, which the policy keeps, and one other: every other request misses),
against the same versions all loaded; the difference, per miss, is what a load adds in wall and
CPU time (medians of --runs rounds of 5 passes).

usage: .venv/bin/python benchmarks/budget_bench.py [--runs 3] [--versions 200] [--budget 100MB]
       .venv/bin/python benchmarks/budget_bench.py --misses [--runs 3]
"""
import argparse
import io
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch

import lepton

CLIENTS = 8


def make_registry(root, versions):
    reg = lepton.Registry(os.path.join(root, "reg"), actor="bench")
    files = os.path.join(root, "files")
    os.makedirs(files, exist_ok=True)
    for n in range(versions):
        torch.manual_seed(n)
        m = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 512)).eval()
        buf = io.BytesIO()
        torch.jit.save(torch.jit.script(m), buf)
        data = buf.getvalue()
        reg.register("mlp", data, version=f"v{n}")
        with open(os.path.join(files, f"v{n}.pt"), "wb") as f:
            f.write(data)
    return reg


def zipf_stream(versions, count, seed, s=1.1):
    """`count` version indices, Zipf(s) over a fixed random ranking of the versions."""
    ranking = list(range(versions))
    random.Random(12345).shuffle(ranking)
    weights = [1.0 / (k + 1) ** s for k in range(versions)]
    rng = random.Random(seed)
    return [ranking[i] for i in rng.choices(range(versions), weights=weights, k=count)]


def threads_now():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def rss_mb_now():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(args):
    """One mode in this process; prints one JSON line of results."""
    torch.set_num_threads(1)
    base_rss = rss_mb_now()
    reg = lepton.Registry(os.path.join(args.root, "reg"), actor="bench")
    x = torch.randn(1, 512)
    if args.mode == "per_req":
        files = os.path.join(args.root, "files")

        def ask(n):
            m = torch.jit.load(os.path.join(files, f"v{n}.pt"))
            with torch.inference_mode():
                m(x)
            return True  # every request loads
    else:
        budget = None if args.mode == "all" else lepton.MemoryBudget(args.budget, eviction=args.mode)
        dep = lepton.Deployment(reg, "mlp", versions="all", memory_budget=budget, threads=2)

        def ask(n):
            return dep.predict(x, version=f"v{n}").cold_start

    peak_threads = [threads_now()]
    stop = threading.Event()

    def sampler():
        while not stop.wait(0.02):
            peak_threads[0] = max(peak_threads[0], threads_now())

    samp = threading.Thread(target=sampler, daemon=True)
    samp.start()
    results = [[] for _ in range(CLIENTS)]

    def client(i, stream, record):
        for n in stream:
            t0 = time.perf_counter()
            cold = ask(n)
            if record:
                results[i].append((time.perf_counter() - t0, cold))

    def phase(count, seed_base, record):
        ts = [threading.Thread(target=client, args=(i, zipf_stream(args.versions, count, seed_base + i), record))
              for i in range(CLIENTS)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return time.perf_counter() - t0

    if args.mode != "per_req":
        for n in range(args.versions):
            ask(n)
    phase((args.warmup if args.mode != "per_req" else 200) // CLIENTS, 100, False)
    elapsed = phase(args.requests // CLIENTS, 200, True)
    stop.set()
    samp.join()
    flat = [r for rs in results for r in rs]
    hits = sorted(t for t, cold in flat if not cold)
    misses = sorted(t for t, cold in flat if cold)
    q = lambda v, p: v[min(len(v) - 1, int(p * len(v)))] * 1e3 if v else float("nan")  # noqa: E731
    out = {
        "throughput": len(flat) / elapsed,
        "hit_rate": len(hits) / len(flat),
        "hit_p50_ms": q(hits, 0.5), "hit_p99_ms": q(hits, 0.99),
        "miss_p50_ms": q(misses, 0.5), "miss_p99_ms": q(misses, 0.99),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "base_rss_mb": base_rss,
        "threads": peak_threads[0],
    }
    if args.mode != "per_req":
        out["budget_peak_mb"] = (dep.status()["memory"] or {}).get("peak_bytes", 0) / 1e6
        dep.close()
    print(json.dumps(out), flush=True)


def misses(root, runs):
    """Per-request wall and CPU time, every request a miss against everything loaded."""
    torch.set_num_threads(1)
    reg = lepton.Registry(os.path.join(root, "reg"), actor="bench")
    x = torch.randn(1, 512)
    labels = [f"v{n}" for n in range(40)]
    size = reg.get(f"mlp:{labels[0]}").size
    cold = lepton.Deployment(reg, "mlp", versions=labels, threads=1,
                             memory_budget=lepton.MemoryBudget(int(2.5 * size)))
    hot = lepton.Deployment(reg, "mlp", versions=labels, threads=1)
    for v in labels:  # each artifact checked once, the code compiled once
        cold.predict(x, version=v)
        hot.predict(x, version=v)

    def per_request(dep):
        out = []
        for _ in range(5):
            t, c = time.perf_counter(), time.process_time()
            for v in labels:
                dep.predict(x, version=v)
            out.append(((time.perf_counter() - t) / len(labels) * 1e6,
                        (time.process_time() - c) / len(labels) * 1e6))
        return statistics.median(o[0] for o in out), statistics.median(o[1] for o in out)

    def counts():
        vs = cold.status()["versions"]
        return sum(v["misses"] for v in vs), sum(v["hits"] + v["misses"] for v in vs)

    m0, r0 = counts()
    rounds = []
    for _ in range(runs):
        h, c = per_request(hot), per_request(cold)
        rounds.append((h[0], h[1], c[0], c[1]))
    m1, r1 = counts()
    share = (m1 - m0) / (r1 - r0)  # of the requests, those that missed
    h_wall, h_cpu, c_wall, c_cpu = (statistics.median(r[i] for r in rounds) for i in range(4))
    st = cold.status()
    inline = sum(v["inline_loads"] for v in st["versions"])
    loads = sum(v["loads"] for v in st["versions"])
    print(f"one client, 40 versions in turn, batch 1, medians of {runs} rounds:")
    print(f"  everything loaded: {h_wall:.0f} us wall, {h_cpu:.0f} us CPU per request")
    print(f"  budget for two, {share:.0%} of the requests missing: {c_wall:.0f} us wall, "
          f"{c_cpu:.0f} us CPU per request")
    print(f"  a miss adds {(c_wall - h_wall) / share:.0f} us wall, {(c_cpu - h_cpu) / share:.0f} us CPU; "
          f"{inline} of {loads} loads ran on the request's thread, "
          f"{st['memory']['buffers_reused']} into a reused buffer")
    cold.close()
    hot.close()


def run_mode(root, mode, args):
    cmd = [sys.executable, __file__, "--child", mode, "--root", root, "--versions", str(args.versions),
           "--budget", args.budget, "--requests", str(args.requests), "--warmup", str(args.warmup)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--versions", type=int, default=200)
    ap.add_argument("--budget", default="100MB")
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--warmup", type=int, default=4000)
    ap.add_argument("--child", default=None)
    ap.add_argument("--root", default=None)
    ap.add_argument("--misses", action="store_true", help="what one miss costs, one client")
    args = ap.parse_args()
    if args.child:
        args.mode = args.child
        return child(args)
    with tempfile.TemporaryDirectory() as root:
        if args.misses:
            make_registry(root, 40)
            return misses(root, args.runs)
        t0 = time.perf_counter()
        make_registry(root, args.versions)
        print(f"{args.versions} versions registered in {time.perf_counter() - t0:.1f} s; "
              f"{CLIENTS} clients, Zipf s=1.1, budget {args.budget}, {args.requests} measured requests "
              f"after {args.warmup}, medians of {args.runs} runs\n")
        modes = ["all", "lru", "lfu", "per_req"]
        runs = {m: [] for m in modes}
        for _ in range(args.runs):  # interleaved, so that drift hits every mode alike
            for m in modes:
                runs[m].append(run_mode(root, m, args))
        med = {m: {k: statistics.median(r[k] for r in runs[m]) for k in runs[m][0]} for m in modes}
        cols = ["throughput", "hit_rate", "hit_p50_ms", "hit_p99_ms", "miss_p50_ms", "miss_p99_ms",
                "peak_rss_mb", "base_rss_mb", "threads"]
        print(f"{'mode':8s}" + "".join(f"{c:>13s}" for c in cols))
        for m in modes:
            print(f"{m:8s}" + "".join(f"{med[m][c]:13.2f}" for c in cols))
        a, p = med["all"], med["per_req"]
        for name in ("lru", "lfu"):
            b = med[name]
            print(f"\n{name}: throughput {b['throughput'] / a['throughput']:.2f}x of everything loaded (goal >= 0.9), "
                  f"{b['throughput'] / p['throughput']:.1f}x of loading per request; "
                  f"hit p99 {b['hit_p99_ms'] / a['hit_p99_ms']:.2f}x of everything loaded's p99 (goal <= 1.5)")
            print(f"{name}: peak RSS {b['peak_rss_mb']:.0f} MB, {b['peak_rss_mb'] - b['base_rss_mb']:.0f} MB above the "
                  f"process after import (goal: under the budget + 200 MB); the budget's own peak "
                  f"{b['budget_peak_mb']:.1f} MB; threads {b['threads']:.0f} (everything loaded: {a['threads']:.0f})")
        # The bound no cache can pass: the share of traffic outside the budget's room.
        room = int(lepton._core.parse_byte_size(args.budget) // 4.3e6)
        w = [1.0 / (k + 1) ** 1.1 for k in range(args.versions)]
        print(f"the best hit rate any cache of {room} versions can reach on this traffic: "
              f"{sum(w[:room]) / sum(w):.2f}")


if __name__ == "__main__":
    main()
