"""A Kaldi-style embedding back end: centering, LDA, length normalisation, two-covariance PLDA.

:func:`fit_backend` learns, in float64 from labelled training embeddings:

1. the training mean, subtracted from every embedding;
2. optionally LDA to ``lda_dim`` dimensions (between- against within-speaker scatter, scaled so
   the within-speaker covariance is the identity, as Kaldi's ``ivector-compute-lda``);
3. length normalisation to norm ``sqrt(dim)`` (Kaldi's ``ivector-normalize-length``);
4. a two-covariance PLDA on the result, trained by EM for a fixed number of iterations (Kaldi's
   ``ivector-compute-plda``): ``x = m + y + e`` with speaker variable ``y ~ N(0, B)`` and
   residual ``e ~ N(0, W)``.

:meth:`Backend.score` gives the closed-form log-likelihood ratio of "same speaker" for paired
enrolment/test embeddings, vectorised over trials. A back end is stored as safetensors tensors
plus a JSON record (``"kind": "xvec-plda"``); never pickle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from xvec.errors import XvecError
from xvec.files import atomic_write_bytes, metadata_record, safetensors_metadata

__all__ = ["PLDA_KIND", "Backend", "fit_backend", "plda_log_likelihood"]

PLDA_KIND = "xvec-plda"  # the "kind" marker in a back end's safetensors metadata
PLDA_VERSION = 1
DEFAULT_EM_ITERATIONS = 10  # Kaldi's ivector-compute-plda --num-em-iters
_SINGULAR = 1e-10  # eigenvalue ratio below which a covariance counts as singular
_SCORE_CHUNK = 65536  # trials scored at once: bounds the temporaries to ~ chunk * dim floats
_LOG_2PI = math.log(2 * math.pi)


def _symmetric(matrix: np.ndarray) -> np.ndarray:
    return 0.5 * (matrix + matrix.T)


def _simultaneous_diagonalisation(
    between: np.ndarray, within: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``V`` and ``psi`` with ``V' W V = I`` and ``V' B V = diag(psi)`` (Kaldi's PLDA basis)."""
    values, vectors = np.linalg.eigh(within)
    whiten = vectors / np.sqrt(values)  # whiten' W whiten = I
    psi, rotation = np.linalg.eigh(_symmetric(whiten.T @ between @ whiten))
    return whiten @ rotation, np.maximum(psi, 0.0)


