"""List preparers: generic folders, speechocean762, VoxCeleb layouts, and the trial builder."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st

from xvec.data import read_train_list, read_trials
from xvec.errors import XvecError
from xvec.prepare import (
    build_trials,
    find_audio,
    prepare_folder,
    prepare_speechocean762,
    prepare_voxceleb,
)
from xvec.report import prepared_text

from conftest import SPEECHOCEAN, requires_speechocean


def write_tone(path, freq: float = 220.0, seconds: float = 0.1, fmt: str | None = None) -> None:
    """A short sine file (real audio, so the lists point at readable files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(16000 * seconds)) / 16000
    soundfile.write(str(path), 0.1 * np.sin(2 * np.pi * freq * t), 16000, format=fmt)


# --------------------------------------------------------------------------- generic folder


def test_prepare_folder_lists_speaker_trees_sorted(tmp_path):
    root = tmp_path / "corpus"
    write_tone(root / "bob" / "day2" / "b.wav")
    write_tone(root / "bob" / "day1" / "a.flac")
    write_tone(root / "alice" / "x.WAV")
    write_tone(root / "alice" / "y.ogg", fmt="OGG")
    write_tone(root / "alice" / ".hidden.wav")
    write_tone(root / ".cache" / "z.wav")
    write_tone(root / "loose.wav")
    (root / "alice" / "notes.txt").write_text("not audio")
    output = tmp_path / "lists" / "train_list.txt"

    summary = prepared_text(prepare_folder(root, output))
    assert output.read_text().splitlines() == [
        "alice alice/x.WAV",
        "alice alice/y.ogg",
        "bob bob/day1/a.flac",
        "bob bob/day2/b.wav",
    ]
    assert summary.startswith(f"2 speakers, 4 files -> {output}")
    assert "1 file(s) directly in" in summary
    listing = read_train_list(output)
    assert listing.speakers == ["alice", "bob"] and listing.labels.tolist() == [0, 0, 1, 1]
    first = output.read_bytes()
    prepare_folder(root, output, force=True)
    assert output.read_bytes() == first
    assert not [p for p in output.parent.iterdir() if p.name != "train_list.txt"]  # no temp files


def test_prepare_folder_errors(tmp_path):
    with pytest.raises(XvecError, match="folder not found"):
        prepare_folder(tmp_path / "missing", tmp_path / "out.txt")
    (tmp_path / "empty" / "spk").mkdir(parents=True)
    with pytest.raises(XvecError, match="no audio files"):
        prepare_folder(tmp_path / "empty", tmp_path / "out.txt")
    (tmp_path / "aac" / "spk").mkdir(parents=True)
    (tmp_path / "aac" / "spk" / "a.m4a").write_bytes(b"\0" * 16)
    with pytest.raises(XvecError, match="convert them first"):
        prepare_folder(tmp_path / "aac", tmp_path / "out.txt")
    write_tone(tmp_path / "spaces" / "spk one" / "a.wav")
    with pytest.raises(XvecError, match="whitespace"):
        prepare_folder(tmp_path / "spaces", tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()


def test_find_audio_follows_folder_links_once(tmp_path):
    write_tone(tmp_path / "real" / "spk" / "a.wav")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "spk").symlink_to(tmp_path / "real" / "spk")
    (tmp_path / "real" / "spk" / "loop").symlink_to(tmp_path / "real")  # a cycle
    assert find_audio(tmp_path / "root") == ["spk/a.wav"]


# --------------------------------------------------------------------------- trials


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 7), min_size=2, max_size=7),
    per_file=st.integers(1, 6),
    seed=st.integers(0, 10),
)
def test_build_trials_invariants(counts, per_file, seed):
    speakers = [f"s{k}" for k, n in enumerate(counts) for _ in range(n)]
    genders = {f"s{k}": "mf"[k % 2] for k in range(len(counts))}
    if max(counts) < 2:
        with pytest.raises(XvecError, match="at least 2 files"):
            build_trials(speakers, genders, per_file=per_file, seed=seed)
        return
    trials = build_trials(speakers, genders, per_file=per_file, seed=seed)
    names = np.array(speakers)
    same = names[trials.enroll] == names[trials.test]
    assert np.array_equal(same, trials.labels == 1)
    assert int(trials.labels.sum()) * 2 == len(trials)  # balanced
    assert (trials.enroll != trials.test).all()
    pairs = {frozenset(p) for p in zip(trials.enroll.tolist(), trials.test.tolist(), strict=True)}
    assert len(pairs) == len(trials)
    again = build_trials(speakers, genders, per_file=per_file, seed=seed)
    assert np.array_equal(trials.labels, again.labels)
    assert np.array_equal(trials.enroll, again.enroll) and np.array_equal(trials.test, again.test)


