"""Benchmark: cosine, voxceleb_trainer crop and AS-norm scoring, against per-trial loops.

Cosine: 1M trials over 20k files of 256-dim embeddings. VT crops: 100k trials over 5k files of
10 crops x 512 dims (VT's nOut). AS-norm: the same 1M trials with a 5k cohort, top 300. Each
per-trial Python loop (normalise both sides, score, next trial) runs on a subset and is
extrapolated linearly.

    .venv/bin/python bench/bench_scoring.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from xvec.scoring import as_norm, cosine_scores, vt_crop_scores


def best_time(function: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def loop_cosine(embeddings, enroll, test) -> np.ndarray:
    scores = np.empty(len(enroll))
    for i, (e, t) in enumerate(zip(enroll, test, strict=True)):
        a, b = embeddings[e].astype(np.float64), embeddings[t].astype(np.float64)
        scores[i] = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return scores


def loop_crops(crops, enroll, test) -> np.ndarray:
    scores = np.empty(len(enroll))
    for i, (e, t) in enumerate(zip(enroll, test, strict=True)):
        a, b = crops[e].astype(np.float64), crops[t].astype(np.float64)
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        scores[i] = -np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).mean()
    return scores


def report(name: str, trials: int, seconds: float, loop_trials: int, loop_seconds: float) -> None:
    loop_total = loop_seconds * trials / loop_trials
    print(
        f"{name}: {trials:,} trials in {seconds:.3f} s ({trials / seconds:,.0f} trials/s); "
        f"per-trial loop {loop_trials:,} trials in {loop_seconds:.3f} s -> "
        f"{loop_total:.1f} s extrapolated ({loop_total / seconds:.0f}x slower)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    files, dim, n_trials = 20_000, 256, 1_000_000
    embeddings = rng.normal(size=(files, dim)).astype(np.float32)
    enroll, test = rng.integers(0, files, n_trials), rng.integers(0, files, n_trials)
    seconds, scores = best_time(lambda: cosine_scores(embeddings, enroll, test), args.repeats)
    subset = 20_000
    start = time.perf_counter()
    reference = loop_cosine(embeddings, enroll[:subset], test[:subset])
    loop_seconds = time.perf_counter() - start
    assert np.allclose(scores[:subset], reference, atol=1e-9)
    report(f"cosine ({files:,} files x {dim})", n_trials, seconds, subset, loop_seconds)

    cohort = rng.normal(size=(5_000, dim)).astype(np.float32)
    norm_seconds, _ = best_time(
        lambda: as_norm(scores, enroll, test, embeddings, cohort, top_k=300), args.repeats
    )
    print(
        f"AS-norm (cohort 5,000, top 300): {n_trials:,} trials in {norm_seconds:.3f} s "
        f"({n_trials / norm_seconds:,.0f} trials/s, stats for {files:,} files once each)"
    )

    files, crops_per_file, dim, n_trials = 5_000, 10, 512, 100_000
    crops = rng.normal(size=(files, crops_per_file, dim)).astype(np.float32)
    enroll, test = rng.integers(0, files, n_trials), rng.integers(0, files, n_trials)
    seconds, scores = best_time(lambda: vt_crop_scores(crops, enroll, test), args.repeats)
    subset = 2_000
    start = time.perf_counter()
    reference = loop_crops(crops, enroll[:subset], test[:subset])
    loop_seconds = time.perf_counter() - start
    assert np.allclose(scores[:subset], reference, atol=1e-7)
    report(f"VT crops ({crops_per_file} x {dim})", n_trials, seconds, subset, loop_seconds)


if __name__ == "__main__":
    main()
