"""Audio I/O: VT-exact crops with partial reads, mono, resampling, and bad files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from xvec.audio import (
    audio_info,
    crop_samples,
    eval_crop_starts,
    eval_crops,
    read_audio,
    train_crop,
    wrap_pad,
)
from xvec.errors import XvecError

from conftest import SPEECHOCEAN, requires_speechocean


def tone(seconds: float, rate: int = 16000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (
        0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(0).standard_normal(t.size)
    ).astype(np.float32)


def write(path, audio, rate=16000, subtype="PCM_16"):
    soundfile.write(str(path), audio, rate, subtype=subtype)
    return path


def test_crop_length_matches_voxceleb_trainer():
    assert crop_samples(200) == 32240 and crop_samples(400) == 64240


def test_train_crop_reads_only_its_span_and_equals_slicing(tmp_path):
    path = write(tmp_path / "a.wav", tone(3.0))
    whole, _ = soundfile.read(str(path), dtype="float32")
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    crop = train_crop(path, 100, rng_a)
    start = int(rng_b.random() * (whole.size - crop_samples(100)))
    assert crop.shape == (16240,)
    np.testing.assert_array_equal(crop, whole[start : start + 16240])


def test_short_file_is_wrap_padded_like_voxceleb_trainer(tmp_path):
    audio = tone(0.5)
    path = write(tmp_path / "short.wav", audio)
    crop = train_crop(path, 100, np.random.default_rng(0))
    expected = np.pad(soundfile.read(str(path), dtype="float32")[0], (0, 16240 - 8000 + 1), "wrap")[
        :16240
    ]
    np.testing.assert_array_equal(crop, expected)
    assert wrap_pad(np.arange(3.0), 5).tolist() == [0, 1, 2, 0, 1, 2]


def test_eval_crops_match_numpy_linspace_starts(tmp_path):
    audio = tone(5.1)
    crops = eval_crops(audio, 400, 10)
    starts = [int(x) for x in np.linspace(0, audio.size - 64240, 10)]
    assert crops.shape == (10, 64240)
    for crop, start in zip(crops, starts, strict=True):
        np.testing.assert_array_equal(crop, audio[start : start + 64240])
    short = eval_crops(tone(3.7), 400, 10)  # padded to 64241 -> starts 0..0,1
    assert eval_crop_starts(64241, 400, 10).tolist() == [0] * 9 + [1]
    assert short.shape == (10, 64240)
    assert eval_crops(audio, 0, 10).shape == (1, audio.size)


def test_stereo_is_downmixed(tmp_path):
    left, right = tone(1.0, freq=300), tone(1.0, freq=500)
    path = write(tmp_path / "st.wav", np.stack([left, right], axis=1), subtype="FLOAT")
    np.testing.assert_allclose(read_audio(path), (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 44100])
def test_other_rates_are_resampled(tmp_path, rate):
    path = write(tmp_path / f"r{rate}.flac", tone(2.0, rate=rate, freq=1000.0), rate=rate)
    audio = read_audio(path)
    assert abs(audio.size - 32000) <= 1
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16000 / audio.size - 1000.0) < 2.0
    assert audio_info(path).frames_at(16000) == pytest.approx(32000, abs=1)
    part = read_audio(path, start=8000, frames=4000)
    assert part.shape == (4000,)


def test_bad_files_give_one_line_errors(tmp_path):
    empty = write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32))
    with pytest.raises(XvecError, match=r"empty.wav: empty audio file"):
        audio_info(empty)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    with pytest.raises(XvecError, match=r"notes.wav: cannot read audio"):
        read_audio(text)
    good = write(tmp_path / "good.wav", tone(1.0))
    truncated = tmp_path / "trunc.wav"
    truncated.write_bytes(good.read_bytes()[:30])
    with pytest.raises(XvecError, match=r"trunc.wav: "):
        read_audio(truncated)
    bad = tone(1.0)
    bad[100] = np.nan
    nan_path = write(tmp_path / "nan.wav", bad, subtype="FLOAT")
    with pytest.raises(XvecError, match=r"nan.wav: contains NaN or Inf samples"):
        read_audio(nan_path)
    with pytest.raises(XvecError, match=r"missing.wav: audio file not found"):
        read_audio(tmp_path / "missing.wav")
    for error in (XvecError,):
        assert "\n" not in str(error)


@requires_speechocean
def test_reads_real_opus_partially():
    first = sorted((SPEECHOCEAN / "audio").glob("*/*.ogg"))[0]
    whole = read_audio(first)
    part = read_audio(first, start=4000, frames=8000)
    assert part.shape == (8000,)
    np.testing.assert_allclose(part, whole[4000:12000], atol=1e-4)
