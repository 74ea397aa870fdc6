"""torch.compile on a training step: eager vs compiled forward + backward, and the compile time.

    python bench/compile_step.py [--model ResNetSE34L] [--batch 32] [--seconds 2]
        [--steps 5] [--rounds 3] [--channels-last]

The step is the model's forward on random 16 kHz crops and a backward through a mean-square
of the embeddings (the loss does not change what compiling the network does). ``train.compile``
in a recipe runs the same ``torch.compile``. ``--channels-last`` puts the model's 2-D
convolutions in channels-last memory first, as CPU training does by default
(``train.channels_last``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from xvec import registry

from _proctree import cpu_model


def seconds_per_step(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     steps: int) -> float:  # fmt: skip
    forward(x).pow(2).mean().backward()  # warm-up (and, compiled, the compilation)
    start = time.perf_counter()
    for _ in range(steps):
        forward(x).pow(2).mean().backward()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ResNetSE34L")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = registry.build("model", args.model, {}).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, int(args.seconds * 16000) + 240)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.model}, batch {args.batch} of {args.seconds:g} s"
          f"{', channels-last' if args.channels_last else ''}")  # fmt: skip
    start = time.perf_counter()
    compiled = torch.compile(model)
    compiled(x).pow(2).mean().backward()
    print(f"first compiled step (compiling): {time.perf_counter() - start:.0f} s")
    for round_ in range(1, args.rounds + 1):  # interleaved: a shared machine's load drifts
        eager = seconds_per_step(model, x, args.steps)
        fast = seconds_per_step(compiled, x, args.steps)
        print(f"round {round_}: eager {eager * 1e3:.0f} ms/step, compiled {fast * 1e3:.0f} "
              f"ms/step ({eager / fast:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
