"""Benchmark: fit a calibration on a dev score file, then apply it and measure Cllr, minCllr and
actDCF on millions of synthetic trials; prints seconds per step and the peak resident memory.

Dev scores are written with ``xvec.scoring.write_scores`` (one score per line, as ``xvec score``
writes them) and read back, so the fit is timed as the CLI will run it. Target: the evaluation
of 3.7 M trials in < 10 s and < 1 GB.

    .venv/bin/python bench/bench_calibration.py [--trials 3700000] [--dev-trials 200000]
"""

from __future__ import annotations

import argparse
import math
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from xvec.calibration import act_dcf, cllr, fit_calibration, min_cllr
from xvec.metrics import compute_metrics
from xvec.scoring import read_scores, write_scores

from _proctree import cpu_model


def raw_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine-like scores: 5 % targets ~ N(0.55, 0.12), non-targets ~ N(0.25, 0.12)."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.05
    return rng.normal(np.where(labels, 0.55, 0.25), 0.12), labels


def peak_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3_700_000)
    parser.add_argument("--dev-trials", type=int, default=200_000)
    parser.add_argument("--p-target", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}; peak RSS before any data: {peak_mib():.0f} MiB")

    dev_scores, dev_labels = raw_scores(args.dev_trials, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        score_file = Path(folder) / "dev.scores"
        write_scores(score_file, dev_scores, None, None)
        start = time.perf_counter()
        scores, _, _ = read_scores(score_file)
        read_seconds = time.perf_counter() - start
    start = time.perf_counter()
    calibration = fit_calibration(scores, dev_labels, p_target=args.p_target)
    fit_seconds = time.perf_counter() - start
    print(
        f"fit on {args.dev_trials:,} dev trials: read {read_seconds:.3f} s, "
        f"fit {fit_seconds:.3f} s "
        f"(w={calibration.weights[0]:.4f}, b={calibration.offset:.4f})"
    )

    eval_scores, labels = raw_scores(args.trials, seed=1)
    before = peak_mib()
    steps: dict[str, float] = {}
    totals = []
    for _ in range(args.repeats):  # best of a few: the machine is shared
        start = mark = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            steps[name] = min(steps.get(name, math.inf), now - mark)
            mark = now

        llrs = calibration.apply(eval_scores)
        lap("apply")
        targets, nontargets = llrs[labels], llrs[~labels]
        lap("split")
        cost = cllr(targets, nontargets)
        lap("Cllr")
        minimum = min_cllr(targets, nontargets)
        lap("minCllr")
        actual = act_dcf(targets, nontargets, [args.p_target, 0.01])
        lap("actDCF")
        totals.append(time.perf_counter() - start)
    total = min(totals)
    print(f"evaluate {args.trials:,} trials: {total:.3f} s in all (best of {args.repeats})")
    for name, seconds in steps.items():
        print(f"  {name:<8} {seconds:8.3f} s")
    print(
        f"  Cllr {cost:.4f}  minCllr {minimum:.4f}  actDCF "
        + "  ".join(f"{p}: {value:.4f}" for p, value in actual.items())
    )
    start = time.perf_counter()
    metrics = compute_metrics(llrs, labels, (args.p_target, 0.01))
    print(
        f"  (xvec.metrics EER/minDCF for comparison: {time.perf_counter() - start:.3f} s, "
        f"minDCF {metrics.min_dcf})"
    )
    print(
        f"peak RSS: {peak_mib():.0f} MiB ({before:.0f} MiB before evaluating; the "
        f"{args.trials:,} scores + labels alone are {eval_scores.nbytes * 9 / 8 / 2**20:.0f} MiB)"
    )
    start = time.perf_counter()
    fit_calibration(eval_scores, labels, p_target=args.p_target)
    print(
        f"fit on all {args.trials:,} trials: {time.perf_counter() - start:.3f} s; "
        f"peak RSS now {peak_mib():.0f} MiB"
    )


if __name__ == "__main__":
    main()
