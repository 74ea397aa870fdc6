"""``xvec score``: trial scores from stored embeddings, optionally normalised, to a file.

The workflow behind the verb: it reads the embeddings file of ``xvec embed`` (whose recorded
protocol decides the raw score), the trial list and a cohort, and calls the scoring kernels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xvec.data import Trials, read_trials
from xvec.embed import EmbeddingStore
from xvec.errors import XvecError
from xvec.outputs import check_outputs
from xvec.protocol import Protocol
from xvec.scoring import as_norm, cosine_scores, mean_norm, write_scores

NORMS = ("none", "asnorm", "mean")


def score_to_file(
    embeddings: Path,
    trials_path: Path,
    output: Path,
    *,
    norm: str = "none",
    cohort: Path | None = None,
    top_k: int = 300,
    force: bool = False,
) -> int:
    """``xvec score``: score a trial list from stored embeddings into ``output``; the count.

    An existing ``output`` that is not a score file is replaced only with ``force``.
    """
    inputs = [embeddings, trials_path, *([cohort] if cohort is not None else [])]
    check_outputs({output: "scores"}, inputs, force)
    trials = read_trials(trials_path)
    values = score_stored(embeddings, trials, norm=norm, cohort=cohort, top_k=top_k)
    write_scores(output, values, trials.enroll_names(), trials.test_names())
    return len(trials)


def score_stored(
    embeddings: Path,
    trials: Trials,
    *,
    norm: str = "none",
    cohort: Path | None = None,
    top_k: int = 300,
) -> np.ndarray:
    """Scores of a trial list from an embeddings file of ``xvec embed``, optionally normalised.

    The file's recorded protocol decides the raw score (cosine or voxceleb_trainer crops).
    ``asnorm`` and ``mean`` need a ``cohort`` embeddings file of the same model; with crops
    they normalise the mean crop embedding.
    """
    if norm not in NORMS:
        raise XvecError(
            f"unknown norm '{norm}'; choose one of {', '.join(NORMS)}", options=("norm",)
        )
    if top_k < 1:
        raise XvecError(f"top_k {top_k}: must be a number >= 1", options=("top_k",))
    store = EmbeddingStore.load(embeddings)
    matrix = store.matrix(trials.files, trials.path)
    if norm == "none":
        return Protocol(store.meta.get("protocol", "full")).score_trials(matrix, trials)
    if cohort is None:
        raise XvecError(
            f"norm {norm} needs cohort (an embeddings file of cohort speakers)",
            options=("norm", "cohort"),
        )
    cohort_matrix = EmbeddingStore.load(cohort).cohort_matrix()
    if cohort_matrix.shape[-1] != matrix.shape[-1]:
        raise XvecError(
            f"{cohort}: cohort embeddings have dimension {cohort_matrix.shape[-1]} but "
            f"{embeddings} has {matrix.shape[-1]}; embed the cohort with the same model"
        )
    if matrix.ndim == 3:
        matrix = matrix.mean(1)
    if cohort_matrix.ndim == 3:
        cohort_matrix = cohort_matrix.mean(1)
    if norm == "asnorm":
        raw = cosine_scores(matrix, trials.enroll, trials.test)
        return as_norm(raw, trials.enroll, trials.test, matrix, cohort_matrix, top_k=top_k)
    return mean_norm(matrix, trials.enroll, trials.test, cohort_matrix)
