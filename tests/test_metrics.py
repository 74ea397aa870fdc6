"""EER / minDCF: parity with voxceleb_trainer's outputs and with brute-force definitions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from xvec.errors import XvecError
from xvec.metrics import compute_metrics, det_curve

from conftest import VT_FIXTURES, requires_fixtures

METRICS_DIR = VT_FIXTURES / "metrics"


def load_set(name: str) -> tuple[np.ndarray, np.ndarray, dict]:
    scores = np.loadtxt(METRICS_DIR / f"{name}_scores.txt", dtype=np.float64)
    labels = np.loadtxt(METRICS_DIR / f"{name}_labels.txt", dtype=np.int64)
    reference = json.loads((METRICS_DIR / "metrics.json").read_text())[name]
    return scores, labels, reference


# --------------------------------------------------------------------------- brute force


def brute_operating_points(scores: np.ndarray, labels: np.ndarray):
    """(thresholds, P_fa, P_miss) for "accept if score >= t", t over distinct scores and +inf."""
    thresholds = np.r_[np.unique(scores), np.inf]
    accepted = scores[None, :] >= thresholds[:, None]  # [thresholds, trials], O(n^2)
    target = labels.astype(bool)
    p_fa = accepted[:, ~target].mean(axis=1)
    p_miss = (~accepted[:, target]).mean(axis=1)
    return thresholds, p_fa, p_miss


def brute_min_dcf(scores, labels, p_target, c_miss=1.0, c_fa=1.0) -> float:
    _, p_fa, p_miss = brute_operating_points(scores, labels)
    costs = [
        c_miss * m * p_target + c_fa * f * (1 - p_target) for f, m in zip(p_fa, p_miss, strict=True)
    ]
    return min(costs) / min(c_miss * p_target, c_fa * (1 - p_target))


def brute_vt_eer(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """VT's EER spelled out: ROC points from +inf down, collinear points dropped, first argmin."""
    target = labels.astype(bool)
    descending = np.unique(scores)[::-1]
    points = [(np.inf, 0, 0)]  # (threshold, false positives, true positives)
    for threshold in descending:
        points.append(
            (
                threshold,
                int((scores[~target] >= threshold).sum()),
                int((scores[target] >= threshold).sum()),
            )
        )
    curve = points[1:]
    if len(curve) > 2:
        kept = [curve[0]]
        for before, point, after in zip(curve, curve[1:], curve[2:], strict=False):
            if (after[1] - 2 * point[1] + before[1], after[2] - 2 * point[2] + before[2]) != (0, 0):
                kept.append(point)
        curve = [*kept, curve[-1]]
    points = [points[0], *curve]
    n_non, n_tar = int((~target).sum()), int(target.sum())
    best = None
    for threshold, false_pos, true_pos in points:
        fpr, fnr = false_pos / n_non, 1 - true_pos / n_tar
        if best is None or abs(fnr - fpr) < best[0]:
            best = (abs(fnr - fpr), max(fpr, fnr) * 100, threshold)
    return best[1], best[2]


trial_sets = st.integers(min_value=2, max_value=60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-6, 6), min_size=n, max_size=n),  # small range: many ties
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
    )
)


# --------------------------------------------------------------------------- VT fixtures


@requires_fixtures
@pytest.mark.parametrize("name", ["gauss37720", "small20"])
def test_matches_voxceleb_trainer(name: str) -> None:
    scores, labels, reference = load_set(name)
    metrics = compute_metrics(scores, labels)
    assert metrics.eer == pytest.approx(reference["EER_percent"], abs=1e-9)
    assert metrics.eer_threshold == reference["EER_threshold"]
    for p_target in (0.05, 0.01):
        expected = reference["minDCF"][str(p_target)]["minDCF"]
        assert metrics.min_dcf[p_target] == pytest.approx(expected, abs=1e-9)
    assert (metrics.n_trials, metrics.n_target, metrics.n_nontarget) == (
        reference["n_trials"],
        reference["n_target"],
        reference["n_nontarget"],
    )


@requires_fixtures
def test_ties_eer_matches_and_min_dcf_ignores_trial_order() -> None:
    scores, labels, reference = load_set("ties6000")
    metrics = compute_metrics(scores, labels)
    assert metrics.eer == pytest.approx(reference["EER_percent"], abs=1e-9)
    assert metrics.eer_threshold == reference["EER_threshold"]

    rng = np.random.default_rng(0)
    orders = [np.arange(scores.size)[::-1]] + [rng.permutation(scores.size) for _ in range(5)]
    # VT's own extremes: targets (or non-targets) first within each group of tied scores
    orders.append(np.lexsort((1 - labels, scores)))
    orders.append(np.lexsort((labels, scores)))
    for order in orders:
        shuffled = compute_metrics(scores[order], labels[order])
        assert shuffled.min_dcf == metrics.min_dcf
        assert shuffled.eer == metrics.eer

    by_order = reference["order_sensitivity_check (NOT the fixture values; same trials re-ordered)"]
    for p_target in (0.05, 0.01):
        tie_aware = brute_min_dcf(scores, labels, p_target)
        assert metrics.min_dcf[p_target] == pytest.approx(tie_aware, abs=1e-12)
        # With targets first inside each tie, every point VT visits mid-tie has the miss rate of
        # the tie's end and a higher false-alarm rate, so VT's minimum is the tie-aware one.
        vt_targets_first = by_order["targets_first_within_ties"][str(p_target)]
        assert metrics.min_dcf[p_target] == pytest.approx(vt_targets_first, abs=1e-9)
        # ... and VT's order-dependent fixture value is not (it splits tied scores)
        assert metrics.min_dcf[p_target] != pytest.approx(
            reference["minDCF"][str(p_target)]["minDCF"], abs=1e-6
        )


