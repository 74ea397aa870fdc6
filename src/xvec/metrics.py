"""Verification metrics: EER as voxceleb_trainer reports it, and tie-aware minDCF.

Everything is one sort plus cumulative sums (O(n log n), vectorised), so ten million trials take
seconds. Tied scores are one threshold throughout: a threshold cannot accept some trials of a
score and reject others, so no result depends on the order of the trials.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from xvec.errors import XvecError

__all__ = ["DEFAULT_P_TARGETS", "Metrics", "compute_metrics", "det_curve"]

DEFAULT_P_TARGETS = (0.05, 0.01)  # minDCF priors reported unless asked otherwise


@dataclass(frozen=True)
class Metrics:
    """EER (percent) and normalised minDCF (at each p_target, costs c_miss and c_fa)."""

    eer: float
    eer_threshold: float
    min_dcf: dict[float, float] = field(default_factory=dict)
    n_trials: int = 0
    n_target: int = 0
    n_nontarget: int = 0
    c_miss: float = 1.0
    c_fa: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary; minDCF keys are the p_target values written as strings."""
        return {
            "eer": self.eer,
            "eer_threshold": self.eer_threshold,
            "min_dcf": {str(p_target): value for p_target, value in self.min_dcf.items()},
            "c_miss": self.c_miss,
            "c_fa": self.c_fa,
            "n_trials": self.n_trials,
            "n_target": self.n_target,
            "n_nontarget": self.n_nontarget,
        }


@dataclass(frozen=True)
class _SortedCounts:
    """Distinct scores ascending, with how many targets / non-targets lie strictly below each."""

    thresholds: np.ndarray  # distinct scores, ascending
    targets_below: np.ndarray  # int64, same length
    nontargets_below: np.ndarray
    n_target: int
    n_nontarget: int


