"""``xvec prepare speechocean762``: the corpus's train list and a seeded trial list of its test
speakers."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xvec.errors import XvecError
from xvec.prepare.common import (
    SpeechoceanLists,
    TrainListSummary,
    TrialListSummary,
    check_no_spaces,
    check_overwrite,
    find_audio,
    speaker_entries,
    write_train_list,
    write_trials,
)
from xvec.prepare.trials import (
    build_trials,
)

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
    entries = speaker_entries(find_audio(table.audio))
    _check_every_speaker_has_audio(table, entries)
    train = [(s, p) for s, p in entries if table.part.get(s) == "train"]
    dev = [(s, p) for s, p in entries if table.part.get(s) == "dev"]
    if not train or len({s for s, _ in dev}) < 2:
        raise XvecError(f"{table.source}: need train speakers and at least 2 dev speakers")
    check_no_spaces((p for _, p in train + dev), table.audio)
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
