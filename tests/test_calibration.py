"""Calibration kernels: Cllr, minCllr (PAV), actDCF and linear logistic calibration / fusion / QMF.

The measures are checked against plain-loop implementations written here from their definitions
(BOSARIS), on random and on heavily tied scores; the fit against Gaussian scores whose true LLR
is known; and the whole chain on real speech (speechocean762).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from xvec.calibration import (
    CALIBRATION_KIND,
    Calibration,
    act_dcf,
    bayes_threshold,
    cllr,
    duration_quality_measures,
    fit_calibration,
    min_cllr,
    optimal_llrs,
)
from xvec.errors import XvecError
from xvec.metrics import compute_metrics

from conftest import SPEECHOCEAN, requires_speechocean

# ---------------------------------------------------------------- independent references


def softplus(x: float) -> float:
    """log(1 + e^x), written out so that it neither overflows nor loses small values."""
    if x == math.inf:
        return math.inf
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def reference_cllr(targets: list[float], nontargets: list[float]) -> float:
    target_cost = sum(softplus(-x) for x in targets) / len(targets)
    nontarget_cost = sum(softplus(x) for x in nontargets) / len(nontargets)
    return (target_cost + nontarget_cost) / (2 * math.log(2))


def reference_optimal_llrs(targets: list[float], nontargets: list[float]) -> tuple[list, list]:
    """BOSARIS optimal_llr: textbook PAV on 0/1 labels sorted by score, targets first in ties."""
    trials = [(s, 0, i, 1) for i, s in enumerate(targets)]
    trials += [(s, 1, i, 0) for i, s in enumerate(nontargets)]
    trials.sort()  # by score; among equal scores targets (second key 0) come first
    blocks: list[list[float]] = []  # [label sum, count, first position]
    for position, (_, _, _, label) in enumerate(trials):
        blocks.append([float(label), 1.0, position])
        while len(blocks) >= 2 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            total, count, _ = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    prior_log_odds = math.log(len(targets) / len(nontargets))
    target_llrs, nontarget_llrs = [0.0] * len(targets), [0.0] * len(nontargets)
    for total, count, first in blocks:
        posterior = total / count
        if posterior == 1.0:
            llr = math.inf
        elif posterior == 0.0:
            llr = -math.inf
        else:
            llr = math.log(posterior / (1 - posterior)) - prior_log_odds
        for _, kind, index, _ in trials[int(first) : int(first + count)]:
            (nontarget_llrs if kind else target_llrs)[index] = llr
    return target_llrs, nontarget_llrs


def reference_act_dcf(targets, nontargets, p_target, c_miss=1.0, c_fa=1.0) -> float:
    threshold = -math.log(p_target * c_miss / ((1 - p_target) * c_fa))
    p_miss = sum(1 for x in targets if x < threshold) / len(targets)
    p_fa = sum(1 for x in nontargets if x >= threshold) / len(nontargets)
    cost = c_miss * p_target * p_miss + c_fa * (1 - p_target) * p_fa
    return cost / min(c_miss * p_target, c_fa * (1 - p_target))


def score_sets(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random Gaussian scores, heavily tied integer scores, and a tie spanning both classes."""
    rng = np.random.default_rng(seed)
    gaussian = (rng.normal(1.0, 1.5, 300), rng.normal(-1.0, 1.5, 700))
    tied = (rng.integers(-3, 6, 250).astype(float), rng.integers(-6, 3, 600).astype(float))
    rounded = (np.round(rng.normal(0.5, 1, 400), 1), np.round(rng.normal(-0.5, 1, 400), 1))
    lopsided = (np.array([0.0, 0.0, 2.0, 5.0]), np.array([-1.0, 0.0, 0.0, 0.0, 3.0]))
    return [gaussian, tied, rounded, lopsided]


