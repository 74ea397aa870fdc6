"""Benchmark: EER + minDCF on 1M and 10M Gaussian trials, against a per-trial Python loop.

The loop is the straightforward way (sort, then walk the trials one by one accumulating error
counts, as voxceleb_trainer's ComputeErrorRates / ComputeMinDcf do); it runs on a subset and is
extrapolated linearly (its sort is O(n log n) but the Python walk dominates).

    .venv/bin/python bench/bench_metrics.py [--sizes 1000000 10000000] [--loop-size 200000]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from xvec.metrics import compute_metrics


def gaussian_trials(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half target trials ~ N(0.55, 0.12), half non-target ~ N(0.25, 0.12), shuffled."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.5
    return rng.normal(np.where(labels, 0.55, 0.25), 0.12), labels


def loop_metrics(scores: np.ndarray, labels: np.ndarray, p_targets=(0.05, 0.01)) -> tuple:
    """EER (closest |fnr - fpr|) and minDCF by walking the sorted trials in Python."""
    pairs = sorted(zip(scores.tolist(), labels.tolist(), strict=True))
    n_target = sum(label for _, label in pairs)
    n_nontarget = len(pairs) - n_target
    misses = false_alarms_rejected = 0
    best_gap, eer = 2.0, 1.0
    best_cost = dict.fromkeys(p_targets, float("inf"))
    for _, label in pairs:
        if label:
            misses += 1
        else:
            false_alarms_rejected += 1
        fnr = misses / n_target
        fpr = 1 - false_alarms_rejected / n_nontarget
        if abs(fnr - fpr) < best_gap:
            best_gap, eer = abs(fnr - fpr), max(fnr, fpr)
        for p in p_targets:
            best_cost[p] = min(best_cost[p], fnr * p + fpr * (1 - p))
    return eer * 100, {p: best_cost[p] / min(p, 1 - p) for p in p_targets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_700_000, 10_000_000])
    parser.add_argument("--loop-size", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    print(
        f"{'trials':>12} {'xvec s':>9} {'trials/s':>12} {'EER %':>9} {'minDCF .05':>11} "
        f"{'peak MiB':>9}"
    )
    xvec_rate = {}
    for n in args.sizes:
        scores, labels = gaussian_trials(n)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            metrics = compute_metrics(scores, labels)
            times.append(time.perf_counter() - start)
        best = min(times)
        xvec_rate[n] = n / best
        # Peak resident memory of this process so far (data included), Linux units: KiB.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{n:>12,} {best:>9.3f} {n / best:>12,.0f} {metrics.eer:>9.4f} "
            f"{metrics.min_dcf[0.05]:>11.5f} {peak:>9.0f}"
        )

    scores, labels = gaussian_trials(args.loop_size, seed=1)
    start = time.perf_counter()
    loop_eer, loop_dcf = loop_metrics(scores, labels)
    loop_seconds = time.perf_counter() - start
    fast = compute_metrics(scores, labels)
    print(
        f"\nper-trial Python loop on {args.loop_size:,} trials: {loop_seconds:.3f} s "
        f"({args.loop_size / loop_seconds:,.0f} trials/s); EER {loop_eer:.4f} vs xvec "
        f"{fast.eer:.4f}, minDCF(0.05) {loop_dcf[0.05]:.5f} vs {fast.min_dcf[0.05]:.5f}"
    )
    for n in args.sizes:
        extrapolated = loop_seconds * n / args.loop_size
        print(
            f"  extrapolated to {n:,} trials: {extrapolated:.1f} s "
            f"(xvec {n / xvec_rate[n]:.3f} s, {extrapolated * xvec_rate[n] / n:.0f}x faster)"
        )


if __name__ == "__main__":
    main()
