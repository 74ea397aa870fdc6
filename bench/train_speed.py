"""Training speed and memory: recipes/resnet34l_amsoftmax.toml on speechocean762.

Prints utterances/s over whole epochs (from the run's JSON-lines log and wall time), and the
peak resident memory of the training process and of its whole tree (loader workers included).
voxceleb_trainer on this 2-core machine: ~21 utt/s over whole epochs, 3.8 GB main process.

    python bench/train_speed.py [--epochs 2] [--workers 2] [--recipe recipes/...toml]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _proctree import run_measured

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "speechocean762"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "resnet34l_amsoftmax.toml"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"needs {DATA}")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        overrides = [
            f"data.train_list={DATA / 'lists' / 'train_list.txt'}",
            f"data.train_path={DATA / 'audio'}",
            "data.test_list=",
            f"train.max_epoch={args.epochs}",
            f"train.num_workers={args.workers}",
            f"train.output_dir={run}",
            "train.log_every=1",
            *args.overrides,
        ]
        command = [sys.executable, "-m", "xvec", "train", args.recipe]
        for item in overrides:
            command += ["--set", item]
        measured = run_measured(command)
        records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train"]
    lines = (DATA / "lists" / "train_list.txt").read_text().split("\n")
    utterances = sum(1 for line in lines if line.strip()) * args.epochs
    train_seconds = steps[-1]["time"]
    print(f"recipe: {Path(args.recipe).name}, {args.epochs} epochs, {args.workers} workers")
    print(f"utterances seen: {utterances}")
    print(f"training time (log): {train_seconds:.1f} s -> {utterances / train_seconds:.1f} utt/s")
    print(
        f"whole command incl. start-up: {measured['seconds']:.1f} s -> "
        f"{utterances / measured['seconds']:.1f} utt/s"
    )
    print(
        f"peak RSS: main process {measured['main_mib']:.0f} MiB, "
        f"process tree {measured['tree_mib']:.0f} MiB"
    )


if __name__ == "__main__":
    main()