def gaussian_trials(n: int, mu: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Target scores ~ N(mu, 1), non-target ~ N(-mu, 1), shuffled: the true LLR is 2 mu s."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    return rng.normal(np.where(labels, mu, -mu), 1.0), labels


# ---------------------------------------------------------------- measures


@pytest.mark.parametrize("seed", [0, 1])
def test_cllr_matches_the_definition(seed):
    for targets, nontargets in score_sets(seed):
        expected = reference_cllr(targets.tolist(), nontargets.tolist())
        assert cllr(targets, nontargets) == pytest.approx(expected, abs=1e-9, rel=1e-9)


def test_cllr_is_stable_for_large_llrs():
    assert cllr([800.0], [-800.0]) == 0.0
    assert cllr([-800.0], [800.0]) == pytest.approx(800 / math.log(2), rel=1e-12)
    assert cllr([0.0], [0.0]) == pytest.approx(1.0)
    assert cllr([math.inf], [-math.inf]) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_optimal_llrs_and_min_cllr_match_textbook_pav(seed):
    for targets, nontargets in score_sets(seed):
        ref_targets, ref_nontargets = reference_optimal_llrs(targets.tolist(), nontargets.tolist())
        got_targets, got_nontargets = optimal_llrs(targets, nontargets)
        np.testing.assert_allclose(got_targets, ref_targets, rtol=0, atol=1e-9)
        np.testing.assert_allclose(got_nontargets, ref_nontargets, rtol=0, atol=1e-9)
        expected = reference_cllr(ref_targets, ref_nontargets)
        assert min_cllr(targets, nontargets) == pytest.approx(expected, abs=1e-9, rel=1e-9)


def test_min_cllr_keeps_ties_together_and_ignores_score_scale():
    # one tied score holding a target and a non-target is a single block: LLR 0 for both
    assert optimal_llrs([1.0], [1.0]) == ([0.0], [0.0])
    targets, nontargets = score_sets(3)[1]
    assert min_cllr(targets, nontargets) == pytest.approx(
        min_cllr(3 * targets - 7, 3 * nontargets - 7), abs=1e-12
    )
    # perfectly separated: zero; no separation at all: one bit
    assert min_cllr([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert min_cllr([1.0, 1.0], [1.0, 1.0, 1.0]) == pytest.approx(1.0)


def test_min_cllr_never_exceeds_cllr():
    scores, labels = gaussian_trials(5000, 1.0, seed=4)
    for llrs in (2 * scores, 5 * scores + 3, scores - 2):
        assert min_cllr(llrs[labels], llrs[~labels]) <= cllr(llrs[labels], llrs[~labels])


@pytest.mark.parametrize("seed", [0, 1])
def test_act_dcf_matches_the_definition(seed):
    for targets, nontargets in score_sets(seed):
        for p_target, c_miss, c_fa in [(0.5, 1, 1), (0.05, 1, 1), (0.01, 10, 1), (0.3, 1, 3)]:
            expected = reference_act_dcf(
                targets.tolist(), nontargets.tolist(), p_target, c_miss, c_fa
            )
            got = act_dcf(targets, nontargets, p_target, c_miss=c_miss, c_fa=c_fa)
            assert got == pytest.approx(expected, abs=1e-9)


def test_act_dcf_several_priors_and_unnormalised():
    targets, nontargets = score_sets(0)[0]
    priors = [0.5, 0.1, 0.01]
    several = act_dcf(targets, nontargets, priors)
    assert list(several) == priors
    for prior in priors:
        assert several[prior] == act_dcf(targets, nontargets, prior)
        raw = act_dcf(targets, nontargets, prior, normalize=False)
        assert raw == pytest.approx(several[prior] * min(prior, 1 - prior))
    many = np.linspace(0.01, 0.99, 40)  # the sorted path
    values = act_dcf(targets, nontargets, many.tolist())
    for prior in many[::7]:
        assert values[float(prior)] == pytest.approx(
            reference_act_dcf(targets.tolist(), nontargets.tolist(), prior), abs=1e-9
        )
    # the Bayes threshold is where the prior log-odds cancel the LLR
    assert bayes_threshold(0.01)[0] == pytest.approx(math.log(99))


def test_bad_measure_inputs_are_one_line_errors():
    cases = [
        lambda: cllr([], [1.0]),
        lambda: cllr([math.nan], [1.0]),
        lambda: min_cllr([1.0], []),
        lambda: act_dcf([1.0], [0.0], 1.5),
        lambda: act_dcf([1.0], [0.0], 0.5, c_miss=0),
    ]
    for case in cases:
        with pytest.raises(XvecError) as caught:
            case()
        assert "\n" not in str(caught.value)


# ---------------------------------------------------------------- linear logistic calibration


def test_fit_recovers_the_true_llr_of_gaussian_scores():
    mu = 1.2
    scores, labels = gaussian_trials(60000, mu, seed=5)
    for p_target in (0.5, 0.1):
        calibration = fit_calibration(scores, labels, p_target=p_target)
        assert calibration.weights[0] == pytest.approx(2 * mu, abs=0.06)
        assert calibration.offset == pytest.approx(0.0, abs=0.06)
        assert calibration.p_target == p_target
        assert calibration.inputs == ("score",)
    # deterministic: the same data gives the same bits
    assert fit_calibration(scores, labels) == fit_calibration(scores, labels)


def test_calibration_brings_act_dcf_to_min_dcf():
    scores, labels = gaussian_trials(80000, 1.0, seed=6)
    raw = 3.0 * scores + 2.0  # mis-calibrated: over-confident and shifted
    p_target = 0.05
    half = raw.size // 2
    test_scores, test_labels = raw[half:], labels[half:]
    minimum = compute_metrics(test_scores, test_labels, (p_target,)).min_dcf[p_target]
    before = act_dcf(test_scores[test_labels], test_scores[~test_labels], p_target)
    assert before > 1.3 * minimum
    calibration = fit_calibration(raw[:half], labels[:half], p_target=p_target)
    llrs = calibration.apply(test_scores)
    after = act_dcf(llrs[test_labels], llrs[~test_labels], p_target)
    assert minimum <= after < 1.05 * minimum
    calibrated = cllr(llrs[test_labels], llrs[~test_labels])
    assert calibrated < cllr(test_scores[test_labels], test_scores[~test_labels])
    assert calibrated == pytest.approx(
        min_cllr(test_scores[test_labels], test_scores[~test_labels]), abs=0.01
    )
    # the threshold in raw score units is where the calibrated LLR meets the Bayes threshold
    thresholds = calibration.thresholds([p_target, 0.5])
    np.testing.assert_allclose(calibration.apply(thresholds), bayes_threshold([p_target, 0.5]))


def test_fusion_of_two_noisy_copies_beats_either():
    rng = np.random.default_rng(7)
    clean, labels = gaussian_trials(40000, 1.0, seed=7)
    first = clean + rng.normal(0, 1.0, clean.size)
    second = 0.5 * (clean + rng.normal(0, 1.0, clean.size)) - 1
    half = clean.size // 2
    train, test = slice(None, half), slice(half, None)
    test_labels = labels[test]

    def held_out_cllr(columns: np.ndarray) -> float:
        llrs = fit_calibration(columns[train], labels[train]).apply(columns[test])
        return cllr(llrs[test_labels], llrs[~test_labels])

    fused = held_out_cllr(np.stack([first, second], axis=1))
    assert fused < held_out_cllr(first) - 0.03
    assert fused < held_out_cllr(second) - 0.03
    fusion = fit_calibration(np.stack([first, second], 1), labels, names=["cosine", "plda"])
    assert fusion.inputs == ("cosine", "plda")
    assert all(weight > 0 for weight in fusion.weights)


def test_quality_measures_fix_a_duration_dependent_shift():
    rng = np.random.default_rng(8)
    n = 40000
    labels = rng.random(n) < 0.3
    enroll_seconds = rng.uniform(1, 20, n)
    test_seconds = rng.uniform(1, 20, n)
    quality, names = duration_quality_measures(enroll_seconds, test_seconds)
    assert names == ("log_min_duration", "log_max_duration")
    np.testing.assert_allclose(quality[:, 0], np.log(np.minimum(enroll_seconds, test_seconds)))
    # short files push every score down: the same score means more at short durations
    scores = rng.normal(np.where(labels, 1.0, -1.0), 1.0) + 1.5 * quality[:, 0]
    half = n // 2
    test_labels = labels[half:]
    plain = fit_calibration(scores[:half], labels[:half]).apply(scores[half:])
    inputs = np.column_stack([scores, quality])
    qmf = fit_calibration(inputs[:half], labels[:half], names=("score", *names))
    assert qmf.inputs == ("score", "log_min_duration", "log_max_duration")
    with_quality = qmf.apply(inputs[half:])
    assert cllr(with_quality[test_labels], with_quality[~test_labels]) < (
        cllr(plain[test_labels], plain[~test_labels]) - 0.05
    )
    assert qmf.weights[1] == pytest.approx(-2 * 1.5, abs=0.15)  # the truth: 2 (s - 1.5 q)
    with pytest.raises(XvecError, match="no single score threshold"):
        qmf.thresholds(0.05)


def test_json_round_trip_and_wrong_kind_refused():
    scores, labels = gaussian_trials(5000, 1.0, seed=9)
    fusion = fit_calibration(np.stack([scores, -(scores**2)], 1), labels, 0.2, names=["a", "b"])
    text = fusion.to_json()
    record = json.loads(text)
    assert record["kind"] == CALIBRATION_KIND and record["version"] == 1
    assert Calibration.from_json(text, "fusion.json") == fusion
    for wrong in ('{"kind": "xvec-plda", "version": 1}', "[1, 2]", "{not json"):
        with pytest.raises(XvecError) as caught:
            Calibration.from_json(wrong, "models/cal.json")
        assert str(caught.value).startswith("models/cal.json: ")
        assert "\n" not in str(caught.value)
    future = json.dumps({**record, "version": 99})
    with pytest.raises(XvecError, match="version 99"):
        Calibration.from_json(future, "cal.json")
    damaged = json.dumps({**record, "weights": [1.0]})
    with pytest.raises(XvecError, match=r"cal\.json: .*one finite weight per input"):
        Calibration.from_json(damaged, "cal.json")


def test_bad_calibration_inputs_are_one_line_errors():
    scores, labels = gaussian_trials(2000, 1.0, seed=10)
    calibration = fit_calibration(scores, labels)
    cases = {
        "expected 1 input columns": lambda: calibration.apply(np.ones((3, 2))),
        "non-finite": lambda: calibration.apply([1.0, math.nan]),
        "separate targets from non-targets": lambda: fit_calibration(
            np.where(labels, 1.0, -1.0) + 0.01 * scores, labels
        ),
        "is constant": lambda: fit_calibration(np.stack([scores, np.ones_like(scores)], 1), labels),
        "target and non-target": lambda: fit_calibration(scores, np.zeros_like(labels)),
        "must pair up": lambda: fit_calibration(scores, labels[:-1]),
        "2 input names": lambda: fit_calibration(scores, labels, names=["a", "b"]),
        "not positive": lambda: Calibration(weights=(-1.0,), offset=0.0).thresholds(0.5),
    }
    for expected, case in cases.items():
        with pytest.raises(XvecError, match=expected) as caught:
            case()
        assert "\n" not in str(caught.value)
    # with a little regularization the separable case has a finite answer
    separable = np.where(labels, 1.0, -1.0) + 0.01 * scores
    regularized = fit_calibration(separable, labels, regularization=1e-3)
    assert all(math.isfinite(w) for w in regularized.weights)


# ---------------------------------------------------------------- real speech


def mel_statistics(relative_paths: list[str]) -> dict[str, np.ndarray]:
    """A cheap, untrained but deterministic embedding: per-band mean and std of the log-mel."""
    import torch

    from xvec.audio import read_audio
    from xvec.features import MelSpectrogram

    mel = MelSpectrogram(n_fft=512, win_length=400, hop_length=160, n_mels=40)
    embeddings = {}
    with torch.no_grad():
        for path in relative_paths:
            audio = torch.from_numpy(read_audio(SPEECHOCEAN / "audio" / path))
            log_mel = torch.log(mel(audio[None]) + 1e-6)[0].double()
            embeddings[path] = torch.cat([log_mel.mean(1), log_mel.std(1)]).numpy()
    return embeddings


@pytest.mark.slow
@requires_speechocean
def test_calibrating_real_speech_scores():
    lines = (SPEECHOCEAN / "lists" / "dev_trials.txt").read_text().splitlines()[:160]
    trials = [line.split() for line in lines]
    embeddings = mel_statistics(sorted({path for _, *pair in trials for path in pair}))
    matrix = np.stack(list(embeddings.values()))
    centre, spread = matrix.mean(0), matrix.std(0)

    def unit(vector: np.ndarray) -> np.ndarray:
        standard = (vector - centre) / spread
        return standard / np.linalg.norm(standard)

    labels = np.array([label == "1" for label, _, _ in trials])
    scores = np.array([unit(embeddings[a]) @ unit(embeddings[b]) for _, a, b in trials])
    half = scores.size // 2
    calibration = fit_calibration(scores[:half], labels[:half])
    assert calibration.weights[0] > 0
    llrs = calibration.apply(scores[half:])
    test_labels = labels[half:]
    calibrated = cllr(llrs[test_labels], llrs[~test_labels])
    raw = cllr(scores[half:][test_labels], scores[half:][~test_labels])
    assert min_cllr(llrs[test_labels], llrs[~test_labels]) <= calibrated < min(raw, 0.9)
    minimum = compute_metrics(llrs, test_labels, (0.5,)).min_dcf[0.5]
    assert minimum <= act_dcf(llrs[test_labels], llrs[~test_labels], 0.5) < minimum + 0.15
