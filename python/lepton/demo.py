"""lepton's demo: train three small versions of a classifier, register them, move aliases, roll
back, serve from an alias, and print the audit history."""
from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import time
import urllib.request
from typing import Any, Dict

import torch
from torch import nn

from .engine import Deployment, Ensemble, Fixed
from .errors import ModelError
from .policies import Canary, Guardrails
from .registry import Registry, diff_metrics
from .server import serve
from .text import format_history


def _make_data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2048, 16, generator=g)
    w = torch.randn(16, generator=g)
    y = (x @ w + 0.3 * torch.randn(2048, generator=g) > 0).long()
    return x[:1536], y[:1536], x[1536:], y[1536:]


def _train(hidden: int, epochs: int, seed: int, data):
    torch.manual_seed(seed)
    xtr, ytr, xva, yva = data
    model = nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xtr), ytr)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(xva).argmax(1) == yva).float().mean().item()
        val_loss = nn.functional.cross_entropy(model(xva), yva).item()
    return model, {"accuracy": round(accuracy, 4), "val_loss": round(val_loss, 4)}


def run(path: str) -> None:
    if os.path.exists(path):
        if not os.path.exists(os.path.join(path, "registry.db")):
            raise SystemExit(f"{path} exists and is not a lepton registry; choose another --registry")
        shutil.rmtree(path)
    reg = Registry(path, actor="demo")
    print(f"lepton demo: registry at {os.path.abspath(path)}\n")

    data = _make_data()
    example = data[0][:4]
    parent = None
    for label, hidden, epochs in (("v1.0", 8, 30), ("v1.1", 32, 60), ("v1.2", 64, 5)):
        model, metrics = _train(hidden, epochs, seed=1, data=data)
        v = reg.register(
            "classifier",
            model,
            version=label,
            example_inputs=example,
            description=f"MLP 16-{hidden}-2, {epochs} epochs",
            tags={"arch": "mlp", "hidden": str(hidden)},
            metrics=metrics,
            parent=parent,
        )
        parent = v.version
        print(f"registered {v.ref:18} seq={v.seq} accuracy={metrics['accuracy']:.3f} sha256={v.sha256[:12]}")

    print("\nsignature of classifier:v1.0:", reg.get("classifier:v1.0").signature)
    reg.set_alias("classifier", "production", "v1.0", reason="first release")
    reg.set_alias("classifier", "production", "v1.1", expected="v1.0", reason="v1.1 is more accurate")
    reg.set_alias("classifier", "production", "v1.2", expected="v1.1", reason="try the wider model")
    latest = reg.get("classifier:v1.2")
    print(f"\nproduction -> {reg.get('classifier@production').version}")
    print("metric diff v1.1 -> v1.2:")
    for name, (a, b, d) in diff_metrics(reg.get("classifier:v1.1"), latest).items():
        print(f"  {name:9} {a:.4f} -> {b:.4f} ({d:+.4f})")
    back = reg.rollback("classifier", "production", reason="v1.2 is under-trained: accuracy dropped")
    print(f"rolled back: production -> {back.version}")

    served = reg.load("classifier@production")
    with torch.no_grad():
        predictions = served(data[2][:8]).argmax(1).tolist()
    print(f"predictions from classifier@production ({back.version}): {predictions}")

    report = reg.verify()
    print(f"verify: {report.versions_checked} versions checked, ok={report.ok}")
    print("\nhistory of classifier:")
    print(format_history(reg.history("classifier")))

    _serve(reg, data[2][:6])
    _canaries(reg, data)
    _many(reg, data)
    _http(reg, data[2][:2])
    print(f"\nthe dashboard on this registry: lepton ui --registry {path}  (or lepton serve, at /ui/)")


