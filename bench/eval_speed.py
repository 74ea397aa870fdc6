"""Evaluation speed and memory on the speechocean762 dev trials (1,260 files, 11,752 trials).

Prints files/s of embedding extraction, trials/s of scoring and the peak memory of
``xvec eval``. Without --model, an untrained ResNetSE34L (voxceleb_trainer's defaults) is used:
speed does not depend on the weights.

    python bench/eval_speed.py [--model M.safetensors] [--protocol full|vt-crops]
        [--length-tolerance 0.05] [--precision bf16] [--systems 2]
        [--xvec-src OTHER_CHECKOUT/src] [--option m_channels=32]

``--systems 2`` is the path of the lab's comparison step: ``xvec eval`` with two models, every
file embedded whole (the default); ``--length-tolerance 0.05`` measures the opt-in trimming.
``--xvec-src`` runs another checkout's xvec (a ``git worktree`` of an older commit) with this
Python, to measure before and after on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _proctree import cpu_model, run_measured

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "speechocean762"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--architecture", default="ResNetSE34L")
    parser.add_argument("--protocol", default="full")
    parser.add_argument("--length-tolerance", type=float, default=None)
    parser.add_argument("--precision", default=None, help="fp32 (xvec's default) or bf16")
    parser.add_argument("--systems", type=int, default=1, help="evaluate the model this often")
    parser.add_argument("--xvec-src", type=Path, help="another checkout's src folder to run")
    parser.add_argument("--option", action="append", default=[], help="model option KEY=INT")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"needs {DATA}")
    import torch

    from xvec import registry
    from xvec.checkpoint import save_checkpoint
    from xvec.data import read_trials
    from xvec.scoring import cosine_scores

    trials_path = DATA / "lists" / "dev_trials.txt"
    options = {key: int(value) for key, value in (o.split("=", 1) for o in args.option)}
    env = dict(os.environ)
    if args.xvec_src is not None:
        env["PYTHONPATH"] = str(args.xvec_src.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = Path(tmp) / "untrained.safetensors"
            torch.manual_seed(0)  # the same weights every run: EERs of two paths compare
            save_checkpoint(
                model, registry.build("model", args.architecture, options), args.architecture
            )
        out_dir = Path(tmp) / "eval"
        command = [
            sys.executable, "-m", "xvec", "eval", "--model", str(model),
            "--trials", str(trials_path), "--audio-root", str(DATA / "audio"),
            "--protocol", args.protocol, "-o", str(out_dir),
        ]  # fmt: skip
        for copy in range(1, args.systems):
            twin = Path(tmp) / f"system{copy}_{model.name}"
            twin.write_bytes(model.read_bytes())
            command += ["--model", str(twin)]
        if args.precision is not None:
            command += ["--precision", args.precision]
        if args.length_tolerance is not None:
            command += ["--length-tolerance", str(args.length_tolerance)]
        measured = run_measured(command, env=env)
        results = sorted(out_dir.glob("**/result.json"))
        summaries = [json.loads(path.read_text()) for path in results]
        rates = [summary["files_per_second"] for summary in summaries]
    trials = read_trials(trials_path)
    print(f"model: {model.name if args.model else args.architecture + ' (untrained)'}")
    print(f"files: {len(trials.files)}, trials: {len(trials)}, protocol {args.protocol}")
    print(f"CPU: {cpu_model()}; xvec: {args.xvec_src or ROOT / 'src'}")
    print(
        f"xvec eval wall time: {measured['seconds']:.1f} s, CPU time "
        f"{measured['cpu_seconds']:.1f} s (with start-up)"
    )
    print(f"systems: {args.systems}, length tolerance: {args.length_tolerance}")
    print(f"precision: {args.precision or 'default'}")
    print("embedding: " + ", ".join(f"{rate:.1f}" for rate in rates) + " files/s")
    for summary in summaries:
        dcf = ", ".join(f"{p}: {v:.4f}" for p, v in summary["min_dcf"].items())
        print(f"EER {summary['eer']:.3f} %, minDCF {dcf}")
    print(f"peak RSS: {measured['main_mib']:.0f} MiB")

    # Scoring alone, repeated to a million trials, on stored-size embeddings.
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((len(trials.files), 512)).astype(np.float32)
    reps = int(np.ceil(1_000_000 / len(trials)))
    enroll, test = np.tile(trials.enroll, reps), np.tile(trials.test, reps)
    start = time.perf_counter()
    cosine_scores(embeddings, enroll, test)
    seconds = time.perf_counter() - start
    rate = len(enroll) / seconds
    print(f"cosine scoring: {len(enroll)} trials in {seconds:.3f} s -> {rate:,.0f} trials/s")


if __name__ == "__main__":
    main()
