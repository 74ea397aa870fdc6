"""Several training processes: the rank of this one, and the ``torchrun`` launcher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def world_position() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def launch_distributed(recipe: Path, overrides: list[str], resume: bool, nproc: int) -> int:
    """Run ``torchrun --nproc_per_node N -m xvec train ...`` and return its exit code."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
    ]
    command += ["-m", "xvec", "train", str(recipe)]
    for item in overrides:
        command += ["--set", item]
    if resume:
        command.append("--resume")
    return subprocess.call(command)
