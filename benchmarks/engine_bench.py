"""Engine macro-benchmarks, side by side in one run, medians of several runs.

  ensemble   3 versions of a 64->1024->1024->2 MLP at batch 64: lepton's parallel ensemble against
             each version's single-thread latency (parallel efficiency) and against the plain
             approach (a Python loop over the models summing weighted outputs) at torch's default
             and best thread settings
  overhead   a tiny model at batch 1: Deployment.predict against calling the TorchScript module
  batching   32 client threads sending batch-1 requests to a small MLP, with and without batching
  swap       p99 latency of 8 clients while versions are hot-swapped, against the steady p99
  shadow     one client: the primary's median latency with and without a mirror, and what two
             plain forwards side by side on two cores cost each other on this machine
  idlecores  two versions sharing the cores, all traffic to one: fair shares that borrow the
             cores the other leaves idle, against fixed budgets
  many       a deployment over 1,000 versions: load time, threads and memory it adds, and threads
             once each version has answered a request and gone idle again

usage: .venv/bin/python benchmarks/engine_bench.py [--runs 5] [--only ensemble,overhead,batching,swap,shadow,idlecores,many,idle]
"""
import argparse
import io
import os
import statistics
import tempfile
import threading
import time

import torch

import lepton

CORES = os.cpu_count() or 1


def mlp(sizes, seed):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1]).eval()


