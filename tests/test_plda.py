"""PLDA back end: closed-form LLRs against a direct Gaussian computation, EM, LDA, files, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from xvec.errors import XvecError
from xvec.metrics import compute_metrics
from xvec.plda import PLDA_KIND, Backend, fit_backend, plda_log_likelihood

from conftest import SPEECHOCEAN, requires_speechocean


def log_gaussian(x: np.ndarray, covariance: np.ndarray) -> float:
    """log N(x; 0, covariance), written out in float64."""
    _, logdet = np.linalg.slogdet(covariance)
    return -0.5 * (x.size * math.log(2 * math.pi) + logdet + x @ np.linalg.solve(covariance, x))


def direct_llr(enroll: np.ndarray, test: np.ndarray, between, within) -> float:
    """log N([e; t]; 0, [[B+W, B], [B, B+W]]) - log N(e; 0, B+W) - log N(t; 0, B+W)."""
    total = between + within
    joint = np.block([[total, between], [between, total]])
    return (
        log_gaussian(np.concatenate([enroll, test]), joint)
        - log_gaussian(enroll, total)
        - log_gaussian(test, total)
    )


def speakers_data(
    n_speakers: int, dim: int, seed: int, counts=(2, 9)
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian speakers with an uneven number of vectors each, a non-zero mean and correlations."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) / math.sqrt(dim)
    centres = rng.normal(size=(n_speakers, dim)) * 1.5
    per_speaker = rng.integers(*counts, n_speakers)
    labels = np.repeat(np.arange(n_speakers), per_speaker)
    vectors = (centres[labels] + rng.normal(size=(labels.size, dim))) @ mixing + 3.0
    return vectors, np.array([f"spk{label:03d}" for label in labels])


@pytest.fixture(scope="module")
def backend() -> Backend:
    vectors, labels = speakers_data(80, 24, seed=0)
    return fit_backend(vectors, labels, lda_dim=12)


def test_llr_matches_the_joint_gaussian(backend):
    rng = np.random.default_rng(1)
    enroll = rng.normal(size=(6, 24)) + 3.0
    test = rng.normal(size=(6, 24)) + 3.0
    enroll_model, test_model = backend.transform(enroll), backend.transform(test)
    # the transform itself: centre, project, scale to sqrt(dim), subtract the PLDA mean
    projected = (enroll - backend.mean) @ backend.lda
    expected_model = (
        projected * math.sqrt(12) / np.linalg.norm(projected, axis=1, keepdims=True)
        - backend.plda_mean
    )
    np.testing.assert_allclose(enroll_model, expected_model, rtol=1e-12, atol=1e-12)
    expected = [
        direct_llr(e, t, backend.between, backend.within)
        for e, t in zip(enroll_model, test_model, strict=True)
    ]
    np.testing.assert_allclose(backend.score(enroll, test), expected, rtol=1e-9, atol=1e-9)
    matrix = backend.score_matrix(enroll, test[:4])
    assert matrix.shape == (6, 4)
    for i in range(6):
        for j in range(4):
            want = direct_llr(enroll_model[i], test_model[j], backend.between, backend.within)
            assert matrix[i, j] == pytest.approx(want, rel=1e-9, abs=1e-9)
    # symmetric in its two sides
    np.testing.assert_allclose(backend.score(test, enroll), backend.score(enroll, test))


def test_plda_separates_speakers(backend):
    vectors, labels = speakers_data(80, 24, seed=0)
    rng = np.random.default_rng(2)
    first, second = rng.integers(0, labels.size, (2, 4000))
    scores = backend.score(vectors[first], vectors[second])
    same = labels[first] == labels[second]
    assert compute_metrics(scores[first != second], same[first != second]).eer < 5.0


def test_em_increases_the_log_likelihood_monotonically():
    vectors, labels = speakers_data(60, 10, seed=3, counts=(2, 30))
    model = fit_backend(vectors, labels, em_iterations=15)
    history = np.array(model.log_likelihoods)
    assert history.size == 16
    assert (np.diff(history) >= -1e-12 * np.abs(history[1:])).all()
    assert history[-1] > history[0]
    # the recorded value is the exact likelihood of the model's training vectors
    modelled = model.transform(vectors)
    assert plda_log_likelihood(modelled, labels, model.between, model.within) == pytest.approx(
        history[-1], rel=1e-12
    )


def test_log_likelihood_matches_the_joint_density_of_each_speaker():
    rng = np.random.default_rng(4)
    dim = 3
    between = np.diag([2.0, 1.0, 0.5]) + 0.1
    within = np.eye(dim) + 0.2 * np.ones((dim, dim))
    vectors = rng.normal(size=(11, dim))
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 3])
    expected = 0.0
    for speaker in np.unique(labels):
        own = vectors[labels == speaker]
        count = own.shape[0]
        joint = np.kron(np.ones((count, count)), between) + np.kron(np.eye(count), within)
        expected += log_gaussian(own.reshape(-1), joint)
    got = plda_log_likelihood(vectors, labels, between, within)
    assert got == pytest.approx(expected / vectors.shape[0], rel=1e-12)


def test_lda_whitens_the_within_speaker_scatter():
    vectors, labels = speakers_data(50, 16, seed=5)
    model = fit_backend(vectors, labels, lda_dim=6)
    projected = (vectors - model.mean) @ model.lda
    _, index = np.unique(labels, return_inverse=True)
    means = np.stack([projected[index == k].mean(0) for k in range(index.max() + 1)])
    deviations = projected - means[index]
    np.testing.assert_allclose(deviations.T @ deviations / len(vectors), np.eye(6), atol=1e-9)
    between = (means - projected.mean(0)).T @ (
        (means - projected.mean(0)) * np.bincount(index)[:, None]
    )
    off_diagonal = between - np.diag(np.diag(between))
    assert np.abs(off_diagonal).max() < 1e-8 * np.abs(between).max()
    assert (np.diff(np.diag(between)) <= 1e-9).all()  # most discriminant direction first


def test_save_load_round_trip(backend, tmp_path):
    path = tmp_path / "plda.safetensors"
    backend.save(path)
    loaded = Backend.load(path)
    assert loaded.source == str(path)
    assert (loaded.embedding_dim, loaded.lda_dim, loaded.dim) == (24, 12, 12)
    assert loaded.log_likelihoods == backend.log_likelihoods
    rng = np.random.default_rng(6)
    enroll, test = rng.normal(size=(2, 5, 24))
    np.testing.assert_array_equal(loaded.score(enroll, test), backend.score(enroll, test))
    from safetensors import safe_open

    with safe_open(str(path), "np") as handle:
        record = json.loads(handle.metadata()["xvec"])
        assert handle.get_tensor("between").dtype == np.float64
    assert record["kind"] == PLDA_KIND
    assert (record["embedding_dim"], record["lda_dim"]) == (24, 12)
    assert b"pickle" not in path.read_bytes()
    without_lda = fit_backend(*speakers_data(30, 5, seed=7))
    without_lda.save(tmp_path / "plain.safetensors")
    assert Backend.load(tmp_path / "plain.safetensors").lda is None


def one_line_error(action) -> str:
    with pytest.raises(XvecError) as caught:
        action()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_wrong_embedding_size_names_the_file_and_both_sizes(backend, tmp_path):
    path = tmp_path / "plda.safetensors"
    backend.save(path)
    loaded = Backend.load(path)
    message = one_line_error(lambda: loaded.score(np.ones((2, 32)), np.ones((2, 32))))
    assert str(path) in message and "24" in message and "32" in message
    message = one_line_error(lambda: loaded.score_matrix(np.ones((2, 24)), np.ones((3, 20))))
    assert "24" in message and "20" in message


def test_other_files_are_refused(tmp_path):
    from safetensors.numpy import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": np.zeros(3)}, str(other), metadata={"xvec": json.dumps({"kind": "model"})})
    assert "not an xvec PLDA back end" in one_line_error(lambda: Backend.load(other))
    assert str(other) in one_line_error(lambda: Backend.load(other))
    text = tmp_path / "scores.txt"
    text.write_text("1 a b\n")
    assert str(text) in one_line_error(lambda: Backend.load(text))
    assert "cannot read" in one_line_error(lambda: Backend.load(tmp_path / "missing"))
    damaged = tmp_path / "damaged.safetensors"
    record = {"kind": PLDA_KIND, "version": 1, "embedding_dim": 3, "lda_dim": None}
    save_file({"mean": np.zeros(3)}, str(damaged), metadata={"xvec": json.dumps(record)})
    assert "damaged" in one_line_error(lambda: Backend.load(damaged))


def test_singular_training_data_is_refused():
    vectors, labels = speakers_data(20, 64, seed=8, counts=(2, 3))  # 40 vectors, 64 dims
    message = one_line_error(lambda: fit_backend(vectors, labels))
    assert "singular" in message and "smaller lda_dim" in message
    assert fit_backend(vectors, labels, lda_dim=10).dim == 10  # as the message suggests
    one_speaker = np.full(vectors.shape[0], "spk")
    assert "at least 2" in one_line_error(lambda: fit_backend(vectors, one_speaker))
    assert "lda_dim 40" in one_line_error(lambda: fit_backend(vectors, labels, lda_dim=40))
    collinear = np.repeat(vectors[:, :1], 4, axis=1)  # rank-one data: within scatter singular
    assert "singular" in one_line_error(lambda: fit_backend(collinear, labels))
    assert "speaker labels" in one_line_error(lambda: fit_backend(vectors, labels[:-1]))
    with_nan = vectors.copy()
    with_nan[3, 3] = math.nan
    assert "NaN" in one_line_error(lambda: fit_backend(with_nan, labels))


@pytest.mark.slow
@requires_speechocean
def test_plda_on_real_speech():
    from test_calibration import mel_statistics

    from xvec.calibration import min_cllr

    train_lines = (SPEECHOCEAN / "lists" / "train_list.txt").read_text().splitlines()
    by_speaker: dict[str, list[str]] = {}
    for line in train_lines:
        speaker, path = line.split()
        by_speaker.setdefault(speaker, []).append(path)
    train = [(s, p) for s in sorted(by_speaker)[:40] for p in by_speaker[s][:4]]
    trial_lines = (SPEECHOCEAN / "lists" / "dev_trials.txt").read_text().splitlines()[:120]
    trials = [line.split() for line in trial_lines]
    paths = sorted({p for _, p in train} | {p for _, *pair in trials for p in pair})
    embeddings = mel_statistics(paths)
    model = fit_backend(
        np.stack([embeddings[p] for _, p in train]), [s for s, _ in train], lda_dim=12
    )
    enroll = np.stack([embeddings[a] for _, a, _ in trials])
    test = np.stack([embeddings[b] for _, _, b in trials])
    labels = np.array([label == "1" for label, _, _ in trials])
    plda_scores = model.score(enroll, test)
    assert np.isfinite(plda_scores).all()
    # untrained log-mel statistics and 160 training files: far from perfect, far from chance
    assert compute_metrics(plda_scores, labels).eer < 30.0
    assert min_cllr(plda_scores[labels], plda_scores[~labels]) < 0.85
    np.testing.assert_allclose(model.score_matrix(enroll[:5], test[:5]).diagonal(), plda_scores[:5])


def test_embeddings_that_span_fewer_dimensions_say_so() -> None:
    """Like ResNetSE34L's 256-dim embeddings of 64 pooled channels: flat, not too few."""
    rng = np.random.default_rng(0)
    speakers = np.repeat(np.arange(20), 10)
    low = rng.standard_normal((20, 6))[speakers] + 0.3 * rng.standard_normal((200, 6))
    vectors = low @ rng.standard_normal((6, 12))  # rank 6 in 12 dimensions
    with pytest.raises(XvecError, match=r"vary in only 6 of their 12 dimensions; give lda_dim 6"):
        fit_backend(vectors, speakers)
    assert fit_backend(vectors, speakers, lda_dim=6).dim == 6
