"""``xvec eval``: checkpoints and score files evaluated on one trial list.

Every input is checked before anything is computed; each system's scores and ``result.json``
go to its own folder (:func:`result_folders`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xvec.calibration import Calibration, min_cllr
from xvec.checkpoint import load_model
from xvec.data import Trials, read_trials, require_both_labels
from xvec.devices import parse_device
from xvec.embed import model_fingerprint
from xvec.errors import XvecError, check_at_least
from xvec.evaluate import (
    DcfSettings,
    Progress,
    evaluate_model,
    subsample_trials,
    write_eval_outputs,
)
from xvec.metrics import compute_metrics
from xvec.outputs import check_outputs
from xvec.protocol import Protocol
from xvec.scoring import read_scores_in_trial_order
from xvec.workflows.calibrate import calibrated_summary, read_calibration, trial_llrs

DEFAULT_EVAL_DIR = Path("eval_out")  # where xvec eval writes model results by default


def result_folders(systems: Sequence[Path]) -> list[str]:
    """Sub-folder per system for several ("" for one): file stems, made unique."""
    if len(systems) == 1:
        return [""]
    stems = [path.stem for path in systems]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{index}_{path.parent.name}_{path.stem}" for index, path in enumerate(systems, 1)]


@dataclass
class EvalRun:
    """What ``xvec eval`` computed: one summary per system, the files written, notes."""

    trials: Trials
    total_trials: int
    summaries: list[dict[str, Any]] = field(default_factory=list)
    written: list[list[Path]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def subset(self) -> bool:
        return len(self.trials) < self.total_trials


def run_eval(
    trials_path: Path,
    *,
    models: Sequence[Path] = (),
    score_files: Sequence[Path] = (),
    audio_root: Path | None = None,
    protocol: Protocol | None = None,
    out_dir: Path | None = None,
    batch_size: int = 32,
    device: str = "auto",
    max_trials: int | None = None,
    dcf: DcfSettings | None = None,
    progress_for: Callable[[Path], AbstractContextManager[Progress | None]] | None = None,
    calibration: Path | None = None,
    force: bool = False,
) -> EvalRun:
    """Evaluate checkpoints and/or score files on one trial list (``xvec eval``).

    Every input is checked before anything is computed. Score files are aligned with the list
    (same order, names checked). ``max_trials`` evaluates a stratified subset (seed 0). Models
    write their results under ``out_dir`` (default ``eval_out``), score files only when
    ``out_dir`` is given; with several systems each gets a sub-folder. Every summary has
    minCllr; a one-score ``calibration`` (``xvec calibrate fit``) adds the calibrated scores'
    Cllr, actDCF and the raw-score Bayes threshold per prior (``summary["calibration"]``).
    Existing result files that are not xvec's are replaced only with ``force``.
    """
    if not models and not score_files:
        raise XvecError(
            "give models (one or more checkpoints) or score_files (score files)",
            options=("models", "score_files"),
        )
    check_at_least("batch_size", batch_size, 1)
    dcf = dcf or DcfSettings()
    if models:
        parse_device(device)
        for model_path in models:
            model_fingerprint(model_path)  # a missing or unreadable checkpoint fails up front
        if audio_root is None:
            raise XvecError(
                "audio_root is required with models (the folder trial paths are under)",
                options=("audio_root", "models"),
            )
    fitted = None
    if calibration is not None:
        fitted = read_calibration(calibration)
        trial_llrs(fitted, np.zeros(1), calibration)  # a fusion or QMF fails before any work
    folders = result_folders([*score_files, *models])
    model_dir = out_dir or DEFAULT_EVAL_DIR
    outputs: dict[Path, str] = {}
    if out_dir is not None:
        outputs.update({out_dir / f / "result.json": "result" for f in folders[: len(score_files)]})
    for folder in folders[len(score_files) :]:
        outputs.update({model_dir / folder / "scores.txt": "scores"})
        outputs.update({model_dir / folder / "result.json": "result"})
    inputs = [trials_path, *models, *score_files, *([calibration] if calibration else [])]
    check_outputs(outputs, inputs, force)
    full = read_trials(trials_path)
    require_both_labels(full)
    trials, kept = (full, None) if max_trials is None else subsample_trials(full, max_trials)
    run = EvalRun(trials=trials, total_trials=len(full))
    subset = {"trials": len(trials), "of": len(full), "seed": 0} if max_trials else None
    for score_file, folder in zip(score_files, folders, strict=False):
        values = read_scores_in_trial_order(score_file, full)
        values = values if kept is None else values[kept]
        metrics = compute_metrics(values, trials.labels, **dcf.kwargs())
        summary = {"name": str(score_file), **metrics.to_dict(), "seconds": None}
        summary.update(_calibration_entries(values, trials, dcf, fitted, calibration))
        if subset:
            summary["subset"] = subset
        run.summaries.append(summary)
        if out_dir is not None:
            run.written.append(write_eval_outputs(out_dir / folder, summary, None, None))
    if models:
        protocol = protocol or Protocol()
        for model_path, folder in zip(models, folders[len(score_files) :], strict=True):
            net = load_model(model_path)
            bar = progress_for(model_path) if progress_for else contextlib.nullcontext()
            with bar as progress:
                result = evaluate_model(
                    net,
                    trials,
                    audio_root,  # type: ignore[arg-type]  # checked above
                    protocol,
                    name=str(model_path),
                    batch_size=batch_size,
                    device=device,
                    progress=progress,
                    **dcf.kwargs(),
                )
            summary = {**result.summary(), "protocol": protocol.describe()}
            summary.update(_calibration_entries(result.scores, trials, dcf, fitted, calibration))
            if subset:
                summary["subset"] = subset
            run.summaries.append(summary)
            run.notes += result.stats.notes
            run.written.append(
                write_eval_outputs(model_dir / folder, summary, result.scores, trials)
            )
    return run


def _calibration_entries(
    scores: np.ndarray,
    trials: Trials,
    dcf: DcfSettings,
    fitted: Calibration | None,
    source: Path | None,
) -> dict[str, Any]:
    """minCllr of the raw scores, and with a calibration its measures (``result.json``)."""
    is_target = trials.labels.astype(bool)
    entries: dict[str, Any] = {"min_cllr": min_cllr(scores[is_target], scores[~is_target])}
    if fitted is not None and source is not None:
        entries["calibration"] = calibrated_summary(
            fitted, source, scores, trials, dcf.p_targets, dcf.c_miss, dcf.c_fa
        )
    return entries
