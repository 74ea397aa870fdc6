"""Training throughput on a shared machine: the demo recipe quiet and under two kinds of load.

Each measurement is a fresh ``xvec train recipes/demo.toml`` (``train.max_steps`` steps, no
evaluation) in its own process; utterances/s is read from the run's JSON-lines log over the
steps after the first (start-up and the first batch excluded). The loads are bounded: they
are started before and killed after each measurement, and each kills itself after
``--load-seconds`` at the latest.

- ``busy``: one process per core spinning in a Python loop (another user's single-threaded
  jobs);
- ``torch``: two processes, each running 2-thread torch convolutions in a loop (two other
  training jobs with torch's default threading).

Variants are ``NAME=OVERRIDE[,OVERRIDE...]`` pairs of ``--set`` overrides (``-`` for none), run
in interleaved rounds; each cell is the median over rounds and its share of the quiet
throughput of the same variant and of the first variant. A fair share is 1/(1 + number of
load processes) of the machine: 33 % under ``busy`` on 2 cores, 33 % under ``torch``.

    python bench/loaded_training.py [--rounds 3] [--steps 100]
        [--variant auto=-] [--variant fixed2=train.threads=2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _load import start_load, stop_load

ROOT = Path(__file__).resolve().parents[1]


def parse_variants(items: list[str]) -> dict[str, list[str]]:
    """``NAME=OVERRIDE[,OVERRIDE...]`` items (``-`` for none) as {name: overrides}, in order;
    one ``default`` variant when there are none."""
    variants = {}
    for item in items or ["default=-"]:
        name, _, overrides = item.partition("=")
        variants[name] = [] if overrides in ("", "-") else overrides.split(",")
    return variants


def measure(overrides: list[str], steps: int, workdir: Path) -> tuple[float, str]:
    """Utterances/s of one fresh training run over steps 2..``steps``, and the threads used
    (``count x steps`` over those steps)."""
    run = workdir / f"run{time.monotonic_ns()}"
    command = [sys.executable, "-m", "xvec", "train", str(ROOT / "recipes" / "demo.toml")]
    settings = [
        f"train.output_dir={run}",
        f"train.max_steps={steps}",
        "train.max_epoch=1000",
        "train.test_interval=1000",
        "train.log_every=1",
        *overrides,
    ]
    for item in settings:
        command += ["--set", item]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps_logged = [r for r in records if r.get("kind") == "train"]
    first, last = steps_logged[0], steps_logged[-1]
    batch = 64  # recipes/demo.toml's train.batch_size
    used = Counter(r.get("threads") for r in steps_logged[1:])
    threads = " ".join(f"{count}x{n}" for count, n in sorted(used.items(), key=str))
    return batch * (last["step"] - first["step"]) / (last["time"] - first["time"]), threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--load-seconds", type=float, default=300.0)
    parser.add_argument("--loads", default="quiet,busy,torch")
    parser.add_argument("--variant", action="append", default=[])
    args = parser.parse_args()
    variants = parse_variants(args.variant)
    loads = args.loads.split(",")
    if not (ROOT / "data" / "demo" / ".synth-complete.json").is_file():
        subprocess.run([sys.executable, "-m", "xvec", "synth", "data/demo"], cwd=ROOT, check=True)
    rates: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            for load in loads:
                for name, overrides in variants.items():
                    processes = start_load(load, args.load_seconds)
                    try:
                        rate, threads = measure(overrides, args.steps, Path(tmp))
                    finally:
                        stop_load(processes)
                    rates.setdefault((name, load), []).append(rate)
                    print(
                        f"round {round_index + 1} {load:5s} {name}: {rate:.1f} utt/s "
                        f"(threads x steps: {threads}; load average {os.getloadavg()[0]:.1f})",
                        flush=True,
                    )
    print(f"\n{os.cpu_count()} CPUs; utt/s median over {args.rounds} rounds (min-max)")
    reference = next(iter(variants))
    print("| variant | load | utt/s | of its quiet | of quiet " + reference + " |")
    print("|---|---|---|---|---|")
    for name in variants:
        quiet = statistics.median(rates.get((name, "quiet"), [float("nan")]))
        base = statistics.median(rates.get((reference, "quiet"), [float("nan")]))
        for load in loads:
            values = rates[(name, load)]
            median = statistics.median(values)
            print(
                f"| {name} | {load} | {median:.1f} ({min(values):.1f}-{max(values):.1f}) "
                f"| {100 * median / quiet:.0f} % | {100 * median / base:.0f} % |"
            )


if __name__ == "__main__":
    main()
