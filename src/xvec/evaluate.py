"""Evaluation: embed the unique files of a trial list, score the trials, compute metrics.

:func:`evaluate_model` is one system on one list (the training loop's periodic evaluation and
``xvec eval``, :mod:`xvec.workflows.eval`); each system's scores and ``result.json`` are
written by :func:`write_eval_outputs`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xvec.data import TrainList, Trials, check_files_exist, require_both_labels
from xvec.devices import parse_device
from xvec.embed import EmbedStats, embed_files
from xvec.errors import XvecError
from xvec.files import write_json_atomic
from xvec.metrics import DEFAULT_P_TARGETS, Metrics, compute_metrics
from xvec.plda import Backend, fit_backend
from xvec.protocol import Protocol
from xvec.scoring import as_norm, write_scores

if TYPE_CHECKING:
    import torch

Progress = Callable[[int, int], None]


def draw_per_speaker(labels: np.ndarray, files_per_speaker: int | None) -> np.ndarray:
    """Indices into a train list: all of them, or at most ``files_per_speaker`` of each
    speaker, drawn at random with a fixed seed (a speaker's first files in a VoxCeleb list often
    share one video), in list order. A smaller draw is a subset of a larger one."""
    if files_per_speaker is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(0x5EB5)
    order = np.argsort(rng.random(len(labels)), kind="stable")  # a seeded shuffle
    order = order[np.argsort(labels[order], kind="stable")]  # grouped by speaker
    rank = np.arange(len(order)) - np.searchsorted(labels[order], labels[order])
    return np.sort(order[rank < files_per_speaker])


@dataclass(frozen=True)
class SpeakerCohort:
    """AS-norm's cohort as WeSpeaker builds it: the mean embedding of each speaker of a train
    list (its ``score_norm`` recipe: per-speaker means of the training set, top 300)."""

    root: Path
    train_list: TrainList
    top_k: int = 300
    files_per_speaker: int | None = None  # None: every file (WeSpeaker's)

    def members(self) -> np.ndarray:
        """Indices into the train list of the files embedded for the cohort."""
        return draw_per_speaker(self.train_list.labels, self.files_per_speaker)

    def files(self) -> list[str]:
        return [self.train_list.files[i] for i in self.members()]

    def matrix(self, vectors: dict[str, np.ndarray]) -> np.ndarray:
        """``[speakers, dim]``: each speaker's mean embedding over :meth:`members` (float64)."""
        members = self.members()
        files, labels = self.train_list.files, self.train_list.labels[members]
        stacked = np.stack([vectors[files[i]] for i in members]).astype(np.float64)
        sums = np.zeros((self.train_list.num_classes, stacked.shape[1]))
        np.add.at(sums, labels, stacked)
        return sums / np.bincount(labels, minlength=self.train_list.num_classes)[:, None]


@dataclass(frozen=True)
class PldaSetup:
    """The final evaluation's PLDA back end: fitted on the embeddings of the files of a train
    list (Kaldi's recipe: centering, LDA to ``lda_dim``, length normalisation, PLDA); every
    file, or at most ``files_per_speaker`` of each speaker (the cohort's draw) for a shorter
    pass."""

    root: Path
    train_list: TrainList
    lda_dim: int | None = None
    files_per_speaker: int | None = None

    def members(self) -> np.ndarray:
        return draw_per_speaker(self.train_list.labels, self.files_per_speaker)

    def files(self) -> list[str]:
        return [self.train_list.files[i] for i in self.members()]


@dataclass
class BackendScored:
    """A system's metrics with PLDA log-likelihood ratios as scores, and the back end."""

    metrics: Metrics
    scores: np.ndarray
    backend: Backend
    fitted_files: int
    speakers: int

    def summary(self) -> dict:
        return {
            **self.metrics.to_dict(),
            "lda_dim": self.backend.lda_dim,
            "fitted_files": self.fitted_files,
            "speakers": self.speakers,
        }


@dataclass
class Normalised:
    """A system's metrics after AS-norm, and the normalised scores (trial order)."""

    metrics: Metrics
    scores: np.ndarray
    top_k: int
    cohort_size: int
    cohort_files: int

    def summary(self) -> dict:
        return {
            **self.metrics.to_dict(),
            "top_k": self.top_k,
            "cohort": self.cohort_size,
            "cohort_files": self.cohort_files,
        }


