"""Augmentation: SNRs per category, exact reverb, speed as pitch, determinism, real noise/RIRs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import soundfile

import xvec.audio as audio_module
from xvec.augment import (
    NOISE_SNR_DB,
    SINC_HALF_WIDTH,
    SPEAKER_SPEEDS,
    Augmenter,
    change_speed,
    mix_at_snr,
    reverberate,
    speed_source_samples,
)
from xvec.data import TrainDataset
from xvec.errors import XvecError

from conftest import SHARED, three_speaker_list

NOISE_DIR = SHARED / "data" / "noise" / "speech_commands"
RIR_DIR = SHARED / "data" / "rir" / "simulated"
requires_noise = pytest.mark.skipif(
    not NOISE_DIR.is_dir(), reason=f"Speech Commands noise not found at {NOISE_DIR}"
)
requires_rirs = pytest.mark.skipif(not RIR_DIR.is_dir(), reason=f"RIRs not found at {RIR_DIR}")

RATE = 16000
CROP = 32240  # a 200-frame training crop


def clean_crop(seed: int = 0, length: int = CROP) -> np.ndarray:
    """A voiced-like harmonic tone with a little noise (power ~0.04, well above any floor)."""
    t = np.arange(length) / RATE
    wave = sum(0.3 / h * np.sin(2 * np.pi * 140 * h * t + h) for h in range(1, 6))
    return (wave + 0.01 * np.random.default_rng(seed).standard_normal(length)).astype(np.float32)


def snr_db(clean: np.ndarray, mixed: np.ndarray) -> float:
    added = mixed.astype(np.float64) - clean
    return float(10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(added**2)))


def fake_musan(root, sources: list) -> dict[str, int]:
    """MUSAN layout of symlinks to real noise files (no audio is copied): per category counts."""
    layout = {"speech": sources, "music/fma": sources[:1], "noise/free-sound": sources[1:2]}
    layout["other"] = sources[2:3]  # an unknown folder counts as "noise"
    for folder, files in layout.items():
        (root / folder).mkdir(parents=True)
        for source in files:
            (root / folder / source.name).symlink_to(source)
    return {"speech": len(sources), "music": 1, "noise": 2}


def peak_frequency(signal: np.ndarray) -> float:
    windowed = signal * np.hanning(signal.size)
    return float(np.argmax(np.abs(np.fft.rfft(windowed))) * RATE / signal.size)


@requires_noise
def test_plain_noise_folder_mixes_at_snr_within_noise_range():
    augmenter = Augmenter(NOISE_DIR, None, speed_perturb=False, probability=1.0)
    assert augmenter.kinds == ("noise",) and len(augmenter.noise_files["noise"]) == 6
    clean = clean_crop()
    snrs = []
    for seed in range(30):
        mixed = augmenter(clean, np.random.default_rng(seed))
        assert mixed.shape == clean.shape and mixed.dtype == np.float32
        snrs.append(snr_db(clean, mixed))
    low, high = NOISE_SNR_DB["noise"]
    assert low - 0.1 <= min(snrs) and max(snrs) <= high + 0.1
    assert max(snrs) - min(snrs) > 7  # drawn across the range, not a fixed level


@requires_noise
def test_musan_layout_speech_is_babble_of_distinct_files(tmp_path, monkeypatch):
    sources = sorted(NOISE_DIR.glob("*.flac"))
    counts = fake_musan(tmp_path / "musan", sources)
    augmenter = Augmenter(tmp_path / "musan", None, False, 1.0)
    assert {c: len(f) for c, f in augmenter.noise_files.items()} == counts
    assert augmenter.kinds == ("music", "speech", "noise")

    reads: list[str] = []
    real_read = audio_module.read_audio

    def spy(path, *args, **kwargs):
        reads.append(str(path))
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(audio_module, "read_audio", spy)
    clean = clean_crop()
    files_per_call = set()
    for seed in range(12):
        reads.clear()
        mixed = augmenter.apply("speech", clean, np.random.default_rng(seed))
        assert len(set(reads)) == len(reads) and 3 <= len(reads) <= len(sources)
        files_per_call.add(len(reads))
        # 3-6 files each at 13-20 dB add up to a lower combined SNR than one file alone
        assert 13 - 10 * np.log10(len(reads)) - 0.5 <= snr_db(clean, mixed) <= 20 - 10 * np.log10(3)
    assert len(files_per_call) > 1
    for seed in range(10):
        reads.clear()
        mixed = augmenter.apply("music", clean, np.random.default_rng(seed))
        assert len(reads) == 1 and "/music/" in reads[0]
        assert 5 - 0.1 <= snr_db(clean, mixed) <= 15 + 0.1


def test_noise_segment_is_read_from_the_file_or_wrap_padded(tmp_path):
    rng = np.random.default_rng(3)
    long_noise = (0.1 * rng.standard_normal(12000)).astype(np.float32)
    short_noise = (0.1 * rng.standard_normal(3000)).astype(np.float32)
    crop = 4000
    clean = clean_crop(length=crop)
    for noise in (long_noise, short_noise):
        folder = tmp_path / str(noise.size)
        folder.mkdir()
        soundfile.write(str(folder / "n.wav"), noise, RATE, subtype="FLOAT")
        augmenter = Augmenter(folder, None, False, 1.0)
        source = np.pad(noise, (0, crop), mode="wrap").astype(np.float64)
        windows = np.lib.stride_tricks.sliding_window_view(source, crop)
        windows = windows[: max(1, noise.size - crop)]  # every start a crop may take
        starts = set()
        for seed in range(3):
            added = augmenter(clean, np.random.default_rng(seed)).astype(np.float64) - clean
            # locate the segment by cross-correlation, then check it is an exact scaled copy
            start = int(np.argmax(windows @ added))
            segment = source[start : start + crop]
            gain = segment @ added / (segment @ segment)
            np.testing.assert_allclose(added, gain * segment, atol=1e-6)
            starts.add(start)
        if noise.size < crop:
            assert starts == {0}  # wrap-padded from the file's start, as VT pads
        else:
            assert len(starts) == 3  # a random segment each time


def test_power_floor_1e4_reproduces_voxceleb_trainer_gain_and_default_meets_snr():
    rng = np.random.default_rng(0)
    clean = clean_crop(length=8000)
    quiet = (0.003 * rng.standard_normal((2, 8000))).astype(np.float32)  # power ~1e-5
    snrs = np.array([5.0, 10.0])
    vt_db = lambda x: 10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-4)  # noqa: E731
    vt_gains = [
        np.sqrt(10 ** ((vt_db(clean) - vt_db(n) - s) / 10))
        for n, s in zip(quiet, snrs, strict=True)
    ]
    expected = clean + vt_gains[0] * quiet[0] + vt_gains[1] * quiet[1]
    np.testing.assert_allclose(mix_at_snr(clean, quiet, snrs, 1e-4), expected, rtol=1e-6, atol=1e-7)
    for noise, target in zip(quiet, snrs, strict=True):
        assert abs(snr_db(clean, mix_at_snr(clean, noise[None], target[None])) - target) < 0.01
        assert snr_db(clean, mix_at_snr(clean, noise[None], target[None], 1e-4)) > target + 5


@requires_rirs
def test_reverb_equals_direct_convolution_with_normalised_rir(tmp_path):
    source = sorted(RIR_DIR.glob("*.flac"))[1]
    (tmp_path / "rooms" / "a").mkdir(parents=True)
    (tmp_path / "rooms" / "a" / source.name).symlink_to(source)
    (tmp_path / "rooms" / "rooms.txt").write_text("not audio\n")
    augmenter = Augmenter(None, tmp_path / "rooms", False, 1.0)
    assert augmenter.kinds == ("reverb",) and len(augmenter.rir_files) == 1
    clean = clean_crop(length=RATE // 2)  # shorter than the RIR: truncation is exercised too
    rir = soundfile.read(str(source), dtype="float64")[0]
    assert rir.size > clean.size
    expected = np.convolve(clean.astype(np.float64), rir / np.sqrt(np.sum(rir**2)))[: clean.size]
    for seed in range(2):  # second call uses the cached RIR
        reverbed = augmenter(clean, np.random.default_rng(seed))
        assert reverbed.dtype == np.float32 and reverbed.shape == clean.shape
        np.testing.assert_allclose(reverbed, expected, rtol=1e-5, atol=1e-6)


def test_fft_reverb_matches_convolution_when_rir_outlasts_audio():
    rng = np.random.default_rng(1)
    audio, rir = (
        rng.standard_normal(1000),
        rng.standard_normal(1500) * np.exp(-np.arange(1500) / 300),
    )
    np.testing.assert_allclose(reverberate(audio, rir), np.convolve(audio, rir)[:1000], atol=1e-4)


@requires_rirs
def test_rir_cache_stays_within_its_byte_budget():
    augmenter = Augmenter(None, RIR_DIR, False, 1.0, rir_cache_bytes=300_000)
    clean = clean_crop(length=4000)
    for seed in range(12):
        augmenter(clean, np.random.default_rng(seed))
    assert len(augmenter._rirs) >= 1 and augmenter._rir_bytes <= 300_000
    assert augmenter._rir_bytes == sum(r.nbytes for r in augmenter._rirs.values())


@requires_noise
@requires_rirs
def test_same_rng_same_output_and_pickled_copy_agrees():
    augmenter = Augmenter(NOISE_DIR, RIR_DIR, True, 1.0)
    assert augmenter.kinds == ("reverb", "noise", "speed")
    clean = clean_crop()
    first = [augmenter(clean, np.random.default_rng(seed)) for seed in range(9)]
    copy = pickle.loads(pickle.dumps(augmenter))
    again = [copy(clean, np.random.default_rng(seed)) for seed in range(9)]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.shape == clean.shape and a.dtype == np.float32 and np.isfinite(a).all()
    noise_only = Augmenter(NOISE_DIR, None, False, 1.0)
    outputs = {noise_only(clean, np.random.default_rng(seed)).tobytes() for seed in range(9)}
    assert len(outputs) == 9  # different rng -> different files, segments and SNRs


def test_speed_perturbation_shifts_a_sine_by_ten_percent():
    t = np.arange(CROP) / RATE
    sine = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    augmenter = Augmenter(None, None, speed_perturb=True, probability=1.0)
    ratios = set()
    for seed in range(8):
        out = augmenter(sine, np.random.default_rng(seed))
        assert out.shape == sine.shape and out.dtype == np.float32
        ratio = peak_frequency(out[:30000]) / 1000
        assert min(abs(ratio - 0.9), abs(ratio - 1.1)) < 0.005
        ratios.add(round(ratio, 1))
        body = out[200:25000]  # away from the wrap joins
        assert abs(np.sqrt(np.mean(body**2)) / np.sqrt(np.mean(sine**2)) - 1) < 0.01
    assert ratios == {0.9, 1.1}


def test_speed_change_of_a_longer_source_wraps_only_within_the_kernels_reach():
    t = np.arange(40000) / RATE
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    noise = np.random.default_rng(0).standard_normal(40000).astype(np.float32)
    for factor in SPEED_FACTORS_UNDER_TEST:
        needed = speed_source_samples(CROP, factor)
        out = change_speed(tone[:needed], factor, length=CROP)
        assert out.shape == (CROP,) and out.dtype == np.float32
        assert abs(peak_frequency(out) / 1000 - factor) < 0.002
        # More input changes only the first outputs, whose kernels reach before sample 0.
        exact = change_speed(noise[:needed], factor, length=CROP)
        more = change_speed(noise[: needed + 700], factor, length=CROP)
        reach = 2 * SINC_HALF_WIDTH
        np.testing.assert_allclose(exact[reach:], more[reach:], rtol=0, atol=1e-5)
        assert np.abs(exact[:4] - more[:4]).max() > 1e-2
    # Without ``length`` the output keeps the input's length, as before.
    np.testing.assert_array_equal(
        change_speed(tone[:CROP], 1.1), change_speed(tone[:CROP], 1.1, length=CROP)
    )


SPEED_FACTORS_UNDER_TEST = (0.9, 1.1)


def test_new_speaker_speeds_relabel_rows_and_play_them_at_their_speed(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    tones = [300.0, 500.0, 700.0, 900.0, 1100.0, 1300.0]
    t = np.arange(3 * RATE) / RATE
    names = []
    for i, freq in enumerate(tones):
        names.append(f"s{i % 3}_{i}.wav")
        soundfile.write(audio / names[-1], 0.5 * np.sin(2 * np.pi * freq * t), RATE, "FLOAT")
    train_list = three_speaker_list(tmp_path / "list.txt", names)
    frames = 200
    plain = TrainDataset(audio, train_list, frames, seed=3)
    speeds = pickle.loads(
        pickle.dumps(TrainDataset(audio, train_list, frames, 3, speed_speakers=True))
    )
    seen = set()
    for index in range(4):
        key = (0, index, np.arange(6).reshape(6, 1), np.arange(6))
        waves, labels = speeds[key]
        plain_waves, plain_labels = plain[key]
        assert waves.shape == plain_waves.shape == (6, 1, CROP)
        for row in range(6):
            speed = int(labels[row]) // 3
            assert int(labels[row]) % 3 == int(plain_labels[row])
            seen.add(speed)
            if speed == 0:  # 1.0x: the very crop a run without speeds reads
                assert bool((waves[row] == plain_waves[row]).all())
            else:
                heard = peak_frequency(waves[row, 0].numpy()) / tones[row]
                assert abs(heard - SPEAKER_SPEEDS[speed]) < 0.005
    assert seen == {0, 1, 2}


def test_speed_up_does_not_alias_content_near_nyquist():
    t = np.arange(CROP) / RATE
    amplitude = lambda x: np.sqrt(2 * np.mean(x[200:-200] ** 2))  # noqa: E731
    above = np.sin(2 * np.pi * 7600 * t).astype(np.float32)  # 1.1x: 8360 Hz, past Nyquist
    below = np.sin(2 * np.pi * 7000 * t).astype(np.float32)  # 1.1x: 7700 Hz, representable
    assert amplitude(change_speed(above, 1.1)) < 0.06
    assert amplitude(change_speed(below, 1.1)) > 0.9
    assert amplitude(change_speed(above, 0.9)) > 0.95


@requires_noise
@requires_rirs
def test_probability_zero_is_identity_and_half_augments_about_half():
    clean = clean_crop()
    never = Augmenter(NOISE_DIR, RIR_DIR, True, 0.0)
    for seed in range(10):
        np.testing.assert_array_equal(never(clean, np.random.default_rng(seed)), clean)
    half = Augmenter(None, None, True, 0.5)
    short = clean[:2000]
    changed = sum(
        not np.array_equal(half(short, np.random.default_rng(seed)), short) for seed in range(300)
    )
    assert 120 <= changed <= 180


def test_missing_or_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(XvecError, match="musan_path folder not found"):
        Augmenter(tmp_path / "nope", None, False, 0.5)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no audio here")
    with pytest.raises(XvecError, match=r"empty: augment.rir_path folder holds no audio"):
        Augmenter(None, tmp_path / "empty", False, 0.5)
    with pytest.raises(XvecError, match="probability"):
        Augmenter(None, None, True, 1.5)
