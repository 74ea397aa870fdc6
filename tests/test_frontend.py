"""xvec's plain-torch front end against torchaudio 2.11.0's stored outputs (and live)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from xvec.audio import resample
from xvec.features import mel_filterbank, vt_filterbank

FIXTURE = Path(__file__).parent / "fixtures" / "torchaudio_2_11_0_frontend.safetensors"
REF = load_file(str(FIXTURE))


def test_fixture_was_made_by_torchaudio_2_11_0() -> None:
    with safe_open(str(FIXTURE), "pt") as handle:
        assert handle.metadata()["torchaudio"].startswith("2.11.0")


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Make windows and filters in ``dtype``, as torchaudio does with its default dtype."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(default)


@pytest.mark.parametrize("n_mels", [40, 64, 80])
def test_mel_filterbank_equals_torchaudio(n_mels: int) -> None:
    expected = REF[f"fbank_{n_mels}"]
    with default_dtype(torch.float64):
        exact = mel_filterbank(257, n_mels, 16000)
    assert exact.shape == expected.shape
    assert (exact - expected).abs().max() <= 1e-12
    # float32 rounding of the filter weights (at most 1): measured 3e-6 on AVX-512 and AVX2
    assert (mel_filterbank(257, n_mels, 16000).double() - expected).abs().max() <= 2e-5


# The references are float64 (torchaudio 2.11.0 in float64, windows and filters included), so
# they hold on every CPU: xvec in float64 equals them to 9e-16 with AVX-512, 8e-14 with
# ATEN_CPU_CAPABILITY=avx2 and 4e-14 with =default (no SIMD). xvec's default float32 path
# differs by float32 rounding, largest in the quietest bands: measured up to 6.5e-5 (log-mel)
# and 5.8e-6 (resampling) on those three code paths; the float32 bounds are 4.6x and 8.6x that.
# A one-band or other-window change moves log-mels by more than 3 (tested below).
FLOAT64_BOUND = 1e-12
LOG_MEL_FLOAT32_BOUND = 3e-4
RESAMPLE_FLOAT32_BOUND = 5e-5
LOG_MEL_CASES = [("hamming40", "hamming", 40), ("hamming64", "hamming", 64), ("hann40", "hann", 40)]


def log_mel(n_mels: int, window: str, wave: torch.Tensor) -> torch.Tensor:
    """xvec's VT log-mel in the wave's dtype, its window and filters made in that dtype too."""
    with default_dtype(wave.dtype):
        frontend = vt_filterbank(n_mels, window)
    return torch.log(frontend(wave) + 1e-6)


@pytest.mark.parametrize(("name", "window", "n_mels"), LOG_MEL_CASES)
def test_log_mel_equals_torchaudio_in_float64(name: str, window: str, n_mels: int) -> None:
    expected = REF[f"logmel_{name}"]
    assert expected.dtype == torch.float64
    ours = log_mel(n_mels, window, REF["wave_16k"].double())
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max() <= FLOAT64_BOUND


@pytest.mark.parametrize(("name", "window", "n_mels"), LOG_MEL_CASES)
def test_float32_log_mel_is_within_fft_rounding(name: str, window: str, n_mels: int) -> None:
    ours = log_mel(n_mels, window, REF["wave_16k"])
    assert ours.dtype == torch.float32
    assert (ours.double() - REF[f"logmel_{name}"]).abs().max() <= LOG_MEL_FLOAT32_BOUND


def test_log_mel_bounds_catch_a_wrong_window_or_band_count() -> None:
    """The bounds are sharp: the other window, or one mel band more, fails them."""
    expected = REF["logmel_hamming40"]
    other_window = log_mel(40, "hann", REF["wave_16k"].double())
    assert (other_window - expected).abs().max() > 100 * LOG_MEL_FLOAT32_BOUND
    one_band_more = log_mel(41, "hamming", REF["wave_16k"].double())[:, :40]
    assert (one_band_more - expected).abs().max() > 100 * LOG_MEL_FLOAT32_BOUND


def test_vt_filterbank_state_dict_names_are_torchaudios() -> None:
    assert set(vt_filterbank(40).state_dict()) == {"spectrogram.window", "mel_scale.fb"}
    assert set(vt_filterbank(64, preemphasis=True).state_dict()) == {
        "0.flipped_filter",
        "1.spectrogram.window",
        "1.mel_scale.fb",
    }


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resample_equals_torchaudio(rate: int) -> None:
    source = REF[f"resample_in_{rate}"].numpy()
    expected = REF[f"resample_out_{rate}"].numpy()
    assert expected.dtype == np.float64
    exact = resample(source.astype(np.float64), rate, 16000)
    assert exact.shape == expected.shape
    assert abs(exact - expected).max() <= FLOAT64_BOUND
    default = resample(source, rate, 16000)
    assert default.dtype == np.float32
    assert abs(default - expected).max() <= RESAMPLE_FLOAT32_BOUND


def test_resample_is_band_limited() -> None:
    """A 6 kHz tone at 48 kHz is kept at 16 kHz; a 10 kHz tone (above 8 kHz Nyquist) is removed."""
    t = torch.arange(48000) / 48000
    keep = resample(torch.sin(2 * torch.pi * 6000 * t).numpy(), 48000, 16000)
    drop = resample(torch.sin(2 * torch.pi * 10000 * t).numpy(), 48000, 16000)
    assert len(keep) == 16000
    assert keep[1000:-1000].std() > 0.6 and drop[1000:-1000].std() < 0.01


def test_live_torchaudio_cross_check() -> None:
    """With the optional ``xvec[torchaudio]`` extra installed, compare with it directly."""
    torchaudio = pytest.importorskip("torchaudio", reason="xvec[torchaudio] not installed")
    wave = REF["wave_16k"]
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000,
        n_fft=512,
        win_length=400,
        hop_length=160,
        n_mels=40,
        window_fn=torch.hamming_window,
    )
    log_mel = torch.log(mel(wave) + 1e-6)  # same build, same CPU: equal to 1e-5 relative
    assert (torch.log(vt_filterbank(40)(wave) + 1e-6) - log_mel).abs().max() <= 1e-5
    x = REF["resample_in_44100"]
    assert (
        torch.from_numpy(resample(x.numpy(), 44100, 16000))
        - torchaudio.functional.resample(x, 44100, 16000)
    ).abs().max() <= 1e-5
