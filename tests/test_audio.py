"""Audio I/O: VT-exact crops with partial reads, mono, resampling, and bad files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile

from xvec.audio import (
    DecodeCache,
    audio_info,
    crop_samples,
    eval_crop_starts,
    eval_crops,
    read_audio,
    read_crop,
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


# --------------------------------------------------------------------------- damaged files


def real_opus() -> bytes:
    """The bytes of the first speechocean762 file (19 kB of Ogg/Opus, 2.6 s)."""
    return sorted((SPEECHOCEAN / "audio").glob("*/*.ogg"))[0].read_bytes()


@requires_speechocean
@pytest.mark.parametrize("kept", [3000, 10000, -1], ids=["3000-bytes", "half", "last-byte-cut"])
def test_truncated_ogg_is_named_as_damaged(tmp_path, kept):
    """libsndfile decodes a cut Ogg file as a shorter valid one; its last page tells."""
    path = tmp_path / "cut.ogg"
    path.write_bytes(real_opus()[:kept])
    with pytest.raises(
        XvecError, match=r"cut\.ogg: audio file is damaged: decoded \d+ of at least \d+ samples"
    ):
        read_audio(path)


@requires_speechocean
def test_corrupt_ogg_page_is_an_error_not_a_padded_crop(tmp_path):
    """Zeroed bytes mid-file: the decoder stops early; whole and crop reads both say so."""
    data = bytearray(real_opus())
    middle = len(data) // 2
    data[middle : middle + 400] = bytes(400)
    path = tmp_path / "corrupt.ogg"
    path.write_bytes(bytes(data))
    info = audio_info(path)
    damaged = rf"corrupt\.ogg: audio file is damaged: decoded \d+ of {info.frames} samples"
    with pytest.raises(XvecError, match=damaged):
        read_audio(path, info=info)
    with pytest.raises(XvecError, match=damaged):
        read_crop(path, crop_samples(100), lambda: 0.99, info)
    with pytest.raises(XvecError, match=damaged):
        train_crop(path, 100, np.random.default_rng(0), info=info, cache=DecodeCache(tmp_path))


@requires_speechocean
def test_real_ogg_files_pass_the_length_check():
    for path in sorted((SPEECHOCEAN / "audio").glob("*/*.ogg"))[:40]:
        info = audio_info(path)
        assert read_audio(path, info=info).shape == (info.frames,)


@pytest.mark.parametrize("subtype", ["VORBIS", "OPUS"])
def test_truncated_ogg_written_here_is_damaged(tmp_path, subtype):
    path = tmp_path / "whole.ogg"
    soundfile.write(str(path), tone(3.0), 16000, format="OGG", subtype=subtype)
    assert read_audio(path).shape == (48000,)
    cut = tmp_path / "cut.ogg"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(XvecError, match=r"cut\.ogg: audio file is damaged: decoded \d+ of at"):
        audio_info(cut)


def test_names_that_are_not_regular_files(tmp_path):
    (tmp_path / "folder.wav").mkdir()
    os.mkfifo(tmp_path / "fifo.wav")  # opening it to read would block
    (tmp_path / "loop.wav").symlink_to(tmp_path / "loop.wav")
    for name, kind in [("folder.wav", "a folder"), ("fifo.wav", "a FIFO"), ("loop.wav", "loop")]:
        with pytest.raises(
            XvecError, match=rf"{name}: audio file is not a regular file \(.*{kind}"
        ):
            audio_info(tmp_path / name)
    with pytest.raises(XvecError, match=r"gone.wav: audio file not found"):
        audio_info(tmp_path / "gone.wav")


def test_truncated_wav_and_flac_are_named_as_damaged(tmp_path):
    """libsndfile shortens a cut WAV file to the bytes present; its data chunk still tells."""
    for name, subtype in [("whole.wav", "PCM_16"), ("whole.flac", "PCM_16")]:
        whole = write(tmp_path / name, tone(3.0), subtype=subtype)
        cut = tmp_path / f"cut{whole.suffix}"
        cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
        with pytest.raises(XvecError, match=rf"cut{whole.suffix}: audio file is damaged: decod"):
            read_audio(cut)
