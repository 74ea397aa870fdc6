"""CPU training step speed of two settings, utt/s in interleaved rounds: ``--what precision``
(fp32 against bf16 autocast, ``train.mixed_precision``) or ``--what layout`` (the default
memory layout against channels-last convolutions, ``train.channels_last``).

Each measurement is a fresh ``xvec train RECIPE`` (``train.max_steps`` steps, no evaluation,
default threads, plus any ``--set`` overrides) with one of the two settings; utt/s counts the
steps after ``--warmup`` from the run's log. The default recipe is recipes/resnet34l_amsoftmax.toml
(ResNetSE34L, 2 s crops, batch 100 here) on speechocean762; ``--recipe recipes/demo.toml``
uses the synthetic corpus in data/demo (bench/loaded_training.py measures that one too:
``--loads quiet --variant fp32=train.mixed_precision=false
--variant bf16=train.mixed_precision=true``).

    python bench/precision.py [--what precision|layout] [--rounds 3] [--steps 8] [--warmup 2]
        [--recipe R] [--batch 100] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "speechocean762"
VARIANTS = {  # the two settings compared, first the baseline
    "precision": {"fp32": "train.mixed_precision=false", "bf16": "train.mixed_precision=bf16"},
    "layout": {"plain": "train.channels_last=false", "channels-last": "train.channels_last=true"},
}


def measure(args: argparse.Namespace, setting: str, tmp: Path, index: int) -> float:
    run = tmp / f"run{index}"
    overrides = [
        *args.overrides,
        setting,
        f"train.max_steps={args.warmup + args.steps}",
        f"train.batch_size={args.batch}",
        "train.device=cpu",
        "train.log_every=1",
        "data.test_list=",
        f"train.output_dir={run}",
    ]
    if Path(args.recipe).name != "demo.toml":
        overrides += [
            f"data.train_list={DATA / 'lists' / 'train_list.txt'}",
            f"data.train_path={DATA / 'audio'}",
        ]
    command = [sys.executable, "-m", "xvec", "train", args.recipe]
    for item in overrides:
        command += ["--set", item]
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    times = {r["step"]: r["time"] for r in records if r["kind"] == "train"}
    last = max(times)
    return (last - args.warmup) * args.batch / (times[last] - times[args.warmup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "resnet34l_amsoftmax.toml"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--what", choices=sorted(VARIANTS), default="precision")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    variants = VARIANTS[args.what]
    rates: dict[str, list[float]] = {name: [] for name in variants}
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory() as tmp:
        index = 0
        for round_index in range(args.rounds):
            for name, setting in variants.items():
                index += 1
                rate = measure(args, setting, Path(tmp), index)
                rates[name].append(rate)
                print(f"round {round_index + 1} {name}: {rate:.1f} utt/s", flush=True)
    load_end = Path("/proc/loadavg").read_text().split()[:3]
    print(
        f"{Path(args.recipe).name} {' '.join(args.overrides)}, batch {args.batch}, "
        f"{args.steps} timed steps after {args.warmup}; load average {' '.join(load_start)} "
        f"at start, {' '.join(load_end)} at end"
    )
    for name, values in rates.items():
        low, mid, high = min(values), statistics.median(values), max(values)
        print(f"{name}: {low:.1f} / {mid:.1f} / {high:.1f} utt/s (min / median / max)")
    base, other = variants
    ratios = [b / a for a, b in zip(rates[base], rates[other], strict=True)]
    print(f"{other}/{base} per round: " + ", ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
