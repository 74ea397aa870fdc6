"""Trial scoring from embeddings, score normalisation, and score files.

Trials are given as index arrays into an embedding matrix (one row per unique file), so each
file's norm is computed once and every trial is a row-wise dot product, in chunks that bound
memory (float64 copies are made in bounded blocks, never of a whole large matrix). Only numpy
is needed.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import ArrayLike

from xvec.devices import usable_cpus
from xvec.errors import XvecError, where
from xvec.files import atomic_write

__all__ = [
    "as_norm",
    "cosine_scores",
    "mean_norm",
    "read_scores",
    "read_scores_in_trial_order",
    "vt_crop_scores",
    "write_scores",
]

_NORM_EPS = 1e-12  # as torch.nn.functional.normalize: a zero vector stays zero
_CHUNK_BYTES = 1 << 22  # 4 MiB per gathered float64 block: stays in cache, bounds memory


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise along the last axis, in float64."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, _NORM_EPS)


def _trial_indices(
    enroll: ArrayLike, test: ArrayLike, n_files: int
) -> tuple[np.ndarray, np.ndarray]:
    """Enrolment and test indices as int64 arrays of equal length within ``[0, n_files)``."""
    enroll_index = np.asarray(enroll, dtype=np.int64).reshape(-1)
    test_index = np.asarray(test, dtype=np.int64).reshape(-1)
    if enroll_index.size != test_index.size:
        raise XvecError(f"{enroll_index.size} enrolment indices but {test_index.size} test indices")
    for index in (enroll_index, test_index):
        if index.size and (index.min() < 0 or index.max() >= n_files):
            raise XvecError(f"trial index out of range for {n_files} embeddings")
    return enroll_index, test_index


def _chunk_rows(bytes_per_row: int, budget: int | None = None) -> int:
    """Rows per chunk so that one chunk holds about ``budget`` bytes (default _CHUNK_BYTES)."""
    return max(1, (budget or _CHUNK_BYTES) // max(bytes_per_row, 1))


def cosine_scores(embeddings: ArrayLike, enroll: ArrayLike, test: ArrayLike) -> np.ndarray:
    """Cosine similarity of each trial: ``embeddings [files, dim]``, indices ``[trials]``.

    Returns float64 ``[trials]``.
    """
    matrix = np.asarray(embeddings)
    if matrix.ndim != 2:
        raise XvecError(
            f"cosine scoring needs one embedding per file ([files, dim]), got shape {matrix.shape}"
        )
    enroll_index, test_index = _trial_indices(enroll, test, matrix.shape[0])
    # inverse norms once per file; rows are gathered in their own dtype (half the memory traffic
    # for float32) and multiplied in float64
    inverse_norms = 1.0 / np.maximum(
        np.sqrt(np.einsum("fd,fd->f", matrix, matrix, dtype=np.float64)), _NORM_EPS
    )
    scores = np.empty(enroll_index.size, dtype=np.float64)
    step = _chunk_rows(matrix.shape[1] * 8)
    for start in range(0, scores.size, step):
        e, t = enroll_index[start : start + step], test_index[start : start + step]
        dots = np.einsum("td,td->t", matrix[e], matrix[t], dtype=np.float64)
        scores[start : start + step] = dots * inverse_norms[e] * inverse_norms[t]
    return scores


def vt_crop_scores(
    embeddings: ArrayLike,
    enroll: ArrayLike,
    test: ArrayLike,
    *,
    normalize: bool = True,
    threads: int | None = None,
) -> np.ndarray:
    """voxceleb_trainer's score from crop embeddings ``[files, crops, dim]``.

    The score is minus the mean Euclidean distance over all crop pairs of the two files, after
    L2-normalising each crop (``normalize=False`` keeps raw crops, as VT does for the ``proto``
    loss, whose ``test_normalize`` is off). Distances come from ``||a - b||^2 = ||a||^2 +
    ||b||^2 - 2 a.b``, clamped at zero, in float64 (only near-identical crops, whose distance is
    the square root of rounding, differ from direct differences, by ~1e-8, below VT's own
    float32 noise).

    Speed: the trials are grouped by enrolment file, so a group is one float64 matrix product
    of that file's crops against all its test files' crops (trial lists enrol each file
    several times), taken straight from ``embeddings`` (float32 converts to float64 exactly)
    and scaled to unit norm afterwards, so nothing of the size of the embeddings is copied;
    the distances of a chunk of trials are finished in a few vectorised passes. Chunks run on
    ``threads`` threads (default: the CPUs this process may use; numpy releases the GIL in
    the products and copies); every trial's arithmetic is the same whatever the threads or
    chunks. Memory stays bounded for any list.
    """
    crops = np.asarray(embeddings)
    if crops.ndim != 3:
        raise XvecError(
            "voxceleb_trainer crop scoring needs [files, crops, dim] embeddings, "
            f"got shape {crops.shape}; use cosine scoring for one embedding per file"
        )
    enroll_index, test_index = _trial_indices(enroll, test, crops.shape[0])
    n_files, n_crops, dim = crops.shape
    workers = max(1, threads or usable_cpus())
    with ThreadPoolExecutor(workers) as pool:

        def in_pieces(function: Callable[[int, int], None], start: int, end: int) -> None:
            """``function(first, last)`` over ``[start, end)`` in pieces, on the threads.

            Several pieces per thread, so one descheduled thread does not hold up the rest.
            """
            size = max(1, -(-(end - start) // (4 * workers)))
            firsts = range(start, end, size)
            list(pool.map(function, firsts, [min(f + size, end) for f in firsts]))

        squared_norms = np.empty((n_files, n_crops))

        def norms(first: int, last: int) -> None:
            files = crops[first:last]
            np.einsum("fcd,fcd->fc", files, files, out=squared_norms[first:last], dtype=np.float64)

        in_pieces(norms, 0, n_files)
        scale = np.ones_like(squared_norms)
        if normalize:
            scale = 1.0 / np.maximum(np.sqrt(squared_norms), _NORM_EPS)
            squared_norms = squared_norms * scale**2
        enroll_scale = -2.0 * scale  # exact: the products then give -2 a.b directly

        scores = np.empty(enroll_index.size, dtype=np.float64)
        order = np.argsort(enroll_index, kind="stable")  # trials grouped by enrolment file
        group_starts = np.flatnonzero(np.diff(enroll_index[order], prepend=-1))
        group_ends = np.append(group_starts[1:], order.size)
        gather_rows = _chunk_rows(n_crops * dim * 8)  # test files gathered per product
        chunk_trials = _chunk_rows(n_crops * n_crops * 8, 4 * _CHUNK_BYTES)

        def score_chunk(start: int, end: int) -> None:
            """Scores of trials ``order[start:end]``."""
            for chunk_start in range(start, end, chunk_trials):
                chunk_end = min(chunk_start + chunk_trials, end)
                # [trial, test crop, enrolment crop]
                products = np.empty((chunk_end - chunk_start, n_crops, n_crops))
                gathered = np.empty((min(gather_rows, chunk_end - chunk_start), n_crops, dim))
                left = np.empty((n_crops, dim))
                group = int(np.searchsorted(group_starts, chunk_start, side="right")) - 1
                while group < group_starts.size and group_starts[group] < chunk_end:
                    first_row = max(group_starts[group], chunk_start)
                    last_row = min(group_ends[group], chunk_end)
                    left[...] = crops[enroll_index[order[first_row]]]
                    for row in range(first_row, last_row, gather_rows):
                        stop = min(row + gather_rows, last_row)
                        rows = gathered[: stop - row]
                        rows[...] = crops[test_index[order[row:stop]]]  # exact in float64
                        product = products[row - chunk_start : stop - chunk_start]
                        np.matmul(rows.reshape(-1, dim), left.T, out=product.reshape(-1, n_crops))
                    group += 1
                trials = order[chunk_start:chunk_end]
                test_files, enroll_files = test_index[trials], enroll_index[trials]
                products *= scale[test_files][:, :, None]
                products *= enroll_scale[enroll_files][:, None, :]
                products += squared_norms[test_files][:, :, None]
                products += squared_norms[enroll_files][:, None, :]
                np.maximum(products, 0.0, out=products)
                distances = np.sqrt(products, out=products).reshape(trials.size, -1)
                scores[trials] = -(np.add.reduce(distances, axis=1) / distances.shape[1])

        in_pieces(score_chunk, 0, order.size)
    return scores


def _top_k_cohort_stats(
    unit_files: np.ndarray, unit_cohort: np.ndarray, top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) std of each file's ``top_k`` highest cosine scores to the cohort."""
    n_cohort = unit_cohort.shape[0]
    means = np.empty(unit_files.shape[0])
    stds = np.empty(unit_files.shape[0])
    step = _chunk_rows(n_cohort * 8, budget=8 * _CHUNK_BYTES)  # BLAS and partition like big blocks
    for start in range(0, unit_files.shape[0], step):
        rows = slice(start, start + step)
        scores = unit_files[rows] @ unit_cohort.T
        if top_k < n_cohort:
            scores = np.partition(scores, n_cohort - top_k, axis=1)[:, n_cohort - top_k :]
        means[rows] = scores.mean(axis=1)
        stds[rows] = scores.std(axis=1)
    return means, stds


