"""Score calibration and its measures, with BOSARIS semantics, all in float64 and vectorised.

* :func:`cllr` — the log-likelihood-ratio cost of LLRs (natural log in, bits out);
* :func:`min_cllr` / :func:`optimal_llrs` — the best Cllr any monotone calibration could reach:
  pool-adjacent-violators on the pooled scores (the ROC convex hull), tied scores in one block;
* :func:`act_dcf` — the detection cost of LLRs thresholded at the Bayes threshold;
* :func:`fit_calibration` — prior-weighted linear logistic regression from score columns (and
  side-information columns) to LLRs: calibration, linear fusion and quality-measure functions
  (QMF) are the same fit with one, several, or extra input columns. It returns a
  :class:`Calibration` that applies itself, gives its Bayes thresholds in raw score units, and
  reads and writes a small JSON document.

LLRs are natural-log likelihood ratios ``log p(s | target) / p(s | non-target)``; a trial is
accepted when its LLR is at or above the threshold (as :mod:`xvec.metrics` accepts scores).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
from numpy.typing import ArrayLike

from xvec.errors import XvecError

__all__ = [
    "CALIBRATION_KIND",
    "Calibration",
    "act_dcf",
    "bayes_threshold",
    "cllr",
    "duration_quality_measures",
    "fit_calibration",
    "min_cllr",
    "optimal_llrs",
]

CALIBRATION_KIND = "xvec-calibration"  # the "kind" marker of a calibration JSON document
CALIBRATION_VERSION = 1
_LOG2 = math.log(2.0)
_HULL_LOOP_BELOW = 4096  # below this many candidate hull points, finish the hull in a plain loop


def _softplus(values: np.ndarray) -> np.ndarray:
    """``log(1 + exp(x))`` without overflow (``-log sigmoid(-x)``), exact for +-inf.

    ``max(x, 0) + log1p(exp(-|x|))``: the same value as ``logaddexp(0, x)``, several times faster.
    """
    values = np.asarray(values, dtype=np.float64)
    result = np.abs(values)
    np.negative(result, out=result)
    np.exp(result, out=result)
    np.log1p(result, out=result)
    result += np.maximum(values, 0.0)
    return result


def _logit(probability: float | np.ndarray) -> float | np.ndarray:
    return np.log(probability) - np.log1p(-probability)


def _trial_values(values: ArrayLike, what: str, allow_infinite: bool) -> np.ndarray:
    """A non-empty float64 vector, or a one-line XvecError naming ``what`` is wrong."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise XvecError(f"no {what}: the measure is undefined without both kinds of trial")
    bad = np.isnan(array) if allow_infinite else ~np.isfinite(array)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        kind = "NaN" if allow_infinite else "non-finite (NaN or infinite)"
        raise XvecError(f"{int(bad.sum())} {kind} {what}, the first at position {first + 1}")
    return array


def _p_target_array(p_target: float | Sequence[float]) -> np.ndarray:
    priors = np.asarray(p_target, dtype=np.float64).reshape(-1)
    if priors.size == 0 or not ((priors > 0) & (priors < 1)).all():
        raise XvecError(f"p_target must lie strictly between 0 and 1, got {p_target}")
    return priors


def bayes_threshold(
    p_target: float | Sequence[float], c_miss: float = 1.0, c_fa: float = 1.0
) -> np.ndarray:
    """The LLR threshold of Bayes decisions: ``-log(p * c_miss / ((1 - p) * c_fa))`` per prior."""
    if not (c_miss > 0 and c_fa > 0):
        raise XvecError(f"DCF costs must be positive, got c_miss={c_miss}, c_fa={c_fa}")
    priors = _p_target_array(p_target)
    return -(np.log(priors * c_miss) - np.log((1 - priors) * c_fa))