@dataclass(frozen=True, eq=False)
class Backend:
    """A fitted back end: its transforms and PLDA covariances, all float64.

    ``mean`` is the raw training mean, ``lda`` the ``[embedding_dim, lda_dim]`` projection (None
    without LDA), ``plda_mean`` / ``between`` / ``within`` the PLDA model in the length-normalised
    space. ``source`` is the file it was loaded from (named in errors); ``log_likelihoods`` the
    training log-likelihood per vector before EM and after each iteration.
    """

    mean: np.ndarray
    lda: np.ndarray | None
    plda_mean: np.ndarray
    between: np.ndarray
    within: np.ndarray
    log_likelihoods: tuple[float, ...] = ()
    source: str | None = None
    _basis: np.ndarray = field(init=False, repr=False)
    _quadratic: np.ndarray = field(init=False, repr=False)  # per-dim weight of e^2 + t^2
    _cross: np.ndarray = field(init=False, repr=False)  # per-dim weight of e * t
    _constant: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        basis, psi = _simultaneous_diagonalisation(self.between, self.within)
        # per dimension of the basis: within variance 1, between psi; total a = psi + 1 and the
        # joint [[a, psi], [psi, a]] has determinant 2 psi + 1
        total, joint_det = psi + 1.0, 2.0 * psi + 1.0
        object.__setattr__(self, "_basis", basis)
        object.__setattr__(self, "_quadratic", 0.5 * (1.0 / total - total / joint_det))
        object.__setattr__(self, "_cross", psi / joint_det)
        constant = float(np.sum(np.log(total) - 0.5 * np.log(joint_det)))
        object.__setattr__(self, "_constant", constant)

    @property
    def embedding_dim(self) -> int:
        """Size of the raw embeddings the back end takes."""
        return int(self.mean.size)

    @property
    def lda_dim(self) -> int | None:
        """Output size of the LDA projection, or None without LDA."""
        return None if self.lda is None else int(self.lda.shape[1])

    @property
    def dim(self) -> int:
        """Size of the space the PLDA models."""
        return int(self.plda_mean.size)

    def _embeddings(self, embeddings: ArrayLike, what: str) -> np.ndarray:
        array = np.asarray(embeddings, dtype=np.float64)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.embedding_dim:
            size = array.shape[-1] if array.ndim >= 1 else 0
            where = self.source or "PLDA back end"
            raise XvecError(
                f"{where}: the back end was trained on {self.embedding_dim}-dim embeddings but "
                f"the {what} embeddings are {size}-dim; use embeddings of the model it was "
                "trained with"
            )
        if not np.isfinite(array).all():
            raise XvecError(f"{what} embeddings contain NaN or infinite values")
        return array

    def transform(self, embeddings: ArrayLike) -> np.ndarray:
        """Centre, project (LDA), length-normalise to ``sqrt(dim)``, subtract the PLDA mean."""
        vectors = self._embeddings(embeddings, "input") - self.mean
        if self.lda is not None:
            vectors = vectors @ self.lda
        return _length_normalise(vectors) - self.plda_mean

    def score(self, enroll: ArrayLike, test: ArrayLike) -> np.ndarray:
        """PLDA log-likelihood ratio of "same speaker" for each row pair ``[N, D]``, ``[N, D]``."""
        enroll_rows = self._embeddings(enroll, "enrolment")
        test_rows = self._embeddings(test, "test")
        if enroll_rows.shape[0] != test_rows.shape[0]:
            raise XvecError(
                f"{enroll_rows.shape[0]} enrolment but {test_rows.shape[0]} test embeddings; "
                "score pairs them row by row"
            )
        llrs = np.empty(enroll_rows.shape[0])
        for start in range(0, llrs.size, _SCORE_CHUNK):
            rows = slice(start, start + _SCORE_CHUNK)
            e = self.transform(enroll_rows[rows]) @ self._basis
            t = self.transform(test_rows[rows]) @ self._basis
            llrs[rows] = (e * e + t * t) @ self._quadratic + (e * t) @ self._cross
        return llrs + self._constant

    def score_trials(
        self, embeddings: ArrayLike, enroll: np.ndarray, test: np.ndarray
    ) -> np.ndarray:
        """LLR of each trial ``(enroll[i], test[i])``, indices into the rows of ``embeddings``;
        gathered a block of trials at a time, so a long list never copies every pair at once."""
        matrix = np.asarray(embeddings)
        llrs = np.empty(len(enroll))
        for start in range(0, llrs.size, _SCORE_CHUNK):
            rows = slice(start, start + _SCORE_CHUNK)
            llrs[rows] = self.score(matrix[enroll[rows]], matrix[test[rows]])
        return llrs

    def score_matrix(self, enroll: ArrayLike, test: ArrayLike) -> np.ndarray:
        """LLRs of every enrolment row against every test row: ``[N_enroll, N_test]``."""
        e = self.transform(self._embeddings(enroll, "enrolment")) @ self._basis
        t = self.transform(self._embeddings(test, "test")) @ self._basis
        enroll_part = (e * e) @ self._quadratic + self._constant
        test_part = (t * t) @ self._quadratic
        return (e * self._cross) @ t.T + enroll_part[:, None] + test_part[None, :]

    def to_bytes(self) -> bytes:
        """The back end as safetensors bytes: float64 tensors and an ``xvec`` JSON record."""
        from safetensors.numpy import save

        tensors = {
            "mean": self.mean,
            "plda_mean": self.plda_mean,
            "between": self.between,
            "within": self.within,
        }
        if self.lda is not None:
            tensors["lda"] = self.lda
        record = {
            "kind": PLDA_KIND,
            "version": PLDA_VERSION,
            "embedding_dim": self.embedding_dim,
            "lda_dim": self.lda_dim,
            "dim": self.dim,
            "length_norm": "sqrt-dim",
            "log_likelihoods": list(self.log_likelihoods),
        }
        contiguous = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
        return save(contiguous, metadata={"xvec": json.dumps(record)})

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_bytes` to ``path`` atomically."""
        atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> Backend:
        """Read a back end written by :meth:`save`; any other file is a one-line XvecError."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise XvecError(f"{path}: cannot read the PLDA back end ({exc.strerror})") from exc
        return cls.from_bytes(data, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<PLDA bytes>") -> Backend:
        """Decode :meth:`to_bytes` output; ``source`` names the file in error messages."""
        from safetensors import SafetensorError
        from safetensors.numpy import load

        try:
            tensors = load(data)
            metadata = safetensors_metadata(data)
        except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
            raise XvecError(
                f"{source}: not a readable safetensors file; expected an xvec PLDA back end"
            ) from exc
        raw = metadata.get("xvec")
        record = metadata_record(source, raw, "xvec", "PLDA") if raw is not None else {}
        kind = record.get("kind")
        if kind != PLDA_KIND:
            raise XvecError(
                f"{source}: not an xvec PLDA back end (kind {kind!r}, expected {PLDA_KIND!r})"
            )
        if not isinstance(record.get("version"), int) or record["version"] > PLDA_VERSION:
            raise XvecError(
                f"{source}: PLDA back end version {record.get('version')!r} is not supported "
                f"(this xvec reads version {PLDA_VERSION}); upgrade xvec"
            )
        return cls(
            **_checked_tensors(source, record, tensors),
            log_likelihoods=tuple(float(v) for v in record.get("log_likelihoods", [])),
            source=source,
        )


def _checked_tensors(source: str, record: dict[str, Any], tensors: dict) -> dict[str, Any]:
    """The back end's arrays from a file, with shapes matching its record, else an XvecError."""
    embedding_dim, lda_dim = record.get("embedding_dim"), record.get("lda_dim")
    dim = embedding_dim if lda_dim is None else lda_dim
    expected = {
        "mean": (embedding_dim,),
        "plda_mean": (dim,),
        "between": (dim, dim),
        "within": (dim, dim),
    }
    if lda_dim is not None:
        expected["lda"] = (embedding_dim, lda_dim)
    arrays = {}
    for name, shape in expected.items():
        value = tensors.get(name)
        if value is None or value.shape != shape or not np.isfinite(value).all():
            found = "missing" if value is None else f"shape {list(value.shape)}"
            raise XvecError(
                f"{source}: PLDA tensor '{name}' is {found} or not finite, expected shape "
                f"{list(shape)}; the file is damaged"
            )
        arrays[name] = value.astype(np.float64)
    arrays.setdefault("lda", None)
    return arrays


def _length_normalise(vectors: np.ndarray) -> np.ndarray:
    """Scale each row to norm ``sqrt(dim)`` (Kaldi); an all-zero row stays zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors * (math.sqrt(vectors.shape[1]) / np.where(norms > 0, norms, 1.0))


def _singular_error(n_vectors: int, n_speakers: int, dim: int, where: str) -> XvecError:
    return XvecError(
        f"singular within-speaker covariance {where}: {n_vectors} training vectors of "
        f"{n_speakers} speakers span at most {n_vectors - n_speakers} within-speaker directions "
        f"for {dim} dimensions; use more training vectors or a smaller lda_dim"
    )


@dataclass(frozen=True)
class _Speakers:
    """Training vectors grouped by speaker: per-speaker sums and counts."""

    index: np.ndarray  # speaker index of each vector
    counts: np.ndarray  # vectors per speaker

    @property
    def n_speakers(self) -> int:
        return int(self.counts.size)

    def means(self, vectors: np.ndarray) -> np.ndarray:
        sums = np.zeros((self.n_speakers, vectors.shape[1]))
        np.add.at(sums, self.index, vectors)
        return sums / self.counts[:, None]


def _lda(centred: np.ndarray, speakers: _Speakers, lda_dim: int) -> np.ndarray:
    """LDA projection ``[D, lda_dim]`` scaled so the projected within-speaker covariance is I.

    Maximises between- over within-speaker variance. The directions are found after whitening
    the total covariance, which equals Kaldi's generalised eigenproblem whenever the
    within-speaker covariance is invertible. When it is not (fewer than ``D + speakers``
    vectors), the whitening keeps only the top ``N - speakers`` principal directions, where it
    generically is (PCA before LDA, as in Fisherfaces), so a small ``lda_dim`` still works.
    """
    n_vectors = centred.shape[0]
    total = centred.T @ centred / n_vectors
    speaker_means = speakers.means(centred)
    between = (speaker_means * speakers.counts[:, None]).T @ speaker_means / n_vectors
    values, vectors = np.linalg.eigh(total)  # ascending
    rank = int((values > _SINGULAR * values.max()).sum())
    kept = slice(values.size - min(rank, n_vectors - speakers.n_speakers), None)
    whiten = vectors[:, kept] / np.sqrt(values[kept])
    ratio, directions = np.linalg.eigh(_symmetric(whiten.T @ between @ whiten))
    if directions.shape[1] < lda_dim:
        raise _singular_error(n_vectors, speakers.n_speakers, lda_dim, "for LDA")
    # largest between/total ratio first; within share 1 - ratio must stay away from 0
    ratio, directions = ratio[::-1][:lda_dim], directions[:, ::-1][:, :lda_dim]
    within_share = 1.0 - ratio
    if within_share.min() < _SINGULAR**0.5:
        raise _singular_error(n_vectors, speakers.n_speakers, lda_dim, "for LDA")
    projection = whiten @ directions / np.sqrt(within_share)
    # a deterministic sign: the largest entry of each direction positive
    signs = np.sign(projection[np.abs(projection).argmax(axis=0), np.arange(lda_dim)])
    return projection * np.where(signs == 0, 1.0, signs)


def _posteriors(
    speaker_means: np.ndarray, counts: np.ndarray, between: np.ndarray, within: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior means of the speaker variables, and their covariances per distinct count.

    With ``n`` vectors of mean ``x``: ``G = B (B + W / n)^-1``, mean ``G x``, covariance
    ``(I - G) B``; no inverse of B is needed, so a rank-deficient B is fine. Speakers with equal
    counts share one covariance: returns ``(means [S, d], distinct counts, covariances [K, d, d])``.
    """
    posterior_means = np.empty_like(speaker_means)
    distinct, group = np.unique(counts, return_inverse=True)
    covariances = np.empty((distinct.size, *between.shape))
    for k, count in enumerate(distinct):
        gain = np.linalg.solve(between + within / count, between).T  # B (B + W/n)^-1
        members = group == k
        posterior_means[members] = speaker_means[members] @ gain.T
        covariances[k] = _symmetric(between - gain @ between)
    return posterior_means, distinct, covariances


def plda_log_likelihood(
    vectors: np.ndarray, labels: Sequence[Any] | np.ndarray, between: np.ndarray, within: np.ndarray
) -> float:
    """Mean log-likelihood per vector of zero-mean ``vectors`` under the two-covariance PLDA.

    A speaker's ``n`` vectors factor into their mean, ``N(0, B + W / n)``, and the deviations
    from it, which depend on W alone; the result is exact (no EM bound).
    """
    values = np.asarray(vectors, dtype=np.float64)
    speakers = _group_speakers(labels, values.shape[0])
    return _log_likelihood(values, speakers, between, within)


def _log_likelihood(
    vectors: np.ndarray, speakers: _Speakers, between: np.ndarray, within: np.ndarray
) -> float:
    n_vectors, dim = vectors.shape
    speaker_means = speakers.means(vectors)
    deviations = vectors - speaker_means[speakers.index]
    _, within_logdet = np.linalg.slogdet(within)
    scatter = deviations.T @ deviations
    total = -0.5 * float(np.sum(np.linalg.solve(within, scatter).diagonal()))
    extra = speakers.counts - 1
    total -= 0.5 * float(extra.sum()) * (dim * _LOG_2PI + within_logdet)
    total -= 0.5 * dim * float(np.log(speakers.counts).sum())
    for count in np.unique(speakers.counts):
        members = speaker_means[speakers.counts == count]
        covariance = between + within / count
        _, logdet = np.linalg.slogdet(covariance)
        mahalanobis = np.sum(members * np.linalg.solve(covariance, members.T).T)
        total -= 0.5 * (members.shape[0] * (dim * _LOG_2PI + logdet) + float(mahalanobis))
    return total / n_vectors


def _group_speakers(labels: Sequence[Any] | np.ndarray, n_vectors: int) -> _Speakers:
    label_array = np.asarray(labels)
    if label_array.ndim != 1 or label_array.size != n_vectors:
        raise XvecError(f"{label_array.size} speaker labels for {n_vectors} embeddings")
    _, index, counts = np.unique(label_array, return_inverse=True, return_counts=True)
    return _Speakers(index=index.reshape(-1), counts=counts)


def _em_step(
    vectors: np.ndarray, speakers: _Speakers, between: np.ndarray, within: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One EM iteration of the two-covariance model (speaker variables are the hidden part)."""
    n_vectors = vectors.shape[0]
    speaker_means = speakers.means(vectors)
    posterior_means, distinct, covariances = _posteriors(
        speaker_means, speakers.counts, between, within
    )
    speakers_per_count = np.searchsorted(np.sort(speakers.counts), distinct, side="right")
    speakers_per_count = np.diff(np.r_[0, speakers_per_count])
    second_moments = posterior_means.T @ posterior_means
    covariance_sum = np.tensordot(speakers_per_count, covariances, axes=1)
    new_between = (second_moments + covariance_sum) / speakers.n_speakers
    weighted = posterior_means * speakers.counts[:, None]
    cross = speaker_means.T @ weighted
    new_within = (
        vectors.T @ vectors
        - cross
        - cross.T
        + weighted.T @ posterior_means
        + np.tensordot(speakers_per_count * distinct, covariances, axes=1)
    ) / n_vectors
    return _symmetric(new_between), _symmetric(new_within)


def fit_backend(
    embeddings: ArrayLike,
    labels: Sequence[Any] | np.ndarray,
    lda_dim: int | None = None,
    em_iterations: int = DEFAULT_EM_ITERATIONS,
) -> Backend:
    """Fit centering, optional LDA, length normalisation and a two-covariance PLDA (float64).

    ``embeddings`` is ``[N, D]``, ``labels`` the speaker of each row (any hashable, sortable
    ids). EM starts from the moment estimates (within-speaker scatter, scatter of the speaker
    means) and runs ``em_iterations`` times, as Kaldi with its default of 10. Too little data
    for the dimension (a singular within-speaker covariance) or fewer than two speakers is a
    one-line :class:`~xvec.errors.XvecError`.
    """
    vectors = np.asarray(embeddings, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise XvecError(f"PLDA training needs an [N, D] embedding matrix, got {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise XvecError("PLDA training embeddings contain NaN or infinite values")
    if em_iterations < 0:
        raise XvecError(f"em_iterations must be >= 0, got {em_iterations}")
    n_vectors, embedding_dim = vectors.shape
    speakers = _group_speakers(labels, n_vectors)
    if speakers.n_speakers < 2:
        raise XvecError(
            f"PLDA training data has {speakers.n_speakers} speaker; the between-speaker "
            "covariance needs at least 2 (a singular covariance); use more speakers"
        )
    if lda_dim is not None and not 1 <= lda_dim <= min(embedding_dim, speakers.n_speakers - 1):
        raise XvecError(
            f"lda_dim {lda_dim} must lie in 1..{min(embedding_dim, speakers.n_speakers - 1)}: "
            f"at most the embedding size ({embedding_dim}) and the number of speakers - 1 "
            f"({speakers.n_speakers - 1})"
        )
    dim = embedding_dim if lda_dim is None else lda_dim
    if n_vectors - speakers.n_speakers < dim:
        raise _singular_error(n_vectors, speakers.n_speakers, dim, "for PLDA")

    mean = vectors.mean(axis=0)
    centred = vectors - mean
    lda = None if lda_dim is None else _lda(centred, speakers, lda_dim)
    projected = _length_normalise(centred if lda is None else centred @ lda)
    plda_mean = projected.mean(axis=0)
    modelled = projected - plda_mean

    speaker_means = speakers.means(modelled)
    deviations = modelled - speaker_means[speakers.index]
    within = _symmetric(deviations.T @ deviations / n_vectors)
    eigenvalues = np.linalg.eigvalsh(within)
    if eigenvalues[0] <= _SINGULAR * eigenvalues[-1]:
        rank = int((eigenvalues > _SINGULAR * eigenvalues[-1]).sum())
        if rank < n_vectors - speakers.n_speakers:  # enough vectors: the embeddings are flat
            raise XvecError(
                f"singular within-speaker covariance for PLDA: the embeddings vary in only "
                f"{rank} of their {dim} dimensions; give lda_dim {rank} or less"
            )
        raise _singular_error(n_vectors, speakers.n_speakers, dim, "for PLDA")
    between = _symmetric(speaker_means.T @ speaker_means / speakers.n_speakers)

    log_likelihoods = [_log_likelihood(modelled, speakers, between, within)]
    for _ in range(em_iterations):
        between, within = _em_step(modelled, speakers, between, within)
        log_likelihoods.append(_log_likelihood(modelled, speakers, between, within))
    return Backend(
        mean=mean,
        lda=lda,
        plda_mean=plda_mean,
        between=between,
        within=within,
        log_likelihoods=tuple(log_likelihoods),
    )
