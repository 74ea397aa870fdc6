"""List parsing (with fuzzing), missing-file reports, and the speaker batch sampler."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xvec.data import (
    EpochBatches,
    check_files_exist,
    check_sampler,
    make_batches,
    read_file_list,
    read_train_list,
    read_trials,
)
from xvec.errors import XvecError

from conftest import SPEECHOCEAN, requires_speechocean


def test_train_list_whitespace_comments_and_sorted_speakers(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("# header\nid2 a/1.wav\n\n  id1\t b/1.wav  \nid2 a/2.wav # note\nid1 b/1.wav\n")
    listing = read_train_list(path)
    assert listing.files == ["a/1.wav", "b/1.wav", "a/2.wav"]
    assert listing.speakers == ["id1", "id2"]
    assert listing.labels.tolist() == [1, 0, 1]
    assert listing.lines == [2, 4, 5]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "train list is empty"),
        ("# only a comment\n\n", "train list is empty"),
        ("id1 a.wav\nid2\n", r"train.txt:2: expected 2 columns 'SPEAKER relative/path', got 1"),
        ("id1 a.wav x\n", r"train.txt:1: expected 2 columns"),
        (
            "id1 a.wav\nid2 b.wav\nid3 a.wav\n",
            r"train.txt:3: 'a.wav' is listed for speaker 'id3' but line 1",
        ),
    ],
)
def test_train_list_errors(tmp_path, text, message):
    path = tmp_path / "train.txt"
    path.write_text(text)
    with pytest.raises(XvecError, match=message):
        read_train_list(path)


def test_missing_list_file(tmp_path):
    with pytest.raises(XvecError, match="train list not found"):
        read_train_list(tmp_path / "nope.txt")


def test_trials_index_unique_files(tmp_path):
    path = tmp_path / "trials.txt"
    path.write_text("1 a.wav b.wav\n0 a.wav c.wav\n# c\n1 c.wav b.wav\n")
    trials = read_trials(path)
    assert trials.files == ["a.wav", "b.wav", "c.wav"]
    assert trials.labels.tolist() == [1, 0, 1]
    assert trials.enroll.tolist() == [0, 0, 2] and trials.test.tolist() == [1, 2, 1]
    assert trials.enroll_names() == ["a.wav", "a.wav", "c.wav"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "2 a.wav b.wav\n",
            r"trials.txt:1: label must be 1 \(target\) or 0 \(non-target\), got '2'",
        ),
        (
            "1 a.wav b.wav\na.wav b.wav\n",
            r"trials.txt:2: expected 3 columns 'LABEL enroll test', got 2",
        ),
        ("\n", "trial list is empty"),
    ],
)
def test_trial_errors(tmp_path, text, message):
    path = tmp_path / "trials.txt"
    path.write_text(text)
    with pytest.raises(XvecError, match=message):
        read_trials(path)


def test_file_list(tmp_path):
    path = tmp_path / "files.txt"
    path.write_text("a.wav\nb.wav\na.wav\n")
    assert read_file_list(path) == ["a.wav", "b.wav"]
    path.write_text("a.wav b.wav\n")
    with pytest.raises(XvecError, match=r"files\.txt:1: expected one path per line"):
        read_file_list(path)


def test_missing_audio_reported_together(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    with pytest.raises(
        XvecError,
        match=r"list.txt: 4 listed file\(s\) not found under .*: b.wav, c.wav, d.wav and 1 more",
    ):
        check_files_exist(tmp_path, ["a.wav", "b.wav", "c.wav", "d.wav", "e.wav"], "list.txt")
    with pytest.raises(XvecError, match="audio root folder not found"):
        check_files_exist(tmp_path / "nope", ["a.wav"], "list.txt")


names = st.text(
    alphabet=st.characters(blacklist_categories=("Z", "C"), blacklist_characters="#"),
    min_size=1,
    max_size=40,
)
blank = st.text(alphabet=" \t", max_size=4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(names, names, blank, blank, st.booleans()), min_size=1, max_size=30))
def test_fuzz_train_list_round_trip(tmp_path_factory, rows):
    expected: dict[str, str] = {}
    lines = []
    for speaker, file, pre, mid, comment in rows:
        if file in expected and expected[file] != speaker:
            continue
        expected.setdefault(file, speaker)
        lines.append(f"{pre}{speaker} {mid}{file}{pre}" + ("  # comment" if comment else ""))
        if comment:
            lines.append("# whole-line comment")
    path = tmp_path_factory.mktemp("fuzz") / "train.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    listing = read_train_list(path)
    assert listing.files == list(expected)
    assert [listing.speakers[i] for i in listing.labels] == list(expected.values())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("01"), names, names), min_size=1, max_size=30), blank)
def test_fuzz_trials_round_trip(tmp_path_factory, rows, pad):
    path = tmp_path_factory.mktemp("fuzz") / "trials.txt"
    text = "\n".join(f"{pad}{label}{pad} {e}\t{t}" for label, e, t in rows)
    path.write_text(text, encoding="utf-8")
    trials = read_trials(path)
    assert trials.labels.tolist() == [int(label) for label, _, _ in rows]
    assert trials.enroll_names() == [e for _, e, _ in rows]
    assert trials.test_names() == [t for _, _, t in rows]


def test_very_long_line(tmp_path):
    path = tmp_path / "train.txt"
    long_name = "x" * 100_000 + ".wav"
    path.write_text(f"spk {long_name}\n")
    assert read_train_list(path).files == [long_name]


# --------------------------------------------------------------------------- sampler

LABELS = np.repeat(np.arange(7), [5, 9, 3, 12, 6, 1, 8])


@pytest.mark.parametrize("batch_size", [4, 7, 200])
def test_classification_sampler_sees_every_utterance_once(batch_size):
    batches = make_batches(LABELS, batch_size, 1, 500, distinct_speakers=False, seed=3, epoch=1)
    seen = np.concatenate([b.reshape(-1) for b in batches])
    assert sorted(seen.tolist()) == list(range(len(LABELS)))
    assert all(len(b) <= batch_size + 1 for b in batches)


@pytest.mark.parametrize("per_speaker", [2, 3])
def test_metric_sampler_distinct_speakers_and_full_coverage(per_speaker):
    batches = make_batches(LABELS, 4, per_speaker, 500, distinct_speakers=True, seed=5, epoch=2)
    for batch in batches:
        speakers = LABELS[batch]
        assert (speakers == speakers[:, :1]).all()  # one speaker per row
        assert len(set(speakers[:, 0])) == len(batch)  # distinct speakers in the batch
        assert len(batch) <= 4
    # Rows are drawn until fewer than two speakers have rows left: only the rows of the one
    # speaker left over can be unused.
    seen = set(np.concatenate([b.reshape(-1) for b in batches]).tolist())
    unseen = set(range(len(LABELS))) - seen
    assert len(set(LABELS[list(unseen)].tolist())) <= 1
    assert len(seen) >= 0.85 * len(LABELS)


def test_sampler_deterministic_per_epoch_and_max_seg():
    a = make_batches(LABELS, 4, 1, 500, False, seed=1, epoch=1)
    b = make_batches(LABELS, 4, 1, 500, False, seed=1, epoch=1)
    c = make_batches(LABELS, 4, 1, 500, False, seed=1, epoch=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=False))
    capped = make_batches(LABELS, 4, 1, 2, False, seed=1, epoch=1)
    counts = np.bincount(LABELS[np.concatenate(capped).reshape(-1)], minlength=7)
    assert counts.tolist() == [2, 2, 2, 2, 2, 1, 2]


def test_batch_larger_than_speakers_does_not_crash_classification():
    batches = make_batches(LABELS, 200, 1, 500, False, seed=0, epoch=1)
    assert len(batches) == 1 and len(batches[0]) == len(LABELS)
    check_sampler(7, 200, 1, distinct_speakers=False, loss_name="amsoftmax")
    with pytest.raises(
        XvecError, match=r"batch_size 200 exceeds the 7 training speakers.*batch_size=7"
    ):
        check_sampler(7, 200, 2, distinct_speakers=True, loss_name="angleproto")


def test_epoch_batches_deal_global_batches_to_ranks_and_resume():
    whole = EpochBatches(LABELS, 4, 1, 500, False, seed=4)
    ranks = [EpochBatches(LABELS, 4, 1, 500, False, seed=4, rank=r, world_size=2) for r in (0, 1)]
    for sampler in [whole, *ranks]:
        sampler.set_epoch(2)
    assert len(ranks[0]) == len(ranks[1]) == len(whole)
    for full, part0, part1 in zip(whole, *ranks, strict=True):
        assert part0[1] == part1[1] == full[1]
        rows0, rows1 = part0[2].ravel().tolist(), part1[2].ravel().tolist()
        assert not set(rows0) & set(rows1)
        assert sorted(rows0 + rows1) == sorted(full[2].ravel().tolist())
        # Row ids say where each row sits in the global batch (crop randomness follows them).
        assert (full[2][part0[3]] == part0[2]).all() and (full[2][part1[3]] == part1[2]).all()
    whole.set_epoch(2, start=3)
    resumed = list(whole)
    assert resumed[0][1] == 3 and len(resumed) == len(whole) - 3


@requires_speechocean
def test_seed_recipe_batching_on_speechocean():
    listing = read_train_list(SPEECHOCEAN / "lists" / "train_list.txt")
    batches = make_batches(listing.labels, 200, 1, 500, False, seed=10, epoch=1)
    assert sum(len(b) for b in batches) == 2500 == len(listing.files)


def test_encoding_error_names_its_own_line(tmp_path):
    """The text reader decodes 8 kB ahead: the error used to name line 1 of any small list."""
    lines = [f"spk{i % 3} s/{i}.wav\n".encode() for i in range(60)]
    lines[40] = b"spk1 s/caf\xe9.wav\n"  # Latin-1
    path = tmp_path / "train.txt"
    path.write_bytes(b"\xef\xbb\xbf" + b"".join(lines))  # after a BOM, still UTF-8 until then
    with pytest.raises(
        XvecError, match=r"train\.txt:41: train list is not UTF-8 text \(byte 0xe9 at column 11"
    ):
        read_train_list(path)


def test_repeated_train_lines_are_counted_and_warned_once(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("id1 a.wav\nid2 b.wav\nid1 a.wav\nid2 c.wav\nid2 b.wav\nid1 a.wav\n")
    with pytest.warns(UserWarning) as caught:
        listing = read_train_list(path)
    assert listing.files == ["a.wav", "b.wav", "c.wav"]
    assert [str(w.message) for w in caught] == [
        f"{path}: 3 line(s) repeat an earlier line (first: line 3 repeats line 1); "
        "each file is used once"
    ]


def test_listed_names_that_are_not_regular_files(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "x.wav").mkdir()
    os.mkfifo(tmp_path / "p.wav")
    (tmp_path / "loop.wav").symlink_to(tmp_path / "loop.wav")
    with pytest.raises(XvecError) as info:
        check_files_exist(tmp_path, ["a.wav", "x.wav", "p.wav", "loop.wav", "gone.wav"], "l.txt")
    message = str(info.value)
    assert message.startswith("l.txt: 1 listed file(s) not found under ") and "gone.wav" in message
    assert (
        "3 listed name(s) under" in message
        and "x.wav is not a regular file (a folder)" in message
        and "p.wav is not a regular file (a FIFO)" in message
        and "loop.wav is not a regular file (a symlink loop)" in message
    ), message
