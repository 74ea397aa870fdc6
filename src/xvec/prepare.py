"""List preparers: VoxCeleb-format train and trial lists for corpora already on disk.

Each preparer scans a known layout, writes ``SPEAKER relative/path`` train lists (and trial lists
``LABEL enroll test`` where the corpus has none), and returns a summary of what it wrote
(:class:`FolderLists`, :class:`SpeechoceanLists`, :class:`VoxcelebLists`), which
:func:`xvec.report.prepared_text` renders. Lists are sorted and written atomically, so a re-run
gives identical bytes and an interrupted one never leaves half a list. Anything wrong with the
input is one :class:`~xvec.errors.XvecError` naming the folder and what to do.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xvec.audio import AUDIO_EXTENSIONS
from xvec.data import read_trials
from xvec.errors import XvecError
from xvec.files import write_text_atomic

__all__ = [
    "AUDIO_EXTENSIONS",
    "VOX1_TRAIN_LIST",
    "VOX2_TRAIN_LIST",
    "FolderLists",
    "SpeechoceanLists",
    "TrainListSummary",
    "TrialListSummary",
    "TrialPairs",
    "VoxcelebLists",
    "build_trials",
    "check_overwrite",
    "find_audio",
    "prepare_folder",
    "prepare_speechocean762",
    "prepare_voxceleb",
    "write_train_list",
    "write_trials",
]

UNREADABLE_EXTENSIONS = (".m4a", ".aac")  # VoxCeleb2's AAC: convert to wav first

# VoxCeleb1's 40 test speakers (the VoxCeleb1-O trial list uses only these); the rest are "dev".
VOX1_TEST_SPEAKERS = frozenset(f"id{n}" for n in range(10270, 10310))
# Trial lists a VoxCeleb user may put next to the train list, most common first.
VOX1_TRIAL_LISTS = (
    "veri_test2.txt",
    "veri_test.txt",
    "list_test_hard2.txt",
    "list_test_all2.txt",
    "list_test_hard.txt",
    "list_test_all.txt",
)


# Train list names the recipes (recipes/*.toml) and docs/lab.md expect in lists/.
VOX2_TRAIN_LIST = "voxceleb2_train_list.txt"
VOX1_TRAIN_LIST = "voxceleb1_train_list.txt"


# --------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class TrainListSummary:
    """A train list written: where, and how many speakers and files it holds."""

    path: Path
    speakers: int
    files: int


@dataclass(frozen=True)
class TrialListSummary:
    """A trial list written: trials (of which targets), and the speakers and files they use."""

    path: Path
    trials: int
    targets: int
    speakers: int
    files: int


@dataclass(frozen=True)
class FolderLists:
    """What :func:`prepare_folder` wrote; ``skipped`` audio files lay directly in ``root``."""

    train: TrainListSummary
    root: Path
    skipped: int
    excluded_speakers: int = 0  # left out: they are in an ``exclude_trials`` list
    overlaps: list[tuple[Path, int]] = field(default_factory=list)  # trial lists beside it


@dataclass(frozen=True)
class SpeechoceanLists:
    """What :func:`prepare_speechocean762` wrote; paths are relative to ``audio``.

    ``skipped`` files belong to speakers missing from the speaker table ``table``.
    """

    train: TrainListSummary
    trials: TrialListSummary
    audio: Path
    table: Path
    skipped: int


@dataclass(frozen=True)
class VoxcelebLists:
    """What :func:`prepare_voxceleb` wrote, from which ``source`` and folder, and its notes."""

    train: TrainListSummary
    source: str
    train_path: Path
    notes: tuple[str, ...]


# --------------------------------------------------------------------------- writing lists


def check_overwrite(paths: Iterable[str | Path], force: bool) -> None:
    """Refuse to replace an existing list unless ``force``: one error naming the first one."""
    if force:
        return
    existing = [Path(p) for p in paths if Path(p).exists()]
    if existing:
        others = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise XvecError(
            f"{existing[0]} exists{others}; give force to overwrite it", options=("force",)
        )


def _check_no_spaces(paths: Iterable[str], where: Path) -> None:
    """List files split on whitespace, so a path holding any cannot be written."""
    bad = [p for p in paths if any(ch.isspace() for ch in p)]
    if bad:
        raise XvecError(
            f"{where}: {len(bad)} audio path(s) contain whitespace, which list files cannot "
            f"hold (first: '{bad[0]}'); rename them"
        )


def write_train_list(path: str | Path, entries: Iterable[tuple[str, str]]) -> int:
    """Write sorted ``SPEAKER relative/path`` lines; returns the number of lines."""
    lines = sorted(f"{speaker} {file}" for speaker, file in entries)
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)


def write_trials(path: str | Path, trials: TrialPairs, files: Sequence[str]) -> int:
    """Write ``LABEL enroll test`` lines in the order of ``trials``; returns their number."""
    names = np.asarray(files, dtype=object)
    lines = [
        f"{label} {enroll} {test}"
        for label, enroll, test in zip(
            trials.labels.tolist(), names[trials.enroll], names[trials.test], strict=True
        )
    ]
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)


# --------------------------------------------------------------------------- scanning


def find_audio(root: str | Path, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[str]:
    """Audio files under ``root`` as sorted POSIX paths relative to it (hidden entries skipped).

    Symbolic links to folders are followed (datasets are often linked in), each real folder once.
    """
    root = Path(root)
    wanted = tuple(ext.lower() for ext in extensions)
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        relative = Path(folder).relative_to(root).as_posix()
        prefix = "" if relative == "." else relative + "/"
        found += [
            prefix + name
            for name in names
            if not name.startswith(".") and name.lower().endswith(wanted)
        ]
    return sorted(found)


def _speaker_entries(files: Iterable[str]) -> list[tuple[str, str]]:
    """``(speaker, path)`` with the speaker being the first path component."""
    return [(path.split("/", 1)[0], path) for path in files if "/" in path]


def _no_readable_audio(root: Path, what: str) -> XvecError:
    """The error for a folder without audio, pointing at AAC files that need converting."""
    aac = find_audio(root, UNREADABLE_EXTENSIONS)
    if aac:
        return XvecError(
            f"{root}: found {len(aac)} .m4a/.aac file(s) but no wav/flac/ogg; xvec reads audio "
            "with soundfile, which cannot decode AAC: convert them first (e.g. "
            "'ffmpeg -i in.m4a -ac 1 -ar 16000 out.wav', as voxceleb_trainer's dataprep --convert)"
        )
    return XvecError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found {what}")


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


# --------------------------------------------------------------------------- generic folder


def prepare_folder(
    root: str | Path,
    output: str | Path,
    force: bool = False,
    exclude_trials: Sequence[str | Path] = (),
) -> FolderLists:
    """Train list of any ``SPEAKER/.../file.wav`` tree: the speaker is the first folder name.

    Speakers with files in an ``exclude_trials`` list (paths relative to ``root``) are left
    out, so a model is never trained on its test speakers. Trial lists lying beside
    ``output`` whose speakers are in the written list are reported in ``overlaps``. An
    existing ``output`` is replaced only with ``force``.
    """
    root, output = Path(root), Path(output)
    check_overwrite([output], force)
    excluded = set()
    for trials in exclude_trials:
        speakers = _trial_speakers(Path(trials))
        if not speakers:
            raise XvecError(f"{trials}: no trial paths of the form SPEAKER/.../file")
        excluded |= speakers
    if not root.is_dir():
        raise XvecError(f"{root}: folder not found (expected SPEAKER/.../file.wav under it)")
    files = find_audio(root)
    entries = _speaker_entries(files)
    if not entries:
        if files:
            raise XvecError(
                f"{root}: {len(files)} audio file(s) but none inside a speaker folder; "
                "expected SPEAKER/.../file.wav"
            )
        raise _no_readable_audio(root, "(expected SPEAKER/.../file.wav)")
    _check_no_spaces((path for _, path in entries), root)
    speakers = {speaker for speaker, _ in entries}
    if excluded and not excluded & speakers:
        raise XvecError(
            f"{', '.join(map(str, exclude_trials))}: none of its speakers is a folder of {root}; "
            "its paths must be relative to that folder"
        )
    kept = [(speaker, path) for speaker, path in entries if speaker not in excluded]
    if not kept:
        raise XvecError(f"{root}: every speaker is in the excluded trial list(s)")
    count = write_train_list(output, kept)
    written = {speaker for speaker, _ in kept}
    train = TrainListSummary(output, len(written), count)
    return FolderLists(
        train,
        root,
        skipped=len(files) - len(entries),
        excluded_speakers=len(speakers & excluded),
        overlaps=_trial_overlaps(output, written),
    )


def _trial_speakers(trials: Path) -> set[str]:
    """The speakers (first path component) of the files of a trial list."""
    return {speaker for speaker, _ in _speaker_entries(read_trials(trials).files)}


def _trial_overlaps(output: Path, speakers: set[str]) -> list[tuple[Path, int]]:
    """(trial list, shared speakers) for trial lists beside ``output`` that share speakers."""
    overlaps = []
    for candidate in sorted(output.parent.glob("*.txt")):
        if candidate.resolve() == output.resolve():
            continue
        try:
            trial_speakers = _trial_speakers(candidate)
        except XvecError:  # not a trial list
            continue
        shared = len(trial_speakers & speakers)
        if shared:
            overlaps.append((candidate, shared))
    return overlaps


# --------------------------------------------------------------------------- speechocean762


@dataclass(frozen=True)
class _SpeakerTable:
    """Part (train/dev) and gender of each speaker, and the folder holding SPEAKER*/ audio."""

    part: dict[str, str]
    gender: dict[str, str]
    audio: Path
    source: Path


def _speechocean_from_csv(root: Path) -> _SpeakerTable:
    """The layout of xvec's shared copy: speakers.csv (speaker, part, gender) and audio/."""
    table = root / "speakers.csv"
    with table.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        needed = {"speaker", "part"}
        if not reader.fieldnames or not needed <= set(reader.fieldnames):
            raise XvecError(f"{table}: expected a header with columns speaker, part (and gender)")
        part, gender = {}, {}
        for line, row in enumerate(reader, start=2):
            name, role = (row.get("speaker") or "").strip(), (row.get("part") or "").strip()
            if not name or role not in ("train", "dev", "test"):
                raise XvecError(f"{table}:{line}: expected a speaker and part train/dev/test")
            part[name] = "train" if role == "train" else "dev"
            gender[name] = (row.get("gender") or "").strip().lower()
    return _SpeakerTable(part=part, gender=gender, audio=root / "audio", source=table)


