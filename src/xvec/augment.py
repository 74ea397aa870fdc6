"""Training-crop augmentation: additive noise (MUSAN), reverberation (RIRs), speed perturbation.

Follows voxceleb_trainer's ``AugmentWAV`` ("VT"): each augmented crop gets exactly one
augmentation, drawn uniformly from the enabled kinds, with VT's per-category SNR ranges and file
counts. Differences:

* noise files are never read whole: only a random segment of the crop's length is decoded
  (wrap-padded when the file is shorter, as VT pads);
* reverberation is an FFT convolution with the RIR truncated to the crop (only the first
  ``len(audio)`` output samples are kept, so later RIR samples cannot contribute); loaded RIRs
  are cached per process up to a byte budget;
* the SNR is met exactly: VT adds ``1e-4`` to both signal powers before taking logs, which makes
  quiet noise (power below ~1e-4, e.g. the Speech Commands recordings at ~1e-5) land 10 dB or
  more above the drawn SNR. Here the floor is ``power_floor=1e-8``; pass ``1e-4`` to reproduce VT;
* MUSAN categories that are missing are left out of the draw (VT would fail on them).

``probability`` is the chance that a crop is augmented at all. VT's ``--augment True`` draws
``augtype`` from 0..4 with 0 meaning "none", so it equals ``probability=0.8`` with MUSAN (three
categories) and RIRs: none, reverb, music, speech and noise then each have a 1/5 chance.

Speed perturbation (``speed_perturb=True``, not in VT) joins the draw as one more kind: the crop is
played 0.9x or 1.1x as fast (pitch and tempo change together, as Kaldi/WeSpeaker's sox ``speed``),
by windowed-sinc resampling, and cut or wrap-padded back to its length. WeSpeaker gives such
utterances new speaker labels; here the label is kept, so the model learns to ignore a 10 % pitch
shift rather than treat it as another voice. WeSpeaker's way is ``speed_perturb = "new_speakers"``
(applied by :class:`xvec.data.TrainDataset`, not here): every batch row plays at 1.0x, 0.9x or 1.1x,
drawn uniformly, read from ``speed_source_samples`` of the file so nothing is padded, and the
0.9x/1.1x rows count as speakers of their own (three times the classes).

An :class:`Augmenter` only indexes its folders when built, so it pickles cheaply into DataLoader
workers; each worker opens files lazily and keeps its own caches.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from xvec.audio import AUDIO_EXTENSIONS, AudioInfo, audio_info, read_audio, read_crop
from xvec.errors import XvecError

__all__ = [
    "NOISE_COUNTS",
    "NOISE_SNR_DB",
    "SPEAKER_SPEEDS",
    "SPEED_FACTORS",
    "Augmenter",
    "change_speed",
    "mix_at_snr",
    "reverberate",
    "speed_source_samples",
]

MUSAN_CATEGORIES = ("music", "speech", "noise")
# voxceleb_trainer's AugmentWAV: SNR range (dB) and number of files mixed per category.
NOISE_SNR_DB: dict[str, tuple[float, float]] = {
    "noise": (0.0, 15.0),
    "speech": (13.0, 20.0),
    "music": (5.0, 15.0),
}
NOISE_COUNTS: dict[str, tuple[int, int]] = {"noise": (1, 1), "speech": (3, 7), "music": (1, 1)}
SPEED_FACTORS = (0.9, 1.1)
# WeSpeaker's speed perturbation: each utterance plays at one of these speeds (drawn uniformly)
# and speed i's utterances are speakers of their own (label + i x speakers).
SPEAKER_SPEEDS = (1.0, 0.9, 1.1)
# Input samples either side of each output sample in the resampling kernel: 32 keeps a 1.1x
# speed-up of 7.6 kHz (aliasing to 7.6 kHz again) 30 dB down while 7 kHz passes.
SINC_HALF_WIDTH = 32


def _audio_files(root: Path, field: str) -> list[Path]:
    """All audio files below ``root``, sorted so every process indexes them in the same order."""
    if not root.is_dir():
        raise XvecError(f"{root}: {field} folder not found; fix the path in the recipe")
    files = sorted(
        path
        for path in root.rglob("*")
        if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file()
    )
    if not files:
        suffixes = "/".join(sorted(AUDIO_EXTENSIONS))
        raise XvecError(f"{root}: {field} folder holds no audio files ({suffixes})")
    return files


def _noise_category(path: Path, root: Path) -> str:
    """MUSAN category: the first folder below ``root``; anything else counts as "noise"."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 and parts[0] in MUSAN_CATEGORIES else "noise"


def mean_power_db(signals: np.ndarray, floor: float) -> np.ndarray:
    """``10 log10(mean(x^2) + floor)`` over the last axis, in float64."""
    power = np.mean(np.square(signals, dtype=np.float64), axis=-1)
    return 10.0 * np.log10(power + floor)


