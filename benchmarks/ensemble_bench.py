"""Ensembles against what a user writes by hand, side by side in one run, medians of several runs:
three versions of a 64->1024->1024->2 MLP combined by weights (0.5, 0.3, 0.2), at batch 1, 8
and 64.

  latency     one client: lepton's ensemble (Deployment.predict) against the plain Python loop
              (sum of weight * model(x) inside torch.inference_mode) at every torch thread count
              from 1 to the cores this process may use; lepton's time over the best plain
              arrangement (goal: at most 0.95x)
  limit       each version's single-thread latency, and what this machine allows: threads each
              looping over their own version reach a share of one thread's rate (contention), and
              one thread running the versions in turn pays for their weights leaving the cache;
              lepton's parallel efficiency against that limit (goal at batch 64: at least 0.9)
  arranged    how lepton laid the members over the cores for those requests: spread (waves,
              the remainder split by rows) or in sequence with intra-op threads, whichever it
              measured faster (status()["arrangements"])
  clients     8 client threads for a few seconds: requests per second and p99 of lepton's
              ensemble, by default and with dynamic batching (max_batch_size 8x the batch),
              against the plain loop in 8 threads at its best thread count (goal: lepton at
              least 1.3x), and the most any arrangement could reach on these cores: every core
              busy with single-thread forwards without a pause and without slowing the others,
              at whichever batch of 1x to 8x the request's rows runs the fewest seconds per row

The same runs again in a child process confined to one core (taskset), unless --cores is given.

usage: .venv/bin/python benchmarks/ensemble_bench.py [--runs 5] [--seconds 2] [--cores N]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

import torch

import lepton
from engine_bench import concurrency_ceiling, mlp, p99, run_clients, timed

SIZES = [64, 1024, 1024, 2]
WEIGHTS = [0.5, 0.3, 0.2]


def plain(models, x):
    with torch.inference_mode():
        return sum(w * m(x) for w, m in zip(WEIGHTS, models))


def clients(call, n, seconds, torch_threads=None):
    """Requests per second and p99 latency of `n` threads calling `call` for `seconds`; each
    thread sets torch's thread count first when `torch_threads` is given (OpenMP keeps the count
    per thread: a thread that does not set it runs teams of the default size)."""
    setup = (lambda: torch.set_num_threads(torch_threads)) if torch_threads else None
    latencies, errors = run_clients(call, n, seconds, setup)
    if errors:
        raise errors[0]
    return len(latencies) / seconds, p99(latencies)


def with_threads(n, fn):
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(saved)


def most_requests(models, batch, cores):
    """Requests per second that `cores` could answer if each ran the members' forwards on one
    thread back to back, with no contention between cores, at the batch (1x, 2x, 4x or 8x the
    request's rows) that costs the least per row: an upper bound for any arrangement, with or
    without dynamic batching. Returns (requests per second, rows per forward)."""
    best = (0.0, batch)
    for factor in (1, 2, 4, 8):
        rows = batch * factor
        x = torch.randn(rows, SIZES[0])
        calls = max(5, int(0.1 / (rows * 20e-6 + 0.0005)))

        def one(m):
            with torch.inference_mode():
                m(x)
                return min(timed(lambda: m(x), calls) for _ in range(3))  # the fastest: a bound

        seconds = sum(with_threads(1, lambda m=m: one(m)) for m in models)
        best = max(best, (cores * factor / seconds, rows))
    return best


def bench(reg, models, batch, cores, runs, seconds):
    x = torch.randn(batch, SIZES[0])
    d = lepton.Deployment(reg, "ens", ["v0", "v1", "v2"], policy=lepton.Ensemble(WEIGHTS))
    # The same ensemble with dynamic batching: concurrent requests share their members' forwards.
    batched = lepton.Deployment(reg, "ens", ["v0", "v1", "v2"], policy=lepton.Ensemble(WEIGHTS),
                                max_batch_size=8 * batch)
    calls = max(20, int(0.15 / (batch * 20e-6 + 0.0005)))
    thread_counts = list(range(1, cores + 1))
    try:
        d.predict(x)
        rounds = []
        for _ in range(runs):  # interleaved: drift hits every column alike
            r = {"lepton": timed(lambda: d.predict(x), calls)}
            for n in thread_counts:
                r[n] = with_threads(n, lambda: timed(lambda: plain(models, x), calls))
            r["single"] = [with_threads(1, lambda m=m: timed(lambda: plain([m], x), calls)) for m in models]

            def in_turn():
                with torch.inference_mode():
                    return timed(lambda: [m(x) for m in models], calls)

            r["in_turn"] = with_threads(1, in_turn)
            r["ceiling"] = concurrency_ceiling(models[:cores], x, seconds=0.2) if cores > 1 else 1.0
            rounds.append(r)
        med = {k: statistics.median(r[k] for r in rounds) for k in ["lepton", *thread_counts]}
        best = min(thread_counts, key=lambda n: med[n])
        ratio = statistics.median(r["lepton"] / min(r[n] for n in thread_counts) for r in rounds)
        efficiency = statistics.median(sum(r["single"]) / (cores * r["lepton"]) for r in rounds)
        limit = statistics.median(min(1.0, r["ceiling"] * sum(r["single"]) / r["in_turn"]) for r in rounds)
        plain_ms = ", ".join(f"{n}: {med[n] * 1e3:.2f}" for n in thread_counts)
        print(f"batch {batch:>2}  latency  lepton {med['lepton'] * 1e3:.2f} ms; plain loop by torch threads "
              f"{plain_ms} ms (best {best}); lepton / best plain {ratio:.2f}x (goal <= 0.95)")
        for a in d.status()["arrangements"]:
            print(f"batch {batch:>2}  arranged {a['kept'] or 'still measuring'} (of the requests alone, "
                  f"median spread {a['spread_median_s'] * 1e3:.2f} ms over {a['spread_measured']} measured, "
                  f"in sequence {a['sequence_median_s'] * 1e3:.2f} ms over {a['sequence_measured']}; "
                  f"{a['rechecks']} recheck(s))")
        goal = " (goal >= 0.9)" if batch == 64 else ""
        print(f"batch {batch:>2}  limit    single-thread {', '.join(f'{s * 1e3:.2f}' for s in rounds[-1]['single'])} ms; "
              f"efficiency {efficiency:.2f} on {cores} core(s), this machine's limit {limit:.2f}, "
              f"share of the limit {efficiency / limit:.2f}{goal}")
        load = {"lepton": [], "batched": [], "plain": []}
        batched.predict(x)
        for _ in range(max(1, runs // 2)):
            load["lepton"].append(clients(lambda: d.predict(x), 8, seconds))
            load["batched"].append(clients(lambda: batched.predict(x), 8, seconds))
            load["plain"].append(max((clients(lambda: plain(models, x), 8, seconds, torch_threads=n)
                                      for n in thread_counts), key=lambda t: t[0]))
        rps = {k: statistics.median(t[0] for t in v) for k, v in load.items()}
        bound, bound_rows = most_requests(models, batch, cores)
        tail = {k: statistics.median(t[1] for t in v) for k, v in load.items()}
        share = {k: statistics.median(a[0] / b[0] for a, b in zip(load[k], load["plain"])) for k in ("lepton", "batched")}
        print(f"batch {batch:>2}  8 clients  plain loop at its best {rps['plain']:.0f} req/s p99 {tail['plain'] * 1e3:.2f} ms; "
              f"lepton {rps['lepton']:.0f} req/s p99 {tail['lepton'] * 1e3:.2f} ms ({share['lepton']:.2f}x); "
              f"with max_batch_size {8 * batch} {rps['batched']:.0f} req/s p99 {tail['batched'] * 1e3:.2f} ms "
              f"({share['batched']:.2f}x) (goal >= 1.3)", flush=True)
        print(f"batch {batch:>2}  8 clients  the most these {cores} core(s) allow: {bound:.0f} req/s "
              f"({bound / rps['plain']:.2f}x the plain loop's best), forwards of {bound_rows} rows", flush=True)
    finally:
        d.close()
        batched.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--cores", type=int, help="run confined to this many cores (the first ones)")
    ap.add_argument("--batches", default="1,8,64")
    args = ap.parse_args()
    if args.cores:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cores]))
    cores = len(os.sched_getaffinity(0))
    print(f"lepton {lepton.__version__}, torch {torch.__version__}, {cores} core(s) usable "
          f"of {os.cpu_count()}, {args.runs} runs, medians", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        reg = lepton.Registry(tmp + "/reg")
        models = [torch.jit.script(mlp(SIZES, seed)) for seed in range(3)]
        for i, m in enumerate(models):
            reg.register("ens", m, version=f"v{i}", example_inputs=torch.zeros(1, SIZES[0]))
        for batch in (int(b) for b in args.batches.split(",")):
            bench(reg, models, batch, cores, args.runs, args.seconds)
    if not args.cores and cores > 1:
        print("confined to one core:", flush=True)
        subprocess.run([sys.executable, __file__, "--runs", str(args.runs), "--seconds", str(args.seconds),
                        "--cores", "1", "--batches", args.batches], check=True)


if __name__ == "__main__":
    main()
