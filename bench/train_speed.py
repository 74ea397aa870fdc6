"""Training speed and memory of xvec variants: a recipe on speechocean762, whole epochs.

Each measurement is a fresh ``xvec train`` (no evaluation) on the training list or a subset of
it (``--per-speaker`` utterances of each speaker); utterances/s is timed from the end of the
first (warm-up) epoch to the end of the last, from the run's JSON-lines log, as
bench/vs_voxceleb_trainer.py times xvec. Variants are ``NAME=OVERRIDE[,OVERRIDE...]`` pairs of
``--set`` overrides (``-`` for none) run in interleaved rounds; the table gives min / median /
max utt/s per variant, the per-round ratio to the first variant, and the peak resident memory
of the process tree (loader workers included).

    python bench/train_speed.py [--recipe recipes/...toml] [--epochs 3] [--workers 2]
        [--per-speaker 16] [--rounds 3] [--set OVERRIDE ...]
        [--variant default=-] [--variant nice0=train.loader_nice=0]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from loaded_training import parse_variants
from vs_voxceleb_trainer import train_subset, xvec_epoch_rate

from _proctree import cpu_model, run_measured

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "speechocean762"


def measure(args: argparse.Namespace, overrides: list[str], train_list: Path, size: int,
            folder: Path) -> tuple[float, float]:  # fmt: skip
    """(utt/s over epochs 2..N, peak tree RSS MiB) of one fresh training run."""
    run = folder / f"run{time.monotonic_ns()}"
    settings = [
        f"data.train_list={train_list}",
        f"data.train_path={DATA / 'audio'}",
        "data.test_list=",
        f"train.max_epoch={args.epochs}",
        f"train.test_interval={args.epochs}",
        f"train.num_workers={args.workers}",
        f"train.output_dir={run}",
        "train.log_every=1",
        *args.overrides,
        *overrides,
    ]
    command = [sys.executable, "-m", "xvec", "train", args.recipe]
    for item in settings:
        command += ["--set", item]
    measured = run_measured(command, stdout=subprocess.DEVNULL)  # the table is the output
    rate, _ = xvec_epoch_rate(run / "log.jsonl", size)
    return rate, measured["tree_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "resnet34l_amsoftmax.toml"))
    parser.add_argument("--epochs", type=int, default=3, help="epochs run; the first untimed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--per-speaker", type=int, default=0, help="0: the whole list")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--variant", action="append", default=[])
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"needs {DATA}")
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is not timed)")
    variants = parse_variants(args.variant)
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    started = time.time()
    rates: dict[str, list[float]] = defaultdict(list)
    peaks: dict[str, float] = defaultdict(float)
    with tempfile.TemporaryDirectory() as tmp:
        train_list = Path(tmp) / "train_list.txt"
        size, _ = train_subset(DATA / "lists" / "train_list.txt", args.per_speaker, train_list)
        for round_ in range(1, args.rounds + 1):
            for name, overrides in variants.items():
                rate, peak = measure(args, overrides, train_list, size, Path(tmp))
                rates[name].append(rate)
                peaks[name] = max(peaks[name], peak)
                print(f"round {round_} {name}: {rate:.1f} utt/s, {peak:.0f} MiB", flush=True)
    load_end = Path("/proc/loadavg").read_text().split()[:3]
    print(
        f"\n{Path(args.recipe).name}, {size} utterances an epoch, {args.epochs - 1} timed "
        f"epochs after 1, {args.workers} workers, --set {' '.join(args.overrides) or '-'}; "
        f"{cpu_model()}; {args.rounds} rounds in {(time.time() - started) / 60:.1f} min; "
        f"load average {' '.join(load_start)} at start, {' '.join(load_end)} at end"
    )
    first = next(iter(variants))
    print(f"| variant | utt/s min / median / max | per round vs {first} | peak RSS MiB |")
    print("|---|---|---|---|")
    for name, overrides in variants.items():
        values = rates[name]
        span = f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"
        ratios = ", ".join(f"{a / b:.2f}" for a, b in zip(values, rates[first], strict=True))
        label = f"{name} ({','.join(overrides) or 'defaults'})"
        print(f"| {label} | {span} | {ratios} | {peaks[name]:.0f} |")


if __name__ == "__main__":
    main()