def as_norm(
    raw_scores: ArrayLike,
    enroll: ArrayLike,
    test: ArrayLike,
    embeddings: ArrayLike,
    cohort: ArrayLike,
    top_k: int = 300,
) -> np.ndarray:
    """Adaptive symmetric score normalisation (AS-norm) of cosine trial scores.

    For each file, the ``top_k`` cohort embeddings most similar to it give a mean and standard
    deviation (computed once per file, not per trial); a trial's score becomes the average of its
    z-normalisation by the enrolment file's statistics and by the test file's.
    ``embeddings`` is ``[files, dim]`` aligned with the indices, ``cohort`` is ``[cohort, dim]``;
    a ``top_k`` above the cohort size uses the whole cohort (symmetric S-norm).
    """
    matrix = np.asarray(embeddings)
    cohort_matrix = np.asarray(cohort)
    if matrix.ndim != 2 or cohort_matrix.ndim != 2 or matrix.shape[1] != cohort_matrix.shape[1]:
        raise XvecError(
            "AS-norm needs [files, dim] embeddings and a [cohort, dim] cohort of the same dim, "
            f"got {matrix.shape} and {cohort_matrix.shape}"
        )
    k = min(int(top_k), cohort_matrix.shape[0])
    if k < 2:
        raise XvecError(
            f"AS-norm needs at least 2 cohort scores per file (top_k {top_k}, cohort of "
            f"{cohort_matrix.shape[0]}); use a larger cohort"
        )
    scores = np.asarray(raw_scores, dtype=np.float64).reshape(-1)
    enroll_index, test_index = _trial_indices(enroll, test, matrix.shape[0])
    if scores.size != enroll_index.size:
        raise XvecError(f"{scores.size} scores for {enroll_index.size} trials")
    used, inverse = np.unique(np.r_[enroll_index, test_index], return_inverse=True)
    means, stds = _top_k_cohort_stats(_unit_rows(matrix[used]), _unit_rows(cohort_matrix), k)
    stds = np.maximum(stds, _NORM_EPS)
    enroll_slot, test_slot = inverse[: scores.size], inverse[scores.size :]
    return 0.5 * (
        (scores - means[enroll_slot]) / stds[enroll_slot]
        + (scores - means[test_slot]) / stds[test_slot]
    )