def _check(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Scores as float64 and labels as bool, or an XvecError saying what is wrong."""
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    raw_labels = np.asarray(labels).reshape(-1)
    if values.size != raw_labels.size:
        raise XvecError(f"{values.size} scores but {raw_labels.size} labels; they must pair up")
    if values.size == 0:
        raise XvecError("no trials: EER and minDCF are undefined for an empty trial list")
    if raw_labels.dtype != np.bool_:
        if not np.isin(raw_labels, (0, 1)).all():
            raise XvecError("labels must be 1 (target) or 0 (non-target)")
        raw_labels = raw_labels.astype(bool)
    finite = np.isfinite(values)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise XvecError(
            f"{values.size - int(finite.sum())} non-finite (NaN or infinite) scores, the first "
            f"at trial {first + 1}; EER undefined"
        )
    n_target = int(raw_labels.sum())
    if n_target == 0 or n_target == raw_labels.size:
        missing = "target" if n_target == 0 else "non-target"
        raise XvecError(
            f"EER undefined: the {raw_labels.size} trials contain no {missing} trial; "
            "a trial list needs both labels 1 and 0"
        )
    return values, raw_labels


def _sorted_counts(values: np.ndarray, labels: np.ndarray) -> _SortedCounts:
    """Per distinct score, the target / non-target counts strictly below it.

    Sorting values alone (not argsort) is several times faster on large arrays; the target counts
    then come from a binary search of the distinct scores in the sorted target scores.
    """
    sorted_values = np.sort(values)
    # last index of each run of equal scores
    group_ends = np.flatnonzero(np.r_[sorted_values[1:] != sorted_values[:-1], True])
    distinct = sorted_values[group_ends]
    targets_through = np.searchsorted(np.sort(values[labels]), distinct, side="right")
    trials_through = group_ends + 1
    n_target = int(targets_through[-1])
    n_nontarget = values.size - n_target
    targets_below = np.r_[0, targets_through[:-1]]
    nontargets_below = np.r_[0, (trials_through - targets_through)[:-1]]
    return _SortedCounts(distinct, targets_below, nontargets_below, n_target, n_nontarget)


def det_curve(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every operating point of a threshold decision "accept if score >= threshold".

    Returns ``(fpr, fnr, thresholds)`` as fractions, thresholds ascending: each distinct score
    once (ties are one operating point), then ``+inf`` (reject everything). The first point
    accepts everything (fnr 0, fpr 1), the last rejects everything (fnr 1, fpr 0).
    """
    counts = _sorted_counts(*_check(scores, labels))
    fnr = np.r_[counts.targets_below, counts.n_target] / counts.n_target
    fpr = 1.0 - np.r_[counts.nontargets_below, counts.n_nontarget] / counts.n_nontarget
    return fpr, fnr, np.r_[counts.thresholds, np.inf]


def _vt_eer(counts: _SortedCounts) -> tuple[float, float]:
    """voxceleb_trainer's EER (percent) and its threshold.

    VT takes scikit-learn's ROC curve (thresholds descending, collinear points dropped, a first
    point at threshold +inf) and reports ``max(fpr, fnr)`` at the first point where
    ``|fnr - fpr|`` is smallest. The same point set and the same float operations are rebuilt
    here, so the value agrees to the last bit.
    """
    # descending thresholds: counts at or above each distinct score
    true_pos = (counts.n_target - counts.targets_below)[::-1]
    false_pos = (counts.n_nontarget - counts.nontargets_below)[::-1]
    thresholds = counts.thresholds[::-1]
    if true_pos.size > 2:
        corner = np.r_[True, (np.diff(false_pos, 2) != 0) | (np.diff(true_pos, 2) != 0), True]
        true_pos, false_pos, thresholds = true_pos[corner], false_pos[corner], thresholds[corner]
    true_pos = np.r_[0, true_pos]
    false_pos = np.r_[0, false_pos]
    thresholds = np.r_[np.inf, thresholds]
    fpr = false_pos / false_pos[-1]
    fnr = 1 - true_pos / true_pos[-1]
    index = int(np.argmin(np.abs(fnr - fpr)))
    return float(max(fpr[index], fnr[index]) * 100), float(thresholds[index])


def _min_dcf(
    counts: _SortedCounts, p_targets: tuple[float, ...], c_miss: float, c_fa: float
) -> dict[float, float]:
    """Normalised minimum detection cost over all thresholds, for each prior.

    The cost ``c_miss * P_miss * p + c_fa * P_fa * (1 - p)`` is divided by the cost of the best
    trivial system, ``min(c_miss * p, c_fa * (1 - p))`` (NIST SRE; VT's ComputeMinDcf). Unlike
    VT, the candidate thresholds are the distinct scores (plus accept-all and reject-all), never a
    point that would split tied scores.
    """
    p_miss = np.r_[counts.targets_below, counts.n_target] / counts.n_target
    p_fa = 1.0 - np.r_[counts.nontargets_below, counts.n_nontarget] / counts.n_nontarget
    result = {}
    for p_target in p_targets:
        if not 0.0 < p_target < 1.0:
            raise XvecError(f"p_target must lie strictly between 0 and 1, got {p_target}")
        cost = c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)
        default_cost = min(c_miss * p_target, c_fa * (1 - p_target))
        result[float(p_target)] = float(cost.min() / default_cost)
    return result


def compute_metrics(
    scores: ArrayLike,
    labels: ArrayLike,
    p_targets: tuple[float, ...] = DEFAULT_P_TARGETS,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> Metrics:
    """EER (percent, voxceleb_trainer's definition) and normalised minDCF at each ``p_target``.

    ``labels`` are 1/0 (or True/False) for target / non-target trials. Raises
    :class:`~xvec.errors.XvecError` for unusable input: mismatched lengths, NaN scores, or a trial
    list with only one kind of trial (EER is then undefined). Scores that do not separate the
    classes at all (a constant score) give EER 100 %: VT's max(fpr, fnr) at the first point of
    smallest gap, here accept-nothing or accept-all, where one of the rates is 1.
    """
    if c_miss <= 0 or c_fa <= 0:
        raise XvecError(f"DCF costs must be positive, got c_miss={c_miss}, c_fa={c_fa}")
    values, label_mask = _check(scores, labels)
    counts = _sorted_counts(values, label_mask)
    eer, eer_threshold = _vt_eer(counts)
    return Metrics(
        eer=eer,
        eer_threshold=eer_threshold,
        min_dcf=_min_dcf(counts, tuple(p_targets), c_miss, c_fa),
        n_trials=int(values.size),
        n_target=counts.n_target,
        n_nontarget=counts.n_nontarget,
        c_miss=float(c_miss),
        c_fa=float(c_fa),
    )
