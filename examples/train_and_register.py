"""Trains a digits classifier and registers it as a new version of `digits` in a lepton registry,
with its metrics, its parent (the version `staging` pointed to) and its signature, then moves
`staging` to it. Run it twice: the second run trains longer from the first run's weights, makes a
second version and prints how the metrics changed.

  .venv/bin/python examples/train_and_register.py [--registry PATH] [--epochs N] [--hidden H]

The data set ships with scikit-learn (Debian's python3-sklearn); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import lepton


class Classifier(torch.nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=-1)


def main() -> None:
    ap = argparse.ArgumentParser(description="Train a digits classifier and register it as a new version.")
    ap.add_argument("--registry", default=None, help="registry path (default: $LEPTON_HOME or ~/.lepton)")
    ap.add_argument("--name", default="digits")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    digits = load_digits()
    X = torch.from_numpy((digits.data / 16.0).astype(np.float32))
    y = torch.from_numpy(digits.target.astype(np.int64))
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)

    reg = lepton.Registry(args.registry)
    parent = None
    model = Classifier(args.hidden)
    try:
        parent = reg.get(f"{args.name}@staging")
        start = torch.jit.load(io.BytesIO(reg.read_artifact(parent)))
        model.load_state_dict(start.state_dict())
        print(f"continuing from {parent.name}:{parent.version} (staging)")
    except lepton.NotFound:
        print(f"no {args.name}@staging yet: training from scratch")
    except RuntimeError:
        print(f"{args.name}@staging has another architecture: training from scratch")

    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    t0 = time.perf_counter()
    bar = tqdm(range(args.epochs), desc="training", unit="epoch", mininterval=0.5)
    for _ in bar:
        model.train()
        for idx in torch.randperm(len(X_train)).split(64):
            opt.zero_grad()
            loss = torch.nn.functional.nll_loss(torch.log(model(X_train[idx]) + 1e-9), y_train[idx])
            loss.backward()
            opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        probs = model(X_test)
        accuracy = float((probs.argmax(-1) == y_test).float().mean())
        log_loss = float(torch.nn.functional.nll_loss(torch.log(probs + 1e-9), y_test))

    version = reg.register(
        args.name,
        model,
        example_inputs=X_test[:1],
        metrics={"accuracy": accuracy, "log_loss": log_loss, "train_seconds": time.perf_counter() - t0},
        tags={"hidden": str(args.hidden), "epochs": str(args.epochs), "data": "sklearn-digits"},
        parent=None if parent is None else f"{parent.name}:{parent.version}",
        description=f"digits classifier, {args.epochs} epochs",
        reason="examples/train_and_register.py",
    )
    expected = parent.version if parent is not None else ""
    reg.set_alias(args.name, "staging", version.version, expected=expected, reason="new training run")
    print(f"registered {version.name}:{version.version} (sha256 {version.sha256[:12]}), staging -> {version.version}")
    print("signature:", version.signature)
    if parent is not None:
        print(f"metrics, {parent.version} -> {version.version}:")
        for key, (before, after, change) in lepton.diff_metrics(parent, version).items():
            fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
            print(f"  {key:<14} {fmt(before):>10} -> {fmt(after):<10}" + ("" if change is None else f" ({change:+.4f})"))


if __name__ == "__main__":
    main()
