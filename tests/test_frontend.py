"""xvec's plain-torch front end against torchaudio 2.11.0's stored outputs (and live)."""

from __future__ import annotations

from pathlib import Path

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


@pytest.mark.parametrize("n_mels", [40, 64, 80])
def test_mel_filterbank_equals_torchaudio(n_mels: int) -> None:
    ours = mel_filterbank(257, n_mels, 16000)
    assert ours.shape == REF[f"fbank_{n_mels}"].shape
    assert (ours - REF[f"fbank_{n_mels}"]).abs().max() <= 1e-6


@pytest.mark.parametrize(
    ("name", "window", "n_mels"),
    [("hamming40", "hamming", 40), ("hamming64", "hamming", 64), ("hann40", "hann", 40)],
)
def test_log_mel_equals_torchaudio(name: str, window: str, n_mels: int) -> None:
    ours = torch.log(vt_filterbank(n_mels, window)(REF["wave_16k"]) + 1e-6)
    expected = REF[f"logmel_{name}"]
    assert ours.shape == expected.shape
    # float32 FFT rounding depends on the CPU's kernels: torchaudio 2.11.0 itself differs by up
    # to 2.1e-5 from log-mels it computed on another x86-64 machine; the fixture was made on this
    # project's machine kind (x86-64, AVX2), where xvec and torchaudio agree to 5e-7
    assert (ours - expected).abs().max() <= 1e-5


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
    ours = resample(source, rate, 16000)
    assert ours.shape == expected.shape
    assert abs(ours - expected).max() <= 1e-5


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