def _speechocean_from_kaldi(root: Path) -> _SpeakerTable:
    """The original OpenSLR 101 layout: train/ and test/ Kaldi folders with wav.scp."""
    part: dict[str, str] = {}
    gender: dict[str, str] = {}
    audio_dirs: set[Path] = set()
    for folder, role in (("train", "train"), ("test", "dev")):
        scp = root / folder / "wav.scp"
        for line, text in enumerate(scp.read_text(encoding="utf-8-sig").splitlines(), start=1):
            fields = text.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise XvecError(f"{scp}:{line}: expected 'UTTERANCE path/to/audio'")
            path = Path(fields[1])
            part[path.parent.name] = role
            audio_dirs.add(path.parent.parent)
        spk2gender = root / folder / "spk2gender"
        if spk2gender.is_file():
            for text in spk2gender.read_text(encoding="utf-8-sig").splitlines():
                fields = text.split()
                if len(fields) == 2:
                    name = fields[0] if not fields[0].isdigit() else f"SPEAKER{fields[0]:0>4}"
                    gender[name] = fields[1].lower()
    if len(audio_dirs) != 1:
        raise XvecError(f"{root}: wav.scp files point into {len(audio_dirs)} audio folders")
    audio = audio_dirs.pop()
    return _SpeakerTable(
        part=part, gender=gender, audio=audio if audio.is_absolute() else root / audio, source=root
    )


