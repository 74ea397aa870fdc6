"""Evaluation: embed the unique files of a trial list, score the trials, compute metrics.

Used by ``xvec eval`` and by the training loop's periodic evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xvec.data import Trials, check_files_exist, require_both_labels
from xvec.embed import EmbedStats, Protocol, embed_files
from xvec.errors import XvecError
from xvec.metrics import DEFAULT_P_TARGETS, Metrics, evaluate
from xvec.scoring import score_embeddings


@dataclass
class EvalResult:
    """Metrics, scores (trial order) and speed of one system on one trial list."""

    name: str
    metrics: Metrics
    scores: np.ndarray
    seconds: float
    stats: EmbedStats

    def summary(self) -> dict:
        return {
            "name": self.name,
            **self.metrics.to_dict(),
            "seconds": round(self.seconds, 3),
            "files_per_second": round(self.stats.files_per_second, 2)
            if self.stats.computed
            else None,
            "notes": self.stats.notes,
        }


def evaluate_model(
    model: torch.nn.Module,
    trials: Trials,
    audio_root: str | Path,
    protocol: Protocol | None = None,
    *,
    name: str = "model",
    batch_size: int = 32,
    device: str | torch.device = "auto",
    p_targets: tuple[float, ...] = DEFAULT_P_TARGETS,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Embed every unique trial file once, score all trials in one vectorised pass, measure."""
    protocol = protocol or Protocol()
    require_both_labels(trials)
    check_files_exist(audio_root, trials.files, trials.path)
    start = time.perf_counter()
    stats = EmbedStats()
    vectors = embed_files(
        model,
        audio_root,
        trials.files,
        protocol,
        batch_size=batch_size,
        device=device,
        progress=progress,
        stats=stats,
    )
    embeddings = np.stack([vectors[f] for f in trials.files])
    scores = score_embeddings(embeddings, trials, protocol.name)
    metrics = evaluate(scores, trials.labels, p_targets=p_targets, c_miss=c_miss, c_fa=c_fa)
    return EvalResult(
        name=name,
        metrics=metrics,
        scores=scores,
        seconds=time.perf_counter() - start,
        stats=stats,
    )


def subsample_trials(trials: Trials, max_trials: int, seed: int = 0) -> tuple[Trials, np.ndarray]:
    """A stratified random subset of at most ``max_trials`` trials, and their indices.

    Targets and non-targets keep their proportion (at least one of each); the subset keeps the
    list's order, is the same for the same ``seed``, and lists only the files it uses, so only
    those are embedded. A list no longer than ``max_trials`` comes back whole.
    """
    if max_trials < 2:
        raise XvecError(
            f"--max-trials must be at least 2 (a target and a non-target), got {max_trials}"
        )
    total = len(trials)
    if total <= max_trials:
        return trials, np.arange(total)
    is_target = trials.labels == 1
    n_target = int(is_target.sum())
    want_target = min(max(round(max_trials * n_target / total), 1), max_trials - 1, n_target)
    rng = np.random.default_rng([seed, 0x5EB5])
    keep = np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(is_target), want_target, replace=False),
                rng.choice(np.flatnonzero(~is_target), max_trials - want_target, replace=False),
            ]
        )
    )
    used = np.union1d(trials.enroll[keep], trials.test[keep])
    subset = Trials(
        path=trials.path,
        labels=trials.labels[keep],
        enroll=np.searchsorted(used, trials.enroll[keep]),
        test=np.searchsorted(used, trials.test[keep]),
        files=[trials.files[i] for i in used],
    )
    return subset, keep
