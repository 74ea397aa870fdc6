"""``xvec plot``: score histograms, DET curves, calibration and training curves from files.

The workflows behind the verb read a score file, trial list or run folder and call the
plotting kernels of :mod:`xvec.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xvec.calibration import cllr, min_cllr
from xvec.data import read_trials, require_both_labels
from xvec.metrics import Metrics, compute_metrics
from xvec.outputs import check_outputs
from xvec.plots import plot_calibration, plot_det, plot_histogram, plot_training
from xvec.runlog import read_log
from xvec.scoring import read_scores_in_trial_order
from xvec.workflows.calibrate import read_calibration, trial_llrs


def plot_score_histogram(
    scores: Path,
    trials_path: Path,
    path: str | Path,
    title: str | None = None,
    force: bool = False,
) -> Metrics:
    """``xvec plot hist``: a score file's histograms on a trial list; returns its metrics.

    Every plot command replaces an existing image, and any other file only with ``force``.
    """
    check_outputs({path: "image"}, [scores, trials_path], force)
    trials = read_trials(trials_path)
    require_both_labels(trials)
    values = read_scores_in_trial_order(scores, trials)
    metrics = compute_metrics(values, trials.labels)
    plot_histogram(
        values, trials.labels, path, threshold=metrics.eer_threshold, title=title or scores.name
    )
    return metrics


def plot_det_files(
    scores: Sequence[Path], trials_path: Path, path: str | Path, force: bool = False
) -> Any:
    """``xvec plot det``: DET curves of score files on one trial list, each named by its file
    (``scores.txt`` files by their folder)."""
    check_outputs({path: "image"}, [*scores, trials_path], force)
    trials = read_trials(trials_path)
    curves = {
        file.stem if file.stem != "scores" else str(file.parent): (
            read_scores_in_trial_order(file, trials),
            trials.labels,
        )
        for file in scores
    }
    return plot_det(curves, path)


def plot_run(run_dir: Path, path: Path | None = None, force: bool = False) -> Path:
    """``xvec plot training``: a run folder's curves, by default to ``curves.png`` in it."""
    target = path or run_dir / "curves.png"
    check_outputs({target: "image"}, [run_dir / "log.jsonl"], force)
    plot_training(read_log(run_dir), target)
    return target


@dataclass(frozen=True)
class CalibrationPlot:
    """What ``xvec plot calibration`` drew: the file, and the LLRs' Cllr and minCllr (bits)."""

    path: Path
    cllr: float
    min_cllr: float
    calibrated: bool


def plot_calibration_files(
    scores: Path,
    trials_path: Path,
    path: str | Path,
    calibration: Path | None = None,
    title: str | None = None,
    force: bool = False,
) -> CalibrationPlot:
    """``xvec plot calibration``: a score file's Bayes error-rate and reliability plots.

    With a one-score ``calibration`` (``xvec calibrate fit``) the calibrated LLRs are drawn,
    otherwise the scores themselves are taken as LLRs.
    """
    inputs = [scores, trials_path, *([calibration] if calibration is not None else [])]
    check_outputs({path: "image"}, inputs, force)
    fitted = read_calibration(calibration) if calibration is not None else None
    trials = read_trials(trials_path)
    require_both_labels(trials)
    values = read_scores_in_trial_order(scores, trials)
    llrs = trial_llrs(fitted, values, calibration) if fitted and calibration else values
    is_target = trials.labels.astype(bool)
    plot_calibration(values, is_target, path, llrs=llrs, title=title or scores.name)
    return CalibrationPlot(
        path=Path(path),
        cllr=cllr(llrs[is_target], llrs[~is_target]),
        min_cllr=min_cllr(values[is_target], values[~is_target]),
        calibrated=fitted is not None,
    )