@dataclass
class EvalResult:
    """Metrics, scores (trial order) and speed of one system on one trial list, and the same
    after AS-norm when a cohort was given and with a PLDA back end when one was asked for."""

    name: str
    metrics: Metrics
    scores: np.ndarray
    seconds: float
    stats: EmbedStats
    asnorm: Normalised | None = None
    plda: BackendScored | None = None

    def summary(self) -> dict:
        summary = {
            "name": self.name,
            **self.metrics.to_dict(),
            "seconds": round(self.seconds, 3),
            "files_per_second": round(self.stats.files_per_second, 2)
            if self.stats.computed
            else None,
            "notes": self.stats.notes,
        }
        if self.asnorm is not None:
            summary["asnorm"] = self.asnorm.summary()
        if self.plda is not None:
            summary["plda"] = self.plda.summary()
        return summary

    def rows(self) -> list[dict]:
        """Table rows: the raw scores', and the AS-norm and PLDA scores' beside them."""
        rows = [self.summary()]
        if self.asnorm is not None:
            norm = self.asnorm
            rows.append(
                {
                    **rows[0],
                    **norm.metrics.to_dict(),
                    "name": f"{self.name} + AS-norm (top {norm.top_k} of "
                    f"{norm.cohort_size} speakers)",
                }
            )
        if self.plda is not None:
            lda = self.plda.backend.lda_dim
            rows.append(
                {
                    **rows[0],
                    **self.plda.metrics.to_dict(),
                    "name": f"{self.name} + PLDA ({f'LDA {lda}, ' if lda else ''}"
                    f"{self.plda.fitted_files} files of {self.plda.speakers} speakers)",
                }
            )
        return rows


def evaluate_model(
    model: torch.nn.Module,
    trials: Trials,
    audio_root: str | Path,
    protocol: Protocol | None = None,
    *,
    name: str = "model",
    batch_size: int = 32,
    device: str | torch.device = "auto",
    p_targets: tuple[float, ...] = DEFAULT_P_TARGETS,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
    progress: Progress | None = None,
    cohort: SpeakerCohort | None = None,
    plda: PldaSetup | None = None,
) -> EvalResult:
    """Embed every unique trial file once, score all trials in one vectorised pass, measure;
    with a ``cohort``, also the metrics after AS-norm against it; with ``plda``, also those of
    a PLDA back end fitted on the train list. A training file both need is embedded once."""
    protocol = protocol or Protocol()
    if (cohort is not None or plda is not None) and protocol.crops:
        raise XvecError("AS-norm and PLDA need one embedding per file: use the full protocol")
    require_both_labels(trials)
    check_files_exist(audio_root, trials.files, trials.path)
    start = time.perf_counter()
    stats = EmbedStats()
    from xvec.inference import prepare_for_inference  # torch: score files need none

    device = parse_device(str(device))
    model = prepare_for_inference(model, device)  # once, for the trial files and the cohort
    vectors = embed_files(
        model,
        audio_root,
        trials.files,
        protocol,
        batch_size=batch_size,
        device=device,
        progress=progress,
        stats=stats,
        prepare=False,
    )
    embeddings = np.stack([vectors[f] for f in trials.files])
    scores = protocol.score_trials(embeddings, trials)
    settings = {"p_targets": p_targets, "c_miss": c_miss, "c_fa": c_fa}
    metrics = compute_metrics(scores, trials.labels, **settings)
    reference: dict[tuple[Path, str], np.ndarray] = {}  # training files embedded so far
    for side in (plda, cohort):  # the cohort's files are among the back end's
        if side is None:
            continue
        root = Path(side.root)
        missing = list(dict.fromkeys(f for f in side.files() if (root, f) not in reference))
        if not missing:
            continue
        computed = embed_files(
            model,
            root,
            missing,
            protocol,
            batch_size=batch_size,
            device=device,
            progress=progress,
            prepare=False,
        )
        reference.update({(root, name): vector for name, vector in computed.items()})
    normalised = None
    if cohort is not None:
        root = Path(cohort.root)
        cohort_vectors = {name: reference[root, name] for name in cohort.files()}
        matrix = cohort.matrix(cohort_vectors)
        top_k = min(cohort.top_k, len(matrix))
        normalised_scores = as_norm(scores, trials.enroll, trials.test, embeddings, matrix, top_k)
        normalised = Normalised(
            compute_metrics(normalised_scores, trials.labels, **settings),
            normalised_scores,
            top_k,
            len(matrix),
            len(cohort_vectors),
        )
    backend_scored = None
    if plda is not None:
        root = Path(plda.root)
        train = np.stack([reference[root, name] for name in plda.files()])
        labels = plda.train_list.labels[plda.members()]
        backend = fit_backend(train, labels, lda_dim=plda.lda_dim)
        llrs = backend.score_trials(embeddings, trials.enroll, trials.test)
        backend_scored = BackendScored(
            compute_metrics(llrs, trials.labels, **settings),
            llrs,
            backend,
            len(train),
            plda.train_list.num_classes,
        )
    return EvalResult(
        name=name,
        metrics=metrics,
        scores=scores,
        seconds=time.perf_counter() - start,
        stats=stats,
        asnorm=normalised,
        plda=backend_scored,
    )


