"""Bounded competing loads for benchmarks: other users' work, started before a measurement
and killed after it (each load process also ends itself after ``seconds``).

- ``busy``: one process per core spinning in a Python loop (single-threaded jobs);
- ``torch``: two processes, each running 2-thread torch convolutions (two training jobs);
- ``busy:N`` / ``torch:N``: N such processes instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

BUSY = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"
TORCH = (
    "import time, torch\n"
    "torch.set_num_threads(2)\n"
    "conv = torch.nn.Conv2d(32, 32, 3, padding=1)\n"
    "x = torch.randn(16, 32, 64, 64)\n"
    "end = time.time() + {seconds}\n"
    "with torch.no_grad():\n"
    "    while time.time() < end:\n"
    "        conv(x)\n"
)


def start_load(kind: str, seconds: float) -> list[subprocess.Popen]:
    """Start the bounded load processes of ``kind`` ("quiet" starts none)."""
    if kind == "quiet":
        return []
    name, _, number = kind.partition(":")
    if name not in ("busy", "torch"):
        raise SystemExit(f"unknown load {kind!r}: quiet, busy, torch, busy:N or torch:N")
    source, count = (BUSY, os.cpu_count() or 2) if name == "busy" else (TORCH, 2)
    count = int(number) if number else count
    code = source.format(seconds=seconds)
    processes = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]
    time.sleep(3.0)  # let torch load and the loops run before measuring
    return processes


def stop_load(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait()
