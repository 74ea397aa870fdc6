"""The decode cache: crops sliced from a file's cached decode equal the crops decoded directly."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile

from xvec.audio import DecodeCache, audio_info, read_audio, train_crop
from xvec.data import TrainDataset

from conftest import SPEECHOCEAN, requires_speechocean, three_speaker_list

FRAMES = 20  # 3,440-sample crops: small files keep the tests fast


def _write(path: Path, seconds: float, rate: int = 16000, channels: int = 1, **kwargs) -> Path:
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    samples = rng.uniform(-0.5, 0.5, (int(seconds * rate), channels)).astype(np.float32)
    soundfile.write(path, samples[:, 0] if channels == 1 else samples, rate, **kwargs)
    return path


def _crops(path: Path, cache: DecodeCache | None, draws: int = 25) -> list[np.ndarray]:
    info = audio_info(path)
    return [
        train_crop(path, FRAMES, np.random.default_rng(i), info=info, cache=cache)
        for i in range(draws)
    ]


@pytest.mark.parametrize(
    ("name", "seconds", "channels", "subtype", "dtype"),
    [
        ("mono.wav", 1.3, 1, "PCM_16", np.int16),
        ("stereo.wav", 1.3, 2, "PCM_16", np.float32),  # a channel mean leaves the 16-bit grid
        ("mono.flac", 1.1, 1, "PCM_16", np.int16),
        ("float.wav", 1.2, 1, "FLOAT", np.float32),
        ("short.wav", 0.1, 1, "PCM_16", np.int16),  # shorter than a crop: wrap-padded
    ],
)
def test_cached_crops_equal_uncached_crops(tmp_path, name, seconds, channels, subtype, dtype):
    path = _write(tmp_path / name, seconds, channels=channels, subtype=subtype)
    cache = DecodeCache(tmp_path / "cache")
    direct = _crops(path, None)
    filling = _crops(path, cache)  # the first crop decodes and stores, the rest hit the entry
    entries = list((tmp_path / "cache").rglob("*.npy"))
    assert len(entries) == 1
    assert np.load(entries[0], mmap_mode="r").dtype == dtype
    for expected, got in zip(direct, filling, strict=True):
        assert got.dtype == np.float32
        assert np.array_equal(expected, got)
    assert len({a.tobytes() for a in direct}) > 1 or seconds < 0.3  # crops really move


def test_ogg_crops_are_slices_of_the_whole_decode(tmp_path):
    path = _write(tmp_path / "voice.ogg", 1.5, format="OGG", subtype="OPUS")
    cache = DecodeCache(tmp_path / "cache")
    info = audio_info(path)
    whole = read_audio(path, info=info)
    total, length = info.frames_at(16000), FRAMES * 160 + 240
    for seed, got in enumerate(_crops(path, cache)):
        start = int(np.random.default_rng(seed).random() * (total - length))
        assert np.array_equal(got, whole[start : start + length])
    for direct, cached in zip(_crops(path, None), _crops(path, cache), strict=True):
        np.testing.assert_allclose(cached, direct, atol=1e-6)  # libsndfile's seek rounding


def test_a_changed_file_is_decoded_again(tmp_path):
    path = _write(tmp_path / "a.wav", 1.0, subtype="PCM_16")
    cache = DecodeCache(tmp_path / "cache")
    before = _crops(path, cache, draws=3)
    first_entry = cache.entry(path)
    soundfile.write(path, np.linspace(-0.2, 0.2, 16000, dtype=np.float32), 16000)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # coarse-mtime filesystems
    assert cache.entry(path) != first_entry
    after = _crops(path, cache, draws=3)
    for direct, got in zip(_crops(path, None, draws=3), after, strict=True):
        assert np.array_equal(direct, got)
    assert not np.array_equal(before[0], after[0])


def test_other_rates_are_not_cached(tmp_path):
    path = _write(tmp_path / "narrow.wav", 1.0, rate=8000, subtype="PCM_16")
    cache = DecodeCache(tmp_path / "cache")
    for direct, got in zip(_crops(path, None, 5), _crops(path, cache, 5), strict=True):
        assert np.array_equal(direct, got)
    assert not (tmp_path / "cache").exists()


def test_damaged_entry_is_rebuilt(tmp_path):
    path = _write(tmp_path / "a.wav", 1.0, subtype="PCM_16")
    cache = DecodeCache(tmp_path / "cache")
    _crops(path, cache, 1)
    cache.entry(path).write_bytes(b"not a numpy file")
    for direct, got in zip(_crops(path, None, 4), _crops(path, cache, 4), strict=True):
        assert np.array_equal(direct, got)
    assert np.load(cache.entry(path)).shape == (16000,)


def test_unwritable_cache_warns_and_still_crops(tmp_path):
    path = _write(tmp_path / "a.wav", 1.0, subtype="PCM_16")
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    cache = DecodeCache(blocker)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _crops(path, cache, 4)
    assert len(caught) == 1 and "decode cache" in str(caught[0].message)
    for direct, cached in zip(_crops(path, None, 4), got, strict=True):
        assert np.array_equal(direct, cached)


def test_train_dataset_batches_are_the_same_with_the_cache(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    names = [f"s{i % 3}_{i}.wav" for i in range(6)]
    for i, name in enumerate(names):
        _write(audio / name, 0.15 + 0.2 * i, subtype="PCM_16")
    train_list = three_speaker_list(tmp_path / "list.txt", names)
    plain = TrainDataset(audio, train_list, FRAMES, seed=3)
    cached = TrainDataset(audio, train_list, FRAMES, seed=3, decode_cache=tmp_path / "cache")
    cached = pickle.loads(pickle.dumps(cached))  # as a loader worker receives it
    key = (0, 0, np.arange(6).reshape(3, 2), np.arange(3))
    for _ in range(2):  # filling, then hitting
        waves, labels = cached[key]
        expected_waves, expected_labels = plain[key]
        assert waves.shape == (3, 2, FRAMES * 160 + 240)
        assert bool((waves == expected_waves).all()) and bool((labels == expected_labels).all())
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 6


@requires_speechocean
def test_real_opus_crops_match_within_seek_rounding(tmp_path):
    lines = (SPEECHOCEAN / "lists" / "train_list.txt").read_text().split("\n")
    files = [SPEECHOCEAN / "audio" / line.split()[1] for line in lines[:12] if line.strip()]
    cache = DecodeCache(tmp_path / "cache")
    length = FRAMES * 160 + 240
    for path in files:
        info = audio_info(path)
        whole = read_audio(path, info=info)
        for seed, (direct, cached) in enumerate(
            zip(_crops(path, None, 3), _crops(path, cache, 3), strict=True)
        ):
            start = int(np.random.default_rng(seed).random() * (info.frames - length))
            assert np.array_equal(cached, whole[start : start + length])
            np.testing.assert_allclose(cached, direct, atol=1e-6)