def cllr(target_llrs: ArrayLike, nontarget_llrs: ArrayLike) -> float:
    """Log-likelihood-ratio cost in bits (BOSARIS ``cllr``; 0 is perfect, 1 is an LLR of 0).

    ``0.5 / log 2 * (mean softplus(-target LLR) + mean softplus(non-target LLR))``, evaluated with
    ``logaddexp`` so large LLRs neither overflow nor lose precision. Infinite LLRs are allowed.
    """
    targets = _trial_values(target_llrs, "target LLRs", allow_infinite=True)
    nontargets = _trial_values(nontarget_llrs, "non-target LLRs", allow_infinite=True)
    return float((_softplus(-targets).mean() + _softplus(nontargets).mean()) / (2 * _LOG2))


@dataclass(frozen=True)
class _PavBlocks:
    """The PAV solution: distinct scores, the block of each, and each block's class counts."""

    distinct: np.ndarray  # distinct scores, ascending
    block_of_score: np.ndarray  # block index of each distinct score
    block_targets: np.ndarray  # int64 target count of each block
    block_nontargets: np.ndarray
    n_target: int
    n_nontarget: int

    def block_llrs(self) -> np.ndarray:
        """Optimal LLR per block: ``logit(PAV posterior) - log(Nt / Nn)`` (may be +-inf)."""
        with np.errstate(divide="ignore"):
            posterior_log_odds = np.log(self.block_targets) - np.log(self.block_nontargets)
        return posterior_log_odds - (math.log(self.n_target) - math.log(self.n_nontarget))