def mix_at_snr(
    clean: np.ndarray, noises: np.ndarray, snrs_db: np.ndarray, power_floor: float = 1e-8
) -> np.ndarray:
    """Add each row of ``noises`` ``[k, samples]`` to ``clean``, scaled to its SNR in dB.

    The gain is VT's ``sqrt(10^((clean_db - noise_db - snr) / 10))`` with powers in dB taken as
    ``10 log10(mean(x^2) + power_floor)``.
    """
    clean_db = mean_power_db(clean, power_floor)
    noise_db = mean_power_db(noises, power_floor)
    gains = np.power(10.0, (clean_db - noise_db - np.asarray(snrs_db)) / 20.0)
    return (clean + gains.astype(np.float32) @ noises).astype(np.float32)


@lru_cache(maxsize=64)
def _fft_size(length: int) -> int:
    """The smallest 2^a 3^b 5^c >= ``length``: sizes numpy's FFT handles fastest."""
    best = 1 << max(0, (length - 1).bit_length())
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            candidate = power35 << max(0, (-(-length // power35) - 1).bit_length())
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``convolve(audio, rir, "full")[:len(audio)]`` by FFT, in float64, returned as float32.

    ``rir`` is used as given (normalise it first); samples past ``len(audio)`` cannot reach the
    kept output and are dropped before the transform.
    """
    length = audio.shape[0]
    rir = rir[:length]
    size = _fft_size(length + rir.shape[0] - 1)
    spectrum = np.fft.rfft(audio, size) * np.fft.rfft(rir, size)
    return np.fft.irfft(spectrum, size)[:length].astype(np.float32)


@lru_cache(maxsize=8)
def _sinc_kernels(numerator: int, denominator: int, half_width: int) -> np.ndarray:
    """Windowed-sinc taps ``[denominator, 2 * half_width]`` for reading the input at positions
    ``j * numerator / denominator``: one row per fractional phase, each summing to 1.

    The cutoff is the lower of the two Nyquist rates, so speeding up does not alias.
    """
    cutoff = min(1.0, denominator / numerator)
    taps = np.arange(-half_width + 1, half_width + 1)
    phases = np.arange(denominator) / denominator
    offsets = phases[:, None] - taps[None, :]  # distance from the read position to each tap
    window = 0.5 * (1.0 + np.cos(np.pi * np.clip(offsets / half_width, -1.0, 1.0)))
    kernels = cutoff * np.sinc(cutoff * offsets) * window
    return (kernels / kernels.sum(axis=1, keepdims=True)).astype(np.float32)


def change_speed(
    audio: np.ndarray,
    factor: float,
    half_width: int = SINC_HALF_WIDTH,
    length: int | None = None,
) -> np.ndarray:
    """Play ``audio`` ``factor`` times as fast (pitch x ``factor``), ``length`` samples of it.

    Output sample ``j`` is the band-limited input at position ``j * factor``; the input is treated
    as periodic, so a sped-up crop continues with its own beginning (VT's wrap padding) and a
    slowed-down one is cut at the crop length. ``length`` defaults to the input's length; from
    ``speed_source_samples(length, factor)`` input samples, only the first ``half_width`` or so
    of the ``length`` outputs read wrapped input (the kernel's reach before sample 0). With
    ``factor = num / den``, outputs ``p, p + den, ...`` share one kernel and read input windows
    ``num`` samples apart, so each of the ``den`` phases is one matrix-vector product over a
    strided view.
    """
    ratio = Fraction(factor).limit_denominator(1000)
    num, den = ratio.numerator, ratio.denominator
    source = audio.shape[0]
    length = source if length is None else length
    kernels = _sinc_kernels(num, den, half_width)
    last_base = (length - 1) * num // den
    wrapped = np.arange(-half_width + 1, last_base + half_width + 1) % source
    windows = sliding_window_view(np.asarray(audio, dtype=np.float32)[wrapped], 2 * half_width)
    out = np.empty(length, dtype=np.float32)
    for phase in range(min(den, length)):
        rows = windows[phase * num // den :: num][: len(range(phase, length, den))]
        out[phase::den] = rows @ kernels[phase * num % den]
    return out


def speed_source_samples(length: int, factor: float, half_width: int = SINC_HALF_WIDTH) -> int:
    """Input samples that :func:`change_speed` reads to make ``length`` outputs at ``factor``."""
    return math.ceil((length - 1) * factor) + half_width + 1


class Augmenter:
    """Augments training crops as voxceleb_trainer does (see the module docstring).

    ``musan_path``: MUSAN layout (``noise/``, ``speech/``, ``music/`` below it, any depth) or any
    folder of noise audio (all "noise"). ``rir_path``: a folder of room impulse responses, any
    depth (e.g. Kaldi's ``RIRS_NOISES/simulated_rirs``). ``probability``: chance a crop is
    augmented. ``rir_cache_bytes`` bounds each process's cache of loaded RIRs.
    """

    def __init__(
        self,
        musan_path: str | Path | None,
        rir_path: str | Path | None,
        speed_perturb: bool,
        probability: float,
        *,
        power_floor: float = 1e-8,
        rir_cache_bytes: int = 128 * 2**20,
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            raise XvecError(f"augment.probability must lie in [0, 1], got {probability}")
        self.probability = float(probability)
        self.speed_perturb = bool(speed_perturb)
        self.power_floor = float(power_floor)
        self.rir_cache_bytes = int(rir_cache_bytes)
        self.noise_files: dict[str, list[str]] = {}
        if musan_path is not None:
            root = Path(musan_path)
            for path in _audio_files(root, "augment.musan_path"):
                self.noise_files.setdefault(_noise_category(path, root), []).append(str(path))
        self.rir_files: list[str] = []
        if rir_path is not None:
            self.rir_files = [str(p) for p in _audio_files(Path(rir_path), "augment.rir_path")]
        # VT's augtype order (1 reverb, 2 music, 3 speech, 4 noise), then speed.
        self.kinds: tuple[str, ...] = (
            (("reverb",) if self.rir_files else ())
            + tuple(c for c in MUSAN_CATEGORIES if c in self.noise_files)
            + (("speed",) if self.speed_perturb else ())
        )
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._infos: dict[str, AudioInfo] = {}
        self._rirs: OrderedDict[str, np.ndarray] = OrderedDict()
        self._rir_bytes = 0

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_infos", "_rirs", "_rir_bytes"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_caches()

    def __repr__(self) -> str:
        sources = [f"{c}: {len(f)} files" for c, f in self.noise_files.items()]
        sources += [f"rir: {len(self.rir_files)} files"] if self.rir_files else []
        sources += ["speed: x0.9/x1.1"] if self.speed_perturb else []
        return f"Augmenter(p={self.probability}, {', '.join(sources) or 'nothing'})"

    def __call__(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The crop, augmented with chance ``probability`` by one kind drawn from ``kinds``."""
        if not self.kinds or rng.random() >= self.probability:
            return np.asarray(audio, dtype=np.float32)
        kind = self.kinds[rng.integers(len(self.kinds))]
        return self.apply(kind, audio, rng)

    def apply(self, kind: str, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Apply one augmentation ``kind`` ("reverb", a noise category, or "speed")."""
        audio = np.asarray(audio, dtype=np.float32)
        if kind == "reverb":
            return reverberate(audio, self._rir(self.rir_files[rng.integers(len(self.rir_files))]))
        if kind == "speed":
            return change_speed(audio, SPEED_FACTORS[rng.integers(len(SPEED_FACTORS))])
        if kind in self.noise_files:
            return self.add_noise(kind, audio, rng)
        raise ValueError(f"unknown or unavailable augmentation {kind!r}; have {self.kinds}")

    def add_noise(self, category: str, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Mix VT's number of distinct files of ``category``, each at its own random SNR."""
        files = self.noise_files[category]
        low, high = NOISE_COUNTS.get(category, (1, 1))
        count = min(int(rng.integers(low, high + 1)), len(files))
        chosen = rng.choice(len(files), size=count, replace=False)
        snrs = rng.uniform(*NOISE_SNR_DB.get(category, NOISE_SNR_DB["noise"]), size=count)
        offsets = rng.random(count)
        length = audio.shape[0]
        segments = zip(chosen, offsets, strict=True)
        noises = np.stack([self._segment(files[i], length, offset) for i, offset in segments])
        return mix_at_snr(audio, noises, snrs, self.power_floor)

    def _info(self, path: str) -> AudioInfo:
        info = self._infos.get(path)
        if info is None:
            info = self._infos[path] = audio_info(path)
        return info

    def _segment(self, path: str, length: int, offset: float) -> np.ndarray:
        """``length`` samples of ``path`` from relative position ``offset`` (VT's random crop)."""
        return read_crop(path, length, lambda: offset, self._info(path))

    def _rir(self, path: str) -> np.ndarray:
        """The RIR scaled to unit L2 norm (as VT), from this process's LRU cache."""
        rir = self._rirs.get(path)
        if rir is not None:
            self._rirs.move_to_end(path)
            return rir
        raw = read_audio(path, info=self._info(path)).astype(np.float64)
        norm = np.sqrt(np.sum(np.square(raw)))
        if norm == 0.0:
            raise XvecError(f"{path}: room impulse response is silent (all zeros)")
        rir = raw / norm
        self._rirs[path] = rir
        self._rir_bytes += rir.nbytes
        while self._rir_bytes > self.rir_cache_bytes and len(self._rirs) > 1:
            _, evicted = self._rirs.popitem(last=False)
            self._rir_bytes -= evicted.nbytes
        return rir