def _many(reg: Registry, data) -> None:
    """Sixty per-customer fine-tunes served from one deployment under a 3 MB memory budget."""
    customers = 60
    base, _ = _train(4096, 3, seed=2, data=data)
    for c in range(customers):
        tuned = copy.deepcopy(base)
        with torch.no_grad():
            tuned[2].bias += 0.01 * c
        reg.register("per_customer", tuned, version=f"c{c:02d}", tags={"customer": f"c{c:02d}"})
    size = reg.get("per_customer:c00").size
    print(f"\n{customers} per-customer versions of {size / 1e3:.0f} kB each, served under a 3 MB memory budget"
          " (room for about ten):")
    with Deployment(reg, "per_customer", versions="all", memory_budget="3MB") as d:
        ranks = torch.distributions.Categorical(
            probs=torch.tensor([1.0 / (k + 1) ** 1.1 for k in range(customers)]))
        torch.manual_seed(3)
        asked = ranks.sample((600,)).tolist()
        cold = sum(d.predict(data[2][:1], version=f"c{c:02d}").cold_start for c in asked)
        st = d.status()
        loaded = [v["version"] for v in st["versions"] if v["state"] == "loaded"]
        mem = st["memory"]
        print(f"  600 requests over {len(set(asked))} customers (Zipf): {600 - cold} found their version loaded, "
              f"{cold} waited for a load")
        print(f"  loaded now ({len(loaded)}): {', '.join(loaded)}")
        print(f"  budget: limit {mem['limit_bytes'] / 1e6:.1f} MB, peak {mem['peak_bytes'] / 1e6:.2f} MB, "
              f"{mem['evictions']} evictions; loader threads now: {st['loader_threads']}")


def _show(p, note: str = "") -> None:
    classes = p.output.argmax(1).tolist()
    print(f"  {p.request_id:12} answered by {str(p.version):20} {p.route:52} -> {classes}{note}")


def _serve(reg: Registry, x: torch.Tensor) -> None:
    print("\nserving v1.0 and v1.1 side by side:")
    with Deployment(reg, "classifier", ["v1.0", "v1.1"]) as d:
        _show(d.predict(x))
        _show(d.predict(x, version="v1.1"), "  (pinned by the request)")
        d.set_policy(Ensemble({"v1.0": 0.4, "v1.1": 0.6}))
        _show(d.predict(x), "  (weighted mean 0.4/0.6)")
        d.set_policy(Fixed("v1.1"))
        _show(d.predict(x))
        d.swap("v1.0", "v1.2")
        print(f"  hot-swapped v1.0 -> v1.2; live versions: {d.versions}")
        _show(d.predict(x, version="v1.2"))
        for v in d.status()["versions"]:
            print(f"  {v['version']:5} {v['health']:6} threads={v['threads']} requests={v['requests']} ok={v['succeeded']}")

    print("\nfollowing classifier@production:")
    with Deployment(reg, "classifier", alias="production", alias_poll_interval=0.05) as d:
        _show(d.predict(x))
        reg.set_alias("classifier", "production", "v1.2", reason="demo: promote v1.2 again")
        deadline = time.monotonic() + 5
        while d.status()["primary"] != "v1.2" and time.monotonic() < deadline:
            time.sleep(0.02)
        _show(d.predict(x), "  (alias moved in the registry; the deployment followed)")


