"""xvec's PLDA against SpeechBrain's (issue 28), on the vectors of a stored fixture.

``tests/fixtures/make_plda_speechbrain.py`` (run with SpeechBrain 1.1.2, not needed here) drew
40 training speakers x 8 vectors and 30 trial speakers x 4 vectors in 16 dims from a known
two-covariance model, gave SpeechBrain exactly what xvec's PLDA stage sees without LDA (minus
the raw training mean, rows scaled to norm ``sqrt(16)``), trained ``speechbrain.processing.
PLDA_LDA.PLDA`` at full rank (``rank_f = 16``, ``scaling_factor = 1``) for 200 and for 10 EM
iterations, and scored every enrolment against every test with ``fast_PLDA_scoring``.

Conventions, all exact: SpeechBrain's speaker factor and residual give ``B = F F'`` and
``W = Sigma`` (F itself is only defined up to a rotation ``F R``); its mean is the mean of the
preprocessed training vectors, which is xvec's ``plda_mean``; with ``scaling_factor = 1`` its
score is the same closed-form LLR as xvec's (its constant ``log|K2|/2 - log|K1|`` is xvec's
``sum log(1 + psi) - log(1 + 2 psi) / 2``), so the affine map between the two is the identity.
Both EMs maximise the same likelihood and, with every direction informative, converge to its
unique maximum, which for equal vectors per speaker has a closed form; after 200 iterations the
two models and their LLRs agree to rounding.

At the default 10 iterations they do not: SpeechBrain's EM has a minimum-divergence step
(``F <- F chol(R)``) that speeds it up, so its 10-iteration LLRs are within 8.8e-6 of the
converged ones, while xvec's plain two-covariance EM (Kaldi's) is still 2.8e-2 away (relative
5e-4 of the largest |LLR|; training log-likelihood 1.1e-6 nats per vector below the maximum).
The rankings then differ by a few swaps of near-equal scores, but EER and minDCF are equal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load

from xvec.files import safetensors_metadata
from xvec.metrics import compute_metrics
from xvec.plda import fit_backend

FIXTURE = Path(__file__).parent / "fixtures" / "plda_speechbrain.safetensors"


@pytest.fixture(scope="module")
def fixture() -> tuple[dict[str, np.ndarray], dict]:
    data = FIXTURE.read_bytes()
    return load(data), json.loads(safetensors_metadata(data)["fixture"])


def fit(tensors: dict[str, np.ndarray], iterations: int):
    """xvec's back end on the raw training vectors, and its [enroll, test] LLR matrix."""
    backend = fit_backend(tensors["train_vectors"], tensors["train_labels"], None, iterations)
    return backend, backend.score_matrix(tensors["enroll_vectors"], tensors["test_vectors"])


def test_fixture_record(fixture):
    tensors, record = fixture
    assert record["speechbrain"] == "1.1.2"
    assert record["iterations"] == 200 and record["iterations_default"] == 10
    assert record["plda"] == {"rank_f": 16, "scaling_factor": 1.0, "whiten": False}
    # SpeechBrain's model had stopped moving: 100 -> 200 iterations changed F F' and Sigma by
    # 1.3e-15
    assert record["max_change_from_half_iterations"] < 1e-12
    assert tensors["sb_scores"].shape == tensors["sb_scores_default"].shape == (30, 90)
    assert tensors["train_vectors"].shape == (320, 16)


def test_converged_models_are_equal(fixture):
    tensors, record = fixture
    backend, _ = fit(tensors, record["iterations"])
    # measured: mean 0.0 (same float64 sums), B 8.9e-16, W 1.0e-15
    np.testing.assert_allclose(backend.plda_mean, tensors["sb_mean"], rtol=0, atol=1e-14)
    factor = tensors["sb_F"]
    np.testing.assert_allclose(backend.between, factor @ factor.T, rtol=0, atol=1e-13)
    np.testing.assert_allclose(backend.within, tensors["sb_Sigma"], rtol=0, atol=1e-13)

    # both are the closed-form maximum of the likelihood for 8 vectors per speaker:
    # W = within scatter / (N - S), B = cov(speaker means) - W / 8 (positive definite here)
    modelled = backend.transform(tensors["train_vectors"])
    labels = tensors["train_labels"]
    speaker_means = np.stack([modelled[labels == s].mean(axis=0) for s in np.unique(labels)])
    deviations = modelled - speaker_means[labels]
    within = deviations.T @ deviations / (labels.size - speaker_means.shape[0])
    between = speaker_means.T @ speaker_means / speaker_means.shape[0] - within / 8
    assert np.linalg.eigvalsh(between).min() > 0
    np.testing.assert_allclose(backend.within, within, rtol=0, atol=1e-13)
    np.testing.assert_allclose(backend.between, between, rtol=0, atol=1e-13)


def test_converged_llrs_are_equal(fixture):
    tensors, record = fixture
    _, llrs = fit(tensors, record["iterations"])
    reference = tensors["sb_scores"]
    # measured: max |xvec - SpeechBrain| 3.3e-13 over LLRs in [-56.0, 12.3]; Pearson 1 - r and
    # the least-squares map's slope - 1 and intercept all below 3e-15: no convention between
    # them, the identity map
    assert np.abs(llrs - reference).max() < 1e-11
    assert 1 - np.corrcoef(llrs.ravel(), reference.ravel())[0, 1] < 1e-13
    slope, intercept = np.polyfit(reference.ravel(), llrs.ravel(), 1)
    assert abs(slope - 1) < 1e-12 and abs(intercept) < 1e-11
    # the same ranking (the closest two reference scores are 3.0e-6 apart)
    np.testing.assert_array_equal(np.argsort(llrs, axis=None), np.argsort(reference, axis=None))


def test_default_iterations_agree_to_the_ranking(fixture):
    tensors, record = fixture
    iterations = record["iterations_default"]
    backend, llrs = fit(tensors, iterations)
    reference, converged = tensors["sb_scores_default"], tensors["sb_scores"]
    # SpeechBrain after 10 iterations: 8.8e-6 from its converged LLRs
    assert np.abs(reference - converged).max() < 3e-5
    # xvec after 10 iterations: 2.81e-2 from SpeechBrain's 10-iteration LLRs (2.81e-2 from the
    # converged ones too), Pearson 1 - r 3.4e-8, least-squares slope 1 + 4.3e-6, intercept
    # -5.3e-4
    assert np.abs(llrs - reference).max() < 0.06
    assert 1 - np.corrcoef(llrs.ravel(), reference.ravel())[0, 1] < 1e-6
    slope, intercept = np.polyfit(reference.ravel(), llrs.ravel(), 1)
    assert abs(slope - 1) < 1e-4 and abs(intercept) < 2e-3
    # a likelihood 1.1e-6 nats per vector below the maximum, still rising
    assert np.all(np.diff(backend.log_likelihoods) > -1e-12)
    # the same EER and minDCF (90 target, 2610 non-target trials)
    targets = (tensors["enroll_labels"][:, None] == tensors["test_labels"][None, :]).ravel()
    ours = compute_metrics(llrs.ravel(), targets)
    theirs = compute_metrics(reference.ravel(), targets)
    assert ours.n_target == 90 and ours.n_nontarget == 2610
    assert ours.eer == pytest.approx(theirs.eer, abs=1e-9)
    for p_target, value in theirs.min_dcf.items():
        assert ours.min_dcf[p_target] == pytest.approx(value, abs=1e-9)
