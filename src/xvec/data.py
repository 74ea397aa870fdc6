"""VoxCeleb-format lists, the speaker batch sampler, and the training dataset.

Formats (as voxceleb_trainer's ``lists/``): a train list has ``SPEAKER relative/path`` per line,
a trial list ``LABEL enroll test`` (1 target, 0 non-target), a file list one path per line.
Whitespace is free, blank lines and ``#`` comments are allowed, and a malformed line is an
error naming the file, the line and what was expected.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xvec.audio import DecodeCache, audio_info, crop_samples, read_crop, train_crop
from xvec.augment import SPEAKER_SPEEDS, change_speed, speed_source_samples
from xvec.errors import XvecError
from xvec.files import file_problem

_COMMENT = re.compile(r"(?:^|\s)#")  # a '#' at the start or after whitespace begins a comment


def _lines(path: Path, what: str) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) of the non-blank, non-comment lines of a list file."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.txt"))[:3]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise XvecError(f"{path}: is a folder, not a list file; give the {what} itself{hint}")
    if not path.is_file():
        raise XvecError(f"{path}: {what} not found")
    number = 0
    try:  # streamed: a multi-million-line trial list is never held as text
        with path.open(encoding="utf-8-sig") as handle:  # utf-8-sig: a leading BOM is dropped
            for number, line in enumerate(handle, start=1):
                content = _COMMENT.split(line, maxsplit=1)[0].strip() if "#" in line else line
                fields = content.split()
                if fields:
                    yield number, fields
    except UnicodeDecodeError as exc:
        # the text reader decodes ahead of the lines it has given: find the line itself
        line, where = _first_undecodable_line(path) or (number + 1, exc.reason)
        raise XvecError(
            f"{path}:{line}: {what} is not UTF-8 text ({where}); save it as UTF-8"
        ) from exc
    except OSError as exc:
        raise XvecError(f"{path}: cannot read {what} ({exc.strerror or exc})") from exc


def _first_undecodable_line(path: Path) -> tuple[int, str] | None:
    """(line number, what and where) of the first line of ``path`` that is not UTF-8.

    Read again in binary, only after the text reader failed: UTF-8 never uses the newline
    byte inside a character, so the file splits into lines before decoding.
    """
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                byte = raw[exc.start]
                return number, f"byte 0x{byte:02x} at column {exc.start + 1}: {exc.reason}"
    return None


@dataclass
class TrainList:
    """A parsed train list: utterance paths, integer labels and the sorted speaker names."""

    path: Path
    files: list[str]
    labels: np.ndarray  # int64 [utterances], index into speakers
    speakers: list[str]
    lines: list[int]

    @property
    def num_classes(self) -> int:
        return len(self.speakers)

    def utterances_per_speaker(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)


def read_train_list(path: str | Path) -> TrainList:
    """Parse a ``SPEAKER path`` train list; speakers are numbered in sorted order as VT does."""
    path = Path(path)
    speakers_of: list[str] = []
    files: list[str] = []
    lines: list[int] = []
    seen: dict[str, tuple[str, int]] = {}
    repeats: list[tuple[int, int]] = []  # (line, the earlier line it repeats)
    for number, fields in _lines(path, "train list"):
        if len(fields) == 3 and fields[0] in ("0", "1"):
            raise XvecError(
                f"{path}:{number}: this looks like a trial list ('LABEL enroll test'); a train "
                "list (data.train_list) needs 'SPEAKER relative/path' lines (xvec prepare "
                "folder writes one)"
            )
        if len(fields) != 2:
            raise XvecError(
                f"{path}:{number}: expected 2 columns 'SPEAKER relative/path', got {len(fields)}"
            )
        speaker, file = fields
        previous = seen.get(file)
        if previous is not None:
            if previous[0] != speaker:
                raise XvecError(
                    f"{path}:{number}: '{file}' is listed for speaker '{speaker}' but line "
                    f"{previous[1]} gives speaker '{previous[0]}'; fix one of them"
                )
            repeats.append((number, previous[1]))
            continue
        seen[file] = (speaker, number)
        speakers_of.append(speaker)
        files.append(file)
        lines.append(number)
    if not files:
        raise XvecError(f"{path}: train list is empty (expected lines 'SPEAKER relative/path')")
    if repeats:
        _warn_repeated_lines(path, repeats)
    speakers = sorted(set(speakers_of))
    index = {name: i for i, name in enumerate(speakers)}
    labels = np.fromiter((index[s] for s in speakers_of), dtype=np.int64, count=len(files))
    return TrainList(path=path, files=files, labels=labels, speakers=speakers, lines=lines)


def _warn_repeated_lines(path: Path, repeats: list[tuple[int, int]]) -> None:
    """Warn once that train-list lines repeat earlier ones (each file is still used once)."""
    import warnings

    line, earlier = repeats[0]
    warnings.warn(
        f"{path}: {len(repeats)} line(s) repeat an earlier line (first: line {line} repeats "
        f"line {earlier}); each file is used once",
        UserWarning,
        stacklevel=3,
    )


@dataclass
class Trials:
    """A parsed trial list; ``files`` are the unique paths and the indices point into them."""

    path: Path
    labels: np.ndarray  # int8 [trials]
    enroll: np.ndarray  # int64 [trials] index into files
    test: np.ndarray  # int64 [trials]
    files: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def enroll_names(self) -> list[str]:
        return [self.files[i] for i in self.enroll]

    def test_names(self) -> list[str]:
        return [self.files[i] for i in self.test]


def require_both_labels(trials: Trials) -> None:
    """EER and minDCF need target and non-target trials: say so before any long work."""
    targets = int(trials.labels.sum())
    if targets == 0 or targets == len(trials):
        kind = "target (1)" if targets == len(trials) else "non-target (0)"
        raise XvecError(
            f"{trials.path}: all {len(trials)} trials are {kind}; EER and minDCF are undefined "
            "without both labels 1 and 0"
        )


def read_trials(path: str | Path) -> Trials:
    """Parse a ``LABEL enroll test`` trial list (label 1 = target, 0 = non-target)."""
    path = Path(path)
    labels = array("b")  # compact column stores: memory is per trial, keep it small
    enrolls, tests = array("q"), array("q")
    index: dict[str, int] = {}
    for number, fields in _lines(path, "trial list"):
        if len(fields) != 3:
            raise XvecError(
                f"{path}:{number}: expected 3 columns 'LABEL enroll test', got {len(fields)}"
            )
        label, enroll, test = fields
        if label not in ("0", "1"):
            raise XvecError(
                f"{path}:{number}: label must be 1 (target) or 0 (non-target), got '{label}'"
            )
        labels.append(label == "1")
        enrolls.append(index.setdefault(enroll, len(index)))
        tests.append(index.setdefault(test, len(index)))
    if not labels:
        raise XvecError(f"{path}: trial list is empty (expected lines 'LABEL enroll test')")
    _warn_odd_trials(path, enrolls, tests)
    return Trials(
        path=path,
        labels=np.frombuffer(labels, dtype=np.int8).copy(),
        enroll=np.frombuffer(enrolls, dtype=np.int64).copy(),
        test=np.frombuffer(tests, dtype=np.int64).copy(),
        files=list(index),
    )


def _warn_odd_trials(path: Path, enrolls: array, tests: array) -> None:
    """Warn once each about trials listed twice and trials whose enroll and test are the same."""
    import warnings

    enroll = np.frombuffer(enrolls, dtype=np.int64)
    test = np.frombuffer(tests, dtype=np.int64)
    same = int((enroll == test).sum())
    if same:
        warnings.warn(
            f"{path}: {same} trial(s) compare a file with itself (enroll == test); "
            "they are counted as they are",
            UserWarning,
            stacklevel=3,
        )
    pairs = np.unique(np.stack([enroll, test], axis=1), axis=0).shape[0]
    if pairs < enroll.size:
        warnings.warn(
            f"{path}: {enroll.size - pairs} trial(s) repeat an earlier enroll/test pair; "
            "they are counted as they are",
            UserWarning,
            stacklevel=3,
        )


def read_file_list(path: str | Path) -> list[str]:
    """Parse a plain list of audio paths (one per line; duplicates removed, order kept)."""
    path = Path(path)
    files: dict[str, None] = {}
    for number, fields in _lines(path, "file list"):
        if len(fields) != 1:
            raise XvecError(
                f"{path}:{number}: expected one path per line, got {len(fields)} columns "
                "(paths with spaces are not supported)"
            )
        files.setdefault(fields[0], None)
    if not files:
        raise XvecError(f"{path}: file list is empty")
    return list(files)


def check_files_exist(root: str | Path, files: Iterable[str], source: str | Path) -> None:
    """Report every listed file absent under ``root`` at once, before long work starts.

    Names that exist but are not regular files (a folder, a FIFO, a symlink loop) are reported
    as such, apart from the missing ones: a FIFO would block the reader.
    """
    root = Path(root)
    if not root.is_dir():
        raise XvecError(f"{root}: audio root folder not found (named for {source})")
    missing: list[str] = []
    irregular: list[str] = []
    for name in files:
        if (root / name).is_file():  # the common case: one stat, as before
            continue
        problem = file_problem(root / name)
        if problem is not None and problem.startswith("not found"):
            missing.append(name)
        elif problem is not None:
            irregular.append(f"{name} {problem}")
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} listed file(s) not found under {root}: {_first_few(missing)}"
        )
    if irregular:
        problems.append(
            f"{len(irregular)} listed name(s) under {root} cannot be read as files: "
            f"{_first_few(irregular)}"
        )
    if problems:
        raise XvecError(f"{source}: {'; '.join(problems)}")


def _first_few(names: list[str], count: int = 3) -> str:
    """``a, b, c and N more``: the first ``count`` names of a list for a one-line message."""
    more = f" and {len(names) - count} more" if len(names) > count else ""
    return ", ".join(names[:count]) + more


# --------------------------------------------------------------------------- sampling


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, 0x5A4D])


def make_batches(
    labels: np.ndarray,
    batch_size: int,
    per_speaker: int,
    max_seg_per_spk: int,
    distinct_speakers: bool,
    seed: int,
    epoch: int,
) -> list[np.ndarray]:
    """One epoch's batches: each an int array ``[rows, per_speaker]`` of utterance indices.

    Every utterance appears in a row once per epoch (up to ``max_seg_per_spk`` per speaker);
    a speaker's last row is completed with its own earlier utterances. With
    ``distinct_speakers`` (metric-learning losses) no speaker appears twice in a batch: batches
    are filled by drawing speakers without replacement, weighted by their remaining rows.
    Deterministic for (seed, epoch), so a resumed run sees the same batches.
    """
    rng = _epoch_rng(seed, epoch)
    num_classes = int(labels.max()) + 1
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(num_classes + 1))
    rows_by_speaker: list[np.ndarray] = []
    for speaker in range(num_classes):
        utts = order[bounds[speaker] : bounds[speaker + 1]]
        if utts.size == 0:
            rows_by_speaker.append(np.empty((0, per_speaker), dtype=np.int64))
            continue
        utts = rng.permutation(utts)[:max_seg_per_spk]
        n_rows = -(-utts.size // per_speaker)
        filled = np.resize(utts, n_rows * per_speaker)  # wraps the speaker's own utterances
        rows_by_speaker.append(filled.reshape(n_rows, per_speaker))
    if not distinct_speakers:
        rows = np.concatenate(rows_by_speaker)
        rows = rows[rng.permutation(len(rows))]
        batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:  # batch norm cannot train on one row
            batches[-2] = np.concatenate(batches[-2:])
            batches.pop()
        return batches

    remaining = np.array([len(r) for r in rows_by_speaker], dtype=np.int64)
    taken = np.zeros(num_classes, dtype=np.int64)
    batches = []
    while True:
        available = np.flatnonzero(remaining)
        if available.size < 2:
            break
        size = min(batch_size, available.size)
        weights = remaining[available] / remaining[available].sum()
        chosen = rng.choice(available, size=size, replace=False, p=weights)
        batches.append(np.stack([rows_by_speaker[s][taken[s]] for s in chosen]))
        taken[chosen] += 1
        remaining[chosen] -= 1
    return batches


def check_sampler(
    num_classes: int, batch_size: int, per_speaker: int, distinct_speakers: bool, loss_name: str
) -> None:
    """Fail early, saying what to change, when a metric loss cannot get distinct speakers."""
    if distinct_speakers and num_classes < 2:
        raise XvecError(f"loss '{loss_name}' needs at least 2 training speakers, the list has 1")
    if distinct_speakers and batch_size > num_classes:
        raise XvecError(
            f"loss '{loss_name}' compares distinct speakers within a batch, but train.batch_size "
            f"{batch_size} exceeds the {num_classes} training speakers; set train.batch_size "
            f"<= {num_classes} (e.g. --set train.batch_size={num_classes})"
        )


class EpochBatches:
    """The batch keys of one epoch for one rank, resumable from a batch position.

    ``batch_size`` is the global batch: with ``world_size`` ranks, every batch's rows are dealt
    out across the ranks (rank ``r`` takes rows ``r, r + world, ...``), so a run on N processes
    sees the same batches as a single process. Iterating yields ``(epoch, batch_index, rows,
    row_ids)`` keys; ``row_ids`` are the rows' positions in the global batch, from which every
    crop's randomness is derived, so results depend neither on worker timing nor on N.
    """

    def __init__(
        self,
        labels: np.ndarray,
        batch_size: int,
        per_speaker: int,
        max_seg_per_spk: int,
        distinct_speakers: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.labels = labels
        self.batch_size = batch_size
        self.per_speaker = per_speaker
        self.max_seg_per_spk = max_seg_per_spk
        self.distinct_speakers = distinct_speakers
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0
        self._batches: list[np.ndarray] = []
        self.set_epoch(0)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and the first batch to yield."""
        self.epoch = epoch
        self.start = start
        batches = make_batches(
            self.labels,
            self.batch_size,
            self.per_speaker,
            self.max_seg_per_spk,
            self.distinct_speakers,
            self.seed,
            epoch,
        )
        # Every rank must run the same number of steps with at least one row each.
        self._batches = [b for b in batches if len(b) >= self.world_size]

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        for index in range(self.start, len(self._batches)):
            batch = self._batches[index]
            row_ids = np.arange(self.rank, len(batch), self.world_size)
            yield (self.epoch, index, batch[row_ids], row_ids)


