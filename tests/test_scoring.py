"""Trial scoring, score normalisation and score files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from xvec import scoring
from xvec.errors import XvecError
from xvec.files import atomic_write
from xvec.scoring import (
    as_norm,
    cosine_scores,
    mean_norm,
    read_scores,
    vt_crop_scores,
    write_scores,
)

from conftest import VT_FIXTURES, requires_fixtures

VT_MODELS = [
    "a_ResNetSE34L_SAP_angleproto",
    "b_ResNetSE34L_SAP_amsoftmax",
    "d_VGGVox_SAP_angleproto",
]


@pytest.fixture
def trials() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings of 30 files (dim 16, not unit length, float32) and 200 random trials."""
    rng = np.random.default_rng(7)
    embeddings = (rng.normal(size=(30, 16)) * rng.uniform(0.5, 3, size=(30, 1))).astype(np.float32)
    return embeddings, rng.integers(0, 30, 200), rng.integers(0, 30, 200)


def loop_cosine(embeddings, enroll, test) -> np.ndarray:
    vectors = embeddings.astype(np.float64)
    return np.array(
        [
            vectors[e] @ vectors[t] / (np.linalg.norm(vectors[e]) * np.linalg.norm(vectors[t]))
            for e, t in zip(enroll, test, strict=True)
        ]
    )


def loop_crop_score(crops_e: np.ndarray, crops_t: np.ndarray, normalize: bool = True) -> float:
    """-mean of all pairwise Euclidean distances (explicit differences, no Gram trick)."""
    a, b = crops_e.astype(np.float64), crops_t.astype(np.float64)
    if normalize:
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return -np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).mean()


# --------------------------------------------------------------------------- scoring


def test_cosine_matches_per_trial_loop(trials) -> None:
    embeddings, enroll, test = trials
    scores = cosine_scores(embeddings, enroll, test)
    assert scores.dtype == np.float64 and scores.shape == (200,)
    np.testing.assert_allclose(scores, loop_cosine(embeddings, enroll, test), rtol=0, atol=1e-12)


def test_chunks_and_threads_do_not_change_scores(trials, monkeypatch) -> None:
    embeddings, enroll, test = trials
    whole = cosine_scores(embeddings, enroll, test)
    crops = np.stack([embeddings, embeddings[::-1], embeddings * 2], axis=1)
    whole_crops = vt_crop_scores(crops, enroll, test)
    # cosine: 7-trial chunks (ragged end); crops: 2 test files gathered per product, chunks
    # of 49 trials (4 * 7 * 16 * 8 bytes of [3, 3] float64 products) that split groups
    monkeypatch.setattr(scoring, "_CHUNK_BYTES", 7 * 16 * 8)
    np.testing.assert_array_equal(cosine_scores(embeddings, enroll, test), whole)
    np.testing.assert_array_equal(vt_crop_scores(crops, enroll, test), whole_crops)
    # chunks on several threads (and on one) score every trial as the whole-list call does
    for threads in (1, 3):
        np.testing.assert_array_equal(
            vt_crop_scores(crops, enroll, test, threads=threads), whole_crops
        )


@pytest.mark.parametrize("normalize", [True, False])
def test_vt_crop_scores_match_direct_distances(normalize: bool) -> None:
    rng = np.random.default_rng(11)
    crops = rng.normal(size=(12, 5, 8)).astype(np.float32)
    enroll, test = rng.integers(0, 12, 40), rng.integers(0, 12, 40)
    scores = vt_crop_scores(crops, enroll, test, normalize=normalize)
    pairs = zip(enroll, test, strict=True)
    expected = np.array([loop_crop_score(crops[e], crops[t], normalize) for e, t in pairs])
    # a crop against itself (file scored with itself) has distance sqrt(rounding) ~ 1e-8
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-7)
    different = enroll != test
    np.testing.assert_allclose(scores[different], expected[different], rtol=0, atol=1e-11)


def test_vt_crop_score_of_a_file_with_itself_is_zero_not_nan() -> None:
    crops = np.ones((1, 3, 4), dtype=np.float32)  # identical crops: Gram rounding could go < 0
    assert vt_crop_scores(crops, [0], [0])[0] == pytest.approx(0.0, abs=1e-7)


@requires_fixtures
@pytest.mark.parametrize("folder", VT_MODELS)
def test_vt_crop_scores_match_voxceleb_trainer(folder: str) -> None:
    path = VT_FIXTURES / folder
    crops = np.stack([np.load(path / "emb_crops.npy"), np.load(path / "emb_crops2.npy")])
    expected = float((path / "score.txt").read_text())
    scores = vt_crop_scores(crops, [0, 1], [1, 0])
    np.testing.assert_allclose(scores, [expected, expected], rtol=0, atol=1e-6)


def test_shape_and_index_errors(trials) -> None:
    embeddings, enroll, test = trials
    with pytest.raises(XvecError, match=r"\[files, dim\]"):
        cosine_scores(embeddings[:, None, :], enroll, test)
    with pytest.raises(XvecError, match=r"\[files, crops, dim\]"):
        vt_crop_scores(embeddings, enroll, test)
    with pytest.raises(XvecError, match="out of range"):
        cosine_scores(embeddings, [0, 30], [1, 2])
    with pytest.raises(XvecError, match="enrolment indices"):
        cosine_scores(embeddings, [0, 1], [1])


# --------------------------------------------------------------------------- normalisation


def loop_as_norm(raw, enroll, test, embeddings, cohort, top_k) -> np.ndarray:
    """AS-norm trial by trial, with a full sort of the cohort scores each time."""

    def stats(vector):
        cohort_scores = cohort @ vector / (np.linalg.norm(cohort, axis=1) * np.linalg.norm(vector))
        top = np.sort(cohort_scores)[::-1][:top_k]
        return top.mean(), top.std()

    result = []
    for score, e, t in zip(raw, enroll, test, strict=True):
        (mean_e, std_e), (mean_t, std_t) = stats(embeddings[e]), stats(embeddings[t])
        result.append(0.5 * ((score - mean_e) / std_e + (score - mean_t) / std_t))
    return np.array(result)