# --------------------------------------------------------------------------- definitions


def test_perfect_separation_has_zero_errors() -> None:
    scores = np.r_[np.linspace(-1, 0.2, 50), np.linspace(0.3, 1, 20)]
    labels = np.r_[np.zeros(50), np.ones(20)]
    metrics = compute_metrics(scores, labels)
    assert metrics.eer == 0.0
    assert metrics.eer_threshold == pytest.approx(0.3)
    assert metrics.min_dcf == {0.05: 0.0, 0.01: 0.0}


def test_inverted_scores_are_all_errors() -> None:
    metrics = compute_metrics([0.9, 0.8, 0.1, 0.2], [0, 0, 1, 1])
    assert metrics.eer == 100.0
    assert metrics.min_dcf[0.01] == pytest.approx(1.0)  # no better than rejecting everything


@settings(max_examples=300, deadline=None)
@given(trial_sets, st.sampled_from([0.01, 0.05, 0.3, 0.5, 0.8]), st.floats(0.2, 5.0))
def test_matches_brute_force(trial_set, p_target: float, c_miss: float) -> None:
    raw_scores, raw_labels = trial_set
    labels = np.asarray(raw_labels)
    assume(0 < labels.sum() < labels.size)
    scores = np.asarray(raw_scores, dtype=np.float64) / 4
    metrics = compute_metrics(scores, labels, p_targets=(p_target,), c_miss=c_miss, c_fa=1.0)
    eer, threshold = brute_vt_eer(scores, labels)
    assert metrics.eer == pytest.approx(eer, abs=1e-12)
    assert metrics.eer_threshold == threshold
    assert metrics.min_dcf[p_target] == pytest.approx(
        brute_min_dcf(scores, labels, p_target, c_miss=c_miss), abs=1e-12
    )
    fpr, fnr, thresholds = det_curve(scores, labels)
    expected_thresholds, expected_fpr, expected_fnr = brute_operating_points(scores, labels)
    np.testing.assert_array_equal(thresholds, expected_thresholds)
    np.testing.assert_allclose(fpr, expected_fpr, atol=1e-12)
    np.testing.assert_allclose(fnr, expected_fnr, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(trial_sets, st.randoms(use_true_random=False))
def test_independent_of_trial_order(trial_set, random) -> None:
    scores, labels = (np.asarray(column) for column in trial_set)
    assume(0 < labels.sum() < labels.size)
    order = np.arange(scores.size)
    random.shuffle(order)
    assert compute_metrics(scores[order], labels[order]) == compute_metrics(scores, labels)


def test_det_curve_is_monotone_and_spans_both_corners() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(2000) < 0.4
    scores = np.round(rng.normal(size=2000) + labels, 1)
    fpr, fnr, thresholds = det_curve(scores, labels)
    assert (fpr[0], fnr[0], fpr[-1], fnr[-1]) == (1.0, 0.0, 0.0, 1.0)
    assert thresholds.size == np.unique(scores).size + 1 and thresholds[-1] == np.inf
    assert (np.diff(fpr) <= 0).all() and (np.diff(fnr) >= 0).all()


def test_to_dict_is_json() -> None:
    metrics = compute_metrics([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    record = json.loads(json.dumps(metrics.to_dict()))
    assert record == {
        "eer": metrics.eer,
        "eer_threshold": metrics.eer_threshold,
        "min_dcf": {"0.05": metrics.min_dcf[0.05], "0.01": metrics.min_dcf[0.01]},
        "c_miss": 1.0,
        "c_fa": 1.0,
        "n_trials": 4,
        "n_target": 2,
        "n_nontarget": 2,
    }


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, 0.2, 0.3], [1, 1, 1], "no non-target"),
        ([0.1, 0.2, 0.3], [0, 0, 0], "no target"),
        ([0.1, float("nan"), 0.3], [0, 1, 1], "NaN"),
        ([0.1, 0.2], [0, 1, 1], "3 labels"),
        ([], [], "empty"),
        ([0.1, 0.2], [0, 2], "must be 1"),
    ],
)
def test_unusable_input_is_a_clear_error(scores, labels, message: str) -> None:
    with pytest.raises(XvecError, match=message) as info:
        compute_metrics(scores, labels)
    assert "\n" not in str(info.value)


def test_single_class_says_eer_is_undefined() -> None:
    with pytest.raises(XvecError, match="EER undefined"):
        compute_metrics(np.arange(10.0), np.ones(10))
    with pytest.raises(XvecError, match="EER undefined"):
        det_curve(np.arange(10.0), np.zeros(10))