class TrainDataset:
    """Map-style dataset whose items are whole batches: key -> (waveforms, labels).

    ``waveforms`` is float32 ``[rows, per_speaker, samples]``; crops of ``max_frames`` frames are
    read from disk (only the needed samples) and optionally augmented. With ``decode_cache`` (a
    folder) each file is decoded once, into a memory-mapped ``.npy`` there, and crops are sliced
    from it: the same crops, without decoding Opus/FLAC at every step (see
    :class:`xvec.audio.DecodeCache`; the folder holds ~64 kB per second of Opus audio).

    ``speed_speakers`` is WeSpeaker's speed perturbation: each batch row plays at a speed drawn
    uniformly from :data:`xvec.augment.SPEAKER_SPEEDS` (its own random stream, so the crops and
    augmentations drawn are those of a run without it) and speed ``i``'s rows are labelled
    ``speaker + i x num_classes``: the loss then needs ``3 x num_classes`` classes.
    """

    def __init__(
        self,
        root: str | Path,
        train_list: TrainList,
        max_frames: int,
        seed: int,
        augmenter: object | None = None,
        decode_cache: str | Path | None = None,
        speed_speakers: bool = False,
    ) -> None:
        self.root = Path(root)
        self.files = train_list.files
        self.labels = train_list.labels
        self.num_classes = train_list.num_classes
        self.max_frames = max_frames
        self.seed = seed
        self.augmenter = augmenter
        self.speed_speakers = speed_speakers
        self.cache = DecodeCache(decode_cache) if decode_cache is not None else None
        self._infos: dict[int, object] = {}

    def __getitem__(self, key: tuple[int, int, np.ndarray, np.ndarray]):
        import torch

        epoch, index, rows, row_ids = key
        crops = []
        speeds = np.zeros(rows.shape[0], dtype=np.int64)
        for i, (row, row_id) in enumerate(zip(rows, row_ids, strict=True)):
            if self.speed_speakers:
                draw = np.random.default_rng([self.seed, epoch, index, int(row_id), 0x5EED])
                speeds[i] = draw.integers(len(SPEAKER_SPEEDS))
            rng = np.random.default_rng([self.seed, epoch, index, int(row_id), 0xC0])
            speed = SPEAKER_SPEEDS[speeds[i]]
            crops += [self._crop(int(utt), rng, speed) for utt in row]
        waves = torch.from_numpy(np.stack(crops).reshape(rows.shape[0], rows.shape[1], -1))
        labels = torch.from_numpy(self.labels[rows[:, 0]] + speeds * self.num_classes)
        return waves, labels

    def _crop(self, utt: int, rng: np.random.Generator, speed: float = 1.0) -> np.ndarray:
        """One random training crop (header read once per file and worker), augmented.

        At ``speed`` != 1 the crop is cut from the ``speed_source_samples`` needed and resampled
        to the crop's length.
        """
        info = self._infos.get(utt)
        if info is None:
            info = self._infos[utt] = audio_info(self.root / self.files[utt])
        path = self.root / self.files[utt]
        if speed == 1.0:
            audio = train_crop(path, self.max_frames, rng, info=info, cache=self.cache)
        else:
            length = crop_samples(self.max_frames)
            needed = speed_source_samples(length, speed)
            source = read_crop(path, needed, rng.random, info, self.cache)
            audio = change_speed(source, speed, length=length)
        if self.augmenter is not None:
            audio = self.augmenter(audio, rng)
        return audio

    def __len__(self) -> int:  # pragma: no cover - keys come from EpochBatches
        return len(self.files)


def class_summary(train_list: TrainList) -> dict[str, float]:
    """Speakers (nClasses), utterances and utterances-per-speaker statistics."""
    counts = train_list.utterances_per_speaker()
    return {
        "speakers": train_list.num_classes,
        "utterances": len(train_list.files),
        "min_per_speaker": int(counts.min()),
        "median_per_speaker": float(np.median(counts)),
        "max_per_speaker": int(counts.max()),
    }
