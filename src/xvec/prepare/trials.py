"""Trial lists built from speakers' files: target and non-target pairs, seeded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from xvec.errors import XvecError

# --------------------------------------------------------------------------- trials


@dataclass(frozen=True)
class TrialPairs:
    """Trials as arrays: label (1 target, 0 non-target) and enroll/test indices into files."""

    labels: np.ndarray  # int8 [trials]
    enroll: np.ndarray  # int64 [trials]
    test: np.ndarray  # int64 [trials]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _target_pairs(
    speaker_ids: np.ndarray, per_file: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Each file enrols up to ``per_file`` distinct other files of its own speaker."""
    order = np.argsort(speaker_ids, kind="stable")
    bounds = np.flatnonzero(np.diff(speaker_ids[order])) + 1
    enroll, test = [], []
    for members in np.split(order, bounds):
        count = members.size
        if count < 2:
            continue
        k = min(per_file, count - 1)
        keys = rng.random((count, count))
        np.fill_diagonal(keys, np.inf)  # never pair a file with itself
        partners = np.argsort(keys, axis=1)[:, :k]
        enroll.append(np.repeat(members, k))
        test.append(members[partners].reshape(-1))
    if not enroll:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(enroll), np.concatenate(test)


def _nontarget_pairs(
    speaker_ids: np.ndarray,
    gender_ids: np.ndarray,
    per_file: int,
    same_gender: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Each file enrols ``per_file`` files of other speakers, of its own gender with odds
    ``same_gender`` (where the gender is known and another speaker of it exists)."""
    n_files = speaker_ids.size
    enroll = np.repeat(np.arange(n_files), per_file)
    by_gender = np.argsort(gender_ids, kind="stable")
    starts = np.searchsorted(gender_ids[by_gender], gender_ids[enroll], side="left")
    stops = np.searchsorted(gender_ids[by_gender], gender_ids[enroll], side="right")
    want_same = (rng.random(enroll.size) < same_gender) & (gender_ids[enroll] >= 0)
    partner = np.full(enroll.size, -1, dtype=np.int64)
    pending = np.arange(enroll.size)
    for attempt in range(200):  # rejection sampling; a handful of rounds in practice
        if pending.size == 0:
            break
        if attempt == 100:  # a gender with a single speaker: fall back to any other speaker
            want_same[pending] = False
        draw = rng.random(pending.size)
        same = want_same[pending]
        span = stops[pending] - starts[pending]
        candidate = np.where(
            same,
            by_gender[np.minimum(starts[pending] + (draw * span).astype(np.int64), n_files - 1)],
            (draw * n_files).astype(np.int64),
        )
        accepted = speaker_ids[candidate] != speaker_ids[enroll[pending]]
        partner[pending[accepted]] = candidate[accepted]
        pending = pending[~accepted]
    keep = partner >= 0
    return enroll[keep], partner[keep]


def _unique_pairs(enroll: np.ndarray, test: np.ndarray, n_files: int) -> np.ndarray:
    """Indices of the first occurrence of each unordered pair, in their original order."""
    code = np.minimum(enroll, test) * n_files + np.maximum(enroll, test)
    _, first = np.unique(code, return_index=True)
    return np.sort(first)


def build_trials(
    speakers: Sequence[str],
    genders: Mapping[str, str] | None = None,
    per_file: int = 5,
    same_gender: float = 2 / 3,
    seed: int = 0,
    balance: bool = True,
) -> TrialPairs:
    """Verification trials over files whose speakers are ``speakers[i]``.

    Every file enrols about ``per_file`` target trials (other files of its speaker) and as many
    non-target trials (files of other speakers, of the same gender with odds ``same_gender``
    where ``genders`` names it). A pair is never repeated in either order; with ``balance`` the
    larger class is subsampled so targets and non-targets are equally many. The trial order is
    shuffled, and everything is deterministic for ``seed``.
    """
    names, speaker_ids = np.unique(np.asarray(speakers, dtype=object), return_inverse=True)
    if names.size < 2:
        raise XvecError(f"trials need at least 2 speakers, got {names.size}")
    genders = genders or {}
    gender_names = sorted({g for g in genders.values() if g})
    gender_code = {g: i for i, g in enumerate(gender_names)}
    speaker_gender = np.array([gender_code.get(genders.get(s, ""), -1) for s in names])
    gender_ids = speaker_gender[speaker_ids]
    rng = np.random.default_rng([seed, 0x7121])
    t_enroll, t_test = _target_pairs(speaker_ids, per_file, rng)
    n_enroll, n_test = _nontarget_pairs(speaker_ids, gender_ids, per_file, same_gender, rng)
    n_files = speaker_ids.size
    t_keep = _unique_pairs(t_enroll, t_test, n_files)
    n_keep = _unique_pairs(n_enroll, n_test, n_files)
    if t_keep.size == 0:
        raise XvecError("trials need a speaker with at least 2 files; every speaker has one")
    if balance:
        count = min(t_keep.size, n_keep.size)
        t_keep = np.sort(rng.choice(t_keep, size=count, replace=False))
        n_keep = np.sort(rng.choice(n_keep, size=count, replace=False))
    labels = np.concatenate([np.ones(t_keep.size, np.int8), np.zeros(n_keep.size, np.int8)])
    enroll = np.concatenate([t_enroll[t_keep], n_enroll[n_keep]])
    test = np.concatenate([t_test[t_keep], n_test[n_keep]])
    order = rng.permutation(labels.size)
    return TrialPairs(labels=labels[order], enroll=enroll[order], test=test[order])