class _RejectsLargeFeature(nn.Module):
    """A release with a bug: it fails whenever feature 0 is above 0.5."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x[:, 0].max() > 0.5):
            raise RuntimeError("feature 0 out of range")
        return self.inner(x)


def _ramp(d: Deployment, canary: Canary, rows: torch.Tensor) -> None:
    answered: Dict[Any, int] = {}
    failed, step = 0, None
    # The policy decides on its controller's rounds, not per request: traffic goes on (the rows
    # over again) until it has decided, however fast the requests are.
    deadline = time.monotonic() + 60
    for i in itertools.count():
        if time.monotonic() > deadline:
            break
        try:
            j = i % rows.shape[0]
            p = d.predict(rows[j : j + 1])
            answered[p.version] = answered.get(p.version, 0) + 1
            if p.route != step:
                step = p.route
                print(f"  request {i:4}: {p.route}")
        except ModelError:
            failed += 1
        if canary.phase != "ramping":
            break
    deadline = time.monotonic() + 5
    while not d.events() and time.monotonic() < deadline:
        time.sleep(0.02)
    print(f"  answered: {answered}, failed: {failed}; canary {canary.phase}")
    for e in d.events()[-1:]:
        print(f"  {e['action']}: {e['reason']}")
        print(f"  {e['note']}")


def _canaries(reg: Registry, data) -> None:
    x = torch.Generator().manual_seed(5)
    rows = torch.randn(4000, 16, generator=x)
    model, metrics = _train(32, 80, seed=2, data=data)
    reg.register("classifier", model, version="v2.0", example_inputs=data[0][:4], metrics=metrics, parent="v1.1")
    buggy = torch.jit.script(_RejectsLargeFeature(model))
    reg.register("classifier", buggy, version="v2.1", example_inputs=torch.zeros(4, 16), parent="v2.0")
    guardrails = Guardrails(min_requests=20, max_latency_ratio=5.0)

    print(f"\ncanary v1.2 -> v2.0 on classifier@production (now {reg.get('classifier@production').version}):")
    with Deployment(reg, "classifier", alias="production", alias_poll_interval=0.05) as d:
        canary = Canary(d.status()["primary"], "v2.0", steps=[0.1, 0.5, 1.0], step_requests=150, guardrails=guardrails)
        d.add("v2.0", policy=canary)
        _ramp(d, canary, rows)
        print(f"  production -> {reg.get('classifier@production').version}")

    print("\ncanary v2.0 -> v2.1 (fails on some inputs):")
    with Deployment(reg, "classifier", alias="production", alias_poll_interval=0.05) as d:
        canary = Canary("v2.0", "v2.1", steps=[0.1, 0.5, 1.0], step_requests=150, guardrails=guardrails)
        d.add("v2.1", policy=canary)
        _ramp(d, canary, rows)
        print(f"  production -> {reg.get('classifier@production').version} (where it was)")

    print("\nlatest audit entries:")
    print(format_history(reg.history("classifier")[-4:]))


def _http(reg: Registry, x: torch.Tensor) -> None:
    print("\nserving the registry over HTTP (Open Inference Protocol v2), split 70/30 between v2.0 and v1.2:")
    policy = {"type": "weighted", "weights": {"v2.0": 0.7, "v1.2": 0.3}}
    models = {"classifier": {"versions": ["v2.0", "v1.2"], "policy": policy}}
    with serve(reg, port=0, token="demo-token", models=models, only=True) as server:
        if server.ui_url:
            print(f"  dashboard while this runs: {server.ui_url} (token demo-token)")
        with urllib.request.urlopen(server.url + "/v2/models/classifier") as r:
            name = json.load(r)["inputs"][0]["name"]  # as any Open Inference Protocol client would
        body = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}]}
        request = urllib.request.Request(server.url + "/v2/models/classifier/infer", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        for _ in range(200):
            with urllib.request.urlopen(request) as r:
                reply = json.load(r)
        params = reply["parameters"]
        print(f"  POST /v2/models/classifier/infer -> {reply['model_version']} ({params['lepton_route']}),"
              f" request {params['lepton_request_id']}, outputs {reply['outputs'][0]['shape']}")
        stats_request = urllib.request.Request(server.url + "/v2/lepton/models/classifier/stats",
                                               headers={"Authorization": "Bearer demo-token"})
        with urllib.request.urlopen(stats_request) as r:
            stats = json.load(r)
        with urllib.request.urlopen(server.url + "/metrics") as r:
            metrics = r.read().decode()
    print("  per-version metrics (GET /v2/lepton/models/classifier/stats):")
    print(f"  {'version':8}{'requests':>9}{'ok':>6}{'failed':>8}{'p50 ms':>9}{'p99 ms':>9}{'compute p50 ms':>16}")
    def ms(histogram: dict, q: str) -> float:
        return float("nan") if histogram[q] is None else histogram[q] * 1e3

    for s in sorted(stats["series"], key=lambda s: s["version"]):
        print(f"  {s['version']:8}{s['requests']:>9}{s['succeeded']:>6}{s['failed']:>8}{ms(s['total_s'], 'p50'):>9.3f}"
              f"{ms(s['total_s'], 'p99'):>9.3f}{ms(s['compute_s'], 'p50'):>16.3f}")
    print("  the same in Prometheus (GET /metrics):")
    for line in metrics.splitlines():
        if line.startswith('lepton_requests_total{model="classifier"'):
            print("   ", line)
