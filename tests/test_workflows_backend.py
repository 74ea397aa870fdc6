"""``xvec backend fit`` and ``xvec score --backend``: a PLDA back end from stored embeddings,
trained with a train list's labels, scoring trials; one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xvec.embed import EmbeddingStore
from xvec.errors import XvecError
from xvec.metrics import compute_metrics
from xvec.plda import Backend
from xvec.scoring import read_scores
from xvec.workflows.backend import fit_backend_files, score_with_backend

from conftest import run_cli


def save_store(path: Path, vectors: dict[str, np.ndarray]) -> Path:
    store = EmbeddingStore({"protocol": "full"})
    store.vectors = {name: value.astype(np.float32) for name, value in vectors.items()}
    return store.save(path)


@pytest.fixture
def corpus(tmp_path):
    """Gaussian 'embeddings': 30 training and 10 test speakers, 8 files each, dim 12.

    Speakers differ along a few directions, and a strong nuisance direction varies within
    speakers, so cosine is hurt where PLDA learns to ignore it.
    """
    rng = np.random.default_rng(7)
    dim = 12
    nuisance = np.zeros(dim)
    nuisance[0] = 1.0
    vectors: dict[str, np.ndarray] = {}
    lines = []
    for speaker in range(40):
        centre = rng.normal(size=dim) + 3.0 * np.r_[0.0, np.ones(dim - 1)] / np.sqrt(dim - 1)
        for utterance in range(8):
            name = f"spk{speaker:02d}/u{utterance}.wav"
            vectors[name] = centre + 0.5 * rng.normal(size=dim) + 3.0 * rng.normal() * nuisance
            if speaker < 30:
                lines.append(f"spk{speaker:02d} {name}")
    train_list = tmp_path / "train_list.txt"
    train_list.write_text("\n".join(lines) + "\n")
    trials = []
    for speaker in range(30, 40):
        for utterance in range(7):
            other = 30 + (speaker - 30 + 1 + utterance) % 10
            trials.append(f"1 spk{speaker}/u{utterance}.wav spk{speaker}/u{utterance + 1}.wav")
            trials.append(f"0 spk{speaker}/u{utterance}.wav spk{other}/u{utterance}.wav")
    trial_list = tmp_path / "trials.txt"
    trial_list.write_text("\n".join(trials) + "\n")
    embeddings = save_store(tmp_path / "emb.safetensors", vectors)
    return embeddings, train_list, trial_list, vectors


def one_error_line(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_fit_and_score_through_the_cli(corpus, tmp_path) -> None:
    embeddings, train_list, trials, vectors = corpus
    backend_file = tmp_path / "backend.safetensors"
    fitted = run_cli("backend", "fit", "-e", embeddings, "--list", train_list, "-o", backend_file)
    assert fitted.returncode == 0, fitted.stderr
    assert "12-dim embeddings" in fitted.stdout and "240 vectors of 30 speakers" in fitted.stdout
    assert "(80 other embeddings unused)" in fitted.stdout and f"-> {backend_file}" in fitted.stdout
    backend = Backend.load(backend_file)
    assert backend.embedding_dim == 12 and backend.lda_dim is None

    plda_file, cosine_file = tmp_path / "plda.txt", tmp_path / "cosine.txt"
    scored = run_cli(
        "score", "-e", embeddings, "-t", trials, "-o", plda_file, "--backend", backend_file
    )
    assert scored.returncode == 0, scored.stderr
    assert scored.stdout.strip() == f"140 scores -> {plda_file}"
    assert run_cli("score", "-e", embeddings, "-t", trials, "-o", cosine_file).returncode == 0
    plda, enroll, test = read_scores(plda_file)
    expected = backend.score(
        np.stack([vectors[name] for name in enroll]).astype(np.float32),
        np.stack([vectors[name] for name in test]).astype(np.float32),
    )
    assert np.allclose(plda, expected, rtol=1e-12, atol=1e-12)
    labels = np.array([line[0] == "1" for line in trials.read_text().splitlines()])
    assert enroll == [line.split()[1] for line in trials.read_text().splitlines()]
    plda_eer = compute_metrics(plda, labels).eer
    cosine_eer = compute_metrics(read_scores(cosine_file)[0], labels).eer
    assert plda_eer < cosine_eer  # the within-speaker nuisance direction is learned away


def test_lda_reduces_the_dimension(corpus, tmp_path) -> None:
    embeddings, train_list, trials, _ = corpus
    fit = fit_backend_files(embeddings, train_list, tmp_path / "b.safetensors", lda_dim=5)
    assert (fit.backend.lda_dim, fit.backend.dim, fit.n_speakers) == (5, 5, 30)
    count = score_with_backend(tmp_path / "b.safetensors", embeddings, trials, tmp_path / "s.txt")
    assert count == 140 and np.isfinite(read_scores(tmp_path / "s.txt")[0]).all()


def test_a_backend_of_another_embedding_size_is_refused(corpus, tmp_path) -> None:
    embeddings, train_list, trials, vectors = corpus
    backend_file = tmp_path / "b.safetensors"
    fit_backend_files(embeddings, train_list, backend_file)
    smaller = save_store(tmp_path / "small.safetensors", {k: v[:8] for k, v in vectors.items()})
    line = one_error_line(
        run_cli(
            "score",
            "-e",
            smaller,
            "-t",
            trials,
            "-o",
            tmp_path / "s.txt",
            "--backend",
            backend_file,
        )
    )
    assert str(backend_file) in line and str(smaller) in line
    assert "12-dim" in line and "8-dim" in line
    assert not (tmp_path / "s.txt").exists()


def test_backend_and_norm_exclude_each_other(corpus, tmp_path) -> None:
    embeddings, train_list, trials, _ = corpus
    fit_backend_files(embeddings, train_list, tmp_path / "b.safetensors")
    line = one_error_line(
        run_cli(
            "score", "-e", embeddings, "-t", trials, "-o", tmp_path / "s.txt",
            "--backend", tmp_path / "b.safetensors", "--norm", "asnorm", "--cohort", embeddings,
        )
    )  # fmt: skip
    assert "--backend" in line and "--norm" in line


def test_train_files_without_an_embedding_are_named(corpus, tmp_path) -> None:
    _, train_list, _, vectors = corpus
    partial = {k: v for k, v in vectors.items() if k not in ("spk03/u2.wav", "spk05/u0.wav")}
    store = save_store(tmp_path / "partial.safetensors", partial)
    line = one_error_line(
        run_cli("backend", "fit", "-e", store, "--list", train_list, "-o", tmp_path / "b.sft")
    )
    assert f"{train_list}:27:" in line and "'spk03/u2.wav'" in line and "2 of 240" in line
    assert not (tmp_path / "b.sft").exists()


def test_too_few_vectors_are_a_singular_covariance(corpus, tmp_path) -> None:
    embeddings, _, _, _ = corpus
    few = tmp_path / "few.txt"  # 3 speakers x 2 files: 3 within-speaker directions for 12 dims
    few.write_text("".join(f"spk{s:02d} spk{s:02d}/u{u}.wav\n" for s in range(3) for u in range(2)))
    line = one_error_line(
        run_cli("backend", "fit", "-e", embeddings, "--list", few, "-o", tmp_path / "b.sft")
    )
    assert "singular within-speaker covariance" in line and "lda_dim" in line


def test_files_of_another_kind_are_refused(corpus, tmp_path) -> None:
    embeddings, _, trials, _ = corpus
    line = one_error_line(
        run_cli(
            "score", "-e", embeddings, "-t", trials, "-o", tmp_path / "s", "--backend", embeddings
        )
    )
    assert str(embeddings) in line and "not an xvec PLDA back end" in line
    calibration = tmp_path / "c.json"
    calibration.write_text('{"kind": "xvec-calibration"}')
    line = one_error_line(
        run_cli(
            "score", "-e", embeddings, "-t", trials, "-o", tmp_path / "s", "--backend", calibration
        )
    )
    assert str(calibration) in line
    with pytest.raises(XvecError, match="train list"):
        fit_backend_files(embeddings, trials, tmp_path / "b.sft")  # a trial list as train list