def test_build_trials_prefers_same_gender_non_targets():
    speakers = [f"s{k}" for k in range(12) for _ in range(10)]
    genders = {f"s{k}": "mf"[k % 2] for k in range(12)}
    trials = build_trials(speakers, genders, per_file=5, same_gender=2 / 3, seed=1)
    gender = np.array([genders[s] for s in speakers])
    non = trials.labels == 0
    share = (gender[trials.enroll[non]] == gender[trials.test[non]]).mean()
    # 2/3 asked for, plus the same-gender half of the remaining third drawn at random.
    assert 0.75 < share < 0.9
    only_same = build_trials(speakers, genders, per_file=5, same_gender=1.0, seed=1)
    non = only_same.labels == 0
    assert (gender[only_same.enroll[non]] == gender[only_same.test[non]]).all()
    with pytest.raises(XvecError, match="at least 2 speakers"):
        build_trials(["a", "a", "a"])


# --------------------------------------------------------------------------- speechocean762


@requires_speechocean
def test_speechocean762_matches_the_shipped_lists(tmp_path):
    summary = prepared_text(prepare_speechocean762(SPEECHOCEAN, tmp_path))
    produced = (tmp_path / "train_list.txt").read_text().splitlines()
    shipped = (SPEECHOCEAN / "lists" / "train_list.txt").read_text().splitlines()
    assert sorted(produced) == produced
    assert set(produced) == set(shipped) and len(produced) == len(shipped)
    assert "125 speakers, 2500 files" in summary

    with (SPEECHOCEAN / "speakers.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    dev = {r["speaker"] for r in rows if r["part"] == "dev"}
    gender = {r["speaker"]: r["gender"] for r in rows}
    trials = read_trials(tmp_path / "dev_trials.txt")
    speaker = np.array([name.split("/")[0] for name in trials.files])
    assert set(speaker) == dev and len(trials.files) == 1260
    assert np.array_equal(speaker[trials.enroll] == speaker[trials.test], trials.labels == 1)
    assert int(trials.labels.sum()) * 2 == len(trials)
    enrolled = np.bincount(trials.enroll, minlength=len(trials.files))
    assert 7 <= enrolled.mean() <= 10 and enrolled.max() <= 10
    non = trials.labels == 0
    enroll_gender = np.array([gender[s] for s in speaker[trials.enroll[non]]])
    test_gender = np.array([gender[s] for s in speaker[trials.test[non]]])
    assert 0.7 < (enroll_gender == test_gender).mean() < 0.9
    first = (tmp_path / "dev_trials.txt").read_bytes()
    prepare_speechocean762(SPEECHOCEAN, tmp_path, force=True)
    assert (tmp_path / "dev_trials.txt").read_bytes() == first


def test_speechocean762_original_kaldi_layout(tmp_path):
    root = tmp_path / "speechocean762"
    scp = {"train": [], "test": []}
    for number, part in ((1, "train"), (2, "train"), (3, "test"), (4, "test"), (5, "test")):
        for utt in range(3):
            name = f"{number:05d}{utt:04d}"
            write_tone(root / "WAVE" / f"SPEAKER{number:04d}" / f"{name}.WAV", 200 + 20 * number)
            scp[part].append(f"{name} WAVE/SPEAKER{number:04d}/{name}.WAV")
    for part, lines in scp.items():
        (root / part).mkdir()
        (root / part / "wav.scp").write_text("\n".join(lines) + "\n")
    (root / "test" / "spk2gender").write_text("0003 m\n0004 f\n0005 m\n")

    summary = prepared_text(prepare_speechocean762(root, tmp_path / "lists"))
    listing = read_train_list(tmp_path / "lists" / "train_list.txt")
    assert listing.speakers == ["SPEAKER0001", "SPEAKER0002"] and len(listing.files) == 6
    assert listing.files[0] == "SPEAKER0001/000010000.WAV"
    trials = read_trials(tmp_path / "lists" / "dev_trials.txt")
    assert {f.split("/")[0] for f in trials.files} == {"SPEAKER0003", "SPEAKER0004", "SPEAKER0005"}
    assert f"relative to {root / 'WAVE'}" in summary


def test_speechocean762_errors(tmp_path):
    with pytest.raises(XvecError, match="folder not found"):
        prepare_speechocean762(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(XvecError, match="not a speechocean762 folder"):
        prepare_speechocean762(tmp_path, tmp_path / "out")
    (tmp_path / "speakers.csv").write_text("speaker,part,gender\nSPEAKER0001,train,m\n")
    write_tone(tmp_path / "audio" / "SPEAKER0002" / "a.ogg", fmt="OGG")
    with pytest.raises(XvecError, match="no audio for 1 speaker"):
        prepare_speechocean762(tmp_path, tmp_path / "out")


# --------------------------------------------------------------------------- VoxCeleb


def fake_vox1(root, layout: str = "merged") -> list[str]:
    """Tiny VoxCeleb1: 2 test speakers (id10270, id10271) and 2 dev speakers, 2 videos x 2."""
    files = []
    for speaker in ("id10001", "id10002", "id10270", "id10271"):
        test = speaker >= "id10270"
        base = root / "wav" if layout == "merged" else root / ("test" if test else "dev") / "wav"
        for video in ("vidA", "vidB"):
            for n in (1, 2):
                name = f"{speaker}/{video}/{n:05d}.wav"
                write_tone(base / name, 100 + int(speaker[2:]) % 50 * 5)
                files.append(name)
    return files


def write_veri(path, pairs: list[tuple[int, str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{label} {a} {b}\n" for label, a, b in pairs))


GOOD_TRIALS = [
    (1, "id10270/vidA/00001.wav", "id10270/vidB/00002.wav"),
    (0, "id10270/vidA/00001.wav", "id10271/vidA/00001.wav"),
    (1, "id10271/vidA/00002.wav", "id10271/vidB/00001.wav"),
]


def test_voxceleb1_only_trains_on_dev_and_checks_trials(tmp_path):
    fake_vox1(tmp_path / "vox1")
    write_veri(tmp_path / "lists" / "veri_test2.txt", GOOD_TRIALS)
    summary = prepared_text(prepare_voxceleb(tmp_path / "vox1", None, tmp_path / "lists"))
    listing = read_train_list(tmp_path / "lists" / "voxceleb1_train_list.txt")
    assert listing.speakers == ["id10001", "id10002"]  # the test speakers never train
    assert listing.files[0] == "id10001/vidA/00001.wav" and len(listing.files) == 8
    assert "VoxCeleb1 dev" in summary
    assert f"all 5 files found under {tmp_path / 'vox1' / 'wav'}" in summary


def test_voxceleb_reports_every_missing_trial_file_at_once(tmp_path):
    fake_vox1(tmp_path / "vox1", layout="split")
    write_veri(
        tmp_path / "lists" / "veri_test2.txt",
        [*GOOD_TRIALS, (0, "id10270/vidZ/00009.wav", "id10271/vidZ/00001.wav")],
    )
    hard = [(1, "id10272/v/00001.wav", "id10270/vidA/00001.wav")]
    write_veri(tmp_path / "lists" / "list_test_hard2.txt", hard)
    with pytest.raises(XvecError) as caught:
        prepare_voxceleb(tmp_path / "vox1", None, tmp_path / "lists")
    message = str(caught.value)
    assert "veri_test2.txt: 2 of 7 files not found" in message
    assert "id10270/vidZ/00009.wav" in message and "id10271/vidZ/00001.wav" in message
    assert "list_test_hard2.txt: 1 of 2 files not found" in message
    assert "id10272/v/00001.wav" in message
    assert "\n" not in message
    assert not (tmp_path / "lists" / "voxceleb1_train_list.txt").exists()


def test_voxceleb2_dev_is_the_train_set_when_given(tmp_path):
    fake_vox1(tmp_path / "vox1", layout="split")
    write_veri(tmp_path / "lists" / "veri_test2.txt", GOOD_TRIALS)
    for speaker in ("id00012", "id00015"):
        aac = tmp_path / "vox2" / "dev" / "aac" / speaker / "v1" / "00001.m4a"
        aac.parent.mkdir(parents=True)
        aac.write_bytes(b"\0" * 32)  # the original AAC, beside its converted wav
        write_tone(tmp_path / "vox2" / "dev" / "wav" / speaker / "v1" / "00001.wav", 300)
    summary = prepared_text(
        prepare_voxceleb(tmp_path / "vox1", tmp_path / "vox2", tmp_path / "lists")
    )
    assert (tmp_path / "lists" / "voxceleb2_train_list.txt").read_text() == (
        "id00012 id00012/v1/00001.wav\nid00015 id00015/v1/00001.wav\n"
    )
    assert "VoxCeleb2 dev" in summary and str(tmp_path / "vox2" / "dev" / "wav") in summary
    assert str(tmp_path / "vox1" / "test" / "wav") in summary  # where the trial files are


def test_voxceleb_errors(tmp_path):
    with pytest.raises(XvecError, match="give vox1 and/or vox2"):
        prepare_voxceleb(None, None, tmp_path)
    with pytest.raises(XvecError, match="VoxCeleb2 folder not found"):
        prepare_voxceleb(None, tmp_path / "nope", tmp_path)
    aac = tmp_path / "vox2" / "dev" / "aac" / "id00012" / "v1" / "00001.m4a"
    aac.parent.mkdir(parents=True)
    aac.write_bytes(b"\0" * 32)
    with pytest.raises(XvecError, match="cannot decode AAC"):
        prepare_voxceleb(None, tmp_path / "vox2", tmp_path / "lists")
    only_test = tmp_path / "vox1" / "wav" / "id10270" / "v" / "00001.wav"
    write_tone(only_test)
    with pytest.raises(XvecError, match="no dev speakers"):
        prepare_voxceleb(tmp_path / "vox1", None, tmp_path / "lists")


def test_voxceleb_without_trial_lists_says_where_to_put_them(tmp_path):
    fake_vox1(tmp_path / "vox1")
    summary = prepared_text(prepare_voxceleb(tmp_path / "vox1", None, tmp_path / "lists"))
    assert "put veri_test2.txt" in summary


def test_voxceleb2_list_has_the_name_every_recipe_uses(tmp_path):
    import tomllib

    from conftest import ROOT

    write_tone(tmp_path / "vox2" / "dev" / "wav" / "id00012" / "v1" / "00001.wav", 300)
    prepare_voxceleb(None, tmp_path / "vox2", tmp_path / "lists")
    written = {f"lists/{p.name}" for p in (tmp_path / "lists").iterdir()}
    recipes = [tomllib.loads(r.read_text()) for r in (ROOT / "recipes").glob("*.toml")]
    wanted = {r["data"]["train_list"] for r in recipes} - {"lists/train_list.txt"}  # demo's
    assert written == wanted == {"lists/voxceleb2_train_list.txt"}
    assert "`lists/voxceleb2_train_list.txt`" in (ROOT / "docs" / "lab.md").read_text()


def test_every_prepare_refuses_to_overwrite_without_force(tmp_path):
    from typer.testing import CliRunner

    from xvec.cli import app

    root = tmp_path / "corpus"
    write_tone(root / "alice" / "a.wav")
    write_tone(root / "bob" / "b.wav")
    existing = tmp_path / "train_list.txt"
    existing.write_text("hand-made\n")
    runner = CliRunner()
    refused = runner.invoke(app, ["prepare", "folder", str(root), "-o", str(existing)])
    assert refused.exit_code == 1
    assert f"{existing} exists; give --force" in " ".join(refused.output.split())
    assert existing.read_text() == "hand-made\n"
    forced = runner.invoke(app, ["prepare", "folder", str(root), "-o", str(existing), "--force"])
    assert forced.exit_code == 0, forced.output
    assert existing.read_text() == "alice alice/a.wav\nbob bob/b.wav\n"

    lists = tmp_path / "lists"
    write_tone(tmp_path / "vox2" / "dev" / "wav" / "id00012" / "v1" / "00001.wav", 300)
    prepare_voxceleb(None, tmp_path / "vox2", lists)
    with pytest.raises(XvecError, match=r"voxceleb2_train_list\.txt exists; give force"):
        prepare_voxceleb(None, tmp_path / "vox2", lists)
    prepare_voxceleb(None, tmp_path / "vox2", lists, force=True)
    (lists / "dev_trials.txt").write_text("1 a b\n")
    with pytest.raises(XvecError, match=r"dev_trials\.txt exists; give force"):
        prepare_speechocean762(tmp_path / "anything", lists)
    with pytest.raises(XvecError, match="exists; give force"):
        prepare_folder(root, lists / "voxceleb2_train_list.txt")
