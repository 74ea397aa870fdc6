"""Whole-file embedding time per file under each OpenMP wait policy, on a quiet and a busy CPU.

Each setting runs in a fresh process (the policy is read when torch loads): an untrained
ResNetSE34L embeds 12 synthetic 4 s signals of distinct lengths one at a time, as
``--length-tolerance 0`` does. "busy" adds one process spinning on a core, as another job or
a loader worker would. xvec's CLI sets PASSIVE unless the user set a policy.

    python bench/thread_wait.py
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

CHILD = """
import time, torch
from xvec import registry
model = registry.build("model", "ResNetSE34L", {}).eval()
with torch.inference_mode():
    model(torch.randn(1, 64000))
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(12):
        model(torch.randn(1, 64000 + 97 * i))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"{wall / 12 * 1000:.0f} {cpu / 12 * 1000:.0f}")
"""


def _spin() -> None:
    while True:
        pass


def measure(policy: str | None) -> tuple[str, str]:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], out[1]


def main() -> None:
    print(f"{os.cpu_count()} CPUs; ms per 4 s file (wall / CPU), best of 2")
    for load in ("quiet", "busy"):
        spinner = None
        if load == "busy":
            spinner = multiprocessing.Process(target=_spin, daemon=True)
            spinner.start()
        try:
            for policy in (None, "ACTIVE", "PASSIVE"):
                runs = sorted((measure(policy) for _ in range(2)), key=lambda r: int(r[0]))
                wall, cpu = runs[0]
                print(f"{load:5s}  OMP_WAIT_POLICY={policy or '(unset)':9s} {wall:>6s} / {cpu} ms")
        finally:
            if spinner is not None:
                spinner.terminate()


if __name__ == "__main__":
    main()
