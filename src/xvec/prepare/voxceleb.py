"""``xvec prepare voxceleb``: VoxCeleb1/2 train lists and the official trial lists checked against
the files."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from xvec.data import read_trials
from xvec.errors import XvecError
from xvec.prepare.common import (
    TrainListSummary,
    VoxcelebLists,
    check_no_spaces,
    check_overwrite,
    find_audio,
    no_readable_audio,
    speaker_entries,
    write_train_list,
)

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
            raise no_readable_audio(vox2, "(expected dev/wav/idXXXXX/VIDEO/NNNNN.wav)")
        folder, files = found
        return folder, speaker_entries(files), "VoxCeleb2 dev"
    assert vox1 is not None
    found = _first_with_audio([vox1 / "dev" / "wav", vox1 / "wav", vox1])
    if found is None:
        raise no_readable_audio(vox1, "(expected wav/idXXXXX/VIDEO/NNNNN.wav)")
    folder, files = found
    entries = [(s, p) for s, p in speaker_entries(files) if s not in VOX1_TEST_SPEAKERS]
    if not entries:
        raise XvecError(f"{folder}: only VoxCeleb1 test speakers found; no dev speakers to train")
    return folder, entries, "VoxCeleb1 dev"


def _check_vox1_trials(vox1: Path, out_dir: Path) -> tuple[list[str], list[str]]:
    """Check trial lists found in ``out_dir`` against VoxCeleb1 files: (notes, problems)."""

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
    check_no_spaces((p for _, p in entries), folder)
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