def subsample_trials(trials: Trials, max_trials: int, seed: int = 0) -> tuple[Trials, np.ndarray]:
    """A stratified random subset of at most ``max_trials`` trials, and their indices.

    Targets and non-targets keep their proportion (at least one of each); the subset keeps the
    list's order, is the same for the same ``seed``, and lists only the files it uses, so only
    those are embedded. A list no longer than ``max_trials`` comes back whole.
    """
    if max_trials < 2:
        raise XvecError(
            f"max_trials must be at least 2 (a target and a non-target), got {max_trials}",
            options=("max_trials",),
        )
    total = len(trials)
    if total <= max_trials:
        return trials, np.arange(total)
    is_target = trials.labels == 1
    n_target = int(is_target.sum())
    want_target = min(max(round(max_trials * n_target / total), 1), max_trials - 1, n_target)
    rng = np.random.default_rng([seed, 0x5EB5])
    keep = np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(is_target), want_target, replace=False),
                rng.choice(np.flatnonzero(~is_target), max_trials - want_target, replace=False),
            ]
        )
    )
    used = np.union1d(trials.enroll[keep], trials.test[keep])
    subset = Trials(
        path=trials.path,
        labels=trials.labels[keep],
        enroll=np.searchsorted(used, trials.enroll[keep]),
        test=np.searchsorted(used, trials.test[keep]),
        files=[trials.files[i] for i in used],
    )
    return subset, keep


@dataclass(frozen=True)
class DcfSettings:
    """The minDCF operating points: priors and costs (checked on creation)."""

    p_targets: tuple[float, ...] = DEFAULT_P_TARGETS
    c_miss: float = 1.0
    c_fa: float = 1.0

    def __post_init__(self) -> None:
        if not self.p_targets:
            object.__setattr__(self, "p_targets", DEFAULT_P_TARGETS)
        object.__setattr__(self, "p_targets", tuple(dict.fromkeys(self.p_targets)))
        for prior in self.p_targets:
            if not 0.0 < prior < 1.0:
                raise XvecError(
                    f"p_targets must lie strictly between 0 and 1, got {prior:g}",
                    options=("p_targets",),
                )
        for name, cost in (("c_miss", self.c_miss), ("c_fa", self.c_fa)):
            if not cost > 0:
                raise XvecError(f"{name} must be positive, got {cost:g}", options=(name,))

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`xvec.metrics.compute_metrics`."""
        return {"p_targets": self.p_targets, "c_miss": self.c_miss, "c_fa": self.c_fa}


def write_eval_outputs(
    folder: Path, summary: dict[str, Any], scores: np.ndarray | None, trials: Trials | None
) -> list[Path]:
    """Write a system's ``scores.txt`` (when it has scores) and ``result.json``, atomically."""
    written = []
    if scores is not None and trials is not None:
        written.append(
            write_scores(folder / "scores.txt", scores, trials.enroll_names(), trials.test_names())
        )
    result = folder / "result.json"
    write_json_atomic(result, summary)
    return [*written, result]
