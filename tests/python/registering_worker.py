"""Child process for the multi-process and crash tests: registers versions of one model.

usage: python registering_worker.py REGISTRY MODEL COUNT OFFSET
"""
import sys

import torch

import lepton


class Const(torch.nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.register_buffer("value", torch.full((16,), value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.value


def main() -> None:
    path, model, count, offset = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    reg = lepton.Registry(path, actor=f"worker-{offset}")
    template = torch.jit.script(Const(0.0))
    print("ready", flush=True)
    for i in range(count):
        # Same code, different buffer: every version has its own artifact.
        template.value.fill_(float(offset + i))
        reg.register(model, template, metrics={"i": float(offset + i)}, tags={"worker": str(offset)})
    print("done", flush=True)


if __name__ == "__main__":
    main()
