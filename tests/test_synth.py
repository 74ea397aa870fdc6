"""The synthetic demo corpus: layout, lists, determinism, resumability and honest difficulty."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from xvec import synth
from xvec.cli import app
from xvec.data import read_train_list, read_trials
from xvec.errors import XvecError

from conftest import bench_module


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """8 speakers x 4 utterances (4 training, 4 held out), rendered by two worker processes."""
    root = tmp_path_factory.mktemp("synth") / "small"
    info = synth.make_corpus(root, speakers=8, utterances=4, seed=0, workers=2)
    return root, info


def corpus_bytes(root) -> dict[str, bytes]:
    """Every file of a corpus (markers aside), by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def test_layout_lists_and_audio_format(small_corpus):
    root, info = small_corpus
    train = read_train_list(root / "train_list.txt")
    trials = read_trials(root / "trials.txt")
    assert train.speakers == ["spk0000", "spk0001", "spk0002", "spk0003"]
    assert train.utterances_per_speaker().tolist() == [4, 4, 4, 4]
    trial_speakers = {name.split("/")[0] for name in trials.files}
    assert trial_speakers == {"spk0004", "spk0005", "spk0006", "spk0007"}
    assert not trial_speakers & set(train.speakers)  # held-out speakers never train
    assert (info.speakers, info.train_speakers, info.test_speakers) == (8, 4, 4)
    assert info.files == 32 and info.trials == len(trials)

    for name in train.files + trials.files:
        meta = soundfile.info(str(root / "audio" / name))
        assert (meta.samplerate, meta.channels, meta.subtype) == (16000, 1, "PCM_16")
        assert synth.MIN_SECONDS - 0.01 <= meta.duration <= synth.MAX_SECONDS + 0.01
    audio, _ = soundfile.read(str(root / "audio" / trials.files[0]))
    assert np.sqrt(np.mean(audio**2)) > 0.01 and np.abs(audio).max() < 1.0

    # Trials: balanced, labels agree with the speakers, no pair twice, every file used often.
    speaker = np.array([name.split("/")[0] for name in trials.files])
    same = speaker[trials.enroll] == speaker[trials.test]
    assert np.array_equal(same, trials.labels == 1)
    assert int(trials.labels.sum()) * 2 == len(trials)
    pairs = {frozenset(p) for p in zip(trials.enroll.tolist(), trials.test.tolist(), strict=True)}
    assert len(pairs) == len(trials) and all(len(p) == 2 for p in pairs)
    uses = np.bincount(np.concatenate([trials.enroll, trials.test]), minlength=len(trials.files))
    assert len(trials.files) == 16 and uses.min() >= 3

    readme = (root / "README.txt").read_text()
    assert "seed=0" in readme and "speakers=8" in readme and "xvec synth" in readme
    marker = json.loads((root / synth.COMPLETE_MARKER).read_text())
    expected = {"version": synth.SYNTH_VERSION, "speakers": 8, "utterances": 4, "seed": 0}
    assert marker["params"] == expected


def test_same_seed_same_bytes_whatever_the_workers_other_seed_differs(small_corpus, tmp_path):
    root, _ = small_corpus
    again = synth.make_corpus(tmp_path / "again", speakers=8, utterances=4, seed=0, workers=1)
    assert not again.reused
    assert corpus_bytes(tmp_path / "again") == corpus_bytes(root)  # 1 vs 2 worker processes

    synth.make_corpus(tmp_path / "other", speakers=8, utterances=4, seed=1, workers=1)
    first, other = corpus_bytes(root), corpus_bytes(tmp_path / "other")
    audio = [name for name in first if name.endswith(".wav")]
    assert sorted(audio) == sorted(n for n in other if n.endswith(".wav"))
    assert all(first[name] != other[name] for name in audio)


def test_voices_and_utterances_depend_only_on_their_identity():
    small = synth.make_voice(0, 3)
    again = synth.make_voice(0, 3)
    assert small.f0_median == again.f0_median
    assert np.array_equal(small.vowels, again.vowels)
    first = synth.render_utterance(small, synth.utterance_rng(0, 3, 2))
    second = synth.render_utterance(again, synth.utterance_rng(0, 3, 2))
    assert np.array_equal(first, second)
    other = synth.render_utterance(small, synth.utterance_rng(0, 3, 1))
    assert not np.array_equal(first[:1000], other[:1000])


def test_rerun_is_a_no_op_and_an_interrupted_run_is_redone(tmp_path):
    root = tmp_path / "corpus"
    synth.make_corpus(root, speakers=4, utterances=2, seed=3, workers=1)
    before = corpus_bytes(root)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.wav")}

    kept = synth.make_corpus(root, speakers=4, utterances=2, seed=3)
    assert kept.reused and "already complete" in str(kept)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.wav")} == stamps

    # An interruption: the progress marker stayed, the complete one never got written, and a
    # file is truncated.
    (root / synth.COMPLETE_MARKER).unlink()
    (root / synth.PROGRESS_MARKER).write_text("writing: this corpus is incomplete\n")
    victim = root / "audio" / "spk0002" / "utt001.wav"
    victim.write_bytes(victim.read_bytes()[:100])
    redone = synth.make_corpus(root, speakers=4, utterances=2, seed=3, workers=1)
    assert not redone.reused
    assert corpus_bytes(root) == before
    assert not (root / synth.PROGRESS_MARKER).exists()

    # Other settings: the old corpus is replaced, no stale files remain.
    synth.make_corpus(root, speakers=4, utterances=3, seed=3, workers=1)
    assert len(list(root.rglob("*.wav"))) == 12
    assert not synth.make_corpus(root, speakers=4, utterances=3, seed=4, workers=1).reused