def mean_norm(
    embeddings: ArrayLike, enroll: ArrayLike, test: ArrayLike, cohort: ArrayLike
) -> np.ndarray:
    """Cosine scores after subtracting the cohort's mean embedding from every embedding.

    Centring on a cohort (e.g. the training set) removes the direction all embeddings share,
    which otherwise inflates every cosine score.
    """
    matrix = np.asarray(embeddings, dtype=np.float64)
    cohort_matrix = np.asarray(cohort, dtype=np.float64)
    if cohort_matrix.ndim != 2 or cohort_matrix.shape[1:] != matrix.shape[1:]:
        raise XvecError(
            f"cohort embeddings {cohort_matrix.shape} do not match embeddings {matrix.shape}"
        )
    return cosine_scores(matrix - cohort_matrix.mean(axis=0), enroll, test)


# --------------------------------------------------------------------------- score files


def write_scores(
    path: str | Path,
    scores: ArrayLike,
    enroll_names: Sequence[str] | None,
    test_names: Sequence[str] | None,
) -> Path:
    """Write ``SCORE ENROLL TEST`` lines (one score per line when names are None), atomically.

    Scores are written in Python's shortest round-trip form, so reading the file back gives
    exactly the same float64 values and therefore the same metrics.
    """
    values = np.asarray(scores, dtype=np.float64).reshape(-1).tolist()
    if (enroll_names is None) != (test_names is None):
        raise XvecError("give both enrolment and test names, or neither")
    if enroll_names is None or test_names is None:
        lines = map(repr, values)
    else:
        if not len(values) == len(enroll_names) == len(test_names):
            raise XvecError(
                f"{path}: {len(values)} scores, {len(enroll_names)} enrolment and "
                f"{len(test_names)} test names; they must pair up"
            )
        if any(len(" ".join(names).split()) != len(names) for names in (enroll_names, test_names)):
            raise XvecError(f"{path}: file names must be non-empty and contain no whitespace")
        lines = (
            f"{value!r} {enroll} {test}"
            for value, enroll, test in zip(values, enroll_names, test_names, strict=True)
        )

    def write(handle: BinaryIO) -> None:  # in chunks: no giant string for millions of trials
        chunk: list[str] = []
        for line in lines:
            chunk.append(line)
            if len(chunk) == 65536:
                handle.write(("\n".join(chunk) + "\n").encode())
                chunk.clear()
        if chunk:
            handle.write(("\n".join(chunk) + "\n").encode())

    atomic_write(path, write)
    return Path(path)


