"""One 1 MB tensor (256x1024 FP32) through an identity model, three ways, side by side in one
run against one `lepton serve` (a child process): JSON over HTTP, Triton's binary tensor data
over HTTP, and gRPC with raw contents. Each way is run --runs times and the medians reported.

  .venv/bin/python benchmarks/protocol_bench.py [--runs 3] [--requests 40] [--seconds 5]

Request bodies are encoded once beforehand and responses are read whole but not decoded, so the
figures are the wire and the server (decode, forward, encode) rather than Python's JSON module.
The HTTP clients send `Accept-Encoding: identity`: this compares the formats, not compression.
Round trip: the median of --requests sequential requests on one connection. Throughput: requests
per second from --clients threads (each with its own connection) for --seconds."""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import requests
import torch

import lepton

SHAPE = (256, 1024)


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def bodies(x: np.ndarray, pb):
    """The request each way: (json body, (binary body, headers), serialized gRPC message)."""
    as_json = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                      "data": x.ravel().tolist()}]}).encode()
    header = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    binary = (header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                     "Content-Type": "application/octet-stream"})
    msg = pb.ModelInferRequest(model_name="identity")
    msg.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    msg.raw_input_contents.append(x.tobytes())
    return as_json, binary, msg.SerializeToString()


def clients(url: str, target: str, payloads):
    """A function per way that makes one client and returns its `send()`."""
    import grpc

    as_json, (binary, headers), message = payloads

    def json_client():
        s = requests.Session()
        h = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        return lambda: s.post(url, data=as_json, headers=h).content

    def binary_client():
        s = requests.Session()
        h = {**headers, "Accept-Encoding": "identity"}
        return lambda: s.post(url, data=binary, headers=h).content

    def grpc_client():
        channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)
        return lambda: call(message)

    return {"JSON (HTTP)": json_client, "binary (HTTP)": binary_client, "gRPC": grpc_client}


def round_trip(make, n: int) -> float:
    send = make()
    send()  # warm up the connection
    times = []
    for _ in range(n):
        t = time.perf_counter()
        send()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def throughput(make, threads: int, seconds: float) -> float:
    senders = [make() for _ in range(threads)]
    for s in senders:
        s()
    count = [0] * threads
    stop = time.monotonic() + seconds

    def loop(i):
        while time.monotonic() < stop:
            senders[i]()
            count[i] += 1

    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    start = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(count) / (time.monotonic() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()

    out = tempfile.mkdtemp()
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{os.path.dirname(lepton.server.PROTO)}",
                    f"--python_out={out}", lepton.server.PROTO], check=True)
    sys.path.insert(0, out)
    import inference_pb2 as pb

    reg = lepton.Registry(os.path.join(out, "reg"))
    reg.register("identity", Identity(), version="v1", example_inputs=torch.zeros(*SHAPE))
    proc = subprocess.Popen([sys.executable, "-m", "lepton", "--registry", reg.path, "serve", "--port", "0",
                             "--grpc-port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        url = target = None
        for line in proc.stderr:
            m = re.search(r"on (http://\S+)", line)
            url = url or (m.group(1) if m else None)
            g = re.search(r"gRPC \(inference.GRPCInferenceService\) on (\S+)", line)
            if g:
                target = g.group(1)
                break
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
        payloads = bodies(x, pb)
        ways = clients(url + "/v2/models/identity/infer", target, payloads)
        print(f"1 MB tensor {SHAPE} FP32; bodies: JSON {len(payloads[0]) / 1e6:.1f} MB, binary "
              f"{len(payloads[1][0]) / 1e6:.2f} MB, gRPC {len(payloads[2]) / 1e6:.2f} MB; "
              f"{args.runs} runs, medians")
        results = {}
        for run in range(args.runs):
            for name, make in ways.items():
                results.setdefault(name, {"rtt": [], "rps": []})
                results[name]["rtt"].append(round_trip(make, args.requests))
                results[name]["rps"].append(throughput(make, args.clients, args.seconds))
        json_rtt = statistics.median(results["JSON (HTTP)"]["rtt"])
        binary_rtt = statistics.median(results["binary (HTTP)"]["rtt"])
        print(f"{'':16}{'p50 round trip':>16}{'req/s (' + str(args.clients) + ' clients)':>22}"
              f"{'vs JSON':>10}{'vs binary':>11}")
        for name, r in results.items():
            rtt = statistics.median(r["rtt"])
            rps = statistics.median(r["rps"])
            print(f"{name:16}{rtt * 1e3:13.2f} ms{rps:22.1f}{json_rtt / rtt:9.1f}x{rtt / binary_rtt:10.2f}x")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