def _lower_hull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the vertices of the lower convex hull of points with increasing integer ``x``.

    Vertices that are not strictly convex (on or above the chord of their neighbours) cannot be
    hull vertices, so each vectorised pass drops all of them at once; when a pass removes few
    points the rest is finished by the monotone-chain stack loop. Cross products are exact
    (int64), so collinear points are dropped whatever their order of removal.
    """
    kept = np.arange(x.size)
    while kept.size > 2:
        dx, dy = np.diff(x[kept]), np.diff(y[kept])
        convex = dx[:-1] * dy[1:] - dy[:-1] * dx[1:] > 0
        dropped = kept.size - 2 - int(convex.sum())
        if dropped == 0:
            return kept
        kept = kept[np.r_[True, convex, True]]
        if dropped < kept.size // 8 and kept.size < _HULL_LOOP_BELOW:
            break
    hull: list[int] = []
    xs, ys = x[kept].tolist(), y[kept].tolist()
    for position, (px, py) in enumerate(zip(xs, ys, strict=True)):
        while len(hull) >= 2:
            ax, ay = xs[hull[-2]], ys[hull[-2]]
            bx, by = xs[hull[-1]], ys[hull[-1]]
            if (bx - ax) * (py - by) - (by - ay) * (px - bx) > 0:
                break
            hull.pop()
        hull.append(position)
    return kept[hull]


def _pav_blocks(target_scores: ArrayLike, nontarget_scores: ArrayLike) -> _PavBlocks:
    """Pool-adjacent-violators on the pooled, sorted scores, tied scores kept in one block.

    The isotonic (non-decreasing) fit of the 0/1 labels is the slope of the greatest convex
    minorant of the cumulative-sum diagram (trials so far, targets so far); with one point per
    distinct score, a tie can never be split. This is BOSARIS' ``pavx`` on scores sorted with
    targets first among ties: a non-increasing stretch always ends up in one block.
    """
    targets = np.sort(_trial_values(target_scores, "target scores", allow_infinite=True))
    nontargets = _trial_values(nontarget_scores, "non-target scores", allow_infinite=True)
    pooled = np.sort(np.concatenate([targets, nontargets]))
    group_ends = np.flatnonzero(np.r_[pooled[1:] != pooled[:-1], True])
    distinct = pooled[group_ends]
    trials_through = np.r_[0, group_ends + 1].astype(np.int64)
    targets_through = np.r_[0, np.searchsorted(targets, distinct, side="right")].astype(np.int64)
    vertices = _lower_hull(trials_through, targets_through)
    block_targets = np.diff(targets_through[vertices])
    block_trials = np.diff(trials_through[vertices])
    # distinct score g spans points g .. g+1, so it lies in the block whose first vertex <= g
    block_of_score = np.searchsorted(vertices, np.arange(distinct.size), side="right") - 1
    return _PavBlocks(
        distinct=distinct,
        block_of_score=block_of_score,
        block_targets=block_targets,
        block_nontargets=block_trials - block_targets,
        n_target=targets.size,
        n_nontarget=nontargets.size,
    )


def optimal_llrs(
    target_scores: ArrayLike, nontarget_scores: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """The LLRs of the best monotone calibration of these very scores (BOSARIS ``optimal_llr``).

    PAV posterior per trial, as log-odds, minus the empirical prior log-odds ``log(Nt / Nn)``;
    blocks with only one class give infinite LLRs. Returns ``(target_llrs, nontarget_llrs)`` in
    the input order. (BOSARIS' optional ``monotonicity_epsilon`` tilt is not added.)
    """
    blocks = _pav_blocks(target_scores, nontarget_scores)
    llr_of_score = blocks.block_llrs()[blocks.block_of_score]

    def lookup(scores: ArrayLike) -> np.ndarray:
        values = np.asarray(scores, dtype=np.float64).reshape(-1)
        return llr_of_score[np.searchsorted(blocks.distinct, values)]

    return lookup(target_scores), lookup(nontarget_scores)


def min_cllr(target_scores: ArrayLike, nontarget_scores: ArrayLike) -> float:
    """Cllr (bits) of the optimal monotone calibration: the discrimination part of Cllr.

    The same as ``cllr(*optimal_llrs(...))`` but summed per PAV block, so it never builds the
    per-trial LLRs. Only the order of the scores matters (and their ties).
    """
    blocks = _pav_blocks(target_scores, nontarget_scores)
    llrs = blocks.block_llrs()
    has_targets, has_nontargets = blocks.block_targets > 0, blocks.block_nontargets > 0
    target_cost = blocks.block_targets[has_targets] @ _softplus(-llrs[has_targets])
    nontarget_cost = blocks.block_nontargets[has_nontargets] @ _softplus(llrs[has_nontargets])
    mean_cost = target_cost / blocks.n_target + nontarget_cost / blocks.n_nontarget
    return float(mean_cost / (2 * _LOG2))


@overload
def act_dcf(
    target_llrs: ArrayLike,
    nontarget_llrs: ArrayLike,
    p_target: float,
    c_miss: float = ...,
    c_fa: float = ...,
    normalize: bool = ...,
) -> float: ...


@overload
def act_dcf(
    target_llrs: ArrayLike,
    nontarget_llrs: ArrayLike,
    p_target: Sequence[float],
    c_miss: float = ...,
    c_fa: float = ...,
    normalize: bool = ...,
) -> dict[float, float]: ...


def act_dcf(
    target_llrs: ArrayLike,
    nontarget_llrs: ArrayLike,
    p_target: float | Sequence[float],
    c_miss: float = 1.0,
    c_fa: float = 1.0,
    normalize: bool = True,
) -> float | dict[float, float]:
    """Actual detection cost of LLRs at the Bayes threshold for each prior.

    A trial is accepted when its LLR >= ``-log(p * c_miss / ((1 - p) * c_fa))``; the cost
    ``c_miss * p * P_miss + c_fa * (1 - p) * P_fa`` is divided (``normalize``) by that of the
    best trivial system, ``min(p * c_miss, (1 - p) * c_fa)``, as NIST and :mod:`xvec.metrics`.
    A single ``p_target`` gives a float, a sequence a dict keyed by each prior.
    """
    targets = _trial_values(target_llrs, "target LLRs", allow_infinite=True)
    nontargets = _trial_values(nontarget_llrs, "non-target LLRs", allow_infinite=True)
    priors = _p_target_array(p_target)
    thresholds = bayes_threshold(priors, c_miss, c_fa)
    if thresholds.size <= 16:  # a few passes over the trials beat sorting them
        misses = np.array([np.count_nonzero(targets < t) for t in thresholds])
        rejected = np.array([np.count_nonzero(nontargets < t) for t in thresholds])
    else:
        misses = np.searchsorted(np.sort(targets), thresholds, side="left")
        rejected = np.searchsorted(np.sort(nontargets), thresholds, side="left")
    p_miss = misses / targets.size
    p_fa = 1.0 - rejected / nontargets.size
    cost = c_miss * priors * p_miss + c_fa * (1 - priors) * p_fa
    if normalize:
        cost = cost / np.minimum(c_miss * priors, c_fa * (1 - priors))
    if np.ndim(p_target) == 0:
        return float(cost[0])
    return {float(prior): float(value) for prior, value in zip(priors, cost, strict=True)}


def duration_quality_measures(
    enroll_seconds: ArrayLike, test_seconds: ArrayLike
) -> tuple[np.ndarray, tuple[str, str]]:
    """Per-trial QMF side information: log of the shorter and of the longer side's duration.

    Returns ``(matrix [N, 2], column names)``, to stack beside the score column for
    :func:`fit_calibration`. Durations must be positive seconds.
    """
    enroll = _trial_values(enroll_seconds, "enrolment durations", allow_infinite=False)
    test = _trial_values(test_seconds, "test durations", allow_infinite=False)
    if enroll.size != test.size:
        raise XvecError(f"{enroll.size} enrolment durations but {test.size} test durations")
    if (enroll <= 0).any() or (test <= 0).any():
        raise XvecError("durations must be positive seconds to take their logarithm")
    matrix = np.log(np.stack([np.minimum(enroll, test), np.maximum(enroll, test)], axis=1))
    return matrix, ("log_min_duration", "log_max_duration")


def _input_matrix(matrix: ArrayLike, columns: int | None, what: str) -> np.ndarray:
    """``[N, k]`` float64 (a vector is one column), finite, with ``columns`` columns if given."""
    array = np.asarray(matrix, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] == 0:
        raise XvecError(f"{what}: expected a vector or an [N, k] matrix, got shape {array.shape}")
    if columns is not None and array.shape[1] != columns:
        raise XvecError(f"{what}: expected {columns} input columns, got {array.shape[1]}")
    finite = np.isfinite(array)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise XvecError(f"{what}: non-finite (NaN or infinite) value in row {row + 1}")
    return array


@dataclass(frozen=True)
class Calibration:
    """A linear map from input columns to LLRs: ``llr = inputs @ weights + offset``.

    ``p_target`` is the prior the objective was weighted with; ``inputs`` names the columns
    (score columns, then side information), in the order :meth:`apply` expects them.
    """

    weights: tuple[float, ...]
    offset: float
    p_target: float = 0.5
    inputs: tuple[str, ...] = ("score",)
    kind: str = "linear-logistic"

    def apply(self, matrix: ArrayLike) -> np.ndarray:
        """LLRs (float64) of ``[N, k]`` inputs (a vector when there is one input column)."""
        values = _input_matrix(matrix, len(self.weights), "calibration input")
        return values @ np.asarray(self.weights, dtype=np.float64) + self.offset

    def thresholds(
        self, p_targets: float | Sequence[float], c_miss: float = 1.0, c_fa: float = 1.0
    ) -> np.ndarray:
        """Bayes decision thresholds in the original score units, one per prior.

        Solves ``w * s + b = -log(p * c_miss / ((1 - p) * c_fa))`` for the raw score ``s``; only
        a single-input calibration with a positive weight has such a threshold.
        """
        if len(self.weights) != 1:
            raise XvecError(
                f"a calibration of {len(self.weights)} inputs ({', '.join(self.inputs)}) has no "
                "single score threshold; apply it and threshold the LLRs instead"
            )
        weight = self.weights[0]
        if not weight > 0:
            raise XvecError(
                f"calibration weight {weight} is not positive: higher scores do not mean "
                "'same speaker', so no score threshold exists"
            )
        return (bayes_threshold(p_targets, c_miss, c_fa) - self.offset) / weight

    def to_json(self) -> str:
        """A JSON document with a ``"kind": "xvec-calibration"`` marker and a version."""
        record = {
            "kind": CALIBRATION_KIND,
            "version": CALIBRATION_VERSION,
            "model": self.kind,
            "inputs": list(self.inputs),
            "weights": list(self.weights),
            "offset": self.offset,
            "p_target": self.p_target,
        }
        return json.dumps(record, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "<calibration JSON>") -> Calibration:
        """Read :meth:`to_json` output; ``source`` (the file name) starts every error message."""
        try:
            record: Any = json.loads(text)
        except ValueError as exc:
            raise XvecError(
                f"{source}: not valid JSON ({exc}); expected an xvec calibration"
            ) from exc
        kind = record.get("kind") if isinstance(record, dict) else None
        if kind != CALIBRATION_KIND:
            raise XvecError(
                f"{source}: not an xvec calibration (kind {kind!r}, expected {CALIBRATION_KIND!r})"
            )
        version = record.get("version")
        if not isinstance(version, int) or not 1 <= version <= CALIBRATION_VERSION:
            raise XvecError(
                f"{source}: calibration version {version!r} is not supported (this xvec reads "
                f"version {CALIBRATION_VERSION}); upgrade xvec"
            )
        if record.get("model") != "linear-logistic":
            raise XvecError(f"{source}: unknown calibration model {record.get('model')!r}")
        try:
            weights = tuple(float(w) for w in record["weights"])
            inputs = tuple(str(name) for name in record["inputs"])
            offset, p_target = float(record["offset"]), float(record["p_target"])
        except (KeyError, TypeError, ValueError) as exc:
            raise XvecError(f"{source}: calibration field missing or malformed ({exc})") from exc
        numbers = (*weights, offset, p_target)
        if not weights or len(weights) != len(inputs) or not all(map(math.isfinite, numbers)):
            raise XvecError(
                f"{source}: calibration needs one finite weight per input, got {len(weights)} "
                f"weights for {len(inputs)} inputs"
            )
        return cls(weights=weights, offset=offset, p_target=p_target, inputs=inputs)


def _objective(
    design: np.ndarray, is_target: np.ndarray, trial_weights: np.ndarray, prior_offset: float
):
    """Prior-weighted cross-entropy (nats), its gradient and Hessian at given parameters."""

    def evaluate(params: np.ndarray, derivatives: bool):
        log_odds = design @ params + prior_offset
        minus_log_posterior = _softplus(-log_odds)  # -log p; -log(1 - p) is this + log_odds
        minus_log_complement = minus_log_posterior + log_odds
        cross_entropy = np.where(is_target, minus_log_posterior, minus_log_complement)
        value = float(trial_weights @ cross_entropy)
        if not derivatives:
            return value, None, None
        # p and 1 - p each to full relative precision, even where p rounds to 1
        posterior, complement = np.exp(-minus_log_posterior), np.exp(-minus_log_complement)
        gradient = design.T @ (trial_weights * np.where(is_target, -complement, posterior))
        curvature = trial_weights * posterior * complement
        hessian = (design.T * curvature) @ design
        return value, gradient, hessian

    return evaluate


def fit_calibration(
    inputs: ArrayLike,
    labels: ArrayLike,
    p_target: float = 0.5,
    names: Sequence[str] | None = None,
    regularization: float = 0.0,
    max_iterations: int = 100,
) -> Calibration:
    """Prior-weighted linear logistic regression to LLRs (BOSARIS ``train_linear_fusion``).

    ``inputs`` is ``[N, k]`` (a vector for one score): one score column calibrates, several
    fuse, extra side-information columns (e.g. :func:`duration_quality_measures`) make a QMF.
    ``labels`` are 1/0 (target / non-target). The objective is the cross-entropy of the
    posterior ``sigmoid(llr + logit(p_target))`` with targets weighted ``p_target / Nt`` and
    non-targets ``(1 - p_target) / Nn``, so the fitted ``inputs @ w + b`` are LLRs, calibrated
    best around that prior. ``regularization`` adds ``0.5 * r * |w|^2`` (not on the offset),
    needed only when the classes are (nearly) separable. Solved by damped Newton in float64 on
    standardised columns: deterministic, a handful of iterations.
    """
    matrix = _input_matrix(inputs, None, "calibration training input")
    raw_labels = np.asarray(labels).reshape(-1)
    if raw_labels.size != matrix.shape[0]:
        raise XvecError(
            f"{matrix.shape[0]} calibration training rows but {raw_labels.size} labels; they "
            "must pair up"
        )
    if raw_labels.dtype != np.bool_ and not np.isin(raw_labels, (0, 1)).all():
        raise XvecError("calibration labels must be 1 (target) or 0 (non-target)")
    is_target = raw_labels.astype(bool)
    n_target = int(is_target.sum())
    if n_target in (0, is_target.size):
        raise XvecError(
            f"calibration needs target and non-target trials; got {n_target} targets of "
            f"{is_target.size}"
        )
    prior = float(_p_target_array(p_target)[0])
    if not (math.isfinite(regularization) and regularization >= 0):
        raise XvecError(f"regularization must be a number >= 0, got {regularization}")
    columns = matrix.shape[1]
    names = tuple(names) if names is not None else _default_names(columns)
    if len(names) != columns:
        raise XvecError(f"{len(names)} input names for {columns} calibration input columns")

    center, scale = matrix.mean(axis=0), matrix.std(axis=0)
    constant = np.flatnonzero(scale == 0)
    if constant.size:
        raise XvecError(
            f"calibration input '{names[constant[0]]}' is constant in the training trials; "
            "it carries no information and cannot be fitted"
        )
    design = np.empty((matrix.shape[0], columns + 1), order="F")  # columns contiguous
    np.divide(matrix - center, scale, out=design[:, :columns])
    design[:, columns] = 1.0
    trial_weights = np.where(is_target, prior / n_target, (1 - prior) / (is_target.size - n_target))
    evaluate = _objective(design, is_target, trial_weights, float(_logit(prior)))
    penalty = np.r_[regularization / scale**2, 0.0]  # |w|^2 of the raw weights, not the scaled

    def penalised(params: np.ndarray, derivatives: bool):
        value, gradient, hessian = evaluate(params, derivatives)
        value += 0.5 * float(penalty @ params**2)
        if derivatives:
            gradient, hessian = gradient + penalty * params, hessian + np.diag(penalty)
        return value, gradient, hessian

    params = np.zeros(columns + 1)
    value, gradient, hessian = penalised(params, True)
    for _ in range(max_iterations):
        try:
            step = -np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            break
        if not np.isfinite(step).all():
            break
        slope, length = float(gradient @ step), 1.0
        while length > 1e-12:  # backtracking (Armijo) line search; a full step keeps its
            trial = params + length * step  # derivatives for the next iteration
            trial_value, trial_gradient, trial_hessian = penalised(trial, length == 1.0)
            if trial_value <= value + 1e-4 * length * slope:
                break
            length *= 0.5
        params = trial
        if trial_gradient is None:
            trial_value, trial_gradient, trial_hessian = penalised(params, True)
        value, gradient, hessian = trial_value, trial_gradient, trial_hessian
        if np.abs(length * step).max() < 1e-10 * (1.0 + np.abs(params).max()):
            weights = params[:columns] / scale
            offset = params[columns] - float(weights @ center)
            return Calibration(
                weights=tuple(float(w) for w in weights),
                offset=float(offset),
                p_target=prior,
                inputs=names,
            )
    raise XvecError(
        f"calibration did not converge in {max_iterations} Newton iterations: the training "
        "trials separate targets from non-targets (almost) perfectly; use more trials or a "
        "regularization > 0"
    )


def _default_names(columns: int) -> tuple[str, ...]:
    return ("score",) if columns == 1 else tuple(f"score{i + 1}" for i in range(columns))
