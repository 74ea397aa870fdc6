"""``xvec backend fit`` and ``xvec score --backend``: a PLDA back end from stored embeddings.

Training labels come from a train list (``SPEAKER relative/path``): each listed file's
embedding is looked up by its path in an embeddings file of ``xvec embed``. Scoring writes the
PLDA log-likelihood ratio of every trial as a score file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xvec.data import read_train_list, read_trials
from xvec.embed import EmbeddingStore
from xvec.errors import XvecError
from xvec.outputs import check_outputs
from xvec.plda import Backend, fit_backend
from xvec.scoring import write_scores


@dataclass(frozen=True)
class BackendFit:
    """What :func:`fit_backend_files` did: the back end, its file and what it was trained on."""

    backend: Backend
    output: Path
    n_vectors: int
    n_speakers: int
    unused: int  # embeddings in the file that the train list does not name


def _one_vector_per_file(store: EmbeddingStore, files: list[str], source: Path) -> np.ndarray:
    """``[files, dim]`` float64; the crops of a vt-crops embeddings file are averaged."""
    matrix = np.asarray(store.matrix(files, source), dtype=np.float64)
    return matrix.mean(axis=1) if matrix.ndim == 3 else matrix


def fit_backend_files(
    embeddings: Path,
    train_list: Path,
    output: Path,
    lda_dim: int | None = None,
    *,
    force: bool = False,
) -> BackendFit:
    """``xvec backend fit``: centering, optional LDA, length norm and PLDA, saved to ``output``.

    Every file of ``train_list`` needs an embedding in ``embeddings`` (the first one missing is
    named with its line); embeddings of other files are ignored and counted.
    """
    check_outputs({output: "plda"}, [embeddings, train_list], force)
    listed = read_train_list(train_list)
    store = EmbeddingStore.load(embeddings)
    for file, line in zip(listed.files, listed.lines, strict=True):
        if file not in store.vectors:
            missing = sum(f not in store.vectors for f in listed.files)
            raise XvecError(
                f"{train_list}:{line}: '{file}' has no embedding in {embeddings} ({missing} of "
                f"{len(listed.files)} listed files have none); embed the train list's files "
                "with 'xvec embed --list'",
                file=train_list,
                line=line,
            )
    vectors = _one_vector_per_file(store, listed.files, train_list)
    labels = np.asarray(listed.labels)
    backend = fit_backend(vectors, labels, lda_dim=lda_dim)
    backend.save(output)
    return BackendFit(
        backend=backend,
        output=Path(output),
        n_vectors=vectors.shape[0],
        n_speakers=listed.num_classes,
        unused=len(store.vectors) - len(listed.files),
    )


def score_with_backend(
    backend: Path,
    embeddings: Path,
    trials: Path,
    output: Path,
    *,
    norm: str = "none",
    force: bool = False,
) -> int:
    """``xvec score --backend``: the PLDA LLR of every trial to a score file; the count.

    The back end must have been trained on embeddings of the same size; PLDA scores are LLRs
    already, so no score normalisation (``norm``) is combined with them.
    """
    check_outputs({output: "scores"}, [backend, embeddings, trials], force)
    if norm != "none":
        raise XvecError(
            f"backend scores PLDA log-likelihood ratios and takes no norm (got norm {norm}); "
            "drop one of them",
            options=("backend", "norm"),
        )
    model = Backend.load(backend)
    trial_list = read_trials(trials)
    store = EmbeddingStore.load(embeddings)
    matrix = _one_vector_per_file(store, trial_list.files, trials)
    if matrix.shape[1] != model.embedding_dim:
        raise XvecError(
            f"{backend}: the PLDA back end takes {model.embedding_dim}-dim embeddings but "
            f"{embeddings} holds {matrix.shape[1]}-dim ones; fit a back end on embeddings of "
            "the same model",
            file=backend,
        )
    llrs = model.score_trials(matrix, trial_list.enroll, trial_list.test)
    write_scores(output, llrs, trial_list.enroll_names(), trial_list.test_names())
    return len(trial_list)
