"""lepton's HTTP server against a FastAPI + uvicorn server wrapping the same TorchScript model,
side by side in one run, each load run repeated and the medians reported.

  .venv/bin/python benchmarks/http_bench.py [--runs 3] [--seconds 5]

Load comes from wrk (a separate process): requests per second and p99 latency at 32 concurrent
connections. Server overhead is wrk's median round trip over one connection minus the model's
median compute time for the same input, measured in process.

The single-connection round trips are measured three ways. Unpinned, client and server usually
sit on different cores, and each of wrk's round trips then pays for waking wrk's sleeping core,
which on a virtual machine can cost more than the server's whole work. Pinned ("same core"), wrk
and every server thread share one core for that run. Spinning, http_pingpong (built with the
benchmarks, build/cmake/benchmarks/) sends one request at a time and polls its socket instead of
sleeping, so its round trip leaves out the client's own wake-up: that is the server overhead."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

import torch

import lepton

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if requests.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not become ready")


def parse_duration(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def pin(pid: int, cpus: str) -> None:
    """Sets the CPU affinity of every thread of process `pid`."""
    subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True, capture_output=True)


def wrk(url: str, body_file: Optional[str], connections: int, seconds: int, cpu: Optional[int] = None) -> dict:
    script = ["-s", body_file] if body_file else []
    prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
    out = subprocess.run([*prefix, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *script, url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {q: parse_duration(re.search(rf"\s{q}%\s+(\S+)", out).group(1)) for q in ("50", "99")}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": lat["50"], "p99": lat["99"], "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(1) if errors else ""}


def pingpong_binary() -> Optional[str]:
    root = os.path.dirname(HERE)
    for build in ("build/cmake", "build/dev"):
        path = os.path.join(root, build, "benchmarks", "http_pingpong")
        if os.access(path, os.X_OK):
            return path
    return None


def pingpong(binary: str, port: int, target: str, body_path: Optional[str], seconds: int) -> dict:
    """One connection, one request at a time, the client spinning on its socket."""
    out = subprocess.run([binary, "127.0.0.1", str(port), target, str(seconds), *([body_path] if body_path else [])],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (scripts/bootstrap installs it)")

    work = tempfile.mkdtemp(prefix="lepton-http-bench-")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).eval()
    example = torch.randn(1, 64)
    model_path = os.path.join(work, "mlp.pt")
    torch.jit.trace(net, example).save(model_path)
    reg = lepton.Registry(os.path.join(work, "registry"))
    reg.register("mlp", model_path, version="v1", example_inputs=example)

    name = reg.get("mlp:v1").signature.inputs[0].name  # input names are checked
    body = {"inputs": [{"name": name, "shape": [1, 64], "datatype": "FP32", "data": example.flatten().tolist()}]}
    body_path = os.path.join(work, "body.json")
    with open(body_path, "w") as f:
        json.dump(body, f)
    body_file = os.path.join(work, "post.lua")
    with open(body_file, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
        f.write(f"wrk.body = {json.dumps(json.dumps(body))}\n")

    # The model's own compute time for this input, in process, one thread.
    torch.set_num_threads(1)
    scripted = torch.jit.load(model_path).eval()
    samples = []
    with torch.inference_mode():
        for _ in range(200):
            scripted(example)
        for _ in range(2000):
            t0 = time.perf_counter()
            scripted(example)
            samples.append(time.perf_counter() - t0)
    compute = statistics.median(samples)

    env = dict(os.environ, LEPTON_TOKEN="bench", MODEL_PATH=model_path, PYTHONPATH=HERE)
    servers = {}
    lp = free_port()
    fp = free_port()
    while fp == lp:
        fp = free_port()
    servers["lepton"] = (subprocess.Popen(
        [sys.executable, "-m", "lepton", "serve", "--registry", reg.path, "--port", str(lp), "--only",
         "--model", "mlp"], env=env, stderr=subprocess.DEVNULL), f"http://127.0.0.1:{lp}")
    # FastAPI, Starlette and uvicorn come unpacked from Debian's packages into build/bench-site
    # (scripts/bootstrap), not installed: Debian's fastapi declares an older starlette than Debian
    # ships, which would break `pip check` in every environment that sees the system's packages.
    bench_site = os.path.join(HERE, "..", "build", "bench-site")
    if not os.path.isdir(os.path.join(bench_site, "fastapi")):
        sys.exit(f"the FastAPI baseline is missing from {bench_site}: run scripts/bootstrap")
    fenv = dict(env, PYTHONPATH=os.pathsep.join([bench_site, env.get("PYTHONPATH", "")]))
    servers["fastapi"] = (subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--port", str(fp), "--log-level", "warning",
         "--no-access-log"], env=fenv, cwd=HERE, stderr=subprocess.DEVNULL), f"http://127.0.0.1:{fp}")
    try:
        import requests

        for name, (proc, url) in servers.items():
            wait_ready(url, proc)
        # Each URL reaches the server it names.
        assert requests.get(servers["lepton"][1] + "/v2").json()["name"] == "lepton"
        assert requests.get(servers["fastapi"][1] + "/v2").status_code == 404
        for name, (proc, url) in servers.items():
            wrk(url + "/v2/models/mlp/infer", body_file, args.connections, 1)  # warm up
        results = {name: [] for name in servers}
        single = {name: [] for name in servers}
        empty = {name: [] for name in servers}  # GET /v2/health/ready: the HTTP floor, no model
        pinned = {name: [] for name in servers}
        pinned_empty = {name: [] for name in servers}
        spin = {name: [] for name in servers}
        spin_empty = {name: [] for name in servers}
        ping = pingpong_binary()
        ports = {"lepton": lp, "fastapi": fp}
        short = max(2, args.seconds // 2)
        all_cpus = f"0-{os.cpu_count() - 1}"
        core = os.cpu_count() - 1
        for _ in range(args.runs):
            for name, (proc, url) in servers.items():
                results[name].append(wrk(url + "/v2/models/mlp/infer", body_file, args.connections, args.seconds))
                single[name].append(wrk(url + "/v2/models/mlp/infer", body_file, 1, short))
                empty[name].append(wrk(url + "/v2/health/ready", None, 1, short))
                pin(proc.pid, str(core))
                try:
                    pinned[name].append(wrk(url + "/v2/models/mlp/infer", body_file, 1, short, cpu=core))
                    pinned_empty[name].append(wrk(url + "/v2/health/ready", None, 1, short, cpu=core))
                finally:
                    pin(proc.pid, all_cpus)
                if ping:
                    spin[name].append(pingpong(ping, ports[name], "/v2/models/mlp/infer", body_path, short))
                    spin_empty[name].append(pingpong(ping, ports[name], "/v2/health/ready", None, short))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    med = lambda xs, k: statistics.median(x[k] for x in xs)  # noqa: E731
    print(f"model: MLP 64-128-10, one row; median compute in process {compute * 1e6:.1f} us")
    print(f"{'server':<10}{'req/s @' + str(args.connections):>14}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for name in servers:
        errs = sum(x["non2xx"] for x in results[name] + single[name] + pinned[name] + spin[name])
        print(f"{name:<10}{med(results[name], 'rps'):>14.0f}{med(results[name], 'p50') * 1e3:>10.2f}"
              f"{med(results[name], 'p99') * 1e3:>10.2f}{errs:>8}")
    print("one connection, median round trip and overhead (round trip - compute), us:")
    print(f"{'server':<10}{'unpinned RTT':>14}{'overhead':>10}{'empty GET':>11}"
          f"{'same-core RTT':>15}{'overhead':>10}{'empty GET':>11}")
    for name in servers:
        rt, prt = med(single[name], "p50"), med(pinned[name], "p50")
        print(f"{name:<10}{rt * 1e6:>14.1f}{(rt - compute) * 1e6:>10.1f}{med(empty[name], 'p50') * 1e6:>11.1f}"
              f"{prt * 1e6:>15.1f}{(prt - compute) * 1e6:>10.1f}{med(pinned_empty[name], 'p50') * 1e6:>11.1f}")
    if ping:
        print("one connection, client spinning on its socket (http_pingpong), us:")
        print(f"{'server':<10}{'RTT p50':>14}{'overhead':>10}{'RTT p99':>10}{'empty GET':>11}")
        for name in servers:
            rt = med(spin[name], "p50")
            print(f"{name:<10}{rt * 1e6:>14.1f}{(rt - compute) * 1e6:>10.1f}{med(spin[name], 'p99') * 1e6:>10.1f}"
                  f"{med(spin_empty[name], 'p50') * 1e6:>11.1f}")
    else:
        print("http_pingpong is not built (scripts/bootstrap builds it): no spinning-client figures")
    ratio = med(results["lepton"], "rps") / med(results["fastapi"], "rps")
    print(f"throughput ratio lepton / fastapi: {ratio:.1f}x; p99 lepton {med(results['lepton'], 'p99') * 1e3:.2f} ms "
          f"vs fastapi {med(results['fastapi'], 'p99') * 1e3:.2f} ms")
    print("runs (req/s):", json.dumps({k: [round(x["rps"]) for x in v] for k, v in results.items()}))
    print("runs (p99 ms):", json.dumps({k: [round(x["p99"] * 1e3, 2) for x in v] for k, v in results.items()}))


if __name__ == "__main__":
    main()
