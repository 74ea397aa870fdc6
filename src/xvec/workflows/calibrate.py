"""``xvec calibrate``: score files to a calibration (fit), and a calibration to LLR files (apply).

One score file calibrates, several are fused linearly, and ``quality`` adds the durations of
each trial's files as side information (a quality-measure function, QMF). Score files must
follow the trial list (fit) or the first score file (apply) line for line; the first line
where they part is named.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xvec.audio import audio_info
from xvec.calibration import (
    Calibration,
    act_dcf,
    cllr,
    duration_quality_measures,
    fit_calibration,
    min_cllr,
)
from xvec.data import Trials, read_trials, require_both_labels
from xvec.errors import XvecError
from xvec.files import write_text_atomic
from xvec.metrics import DEFAULT_P_TARGETS, compute_metrics
from xvec.outputs import check_outputs
from xvec.scoring import read_scores, write_scores

# the side-information columns a QMF calibration ends with (duration_quality_measures' names)
QUALITY_INPUTS = ("log_min_duration", "log_max_duration")


@dataclass(frozen=True)
class CalibrationMeasures:
    """How well one set of scores, taken as LLRs, is calibrated on labelled trials.

    ``cllr`` / ``min_cllr`` in bits; ``act_dcf`` (scores thresholded at the Bayes threshold)
    and ``min_dcf`` (best threshold) normalised, keyed by p_target.
    """

    cllr: float
    min_cllr: float
    act_dcf: dict[float, float]
    min_dcf: dict[float, float]

    def row(self) -> list[float]:
        """Cllr, minCllr, then actDCF and minDCF at each prior: one row of a table."""
        pairs = [(self.act_dcf[p], self.min_dcf[p]) for p in self.act_dcf]
        return [self.cllr, self.min_cllr, *(value for pair in pairs for value in pair)]


@dataclass(frozen=True)
class CalibrationFit:
    """What :func:`fit_calibration_files` did: the fit, its file, and measures on the fit data.

    ``before`` has one entry per score file (its raw scores taken as LLRs), ``after`` is the
    calibrated (fused) LLRs; ``thresholds`` the raw-score Bayes threshold at each measured
    prior (a one-score calibration with a positive weight only).
    """

    calibration: Calibration
    output: Path
    score_files: tuple[Path, ...]
    n_trials: int
    n_target: int
    n_nontarget: int
    before: tuple[CalibrationMeasures, ...]
    after: CalibrationMeasures
    thresholds: dict[float, float]  # raw-score Bayes threshold per prior; empty for fusion/QMF


@dataclass(frozen=True)
class CalibrationApplied:
    """What :func:`apply_calibration_file` wrote: the LLR file and how many trials."""

    output: Path
    count: int
    calibration: Calibration


def measure_calibration(
    llrs: np.ndarray, is_target: np.ndarray, p_targets: Sequence[float] = DEFAULT_P_TARGETS
) -> CalibrationMeasures:
    """Cllr, minCllr, actDCF and minDCF of ``llrs`` on trials labelled ``is_target``."""
    targets, nontargets = llrs[is_target], llrs[~is_target]
    priors = tuple(dict.fromkeys(float(p) for p in p_targets))
    return CalibrationMeasures(
        cllr=cllr(targets, nontargets),
        min_cllr=min_cllr(targets, nontargets),
        act_dcf=act_dcf(targets, nontargets, priors),
        min_dcf=compute_metrics(llrs, is_target, p_targets=priors).min_dcf,
    )


def read_calibration(path: Path) -> Calibration:
    """A calibration JSON file written by ``xvec calibrate fit``; anything else: XvecError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise XvecError(f"{path}: calibration file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise XvecError(f"{path}: cannot read the calibration file ({exc})") from exc
    return Calibration.from_json(text, str(path))


def uses_durations(calibration: Calibration) -> bool:
    """Whether the calibration is a QMF taking file durations after its score columns."""
    return calibration.inputs[-len(QUALITY_INPUTS) :] == QUALITY_INPUTS


def score_columns(calibration: Calibration) -> int:
    """How many score files the calibration takes."""
    return len(calibration.inputs) - (len(QUALITY_INPUTS) if uses_durations(calibration) else 0)


def _data_line(path: Path, position: int) -> int:
    """The file line of the ``position``-th (0-based) score line: blanks and comments skipped."""
    seen = -1
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if fields and not fields[0].startswith("#"):
                seen += 1
                if seen == position:
                    return number
    return position + 1


def _aligned_scores(
    score_file: Path, enroll: Sequence[str], test: Sequence[str], reference: str
) -> np.ndarray:
    """A score file's scores, checked to list the trials ``enroll``/``test`` in this order.

    ``reference`` names where the expected trials come from (a trial list, another score file);
    the first trial that differs is named with its line in ``score_file``.
    """
    values, names_enroll, names_test = read_scores(score_file)
    if len(values) != len(enroll):
        raise XvecError(
            f"{score_file}: {len(values)} scores for {len(enroll)} trials in {reference}; "
            "score files must hold the same trials in the same order",
            file=score_file,
        )
    if names_enroll is None or names_test is None:
        return values
    differs = (np.asarray(names_enroll, dtype=object) != np.asarray(enroll, dtype=object)) | (
        np.asarray(names_test, dtype=object) != np.asarray(test, dtype=object)
    )
    if differs.any():
        first = int(np.flatnonzero(differs)[0])
        line = _data_line(score_file, first)
        raise XvecError(
            f"{score_file}:{line}: trial '{names_enroll[first]} {names_test[first]}' differs "
            f"from trial {first + 1} of {reference} ('{enroll[first]} {test[first]}'); score "
            "files must hold the same trials in the same order",
            file=score_file,
            line=line,
        )
    return values


def _file_durations(audio_root: Path, files: Sequence[str]) -> dict[str, float]:
    """Seconds of each file under ``audio_root``, read from its header."""
    durations = {}
    for name in dict.fromkeys(files):
        info = audio_info(Path(audio_root) / name)
        durations[name] = info.frames / info.sample_rate
    return durations


def _quality_columns(
    audio_root: Path | None, enroll: Sequence[str], test: Sequence[str]
) -> np.ndarray:
    """The QMF side information of each trial: log shorter and log longer file duration."""
    if audio_root is None:
        raise XvecError(
            "a quality calibration (QMF) needs audio_root, the folder the trial paths are "
            "under, to read each file's duration",
            options=("audio_root",),
        )
    durations = _file_durations(audio_root, [*enroll, *test])
    matrix, _ = duration_quality_measures(
        [durations[name] for name in enroll], [durations[name] for name in test]
    )
    return matrix


def fit_calibration_files(
    score_files: Sequence[Path],
    trials: Path,
    output: Path,
    *,
    p_target: float = 0.05,
    quality: bool = False,
    audio_root: Path | None = None,
    p_targets: Sequence[float] = DEFAULT_P_TARGETS,
    force: bool = False,
) -> CalibrationFit:
    """``xvec calibrate fit``: score files aligned with a labelled trial list to a calibration.

    One score file calibrates, several are fused; ``quality`` adds duration side information
    (files read under ``audio_root``). The fit weights the trials for ``p_target``; the JSON
    goes to ``output`` atomically. Measures before and after are at ``p_targets`` (and at
    ``p_target``) on the fit trials themselves, so they are optimistic.
    """
    if not score_files:
        raise XvecError("give score_files (one or more score files)", options=("score_files",))
    check_outputs({output: "calibration"}, [*score_files, trials], force)
    if not (math.isfinite(p_target) and 0 < p_target < 1):
        raise XvecError(
            f"p_target must lie strictly between 0 and 1, got {p_target}", options=("p_target",)
        )
    if quality and audio_root is None:
        _quality_columns(None, (), ())  # the one-line error, before any file is read
    trial_list = read_trials(trials)
    require_both_labels(trial_list)
    enroll, test = trial_list.enroll_names(), trial_list.test_names()
    columns = [_aligned_scores(Path(f), enroll, test, str(trials)) for f in score_files]
    names = ["score"] if len(columns) == 1 else [f"score{i + 1}" for i in range(len(columns))]
    if quality:
        side = _quality_columns(audio_root, enroll, test)
        columns += [side[:, 0], side[:, 1]]
        names += list(QUALITY_INPUTS)
    matrix = np.stack(columns, axis=1)
    is_target = trial_list.labels.astype(bool)
    calibration = fit_calibration(matrix, is_target, p_target=p_target, names=names)
    write_text_atomic(output, calibration.to_json())
    priors = tuple(dict.fromkeys((float(p_target), *p_targets)))
    before = tuple(
        measure_calibration(matrix[:, k], is_target, priors) for k in range(len(score_files))
    )
    after = measure_calibration(calibration.apply(matrix), is_target, priors)
    thresholds = {}
    if len(calibration.weights) == 1 and calibration.weights[0] > 0:
        thresholds = dict(zip(priors, calibration.thresholds(priors).tolist(), strict=True))
    return CalibrationFit(
        calibration=calibration,
        output=Path(output),
        score_files=tuple(Path(f) for f in score_files),
        n_trials=len(trial_list),
        n_target=int(is_target.sum()),
        n_nontarget=int((~is_target).sum()),
        before=before,
        after=after,
        thresholds=thresholds,
    )


def apply_calibration_file(
    calibration: Path,
    score_files: Sequence[Path],
    output: Path,
    *,
    audio_root: Path | None = None,
    force: bool = False,
) -> CalibrationApplied:
    """``xvec calibrate apply``: score files to one LLR file (``SCORE ENROLL TEST``).

    The score files must be as many as the calibration's score inputs and hold the same
    trials in the same order; a QMF calibration also reads each file's duration under
    ``audio_root``.
    """
    check_outputs({output: "scores"}, [calibration, *score_files], force)
    fitted = read_calibration(calibration)
    wanted = score_columns(fitted)
    if len(score_files) != wanted:
        inputs = ", ".join(fitted.inputs[:wanted])
        raise XvecError(
            f"{calibration}: the calibration takes {wanted} score file(s) ({inputs}), in the "
            f"order it was fitted with, but {len(score_files)} were given",
            file=calibration,
        )
    if uses_durations(fitted) and audio_root is None:
        _quality_columns(None, (), ())
    first, enroll, test = read_scores(score_files[0])
    if enroll is None or test is None:
        if uses_durations(fitted) or len(score_files) > 1:
            raise XvecError(
                f"{score_files[0]}: one score per line names no trials; fusion and quality "
                "calibrations need 'SCORE ENROLL TEST' lines",
                file=score_files[0],
            )
        llrs = fitted.apply(first)
        write_scores(output, llrs, None, None)
        return CalibrationApplied(output=Path(output), count=len(llrs), calibration=fitted)
    columns = [first]
    columns += [
        _aligned_scores(Path(f), enroll, test, str(score_files[0])) for f in score_files[1:]
    ]
    if uses_durations(fitted):
        side = _quality_columns(audio_root, enroll, test)
        columns += [side[:, 0], side[:, 1]]
    llrs = fitted.apply(np.stack(columns, axis=1))
    write_scores(output, llrs, enroll, test)
    return CalibrationApplied(output=Path(output), count=len(llrs), calibration=fitted)


def trial_llrs(calibration: Calibration, scores: np.ndarray, source: Path) -> np.ndarray:
    """LLRs of one system's scores under a one-score calibration (``xvec eval --calibration``)."""
    if len(calibration.inputs) != 1:
        raise XvecError(
            f"{source}: a calibration of {len(calibration.inputs)} inputs "
            f"({', '.join(calibration.inputs)}) cannot calibrate one system; write its LLRs "
            "with 'xvec calibrate apply' and evaluate that file",
            file=source,
        )
    return calibration.apply(scores)


def calibrated_summary(
    calibration: Calibration,
    source: Path,
    scores: np.ndarray,
    trials: Trials,
    p_targets: Sequence[float],
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> dict:
    """``result.json``'s ``calibration`` entry: Cllr, actDCF and raw-score thresholds per prior.

    Keys of the per-prior dicts are the priors as strings, as ``min_dcf``'s. A threshold is
    None where the calibration has no single score threshold (a weight that is not positive).
    """
    is_target = trials.labels.astype(bool)
    llrs = trial_llrs(calibration, scores, source)
    priors = tuple(dict.fromkeys(float(p) for p in p_targets))
    actual = act_dcf(llrs[is_target], llrs[~is_target], priors, c_miss=c_miss, c_fa=c_fa)
    thresholds: list[float | None] = [None] * len(priors)
    if calibration.weights[0] > 0:
        thresholds = [float(t) for t in calibration.thresholds(priors, c_miss, c_fa)]
    return {
        "file": str(source),
        "p_target": calibration.p_target,
        "cllr": cllr(llrs[is_target], llrs[~is_target]),
        "act_dcf": {str(p): actual[p] for p in priors},
        "thresholds": {str(p): t for p, t in zip(priors, thresholds, strict=True)},
    }
