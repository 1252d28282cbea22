"""`lepton serve` under abuse from clients without the token: the memory and threads it holds.

Starts `lepton serve` in a child process on loopback and samples its resident memory and thread
count while, one after the other:
  trickle    30 connections each send 60 MB of a declared 64 MB body, then trickle the rest
  no_read    20 clients post a valid 60 MB inference and never read the reply
  slowloris  800 connections send one byte of a request every 2 s
  slow_read  80 clients ask for a 12 MB response and never read it, while one client keeps making
             small requests
Prints one JSON object: per attack, the server's peak RSS (MB) and threads, how the attackers were
answered, and what a well-behaved client saw. Every loop is bounded in time; traffic goes to
127.0.0.1 only.

    .venv/bin/python benchmarks/abuse_bench.py [--budget-mb 512]
"""
import argparse
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time

import requests
import torch

import lepton


class Echo(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sampler:
    """Peak RSS (MB) and threads of a process, sampled every 20 ms."""

    def __init__(self, pid):
        self.pid, self.peak_rss, self.peak_threads = pid, 0.0, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _read(self):
        rss, threads = 0.0, 0
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        return rss, threads

    def _run(self):
        while not self._stop.is_set():
            rss, threads = self._read()
            self.peak_rss, self.peak_threads = max(self.peak_rss, rss), max(self.peak_threads, threads)
            time.sleep(0.02)

    def __enter__(self):
        self.baseline_rss, self.baseline_threads = self._read()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    def report(self):
        return {"rss_mb_before": round(self.baseline_rss), "rss_mb_peak": round(self.peak_rss),
                "threads_before": self.baseline_threads, "threads_peak": self.peak_threads}


def status_of(sock, wait):
    """The status code the server answered on `sock` within `wait` seconds, 'closed', or None."""
    sock.setblocking(False)
    ready, _, _ = select.select([sock], [], [], wait)
    if not ready:
        return None
    try:
        data = sock.recv(64)
    except (ConnectionResetError, BlockingIOError):
        return "closed"
    if not data:
        return "closed"
    parts = data.split(b" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else "other"


def count(values):
    out = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def trickle(port, sampler_report):
    head = (b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 67108864\r\n\r\n")
    chunk = b"1" * (1 << 20)
    socks = []
    for _ in range(30):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        s.send(head)
        socks.append([s, 0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(n < 60 << 20 for _, n in socks if n >= 0):
        for entry in socks:
            s, n = entry
            if n < 0 or n >= 60 << 20:
                continue
            try:
                entry[1] += s.send(chunk)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                entry[1] = -1  # the server answered and closed
        time.sleep(0.001)
    for _ in range(3):  # then a byte a second
        for s, n in socks:
            try:
                s.send(b"1")
            except OSError:
                pass
        time.sleep(1)
    answers = [status_of(s, 0.1) for s, _ in socks]
    for s, _ in socks:
        s.close()
    return {"answers": count(answers), **sampler_report()}


def infer_request(body):
    return (b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def non_readers(port, n):
    """`n` connections with a 4 KiB receive buffer whose owner never reads."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(15)
        socks.append(s)
    return socks


def no_read(port, body):
    request = infer_request(body)
    socks = non_readers(port, 20)

    def send(s):
        try:
            s.sendall(request)
        except OSError:
            pass

    senders = [threading.Thread(target=send, args=(s,)) for s in socks]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    time.sleep(3)  # replies are being written to clients that do not read
    answers = [status_of(s, 0.1) for s in socks]
    for s in socks:
        s.close()
    return {"answers": count(answers)}


def slowloris(port, read_timeout):
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 64 + b"\r\n\r\n"
    socks = []
    for _ in range(800):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    start = time.monotonic()
    sent, open_after = 0, {}
    while time.monotonic() - start < read_timeout + 4:
        for s in socks:
            try:
                s.send(request[sent:sent + 1])
            except OSError:
                pass
        sent += 1
        time.sleep(2)
        alive = 0
        for s in socks:
            try:
                alive += s.recv(1) != b""
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        open_after[round(time.monotonic() - start)] = alive
    for s in socks:
        s.close()
    return {"connections_open_after_s": open_after}


def slow_read(url, port, body_12mb):
    request = infer_request(body_12mb)
    socks = non_readers(port, 80)
    for s in socks:
        s.sendall(request)
    small = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    latencies, codes = [], []
    end = time.monotonic() + 4
    with requests.Session() as session:
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                codes.append(session.post(url + "/v2/models/echo/infer", json=small, timeout=10).status_code)
            except requests.RequestException as e:
                codes.append(type(e).__name__)
            latencies.append(time.perf_counter() - t0)
    for s in socks:
        s.close()
    latencies.sort()
    return {"good_client": {"requests": len(codes), "answers": count(codes),
                            "p50_ms": round(latencies[len(latencies) // 2] * 1e3, 2),
                            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1e3, 2)}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-mb", type=int, default=512, help="--max-buffered-bytes of the server, in MiB")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="lepton-abuse-")
    reg = lepton.Registry(os.path.join(tmp, "reg"))
    any_width = lepton.Signature([lepton.TensorSpec("x", "float32", [-1, -1])],
                                 [lepton.TensorSpec("output", "float32", [-1, -1])])
    reg.register("echo", Echo(), signature=any_width)
    port = free_port()
    env = dict(os.environ, LEPTON_TOKEN="abuse-bench-token")
    server = subprocess.Popen(
        [sys.executable, "-m", "lepton", "serve", "--registry", reg.path, "--port", str(port), "--only",
         "--model", "echo", "--max-buffered-bytes", str(args.budget_mb << 20)],
        env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if requests.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        floats = lambda n: json.dumps(  # noqa: E731
            {"inputs": [{"name": "x", "shape": [1, n], "datatype": "FP32", "data": [1.5] * n}]}).encode()
        body_60mb = floats(60_000_000 // 5)
        body_12mb = floats(12_000_000 // 5)
        results = {"budget_mb": args.budget_mb, "read_timeout_s": 5.0}
        for name, run in (("trickle", lambda s: trickle(port, s.report)),
                          ("no_read", lambda s: no_read(port, body_60mb)),
                          ("slowloris", lambda s: slowloris(port, 5.0)),
                          ("slow_read", lambda s: slow_read(url, port, body_12mb))):
            with Sampler(server.pid) as sampler:
                out = run(sampler)
            results[name] = {**out, **sampler.report()}
            time.sleep(6)  # the server drops what is left of the attack before the next one
        print(json.dumps(results, indent=1))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