def read_scores(path: str | Path) -> tuple[np.ndarray, list[str] | None, list[str] | None]:
    """Read a score file: ``SCORE ENROLL TEST`` lines, or one bare score per line.

    Returns ``(scores float64, enroll names, test names)``; the names are None for a one-column
    file. Blank lines and ``#`` comments are skipped. A malformed line is an
    :class:`~xvec.errors.XvecError` naming ``file:line``.
    """
    path = Path(path)
    if path.is_dir():
        raise XvecError(f"{path}: is a folder, not a score file; give the score file itself")
    values = array("d")
    enroll: list[str] = []
    test: list[str] = []
    names: dict[str, str] = {}  # one string object per distinct file name
    width = first_line = 0
    try:
        # streamed: millions of lines stay small; utf-8-sig drops a leading BOM
        with path.open(encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                fields = line.split()
                if not fields or fields[0].startswith("#"):
                    continue
                if not width:
                    width, first_line = len(fields), number
                    if width not in (1, 3):
                        raise XvecError(
                            f"{where(path, number)}: expected 'SCORE ENROLL TEST' or one score "
                            f"per line, got {width} fields"
                        )
                if len(fields) != width:
                    raise XvecError(
                        f"{where(path, number)}: expected {width} field(s) like line "
                        f"{first_line}, got {len(fields)}"
                    )
                try:
                    value = float(fields[0])
                except ValueError:
                    raise XvecError(
                        f"{where(path, number)}: score '{fields[0]}' is not a number"
                    ) from None
                if not math.isfinite(value):
                    raise XvecError(
                        f"{where(path, number)}: score '{fields[0]}' is not finite; "
                        "re-score from finite embeddings"
                    )
                values.append(value)
                if width == 3:
                    enroll.append(names.setdefault(fields[1], fields[1]))
                    test.append(names.setdefault(fields[2], fields[2]))
    except FileNotFoundError as exc:
        raise XvecError(f"{path}: no such score file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise XvecError(f"{path}: cannot read score file ({exc})") from exc
    if not width:
        raise XvecError(f"{path}: no scores (expected lines 'SCORE ENROLL TEST')")
    values = np.frombuffer(values, dtype=np.float64).copy()
    if width == 1:
        return values, None, None
    return values, enroll, test


def read_scores_in_trial_order(score_file: str | Path, trials: Any) -> np.ndarray:
    """A score file's scores aligned with a trial list (by order, checked by names)."""
    values, enroll, test = read_scores(score_file)
    if len(values) != len(trials):
        raise XvecError(
            f"{score_file}: {len(values)} scores for {len(trials)} trials in {trials.path}; "
            "they must be in the same order"
        )
    files = np.asarray(trials.files, dtype=object)
    if enroll is not None and not (
        (np.asarray(enroll, dtype=object) == files[trials.enroll]).all()
        and (np.asarray(test, dtype=object) == files[trials.test]).all()
    ):
        raise XvecError(
            f"{score_file}: trial names differ from {trials.path}; use the same trial list"
        )
    return values