def _speechocean_table(root: Path) -> _SpeakerTable:
    """The speaker table of either layout (xvec's shared copy, or OpenSLR 101's original)."""
    if not root.is_dir():
        raise XvecError(f"{root}: speechocean762 folder not found")
    if (root / "speakers.csv").is_file():
        table = _speechocean_from_csv(root)
    elif (root / "train" / "wav.scp").is_file() and (root / "test" / "wav.scp").is_file():
        table = _speechocean_from_kaldi(root)
    else:
        raise XvecError(
            f"{root}: not a speechocean762 folder (expected speakers.csv and audio/, or the "
            "original train/wav.scp and test/wav.scp)"
        )
    if not table.audio.is_dir():
        raise XvecError(f"{table.audio}: audio folder not found (named by {table.source})")
    return table


def _check_every_speaker_has_audio(table: _SpeakerTable, entries: list[tuple[str, str]]) -> None:
    """Every speaker of the table has audio on disk; else one error naming the first few."""
    missing = sorted(set(table.part) - {speaker for speaker, _ in entries})
    if missing:
        raise XvecError(
            f"{table.audio}: no audio for {len(missing)} speaker(s) of {table.source}: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )


def prepare_speechocean762(
    root: str | Path, out_dir: str | Path, force: bool = False
) -> SpeechoceanLists:
    """speechocean762: ``train_list.txt`` from its train part, ``dev_trials.txt`` from the rest.

    ``root`` holds ``audio/SPEAKERxxxx/*`` and ``speakers.csv`` (xvec's shared copy), or the
    original OpenSLR 101 ``train/`` and ``test/`` folders with ``wav.scp``. Paths in both lists
    are relative to the audio folder. Trials: each dev file enrols about 5 target and 5
    non-target trials, two thirds of the non-targets of the same gender (seed 0). Existing
    lists are replaced only with ``force``.
    """
    root, out_dir = Path(root), Path(out_dir)
    check_overwrite([out_dir / "train_list.txt", out_dir / "dev_trials.txt"], force)
    table = _speechocean_table(root)
    entries = _speaker_entries(find_audio(table.audio))
    _check_every_speaker_has_audio(table, entries)
    train = [(s, p) for s, p in entries if table.part.get(s) == "train"]
    dev = [(s, p) for s, p in entries if table.part.get(s) == "dev"]
    if not train or len({s for s, _ in dev}) < 2:
        raise XvecError(f"{table.source}: need train speakers and at least 2 dev speakers")
    _check_no_spaces((p for _, p in train + dev), table.audio)
    n_train = write_train_list(out_dir / "train_list.txt", train)
    dev_files = [p for _, p in dev]
    trials = build_trials([s for s, _ in dev], table.gender, per_file=5, same_gender=2 / 3)
    n_trials = write_trials(out_dir / "dev_trials.txt", trials, dev_files)
    return SpeechoceanLists(
        train=TrainListSummary(out_dir / "train_list.txt", len({s for s, _ in train}), n_train),
        trials=TrialListSummary(
            out_dir / "dev_trials.txt",
            trials=n_trials,
            targets=int(trials.labels.sum()),
            speakers=len({s for s, _ in dev}),
            files=int(np.union1d(trials.enroll, trials.test).size),
        ),
        audio=table.audio,
        table=table.source,
        skipped=len(entries) - len(train) - len(dev),
    )


# --------------------------------------------------------------------------- VoxCeleb


def _first_with_audio(candidates: Iterable[Path]) -> tuple[Path, list[str]] | None:
    """The first existing candidate folder holding readable audio, with its files."""
    for folder in candidates:
        if folder.is_dir():
            files = find_audio(folder)
            if files:
                return folder, files
    return None


def _vox_train(vox1: Path | None, vox2: Path | None) -> tuple[Path, list[tuple[str, str]], str]:
    """Train list entries: VoxCeleb2 dev when given, else VoxCeleb1 dev (all but test ids)."""
    if vox2 is not None:
        if not vox2.is_dir():
            raise XvecError(f"{vox2}: VoxCeleb2 folder not found (vox2)", options=("vox2",))
        found = _first_with_audio([vox2 / "dev" / "wav", vox2 / "dev" / "aac", vox2 / "wav", vox2])
        if found is None:
            raise _no_readable_audio(vox2, "(expected dev/wav/idXXXXX/VIDEO/NNNNN.wav)")
        folder, files = found
        return folder, _speaker_entries(files), "VoxCeleb2 dev"
    assert vox1 is not None
    found = _first_with_audio([vox1 / "dev" / "wav", vox1 / "wav", vox1])
    if found is None:
        raise _no_readable_audio(vox1, "(expected wav/idXXXXX/VIDEO/NNNNN.wav)")
    folder, files = found
    entries = [(s, p) for s, p in _speaker_entries(files) if s not in VOX1_TEST_SPEAKERS]
    if not entries:
        raise XvecError(f"{folder}: only VoxCeleb1 test speakers found; no dev speakers to train")
    return folder, entries, "VoxCeleb1 dev"


def _check_vox1_trials(vox1: Path, out_dir: Path) -> tuple[list[str], list[str]]:
    """Check trial lists found in ``out_dir`` against VoxCeleb1 files: (notes, problems)."""
    from xvec.data import read_trials

    if not vox1.is_dir():
        raise XvecError(f"{vox1}: VoxCeleb1 folder not found (vox1)", options=("vox1",))
    candidates = [f for f in (vox1 / "test" / "wav", vox1 / "wav", vox1, vox1 / "dev" / "wav")]
    candidates = [f for f in candidates if f.is_dir()]
    notes, problems = [], []
    for name in VOX1_TRIAL_LISTS:
        path = out_dir / name
        if not path.is_file():
            continue
        files = read_trials(path).files
        best, best_missing = None, files
        for folder in candidates:
            missing = [f for f in files if not (folder / f).is_file()]
            if best is None or len(missing) < len(best_missing):
                best, best_missing = folder, missing
            if not missing:
                break
        if best_missing:
            shown = ", ".join(best_missing[:5]) + (" ..." if len(best_missing) > 5 else "")
            problems.append(
                f"{path}: {len(best_missing)} of {len(files)} files not found under {best}: {shown}"
            )
        else:
            notes.append(f"{path}: all {len(files)} files found under {best} (test_path)")
    if not notes and not problems:
        notes.append(
            f"no VoxCeleb1 trial list in {out_dir}: put veri_test2.txt (VoxCeleb1-O cleaned) "
            "there and re-run to check it"
        )
    return notes, problems


def prepare_voxceleb(
    vox1: Path | None, vox2: Path | None, out_dir: Path, force: bool = False
) -> VoxcelebLists:
    """VoxCeleb on disk: a train list and a check of the VoxCeleb1 trial lists in ``out_dir``.

    The train list is ``voxceleb2_train_list.txt`` from VoxCeleb2 dev (``dev/wav`` or ``dev/aac``
    with converted wavs), the name the recipes use, or ``voxceleb1_train_list.txt`` from VoxCeleb1
    dev when only VoxCeleb1 is given; an existing one is replaced only with ``force``. Trial
    lists voxceleb_trainer uses (``veri_test2.txt`` ...) that the user put in ``out_dir`` are
    checked against the VoxCeleb1 files; every missing file of every list is one error.
    """
    vox1 = Path(vox1) if vox1 is not None else None
    vox2 = Path(vox2) if vox2 is not None else None
    out_dir = Path(out_dir)
    if vox1 is None and vox2 is None:
        raise XvecError(
            "give vox1 and/or vox2: the VoxCeleb folders on disk", options=("vox1", "vox2")
        )
    train_list = out_dir / (VOX2_TRAIN_LIST if vox2 is not None else VOX1_TRAIN_LIST)
    check_overwrite([train_list], force)
    folder, entries, source = _vox_train(vox1, vox2)
    _check_no_spaces((p for _, p in entries), folder)
    notes: list[str] = []
    problems: list[str] = []
    if vox1 is not None:
        notes, problems = _check_vox1_trials(vox1, out_dir)
    elif any((out_dir / name).is_file() for name in VOX1_TRIAL_LISTS):
        notes.append("trial lists not checked: give --vox1 to check them against the files")
    if problems:
        raise XvecError("; ".join(problems))
    count = write_train_list(train_list, entries)
    train = TrainListSummary(train_list, len({s for s, _ in entries}), count)
    return VoxcelebLists(train, source, folder, tuple(notes))