def timed(fn, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def median_of(fn, calls, runs):
    fn()
    return statistics.median(timed(fn, calls) for _ in range(runs))


class _Loop(torch.nn.Module):
    """Runs a model `n` times inside TorchScript: a loop that holds no GIL while it runs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, n: int):
        y = self.model(x)
        for _ in range(n - 1):
            y = self.model(x)
        return y


def concurrency_ceiling(models, x, seconds=0.3):
    """Forwards per second of one thread per core, each looping over its own model, as a share of
    what the same threads reach one at a time: the parallel efficiency of work with no
    dependencies and no synchronisation. Each thread loops inside TorchScript, so that the GIL
    does not serialise small forwards."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    loops = [torch.jit.script(_Loop(m)) for m in models]

    def run(loop, n, out, i):
        torch.set_num_threads(1)
        with torch.inference_mode():
            start = time.perf_counter()
            loop(x, n)
            out[i] = n / (time.perf_counter() - start)

    try:
        with torch.inference_mode():
            for loop in loops:  # the profiling executor optimizes after its first runs
                for _ in range(3):
                    loop(x, 2)
            one = max(timed(lambda: loop(x, 1), 3) for loop in loops)
        n = max(1, int(seconds / max(one, 1e-6)))
        alone = [0.0] * len(loops)
        for i, loop in enumerate(loops):
            run(loop, n, alone, i)
        together = [0.0] * len(loops)
        threads = [threading.Thread(target=run, args=(loop, n, together, i)) for i, loop in enumerate(loops)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(together) / sum(alone)
    finally:
        torch.set_num_threads(saved)


def bench_ensemble(reg, runs):
    sizes = [64, 1024, 1024, 2]
    models = [torch.jit.script(mlp(sizes, seed)) for seed in range(3)]
    weights = [0.5, 0.3, 0.2]
    for i, m in enumerate(models):
        reg.register("ens", m, version=f"v{i}", example_inputs=torch.zeros(64, 64))
    x = torch.randn(64, 64)
    calls = 30

    d = lepton.Deployment(reg, "ens", ["v0", "v1", "v2"], policy=lepton.Ensemble(weights))
    saved = torch.get_num_threads()

    def single_thread(m):
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                return timed(lambda: m(x), calls)
        finally:
            torch.set_num_threads(saved)

    # Rounds interleave the measurements so that drift on a shared machine hits both alike.
    for m in models:
        single_thread(m)
    d.predict(x)
    def in_turn():  # one thread, the versions one after another: a whole ensemble's working set
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                return timed(lambda: [m(x) for m in models], calls)
        finally:
            torch.set_num_threads(saved)

    rounds = [([single_thread(m) for m in models], timed(lambda: d.predict(x), calls),
               concurrency_ceiling(models[:CORES], x), in_turn()) for _ in range(runs)]
    single = [statistics.median(r[0][i] for r in rounds) for i in range(3)]
    ensemble = statistics.median(r[1] for r in rounds)
    efficiency = statistics.median(sum(r[0]) / (CORES * r[1]) for r in rounds)
    ceiling = statistics.median(r[2] for r in rounds)
    cache_cost = statistics.median(r[3] / sum(r[0]) for r in rounds)

    def plain():
        with torch.inference_mode():
            return sum(w * m(x) for w, m in zip(weights, models))

    plain_by_threads = {}
    for threads in sorted({saved, 1, CORES}):
        torch.set_num_threads(threads)
        plain_by_threads[threads] = median_of(plain, calls, runs)
    torch.set_num_threads(saved)
    best_threads = min(plain_by_threads, key=plain_by_threads.get)
    d.close()

    print(f"ensemble  single-thread latency per version: {', '.join(f'{s * 1e3:.2f}' for s in single)} ms")
    print(f"ensemble  lepton 3-version ensemble: {ensemble * 1e3:.2f} ms; "
          f"parallel efficiency {efficiency:.2f} on {CORES} cores (goal >= 0.9)")
    print(f"ensemble  limits of this machine: {CORES} threads each looping over its own version reach "
          f"{ceiling:.2f} of {CORES}x one thread's rate; one thread running the versions in turn takes "
          f"{cache_cost:.2f}x the sum of their single-thread latencies (each measured repeatedly, with "
          f"its weights in cache); together an efficiency of at most {ceiling / cache_cost:.2f}")
    print(f"ensemble  plain Python loop: {plain_by_threads[saved] * 1e3:.2f} ms at torch's default "
          f"{saved} thread(s) ({plain_by_threads[saved] / ensemble:.2f}x lepton's time), "
          f"{plain_by_threads[best_threads] * 1e3:.2f} ms at its best, {best_threads} thread(s) "
          f"({plain_by_threads[best_threads] / ensemble:.2f}x)")


def bench_overhead(reg, runs):
    tiny = torch.jit.script(torch.nn.Linear(4, 2).eval())
    reg.register("tiny", tiny, example_inputs=torch.zeros(1, 4))
    d = lepton.Deployment(reg, "tiny", ["v1"])
    x = torch.randn(1, 4)
    calls = 5000

    def direct():
        with torch.inference_mode():
            return tiny(x)

    def direct_in_one_mode():  # the caller enters inference mode once around its loop
        with torch.inference_mode():
            return timed(lambda: tiny(x), calls)

    rounds = []
    for _ in range(runs):  # interleaved so that all three see the same machine state
        rounds.append((timed(direct, calls), direct_in_one_mode(), timed(lambda: d.predict(x), calls)))
    direct_t, once_t, lepton_t = (statistics.median(r[i] for r in rounds) for i in range(3))
    print(f"overhead  tiny model, batch 1: direct TorchScript call {direct_t * 1e6:.1f} us "
          f"({once_t * 1e6:.1f} us inside one inference_mode), Deployment.predict {lepton_t * 1e6:.1f} us; "
          f"ratio {lepton_t / once_t:.2f} against the call inside one inference_mode (goal <= 1.1), "
          f"{lepton_t / direct_t:.2f} against inference_mode per call")
    d.close()


def load(d, clients, seconds, x):
    return run_clients(lambda: d.predict(x), clients, seconds)


def run_clients(call, clients, seconds, setup=None):
    """`clients` threads calling `call` for `seconds`: the answered calls' latencies and the
    errors raised; each thread runs `setup` first when given."""
    latencies, errors = [], []
    stop = threading.Event()

    def client():
        if setup:
            setup()
        mine = []
        while not stop.is_set():
            t = time.perf_counter()
            try:
                call()
                mine.append(time.perf_counter() - t)
            except Exception as e:  # reported
                errors.append(e)
        latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return latencies, errors


def p99(values):
    return statistics.quantiles(values, n=100)[98] if len(values) >= 100 else max(values)


def bench_batching(reg, runs):
    reg.register("batch", mlp([512, 1024, 1024, 10], 0), example_inputs=torch.zeros(1, 512))
    x = torch.randn(1, 512)
    results = {}
    for label, batch, delay in (("without batching", 1, 0.0), ("with batching", 16, 2.0)):
        d = lepton.Deployment(reg, "batch", ["v1"], max_batch_size=batch, max_queue_delay_ms=delay)
        throughput, tails = [], []
        for _ in range(runs):
            lat, errors = load(d, 32, 2.0, x)
            assert not errors, errors[:3]
            throughput.append(len(lat) / 2.0)
            tails.append(p99(lat))
        results[label] = (statistics.median(throughput), statistics.median(tails))
        d.close()
    (t0, p0), (t1, p1) = results["without batching"], results["with batching"]
    print(f"batching  32 clients, batch-1 requests: {t0:,.0f} req/s without batching (p99 {p0 * 1e3:.1f} ms), "
          f"{t1:,.0f} req/s with max_batch_size=16 (p99 {p1 * 1e3:.1f} ms): {t1 / t0:.1f}x (goal >= 4x)")


def bench_swap(reg, runs):
    for i in range(4):
        reg.register("swap", mlp([64, 256, 256, 2], i), version=f"s{i}", example_inputs=torch.zeros(1, 64))
    x = torch.randn(1, 64)
    d = lepton.Deployment(reg, "swap", ["s0"])
    steady_tails, swap_tails, swaps, total_errors = [], [], 0, 0
    for _ in range(runs):
        lat, errors = load(d, 8, 1.5, x)
        steady_tails.append(p99(lat))
        total_errors += len(errors)
        stop = threading.Event()

        def swapper():
            nonlocal swaps
            while not stop.is_set():
                current = d.versions[0]
                d.swap(current, f"s{(int(current[1]) + 1) % 4}")
                swaps += 1
                time.sleep(0.1)

        t = threading.Thread(target=swapper)
        t.start()
        lat, errors = load(d, 8, 1.5, x)
        stop.set()
        t.join()
        swap_tails.append(p99(lat))
        total_errors += len(errors)
    steady, swapping = statistics.median(steady_tails), statistics.median(swap_tails)
    print(f"swap      8 clients: steady p99 {steady * 1e3:.2f} ms, p99 during {swaps} hot swaps "
          f"{swapping * 1e3:.2f} ms ({swapping / steady:.2f}x, goal <= 2x), errors {total_errors}")
    d.close()


def bench_shadow(reg, runs):
    sizes = [64, 512, 512, 10]
    models = [torch.jit.script(mlp(sizes, seed)) for seed in range(2)]
    for m in models:
        reg.register("shadowed", m, example_inputs=torch.zeros(8, 64))
    d = lepton.Deployment(reg, "shadowed", ["v1", "v2"], adaptive=False)
    x = torch.randn(8, 64)
    calls = 400
    plain, shadow = lepton.Fixed("v1"), lepton.Shadow("v1", ["v2"])

    def median_latency(policy):
        d.set_policy(policy)
        samples = []
        for _ in range(calls):
            samples.append(d.predict(x).latency)
        time.sleep(0.05)  # let the last mirrored requests finish
        return statistics.median(samples)

    pairs = [(median_latency(plain), median_latency(shadow)) for _ in range(runs)]
    base = statistics.median(p[0] for p in pairs)
    mirrored = statistics.median(p[1] for p in pairs)
    [report] = d.shadow_report()
    # In a loop, the mirror's forward runs on the other core while the next request's forward
    # runs: what two such forwards side by side cost each other here, without lepton.
    share = statistics.median(concurrency_ceiling(models, x, seconds=0.2) for _ in range(runs))
    print(f"shadow    one client, MLP {sizes} batch 8: primary median {base * 1e3:.3f} ms alone, "
          f"{mirrored * 1e3:.3f} ms with one mirror (+{(mirrored / base - 1) * 100:.1f}%, goal < 5%); "
          f"mirrored {report['compared']}, dropped {report['dropped']}; two plain forwards side by side "
          f"on two cores each run at {share:.2f} of their speed alone (+{(1 / share - 1) * 100:.1f}%)")
    d.close()


def bench_idle_cores(reg, runs):
    """Two versions share every core; all traffic goes to one (a rollback kept live, a canary at
    0%). Its fair share is half the cores; borrowing lets it use the cores the other leaves idle.
    Against the same deployment with both budgets fixed (version_threads), which never borrow."""
    sizes = [64, 1024, 1024, 2]
    for seed in range(2):
        reg.register("idlecores", torch.jit.script(mlp(sizes, seed)), example_inputs=torch.zeros(64, 64))
    x = torch.randn(64, 64)
    share = max(1, CORES // 2)
    deps = {
        "shares": lepton.Deployment(reg, "idlecores", ["v1", "v2"], adaptive=False),
        "fixed": lepton.Deployment(reg, "idlecores", ["v1", "v2"], adaptive=False,
                                   version_threads={"v1": share, "v2": CORES - share}),
    }
    try:
        rps = {k: [] for k in deps}
        for d in deps.values():
            d.predict(x)
        for _ in range(runs):  # interleaved
            for k, d in deps.items():
                latencies, errors = run_clients(lambda: d.predict(x), CORES, 1.0)
                if errors:
                    raise errors[0]
                rps[k].append(len(latencies))
        borrowed = deps["shares"].status()["versions"][0]["borrowed"]
        med = {k: statistics.median(v) for k, v in rps.items()}
        print(f"idle cores  two versions on {CORES} cores, all traffic to one, {CORES} clients, batch 64: "
              f"{med['shares']:.0f} req/s with shares that borrow idle cores ({borrowed} requests borrowed), "
              f"{med['fixed']:.0f} req/s with fixed budgets ({med['shares'] / med['fixed']:.2f}x)")
    finally:
        for d in deps.values():
            d.close()


def _threads():
    return len(os.listdir("/proc/self/task"))


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_many(reg, runs, versions=1000):
    model = torch.jit.script(mlp([16, 16, 4], seed=3))
    buf = io.BytesIO()
    torch.jit.save(model, buf)
    data = buf.getvalue()
    labels = [f"v{i}" for i in range(versions)]
    for label in labels:
        reg.register("many", data, version=label)
    x = torch.zeros(1, 16)
    rows = []
    for _ in range(max(1, runs // 2)):
        threads0, rss0 = _threads(), _rss_mb()
        start = time.perf_counter()
        d = lepton.Deployment(reg, "many", labels, idle_thread_timeout=0.2)
        seconds = time.perf_counter() - start
        threads_loaded, rss_loaded = _threads() - threads0, _rss_mb() - rss0
        for label in labels:
            d.predict(x, version=label, timeout=10)  # a deadline queues it: executors start
        deadline = time.monotonic() + 30
        while _threads() - threads0 > threads_loaded and time.monotonic() < deadline:
            time.sleep(0.05)
        rows.append((seconds, threads_loaded, rss_loaded, _threads() - threads0))
        d.close()
    seconds, threads_loaded, rss_loaded, threads_idle = (statistics.median(r[i] for r in rows) for i in range(4))
    print(f"many      {versions} versions of a 16-16-4 MLP in one deployment: loaded in {seconds:.2f} s, "
          f"+{threads_loaded:.0f} threads and +{rss_loaded:.0f} MB; after a request to each and "
          f"{0.2} s idle, +{threads_idle:.0f} threads (executors leave idle versions)")


def _cpu_seconds():
    fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_idle(reg, runs, models=1000):
    """What idle deployments cost: 1,000 of them (one per model) in one process, the CPU they use
    while nothing is asked of them, once their control chores have gone to sleep."""
    model = torch.jit.script(torch.nn.Linear(4, 2).eval())
    buf = io.BytesIO()
    torch.jit.save(model, buf)
    for i in range(models):
        reg.register(f"idle{i}", buf.getvalue(), version="v1")
    ds = [lepton.Deployment(reg, f"idle{i}", ["v1"]) for i in range(models)]
    try:
        time.sleep(4)  # chores sleep after 3 s without requests
        deadline = time.monotonic() + 30
        while not all(d.status().get("idle", True) for d in ds[:: models // 10]) and time.monotonic() < deadline:
            time.sleep(0.1)
        shares = []
        for _ in range(max(1, runs // 2)):
            c0, w0 = _cpu_seconds(), time.monotonic()
            time.sleep(5)
            shares.append((_cpu_seconds() - c0) / (time.monotonic() - w0))
        print(f"idle      {models} idle deployments in one process: {100 * statistics.median(shares):.1f}% of a core "
              f"(median of {len(shares)} 5 s windows)")
    finally:
        for d in ds:
            d.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", default="ensemble,overhead,batching,swap,shadow,idlecores,many,idle")
    args = ap.parse_args()
    print(f"lepton {lepton.__version__}, torch {torch.__version__}, {CORES} cores")
    with tempfile.TemporaryDirectory() as tmp:
        reg = lepton.Registry(os.path.join(tmp, "reg"))
        for name in args.only.split(","):
            {"ensemble": bench_ensemble, "overhead": bench_overhead, "batching": bench_batching, "swap": bench_swap,
             "shadow": bench_shadow, "idlecores": bench_idle_cores, "many": bench_many, "idle": bench_idle}[
                name
            ](reg, args.runs)


if __name__ == "__main__":
    main()
