"""Optimiser step time: the per-tensor loop, foreach and fused implementations of torch's SGD
(Nesterov, as xvec's recipes) and Adam on the parameters of xvec's models, one CPU thread.

    python bench/optimizer_step.py [--steps 20] [--threads 1]

xvec's trainer uses the fused step wherever the parameters allow (training/optim.py).
"""

from __future__ import annotations

import argparse
import time

import torch

from xvec import registry

from _proctree import cpu_model

MODELS = [("ResNetSE34L", {}), ("WeSpeakerResNet", {"m_channels": 32}), ("ECAPA-TDNN", {})]
OPTIMISERS = {
    "sgd": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}),
    "adam": (torch.optim.Adam, {"lr": 1e-3, "weight_decay": 2e-5}),
}
KINDS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def milliseconds_per_step(optimizer: torch.optim.Optimizer, steps: int) -> float:
    for _ in range(3):
        optimizer.step()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {cpu_model()}, "
          f"{args.threads} thread(s), ms per step (lower is better)")  # fmt: skip
    print(f"{'model':<16} {'M params':>8} {'optimiser':>9} " + " ".join(f"{k:>8}" for k in KINDS))
    for name, options in MODELS:
        torch.manual_seed(0)
        model = registry.build("model", name, options)
        for parameter in model.parameters():
            parameter.grad = torch.randn_like(parameter)
        size = sum(p.numel() for p in model.parameters()) / 1e6
        for label, (cls, settings) in OPTIMISERS.items():
            times = [
                milliseconds_per_step(cls(model.parameters(), **settings, **kind), args.steps)
                for kind in KINDS.values()
            ]
            print(f"{name:<16} {size:8.1f} {label:>9} " + " ".join(f"{t:8.2f}" for t in times))


if __name__ == "__main__":
    main()
