"""``xvec prepare folder``: a train list (and optionally trials) for any
``SPEAKER/.../*.wav`` tree."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from xvec.data import read_trials
from xvec.errors import XvecError
from xvec.prepare.common import (
    FolderLists,
    TrainListSummary,
    check_no_spaces,
    check_overwrite,
    find_audio,
    no_readable_audio,
    speaker_entries,
    write_train_list,
)

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
    entries = speaker_entries(files)
    if not entries:
        if files:
            raise XvecError(
                f"{root}: {len(files)} audio file(s) but none inside a speaker folder; "
                "expected SPEAKER/.../file.wav"
            )
        raise no_readable_audio(root, "(expected SPEAKER/.../file.wav)")
    check_no_spaces((path for _, path in entries), root)
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
    return {speaker for speaker, _ in speaker_entries(read_trials(trials).files)}


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