def test_refuses_foreign_folders_and_bad_sizes(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(XvecError, match="not an xvec synthetic corpus"):
        synth.make_corpus(tmp_path / "mine", speakers=4, utterances=2)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    corpus = tmp_path / "someone_elses_corpus"  # our file names, but not written by xvec synth
    (corpus / "audio" / "spk").mkdir(parents=True)
    (corpus / "audio" / "spk" / "a.wav").write_bytes(b"RIFF")
    (corpus / "train_list.txt").write_text("spk spk/a.wav\n")
    with pytest.raises(XvecError, match=r"not an xvec synthetic corpus \(holds audio, "):
        synth.make_corpus(corpus, speakers=4, utterances=2)
    assert (corpus / "audio" / "spk" / "a.wav").read_bytes() == b"RIFF"
    with pytest.raises(XvecError, match="at least 4"):
        synth.make_corpus(tmp_path / "x", speakers=3)
    with pytest.raises(XvecError, match="at least 2"):
        synth.make_corpus(tmp_path / "x", speakers=4, utterances=1)


def test_cli_synth_prints_the_summary(tmp_path):
    result = CliRunner().invoke(
        app, ["synth", str(tmp_path / "c"), "--speakers", "4", "--utterances", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "4 speakers (2 train, 2 held out), 8 files" in " ".join(result.output.split())
    assert (tmp_path / "c" / "trials.txt").is_file()


def test_held_out_count():
    assert [synth.held_out_count(n) for n in (4, 8, 16, 40, 60, 200)] == [2, 4, 8, 10, 15, 50]


def test_stft_overlap_add_reconstructs_and_filters():
    """The frame-wise filter machinery: unit response is the identity; a gain scales."""
    rng = np.random.default_rng(0)
    signal = rng.standard_normal(5000)
    frames = signal.size // synth._HOP + 2
    spectrum = synth._stft(signal, frames)
    np.testing.assert_allclose(synth._istft(spectrum, signal.size), signal, atol=1e-9)
    half = synth._istft(spectrum * 0.5, signal.size)
    np.testing.assert_allclose(half, 0.5 * signal, atol=1e-9)


def test_resonator_cascade_peaks_at_its_formants_with_unit_dc_gain():
    poles = np.array([[700.0, 1800.0]])
    response = synth._tract_response(
        poles, np.array([[80.0, 120.0]]), np.array([[4000.0]]), np.array([[200.0]])
    )[0]
    freqs = synth._FREQS
    assert response[0] == pytest.approx(1.0)
    low, mid = freqs < 1200, (freqs > 1200) & (freqs < 3000)
    assert abs(freqs[low][response[low].argmax()] - 700) <= 31.25
    assert abs(freqs[mid][response[mid].argmax()] - 1800) <= 31.25
    notch = (freqs > 3500) & (freqs < 4500)
    assert abs(freqs[notch][response[notch].argmin()] - 4000) <= 31.25


baselines = bench_module("synth_baselines")


def test_f0_tracker_follows_the_voices():
    """The pitch tracker behind the F0 baseline really works (else its high EER means nothing)."""
    voices = [synth.make_voice(5, k) for k in range(8)]
    estimates = [
        np.median(
            [
                baselines.estimate_f0(synth.render_utterance(v, synth.utterance_rng(5, k, u)))
                for u in range(2)
            ]
        )
        for k, v in enumerate(voices)
    ]
    truth = [v.f0_median for v in voices]
    assert np.corrcoef(truth, estimates)[0, 1] > 0.9
    tone = np.sin(2 * np.pi * 150 * np.arange(16000) / 16000)
    assert baselines.estimate_f0(tone) == pytest.approx(150, rel=0.02)


def test_trivial_features_do_not_solve_it(tmp_path):
    """Pitch and loudness alone stay far from solving the trials; a plain spectral baseline
    does better but is far from perfect, leaving room for a trained model (16 speakers)."""
    synth.make_corpus(tmp_path / "mid", speakers=16, utterances=8, seed=0)
    eers = baselines.baseline_eers(tmp_path / "mid")
    assert eers["f0"] > 25.0
    assert eers["loudness"] > 35.0
    assert 15.0 < eers["spectrum"] < 38.0
    assert eers["spectrum"] < min(eers["f0"], eers["loudness"])


def test_shipped_lists_are_the_default_corpus_lists(small_corpus, tmp_path):
    """lists/ holds the default corpus's lists, as ``synth.write_lists`` makes them."""
    from conftest import ROOT

    synth.write_lists(tmp_path, 60, 20, 0, trials_name="demo_trials.txt")
    for name in ("train_list.txt", "demo_trials.txt"):
        assert (ROOT / "lists" / name).read_text() == (tmp_path / name).read_text(), name
    # make_corpus writes the same lists as write_lists for its own settings.
    root, _ = small_corpus
    again = tmp_path / "again"
    synth.write_lists(again, 8, 4, 0)
    for name in ("train_list.txt", "trials.txt"):
        assert (root / name).read_text() == (again / name).read_text(), name
