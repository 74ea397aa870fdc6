"""What the preparers share: the summaries they return, the list writers and the audio scan."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xvec.audio import AUDIO_EXTENSIONS
from xvec.errors import XvecError
from xvec.files import write_text_atomic

if TYPE_CHECKING:
    from xvec.prepare.trials import TrialPairs

UNREADABLE_EXTENSIONS = (".m4a", ".aac")  # VoxCeleb2's AAC: convert to wav first


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


def check_no_spaces(paths: Iterable[str], where: Path) -> None:
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


def speaker_entries(files: Iterable[str]) -> list[tuple[str, str]]:
    """``(speaker, path)`` with the speaker being the first path component."""
    return [(path.split("/", 1)[0], path) for path in files if "/" in path]


def no_readable_audio(root: Path, what: str) -> XvecError:
    """The error for a folder without audio, pointing at AAC files that need converting."""
    aac = find_audio(root, UNREADABLE_EXTENSIONS)
    if aac:
        return XvecError(
            f"{root}: found {len(aac)} .m4a/.aac file(s) but no wav/flac/ogg; xvec reads audio "
            "with soundfile, which cannot decode AAC: convert them first (e.g. "
            "'ffmpeg -i in.m4a -ac 1 -ar 16000 out.wav', as voxceleb_trainer's dataprep --convert)"
        )
    return XvecError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found {what}")
