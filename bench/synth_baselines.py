"""How hard a synthetic corpus is: trivial scorers' EERs on its trials (bench and tests).

A trained model must clearly beat these: the median F0 of each file (an autocorrelation
tracker), its loudness, and a mean-MFCC cosine, the kind of spectral baseline GMM-era systems
started from. Analysis only; xvec itself does not need it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile

from xvec.audio import SAMPLE_RATE
from xvec.data import read_trials
from xvec.metrics import compute_metrics


def estimate_f0(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Median F0 (Hz) of the voiced frames by a plain autocorrelation tracker.

    40 ms Hann frames of the differenced signal every 10 ms; the autocorrelation is divided by
    the window's own (Boersma's correction) and searched over 60-400 Hz, taking half the lag
    when that peak is nearly as high (against octave errors). A frame is voiced when its peak
    exceeds 0.5 and it is within 35 dB of the loudest frame. NaN when nothing is voiced.
    """
    size, hop = int(0.04 * sample_rate), int(0.01 * sample_rate)
    if audio.size <= size:
        return float("nan")
    window = np.hanning(size)
    emphasised = np.diff(audio.astype(np.float64))  # whitens rumble and hum below the voice
    frames = np.lib.stride_tricks.sliding_window_view(emphasised, size)[::hop]
    frames = frames - frames.mean(axis=1, keepdims=True)
    autocorr = np.fft.irfft(np.abs(np.fft.rfft(frames * window, n=2 * size)) ** 2)[:, :size]
    window_corr = np.fft.irfft(np.abs(np.fft.rfft(window, n=2 * size)) ** 2)[:size]
    energy = autocorr[:, 0]
    normalised = autocorr / (energy[:, None] + 1e-12) / (window_corr / window_corr[0])
    lo, hi = int(sample_rate / 400), int(sample_rate / 60)
    rows = np.arange(len(frames))
    lag = normalised[:, lo:hi].argmax(axis=1) + lo
    strength = normalised[rows, lag]
    half = np.maximum(lag // 2, lo)
    near_half = np.stack([normalised[rows, half + d] for d in (-1, 0, 1)]).max(axis=0)
    lag = np.where((lag // 2 >= lo) & (near_half > 0.85 * strength), half, lag)
    voiced = (strength > 0.5) & (energy > energy.max() * 10 ** (-3.5))
    if not voiced.any():
        return float("nan")
    return float(np.median(sample_rate / lag[voiced]))


def _mel_filterbank(n_mels: int = 40, n_fft: int = 512, sample_rate: int = SAMPLE_RATE):
    """Triangular mel filters ``[n_mels, n_fft // 2 + 1]`` (HTK mel scale, 20 Hz - 7.6 kHz)."""
    mel = np.linspace(*(2595 * np.log10(1 + np.array([20.0, 7600.0]) / 700)), n_mels + 2)
    edges = 700 * (10 ** (mel / 2595) - 1)
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    rising = (freqs[None, :] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    falling = (edges[2:, None] - freqs[None, :]) / (edges[2:] - edges[1:-1])[:, None]
    return np.maximum(0.0, np.minimum(rising, falling))


_MELS = _mel_filterbank()
_DCT = np.cos(np.pi * np.arange(1, 20)[:, None] * (np.arange(40)[None, :] + 0.5) / 40)


def mean_mfcc(audio: np.ndarray) -> np.ndarray:
    """Average MFCCs c1-c19 (no c0: level-free) over the louder half of 25 ms frames.

    Keeping the louder half is a crude voice-activity detection, as simple GMM-era systems did.
    """
    frames = np.lib.stride_tricks.sliding_window_view(audio.astype(np.float64), 400)[::160]
    power = np.abs(np.fft.rfft(frames * np.hamming(400), n=512, axis=1)) ** 2
    loud = power.sum(axis=1) >= np.median(power.sum(axis=1))
    return (np.log(power[loud] @ _MELS.T + 1e-10) @ _DCT.T).mean(axis=0)


def baseline_eers(corpus_dir: str | Path, trial_list: str = "trials.txt") -> dict[str, float]:
    """EER (%) of three trivial scorers on a corpus' trials, to show none of them solves it.

    ``f0``: -|difference of median F0| (autocorrelation tracker); ``loudness``: -|difference of
    RMS level in dB|; ``spectrum``: cosine of :func:`mean_mfcc` vectors centred on the trial
    files' mean (a simple spectral baseline a trained model should beat).
    """
    corpus_dir = Path(corpus_dir)
    trials = read_trials(corpus_dir / trial_list)
    audio = [
        soundfile.read(str(corpus_dir / "audio" / f), dtype="float32")[0] for f in trials.files
    ]
    f0 = np.array([estimate_f0(a) for a in audio])
    f0 = np.where(np.isnan(f0), np.nanmedian(f0), f0)
    loudness = np.array([10 * np.log10(np.mean(a.astype(np.float64) ** 2) + 1e-12) for a in audio])
    spectra = np.stack([mean_mfcc(a) for a in audio])
    spectra -= spectra.mean(axis=0)
    spectra /= np.linalg.norm(spectra, axis=1, keepdims=True) + 1e-12
    e, t = trials.enroll, trials.test
    scores = {
        "f0": -np.abs(f0[e] - f0[t]),
        "loudness": -np.abs(loudness[e] - loudness[t]),
        "spectrum": np.sum(spectra[e] * spectra[t], axis=1),
    }
    return {
        name: float(compute_metrics(values, trials.labels).eer) for name, values in scores.items()
    }