@pytest.mark.parametrize("top_k", [5, 40, 1000])
def test_as_norm_matches_per_trial_definition(trials, top_k: int) -> None:
    embeddings, enroll, test = trials
    cohort = np.random.default_rng(3).normal(size=(40, 16))
    raw = cosine_scores(embeddings, enroll, test)
    normed = as_norm(raw, enroll, test, embeddings, cohort, top_k=top_k)
    expected = loop_as_norm(raw, enroll, test, embeddings.astype(np.float64), cohort, top_k)
    np.testing.assert_allclose(normed, expected, rtol=0, atol=1e-10)


def test_as_norm_is_invariant_to_rotation_and_vector_scale(trials) -> None:
    embeddings, enroll, test = trials
    rng = np.random.default_rng(5)
    cohort = rng.normal(size=(50, 16))
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    scale = rng.uniform(0.1, 10, size=(30, 1))
    moved = (embeddings.astype(np.float64) @ rotation) * scale
    moved_cohort = (cohort @ rotation) * rng.uniform(0.1, 10, size=(50, 1))
    before = as_norm(cosine_scores(embeddings, enroll, test), enroll, test, embeddings, cohort, 10)
    after = as_norm(cosine_scores(moved, enroll, test), enroll, test, moved, moved_cohort, 10)
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-9)
    # and it really normalises: not the identity, finite
    assert np.isfinite(before).all() and not np.allclose(
        before, cosine_scores(embeddings, enroll, test)
    )


def test_as_norm_needs_two_cohort_scores(trials) -> None:
    embeddings, enroll, test = trials
    raw = cosine_scores(embeddings, enroll, test)
    with pytest.raises(XvecError, match="at least 2"):
        as_norm(raw, enroll, test, embeddings, embeddings[:1], top_k=300)


def test_mean_norm_centres_on_the_cohort(trials) -> None:
    embeddings, enroll, test = trials
    rng = np.random.default_rng(9)
    cohort = rng.normal(size=(25, 16)) + 2.0
    normed = mean_norm(embeddings, enroll, test, cohort)
    centred = embeddings.astype(np.float64) - cohort.mean(axis=0)
    np.testing.assert_allclose(normed, loop_cosine(centred, enroll, test), rtol=0, atol=1e-12)
    # a shift shared by embeddings and cohort cancels out
    shift = rng.normal(size=16) * 5
    shifted = mean_norm(embeddings + shift, enroll, test, cohort + shift)
    np.testing.assert_allclose(shifted, normed, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- score files


def test_write_read_round_trip_is_exact(tmp_path) -> None:
    rng = np.random.default_rng(1)
    scores = np.r_[rng.normal(size=50), 1e-300, -0.0, 123456789.123456789]
    enroll = [f"id{i:05d}/vid/{i}.wav" for i in range(scores.size)]
    test = [f"id{i:05d}/other/{i}.wav" for i in range(scores.size)]
    path = tmp_path / "deep" / "folder" / "scores.txt"
    write_scores(path, scores, enroll, test)
    values, enroll_back, test_back = read_scores(path)
    np.testing.assert_array_equal(values, scores)
    assert (enroll_back, test_back) == (enroll, test)
    first = path.read_text().splitlines()[0].split()
    assert float(first[0]) == scores[0] and first[1:] == [enroll[0], test[0]]
    assert os.listdir(path.parent) == ["scores.txt"]  # no temporary file left behind
    assert path.stat().st_mode & 0o044  # readable by others, like any plain file


def test_reads_one_column_files_with_comments_and_blank_lines(tmp_path) -> None:
    path = tmp_path / "bare.txt"
    path.write_text("# system A\n0.5\n\n-1.25\n  3e-2 \n")
    values, enroll, test = read_scores(path)
    np.testing.assert_array_equal(values, [0.5, -1.25, 0.03])
    assert enroll is None and test is None
    write_scores(tmp_path / "again.txt", values, None, None)
    assert read_scores(tmp_path / "again.txt")[0].tolist() == values.tolist()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.5 a b\n0.7 a c\nhigh a d\n", r"bad\.txt:3: score 'high' is not a number"),
        ("0.5 a b\n0.7 a\n", r"bad\.txt:2: expected 3 field"),
        ("1 0.5\n", r"bad\.txt:1: expected 'SCORE ENROLL TEST' or one score"),
        ("\n# nothing\n", r"bad\.txt: no scores"),
    ],
)
def test_malformed_score_file_names_the_line(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(XvecError, match=message):
        read_scores(path)


def test_score_file_errors(tmp_path) -> None:
    with pytest.raises(XvecError, match="no such score file"):
        read_scores(tmp_path / "missing.txt")
    with pytest.raises(XvecError, match="whitespace"):
        write_scores(tmp_path / "s.txt", [0.1], ["a b.wav"], ["c.wav"])
    with pytest.raises(XvecError, match="pair up"):
        write_scores(tmp_path / "s.txt", [0.1, 0.2], ["a.wav"], ["c.wav"])
    assert not (tmp_path / "s.txt").exists()


def test_failed_write_keeps_the_previous_file(tmp_path) -> None:
    path = tmp_path / "scores.txt"
    write_scores(path, [0.25], ["a.wav"], ["b.wav"])

    def explode(handle):
        handle.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(path, explode)
    assert path.read_text() == "0.25 a.wav b.wav\n"
    assert os.listdir(tmp_path) == ["scores.txt"]
