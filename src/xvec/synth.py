"""The synthetic demo corpus: speech-like voices from source-filter synthesis.

No real speech may ship with xvec, so the quickstart (``xvec synth`` then ``xvec train
recipes/demo.toml``) trains on audio made here. Each *speaker* is a voice: a glottal pulse source
with its own pitch range, jitter, shimmer, open quotient, spectral tilt and breathiness, a vocal
tract of its own length (formant scale), bandwidths, nasality and vowel habits, and a speaking
rate. Each *utterance* is a new random string of phone-like segments (vowels with formant targets
and smooth transitions, sonorants, fricatives, plosive bursts, pauses) with its own prosody,
loudness, background noise and channel colouring, so the task is text-independent and no
single trivial cue (pitch, loudness, average spectrum) solves it.

The vocal tract is a cascade of two-pole resonators (plus a nasal pole-zero pair), applied as a
zero-phase, frame-wise frequency response in a short-time Fourier domain: all vectorised numpy,
no scipy and no per-sample Python loop. Every file depends only on (seed, speaker, utterance),
so results do not depend on order or on the number of worker processes, and speaker ``k`` of a
seed is the same voice whatever the corpus size.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path

import numpy as np
import soundfile

from xvec.audio import SAMPLE_RATE
from xvec.devices import usable_cpus
from xvec.errors import XvecError
from xvec.files import write_json_atomic, write_text_atomic
from xvec.prepare import build_trials, write_train_list, write_trials

__all__ = [
    "DEFAULT_CONDITIONS",
    "SAMPLE_RATE",
    "Conditions",
    "CorpusInfo",
    "Voice",
    "make_corpus",
    "make_voice",
    "render_utterance",
]

SYNTH_VERSION = 1  # bump whenever the generated audio changes: old corpora are then remade
MIN_SECONDS, MAX_SECONDS = 1.5, 4.0

COMPLETE_MARKER = ".synth-complete.json"  # written last: its presence means the corpus is whole
PROGRESS_MARKER = ".synth-incomplete"  # present while a run is writing
_OUR_NAMES = {"audio", "train_list.txt", "trials.txt", "README.txt"}

# Short-time filtering: Hann windows of 16 ms every 8 ms, zero-padded to 512 points with the
# window centred, so a zero-phase response of up to +-16 ms does not wrap around.
_HOP, _WIN, _NFFT = 128, 256, 512
_OFFSET = (_NFFT - _WIN) // 2
_WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(_WIN) / _WIN)  # periodic: sums to 1 at hop/2
_FREQS = np.fft.rfftfreq(_NFFT, 1 / SAMPLE_RATE)

# Adult male vowel formants F1-F3 in Hz (Peterson & Barney 1952 averages): i I E ae A O U u V er.
_VOWELS = np.array(
    [
        [270, 2290, 3010],
        [390, 1990, 2550],
        [530, 1840, 2480],
        [660, 1720, 2410],
        [730, 1090, 2440],
        [570, 840, 2410],
        [440, 1020, 2240],
        [300, 870, 2240],
        [640, 1190, 2390],
        [490, 1350, 1690],
    ],
    dtype=np.float64,
)

# Typical bandwidths (Hz) of F1-F5 and the nasal pole.
_BANDWIDTHS = np.array([70, 90, 130, 200, 280, 100.0])

# Noise spectra of fricatives and bursts: (centre Hz, width in octaves) of a log-frequency bump.
_NOISE_SHAPES = np.array(
    [
        [5500, 0.55],  # 0  s, z
        [3000, 0.65],  # 1  sh
        [4000, 2.50],  # 2  f, v: flat and weak
        [1100, 1.10],  # 3  p, b: diffuse, low
        [4200, 0.90],  # 4  t, d: diffuse, high
        [2000, 0.45],  # 5  k, g: compact, mid
    ]
)

# Segment table columns.
DUR, VOICE, NOISE, ASP, NASAL, F1, F2, F3, SHAPE, ACCENT = range(10)
_NCOL = 10
_NONE = np.nan


def _row(
    dur: tuple[float, float], voice=0.0, noise=0.0, asp=0.0, nasal=0.0, formants=None, shape=-1
):
    """One consonant sub-segment template: duration range (s) and its source settings."""
    f1, f2, f3 = formants if formants is not None else (_NONE, _NONE, _NONE)
    return (dur, [0.0, voice, noise, asp, nasal, f1, f2, f3, shape, 0.0])


_SKIP = _row((0.0, 0.0))
# Consonants as up to three sub-segments (main part, burst, aspiration): relative amplitudes of
# voicing, frication and aspiration, nasal coupling and formant loci (male reference, Hz).
_CONSONANTS = {
    "m": [_row((0.05, 0.09), voice=0.45, nasal=1, formants=(280, 1000, 2200)), _SKIP, _SKIP],
    "n": [_row((0.045, 0.085), voice=0.45, nasal=1, formants=(280, 1650, 2600)), _SKIP, _SKIP],
    "l": [_row((0.04, 0.08), voice=0.65, formants=(360, 1300, 2700)), _SKIP, _SKIP],
    "r": [_row((0.04, 0.08), voice=0.6, formants=(420, 1300, 1600)), _SKIP, _SKIP],
    "w": [_row((0.04, 0.07), voice=0.6, formants=(300, 700, 2200)), _SKIP, _SKIP],
    "j": [_row((0.04, 0.07), voice=0.6, formants=(280, 2200, 2900)), _SKIP, _SKIP],
    "s": [_row((0.08, 0.15), noise=0.35, formants=(400, 1700, 2600), shape=0), _SKIP, _SKIP],
    "sh": [_row((0.08, 0.15), noise=0.4, formants=(400, 1900, 2400), shape=1), _SKIP, _SKIP],
    "f": [_row((0.07, 0.13), noise=0.12, formants=(400, 1000, 2300), shape=2), _SKIP, _SKIP],
    "z": [
        _row((0.06, 0.11), voice=0.25, noise=0.25, formants=(350, 1700, 2600), shape=0),
        _SKIP,
        _SKIP,
    ],
    "v": [
        _row((0.05, 0.09), voice=0.3, noise=0.1, formants=(350, 1000, 2300), shape=2),
        _SKIP,
        _SKIP,
    ],
    "h": [_row((0.05, 0.09), asp=0.35), _SKIP, _SKIP],
    "p": [
        _row((0.05, 0.09), formants=(400, 800, 2200)),
        _row((0.006, 0.012), noise=0.5, shape=3),
        _row((0.025, 0.055), asp=0.25),
    ],
    "t": [
        _row((0.05, 0.09), formants=(400, 1700, 2600)),
        _row((0.006, 0.012), noise=0.5, shape=4),
        _row((0.025, 0.055), asp=0.25),
    ],
    "k": [
        _row((0.05, 0.09), formants=(400, 1900, 2300)),
        _row((0.008, 0.015), noise=0.5, shape=5),
        _row((0.03, 0.06), asp=0.25),
    ],
    "b": [
        _row((0.045, 0.08), voice=0.1, formants=(400, 800, 2200)),
        _row((0.005, 0.01), noise=0.3, shape=3),
        _SKIP,
    ],
    "d": [
        _row((0.045, 0.08), voice=0.1, formants=(400, 1700, 2600)),
        _row((0.005, 0.01), noise=0.3, shape=4),
        _SKIP,
    ],
    "g": [
        _row((0.045, 0.08), voice=0.1, formants=(400, 1900, 2300)),
        _row((0.006, 0.012), noise=0.3, shape=5),
        _SKIP,
    ],
}
_CONS_VALUES = np.array(
    [[row[1] for row in rows] for rows in _CONSONANTS.values()] + [[_SKIP[1]] * 3]
)
_CONS_DURS = np.array(
    [[row[0] for row in rows] for rows in _CONSONANTS.values()] + [[(0.0, 0.0)] * 3]
)
# How often each consonant (in _CONSONANTS order) starts / ends a syllable; the last weight is
# for none (an open syllable), whose template is empty.
_ONSET_WEIGHTS = np.array([5, 6, 5, 4, 3, 2, 6, 2, 3, 2, 2, 3, 3, 6, 4, 3, 4, 2, 9], dtype=float)
_CODA_WEIGHTS = np.array([4, 6, 3, 3, 0, 0, 5, 1, 1, 2, 1, 0, 1, 4, 2, 1, 2, 1, 24], dtype=float)
_IS_PLOSIVE = np.array([name in {"p", "t", "k", "b", "d", "g"} for name in _CONSONANTS] + [False])

# Level calibration of the three excitations (measured on clean speech, relative to stressed
# vowels: /s/ and /sh/ about -14 dB, nasals about -4 dB).
_SOURCE_GAIN = 40.0
_ASPIRATION_GAIN = 0.6
_NOISE_GAIN = 1.0


# --------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class Conditions:
    """How much each utterance varies apart from its text: the knobs of the corpus' difficulty."""

    register_semitones: float = 1.3  # s.d. of an utterance's pitch key about the speaker's
    effort_tilt_db: float = 0.5  # s.d. of an utterance's extra spectral tilt, dB per octave
    snr_db: tuple[float, float] = (20.0, 45.0)  # background noise, uniform
    low_cut_hz: tuple[float, float] = (50.0, 150.0)  # channel band edges, log-uniform
    high_cut_hz: tuple[float, float] = (6000.0, 7800.0)
    eq_db: float = 1.5  # s.d. of three broad channel peaks/dips
    level_dbfs: tuple[float, float] = (-32.0, -18.0)  # active speech level, uniform


DEFAULT_CONDITIONS = Conditions()


# --------------------------------------------------------------------------- voices


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker's fixed characteristics (frequencies in Hz)."""

    index: int
    gender: str  # "m" or "f": sets the pitch and vocal-tract-length distributions
    f0_median: float
    pitch_range: float  # semitones of a full pitch accent
    jitter: float  # relative period perturbation (standard deviation)
    shimmer: float  # log-amplitude perturbation per period (standard deviation)
    open_quotient: float
    speed_quotient: float  # opening / closing duration of the glottal pulse
    tilt: float  # extra spectral tilt, dB per octave
    breathiness: float  # aspiration noise during voicing, relative
    tract_scale: float  # formant scale: 1 / relative vocal-tract length
    bandwidths: np.ndarray  # [6] of F1-F5 and the nasal pole
    nasality: float  # baseline nasal coupling of all voiced sounds, 0..1
    nasal_pole: float
    nasal_zero: float
    sinus_zero: float  # hypopharyngeal (piriform sinus) antiresonance: a fixed spectral notch
    sinus_bandwidth: float
    rate: float  # speaking rate, relative
    vowels: np.ndarray  # [10, 3] this speaker's vowel formant targets
    high_formants: np.ndarray  # [2] F4, F5
    noise_shapes: np.ndarray  # [6, bins] frication/burst magnitude responses


def make_voice(seed: int, index: int) -> Voice:
    """Speaker ``index`` of corpus ``seed``: even indices are male voices, odd female."""
    rng = np.random.default_rng([seed, index, 0x5EED])
    female = index % 2 == 1
    if female:
        f0 = float(np.clip(205 * np.exp(rng.normal(0, 0.12)), 150, 290))
        scale = 1.17 * np.exp(rng.normal(0, 0.07))
    else:
        f0 = float(np.clip(118 * np.exp(rng.normal(0, 0.14)), 80, 175))
        scale = np.exp(rng.normal(0, 0.07))
    vowels = _VOWELS * scale * np.exp(rng.normal(0, 0.10, size=_VOWELS.shape))
    high = np.minimum(np.array([3400.0, 4400.0]) * scale * np.exp(rng.normal(0, 0.06, 2)), 7200)
    shift = np.sqrt(scale) * np.exp(rng.normal(0, 0.08))
    centres = _NOISE_SHAPES[:, 0:1] * shift * np.exp(rng.normal(0, 0.05, (len(_NOISE_SHAPES), 1)))
    octaves = np.log2(np.maximum(_FREQS, 50.0)[None, :] / centres)
    shapes = np.exp(-0.5 * (octaves / _NOISE_SHAPES[:, 1:2]) ** 2) + 0.03
    shapes /= np.sqrt(np.mean(shapes**2, axis=1, keepdims=True))  # unit power for white input
    return Voice(
        index=index,
        gender="f" if female else "m",
        f0_median=f0,
        pitch_range=float(rng.uniform(1.5, 5.0)),
        jitter=float(rng.uniform(0.003, 0.02)),
        shimmer=float(rng.uniform(0.02, 0.10)),
        open_quotient=float(rng.uniform(0.45, 0.75)),
        speed_quotient=float(rng.uniform(1.5, 3.5)),
        tilt=float(np.clip(rng.normal(0, 3.5), -7, 7)),
        breathiness=float(rng.uniform(0.01, 0.2) * (1.5 if female else 1.0)),
        tract_scale=float(scale),
        bandwidths=_BANDWIDTHS * rng.uniform(0.75, 1.4) * np.exp(rng.normal(0, 0.2, 6)),
        nasality=float(rng.uniform(0.0, 0.35)),
        nasal_pole=float(rng.uniform(230, 330)),
        nasal_zero=float(rng.uniform(500, 1300)),
        sinus_zero=float(rng.uniform(3800, 5200) * np.sqrt(scale)),
        sinus_bandwidth=float(rng.uniform(150, 400)),
        rate=float(rng.uniform(0.8, 1.25)),
        vowels=vowels,
        high_formants=high,
        noise_shapes=shapes,
    )


# --------------------------------------------------------------------------- utterances


def _segments(voice: Voice, rng: np.random.Generator, duration: float) -> np.ndarray:
    """A random phone-like segment table ``[segments, _NCOL]`` lasting exactly ``duration`` s.

    Syllables are (C)V(C) with random consonants and vowels, some stressed (longer, louder,
    pitch-accented), some preceded by a pause; built as fixed slots and flattened, no loop.
    """
    lead, trail = rng.uniform(0.08, 0.3, size=2)
    speech = duration - lead - trail
    rate = voice.rate * np.exp(rng.normal(0, 0.06))
    n_syl = int(speech * 7 * rate) + 6  # more than enough syllables, cut to length below
    onset = rng.choice(len(_ONSET_WEIGHTS), size=n_syl, p=_ONSET_WEIGHTS / _ONSET_WEIGHTS.sum())
    coda = rng.choice(len(_CODA_WEIGHTS), size=n_syl, p=_CODA_WEIGHTS / _CODA_WEIGHTS.sum())
    vowel = rng.integers(len(_VOWELS), size=n_syl)
    stressed = rng.random(n_syl) < 0.4
    pause = rng.random(n_syl) < 0.12
    pause[0] = False

    slots = np.zeros((n_syl, 8, _NCOL))  # pause, onset x3, vowel, coda x3
    slots[:, 0, F1 : F3 + 1] = np.nan
    slots[:, 0, SHAPE] = -1
    slots[:, 0, DUR] = pause * rng.uniform(0.12, 0.35, n_syl)
    for first, consonant in ((1, onset), (5, coda)):
        durations = _CONS_DURS[consonant]  # [syllables, 3, 2]
        slots[:, first : first + 3] = _CONS_VALUES[consonant]
        slots[:, first : first + 3, DUR] = durations[..., 0] + rng.random((n_syl, 3)) * (
            durations[..., 1] - durations[..., 0]
        )
    slots[:, 5:8, F1 : F3 + 1] *= voice.tract_scale
    slots[:, 1:4, F1 : F3 + 1] *= voice.tract_scale
    unreleased = _IS_PLOSIVE[coda] & (rng.random(n_syl) < 0.5)
    slots[unreleased, 6, DUR] = 0.0
    slots[:, 7, DUR] = 0.0  # no aspiration after a final stop
    slots[:, 4, DUR] = rng.uniform(0.06, 0.13, n_syl) * np.where(stressed, 1.45, 1.0)
    slots[:, 4, VOICE] = np.where(stressed, 1.0, 0.75)
    slots[:, 4, F1 : F3 + 1] = voice.vowels[vowel]
    slots[:, 4, SHAPE] = -1
    slots[:, 4, ACCENT] = stressed * rng.uniform(0.3, 1.0, n_syl) * voice.pitch_range
    slots[:, 1:8, DUR] /= rate

    table = slots.reshape(-1, _NCOL)
    table = table[table[:, DUR] > 0]
    ends = np.cumsum(table[:, DUR])
    table = table[ends - table[:, DUR] < speech]
    table[-1, DUR] -= max(0.0, ends[len(table) - 1] - speech)
    silence = np.zeros((2, _NCOL))
    silence[:, F1 : F3 + 1] = np.nan
    silence[:, SHAPE] = -1
    silence[0, DUR] = lead
    silence[1, DUR] = trail + max(0.0, speech - table[:, DUR].sum())
    return np.concatenate([silence[:1], table, silence[1:]])


def _smooth(track: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average along axis 0 (edges held), for envelopes and transitions."""
    if width <= 1:
        return track
    pad = [(width // 2, width - 1 - width // 2)] + [(0, 0)] * (track.ndim - 1)
    padded = np.pad(track, pad, mode="edge")
    cumulative = np.cumsum(padded, axis=0)
    cumulative = np.concatenate([np.zeros_like(cumulative[:1]), cumulative])
    return (cumulative[width:] - cumulative[:-width]) / width


def _pitch_contour(
    voice: Voice,
    rng: np.random.Generator,
    segs: np.ndarray,
    seg_of_frame: np.ndarray,
    times: np.ndarray,
    register_sd: float,
) -> np.ndarray:
    """F0 per frame (Hz): register, declination, pitch accents, slow wander, final tune."""
    total = times[-1] + 1e-9
    register = rng.normal(0.0, register_sd)  # this utterance's key, semitones
    declination = rng.uniform(0.5, 3.0) * (0.5 - times / total)
    accents = _smooth(segs[seg_of_frame, ACCENT], 13)
    wander = _smooth(np.cumsum(rng.normal(0.0, 0.12, times.size)), 25)
    wander -= wander.mean()
    voiced_end = times[np.flatnonzero(segs[seg_of_frame, VOICE] > 0)[-1]]
    tail = np.clip((times - 0.75 * voiced_end) / (0.25 * voiced_end + 1e-9), 0.0, 1.0)
    tune = rng.uniform(2.0, 5.0) if rng.random() < 0.15 else -rng.uniform(0.0, 2.0)
    semitones = register + declination + accents + wander + tune * tail
    return np.clip(voice.f0_median * 2 ** (semitones / 12), 55.0, 480.0)


def _rosenberg(phase: np.ndarray, opening: float, closing: float) -> np.ndarray:
    """Glottal flow of a Rosenberg pulse at fractional position ``phase`` in its period."""
    rising = 0.5 - 0.5 * np.cos(np.pi * np.minimum(phase / opening, 1.0))
    falling = np.cos(0.5 * np.pi * np.clip((phase - opening) / closing, 0.0, 1.0))
    return np.where(phase < opening, rising, falling * (phase < opening + closing))


def _polymul_section(poly: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """Multiply per-row polynomials in z^-1 by ``1 + c1 z^-1 + c2 z^-2`` (rows are frames)."""
    out = np.zeros((poly.shape[0], poly.shape[1] + 2))
    out[:, :-2] += poly
    out[:, 1:-1] += c1[:, None] * poly
    out[:, 2:] += c2[:, None] * poly
    return out


def _cascade(freqs: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """Per-frame polynomial in z^-1 of two-pole sections at ``freqs [frames, k]`` (Hz)."""
    radius = np.exp(-np.pi * bandwidths / SAMPLE_RATE)
    angle = 2 * np.pi * freqs / SAMPLE_RATE
    poly = np.ones((freqs.shape[0], 1))
    for k in range(freqs.shape[1]):
        poly = _polymul_section(poly, -2 * radius[:, k] * np.cos(angle[:, k]), radius[:, k] ** 2)
    return poly


def _tract_response(
    pole_freqs: np.ndarray,
    pole_bandwidths: np.ndarray,
    zero_freqs: np.ndarray,
    zero_bandwidths: np.ndarray,
) -> np.ndarray:
    """Magnitude response ``[frames, bins]`` of resonances and antiresonances ``[frames, k]``.

    Each section has unit gain at 0 Hz (as in a cascade formant synthesiser); the numerator and
    denominator polynomials are evaluated on the FFT grid with one FFT each.
    """
    denominator = _cascade(pole_freqs, pole_bandwidths)
    numerator = _cascade(zero_freqs, zero_bandwidths)
    poles = np.abs(np.fft.rfft(denominator, n=_NFFT, axis=1))
    zeros = np.abs(np.fft.rfft(numerator, n=_NFFT, axis=1))
    gain = denominator.sum(axis=1, keepdims=True) / numerator.sum(axis=1, keepdims=True)
    return gain * zeros / poles


def _stft(signal: np.ndarray, frames: int) -> np.ndarray:
    """Spectra ``[frames, bins]`` of Hann-windowed frames, frame ``f`` centred on ``f * _HOP``.

    Each 16 ms frame sits in the middle of a 32 ms zero-padded buffer, so multiplying by a
    zero-phase response of up to +-16 ms and overlap-adding (:func:`_istft`) filters the signal
    without wrap-around.
    """
    lead = _WIN - _HOP
    padded = np.zeros((frames - 1) * _HOP + _WIN)
    padded[lead : lead + signal.size] = signal
    windows = np.lib.stride_tricks.sliding_window_view(padded, _WIN)[::_HOP][:frames]
    buffer = np.zeros((frames, _NFFT))
    buffer[:, _OFFSET : _OFFSET + _WIN] = windows * _WINDOW
    return np.fft.rfft(buffer, axis=1)


def _istft(spectrum: np.ndarray, length: int) -> np.ndarray:
    """Overlap-add of the frames of ``spectrum`` back to ``length`` samples (inverse of _stft)."""
    frames = spectrum.shape[0]
    blocks = np.fft.irfft(spectrum, n=_NFFT, axis=1).reshape(frames, _NFFT // _HOP, _HOP)
    out = np.zeros((frames + _NFFT // _HOP, _HOP))
    for part in range(_NFFT // _HOP):  # four overlapping quarters: vectorised overlap-add
        out[part : part + frames] += blocks[:, part]
    start = _WIN - _HOP + _OFFSET
    return out.reshape(-1)[start : start + length]


def _frame_power(spectrum: np.ndarray) -> np.ndarray:
    """Energy of each windowed frame from its one-sided spectrum (Parseval)."""
    power = np.abs(spectrum) ** 2
    return (2 * power.sum(axis=1) - power[:, 0] - power[:, -1]) / _NFFT


def _to_samples(tracks: np.ndarray, length: int) -> np.ndarray:
    """Linear interpolation of frame-rate ``tracks [frames, k]`` to ``[length, k]`` samples."""
    ramp = (np.arange(_HOP) / _HOP)[None, :, None]
    step = np.diff(tracks, axis=0)[:, None, :]
    return (tracks[:-1, None, :] + ramp * step).reshape(-1, tracks.shape[1])[:length]


def _glottal_flow(
    voice: Voice, rng: np.random.Generator, f0: np.ndarray, open_quotient: float
) -> np.ndarray:
    """Rosenberg pulse train following ``f0`` (Hz per sample), with jitter and shimmer."""
    nominal = np.cumsum(f0 / SAMPLE_RATE)
    period_noise = rng.standard_normal(int(nominal[-1]) + 2)  # one perturbation per period
    jittered = f0 * (1 + voice.jitter * period_noise[nominal.astype(np.int64)])
    phase = np.cumsum(jittered / SAMPLE_RATE)
    period = phase.astype(np.int64)
    opening = open_quotient * voice.speed_quotient / (1 + voice.speed_quotient)
    flow = _rosenberg(phase - period, opening, open_quotient - opening)
    return flow * np.exp(voice.shimmer * rng.standard_normal(period[-1] + 2))[period]


def _speech(
    voice: Voice, rng: np.random.Generator, length: int, conditions: Conditions
) -> tuple[np.ndarray, np.ndarray]:
    """Speech spectra ``[frames, bins]`` of one utterance and its frames' activity mask."""
    segs = _segments(voice, rng, length / SAMPLE_RATE)
    ends = np.cumsum(segs[:, DUR])
    frames = length // _HOP + 2
    times = np.arange(frames) * _HOP / SAMPLE_RATE
    seg_of_frame = np.minimum(np.searchsorted(ends, times, side="right"), len(segs) - 1)

    voicing = _smooth(segs[seg_of_frame, VOICE], 3)
    frication = _smooth(segs[seg_of_frame, NOISE], 2)
    aspiration = _smooth(segs[seg_of_frame, ASP], 3)
    nasal = np.maximum(_smooth(segs[seg_of_frame, NASAL], 5), voice.nasality * (voicing > 0))
    mids = ends - segs[:, DUR] / 2
    formants = np.empty((frames, 6))
    for k in range(3):  # linear transitions between the segments' formant targets
        known = ~np.isnan(segs[:, F1 + k])
        formants[:, k] = np.interp(times, mids[known], segs[known, F1 + k])
    formants[:, 3:5] = voice.high_formants
    formants[:, 5] = voice.nasal_pole
    formants = np.minimum(formants, 7600.0)
    bandwidths = np.broadcast_to(voice.bandwidths, (frames, 6)).copy()
    bandwidths[:, 0] *= 1 + 0.8 * nasal
    zeros = np.empty((frames, 2))
    zeros[:, 0] = voice.nasal_pole + nasal * (voice.nasal_zero - voice.nasal_pole)
    zeros[:, 1] = voice.sinus_zero
    zero_bandwidths = np.broadcast_to([voice.bandwidths[5], voice.sinus_bandwidth], zeros.shape)
    effort = rng.normal(0.0, 1.0)  # vocal effort of this utterance: tilt and open quotient
    tilt_db = voice.tilt - conditions.effort_tilt_db * effort
    tilt = 10 ** (tilt_db * np.log2(np.maximum(_FREQS, 60.0) / 500.0) / 20)
    tract = _tract_response(formants, bandwidths, zeros, zero_bandwidths) * tilt
    shape_weights = _smooth(
        (segs[seg_of_frame, SHAPE][:, None] == np.arange(len(_NOISE_SHAPES))).astype(float), 2
    )
    noise_response = shape_weights @ voice.noise_shapes

    f0 = _pitch_contour(voice, rng, segs, seg_of_frame, times, conditions.register_semitones)
    per_sample = _to_samples(np.stack([f0, voicing, aspiration, frication], axis=1), length)
    open_quotient = float(np.clip(voice.open_quotient - 0.04 * effort, 0.35, 0.85))
    flow = _glottal_flow(voice, rng, per_sample[:, 0], open_quotient)
    glottal = np.diff(flow * per_sample[:, 1], prepend=0.0) * _SOURCE_GAIN  # radiated: d/dt
    breath = voice.breathiness * per_sample[:, 1] * (0.4 + flow) + per_sample[:, 2]
    voiced = glottal + _ASPIRATION_GAIN * breath * rng.standard_normal(length)
    fricated = _NOISE_GAIN * per_sample[:, 3] * rng.standard_normal(length)
    spectrum = _stft(voiced, frames) * tract + _stft(fricated, frames) * noise_response
    return spectrum, (voicing + frication + aspiration) > 0.05


def _channel(rng: np.random.Generator, conditions: Conditions) -> np.ndarray:
    """A random gentle channel magnitude on the STFT bins: band limits, broad peaks and dips."""
    freqs = np.maximum(_FREQS, 1.0)
    low_cut = np.exp(rng.uniform(*np.log(conditions.low_cut_hz)))
    high_cut = np.exp(rng.uniform(*np.log(conditions.high_cut_hz)))
    order = rng.uniform(2, 6)
    band = 1 / np.sqrt((1 + (low_cut / freqs) ** 4) * (1 + (freqs / high_cut) ** (2 * order)))
    centres = np.exp(rng.uniform(np.log(150), np.log(6500), 3))
    widths = rng.uniform(0.3, 1.2, 3)
    gains_db = rng.normal(0.0, conditions.eq_db, 3)
    octaves = np.log2(freqs[:, None] / centres[None, :]) / widths[None, :]
    return band * 10 ** ((np.exp(-0.5 * octaves**2) @ gains_db) / 20)


def _background(rng: np.random.Generator, length: int, frames: int) -> np.ndarray:
    """Spectra of stationary noise with power ~ f^alpha (alpha in [-2, 0]): unit frame power."""
    colour = (np.maximum(_FREQS, 50.0) / 1000.0) ** (rng.uniform(-2.0, 0.0) / 2)
    spectrum = _stft(rng.standard_normal(length), frames) * colour
    return spectrum / np.sqrt(_frame_power(spectrum).mean())


def _hum(length: int, rng: np.random.Generator) -> np.ndarray:
    """Mains hum (50 or 60 Hz and four harmonics)."""
    t = np.arange(length) / SAMPLE_RATE
    mains = 50.0 if rng.random() < 0.5 else 60.0
    harmonics = np.arange(1, 6)[:, None]
    phases = rng.uniform(0, 2 * np.pi, (5, 1))
    return (np.sin(2 * np.pi * mains * harmonics * t + phases) / harmonics).sum(axis=0)


def render_utterance(
    voice: Voice, rng: np.random.Generator, conditions: Conditions = DEFAULT_CONDITIONS
) -> np.ndarray:
    """One utterance of ``voice`` (1.5-4 s, float32 at 16 kHz): speech, noise, channel, level."""
    length = int(round(rng.uniform(MIN_SECONDS, MAX_SECONDS) * SAMPLE_RATE))
    speech, active = _speech(voice, rng, length, conditions)
    speech /= np.sqrt(_frame_power(speech[active]).mean())
    noise_gain = 10 ** (-rng.uniform(*conditions.snr_db) / 20)
    mixed = (speech + noise_gain * _background(rng, length, speech.shape[0])) * _channel(
        rng, conditions
    )
    signal = _istft(mixed, length)
    if rng.random() < 0.15:
        signal += rng.uniform(0.3, 1.0) * noise_gain * _hum(length, rng)
    active_samples = np.repeat(active, _HOP)[:length]
    level = 10 ** (rng.uniform(*conditions.level_dbfs) / 20)
    signal *= level / (np.sqrt(np.mean(signal[active_samples] ** 2)) + 1e-12)
    peak = np.abs(signal).max()
    if peak > 0.99:
        signal *= 0.99 / peak
    return signal.astype(np.float32)


def utterance_rng(seed: int, speaker: int, utterance: int) -> np.random.Generator:
    """The generator of one utterance: a function of its identity only, not of run order."""
    return np.random.default_rng([seed, speaker, utterance, 0xA0D10])


# --------------------------------------------------------------------------- corpus


def speaker_name(index: int) -> str:
    return f"spk{index:04d}"


def utterance_path(speaker: int, utterance: int) -> str:
    """Path of a file relative to the corpus' ``audio/`` folder."""
    return f"{speaker_name(speaker)}/utt{utterance:03d}.wav"


def held_out_count(speakers: int) -> int:
    """Speakers kept for trials: a quarter, at least 8 where that leaves half for training."""
    return max(min(8, speakers // 2), speakers // 4)


def _render_speaker(audio_dir: str, seed: int, speaker: int, utterances: int) -> float:
    """Write one speaker's files; returns their total duration in seconds."""
    voice = make_voice(seed, speaker)
    folder = Path(audio_dir) / speaker_name(speaker)
    folder.mkdir(parents=True, exist_ok=True)
    seconds = 0.0
    for utterance in range(utterances):
        audio = render_utterance(voice, utterance_rng(seed, speaker, utterance))
        soundfile.write(
            str(Path(audio_dir) / utterance_path(speaker, utterance)),
            audio,
            SAMPLE_RATE,
            subtype="PCM_16",
        )
        seconds += audio.size / SAMPLE_RATE
    return seconds


@dataclass(frozen=True)
class CorpusInfo:
    """What :func:`make_corpus` made (or found already complete)."""

    out_dir: Path
    speakers: int
    train_speakers: int
    test_speakers: int
    files: int
    seconds: float
    trials: int
    elapsed: float
    reused: bool

    def __str__(self) -> str:
        how = "already complete, kept" if self.reused else f"made in {self.elapsed:.1f} s"
        return (
            f"{self.speakers} speakers ({self.train_speakers} train, {self.test_speakers} held "
            f"out), {self.files} files, {self.seconds / 60:.1f} min of audio, {self.trials} "
            f"trials; {how}"
        )

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("out_dir", "reused")}


def _prepare_folder(out_dir: Path) -> None:
    """Make ``out_dir`` ready for a fresh corpus, refusing to touch a folder that is not ours."""
    if out_dir.exists() and not out_dir.is_dir():
        raise XvecError(f"{out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    names = os.listdir(out_dir)
    ours = {COMPLETE_MARKER, PROGRESS_MARKER} & set(names)  # written by an earlier xvec synth
    visible = sorted(name for name in names if not name.startswith("."))
    foreign = [name for name in visible if name not in _OUR_NAMES or not ours]
    if foreign:
        raise XvecError(
            f"{out_dir}: not an xvec synthetic corpus (holds {', '.join(foreign[:3])}); "
            "give an empty or new folder"
        )
    (out_dir / PROGRESS_MARKER).write_text("writing: this corpus is incomplete\n")
    (out_dir / COMPLETE_MARKER).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "audio", ignore_errors=True)


def _readme(params: dict, info: CorpusInfo, test_speakers: list[int]) -> str:
    """The corpus' README.txt: how it was made, its layout and how to remake it."""
    speakers, utterances, seed = params["speakers"], params["utterances"], params["seed"]
    first, last = speaker_name(test_speakers[0]), speaker_name(test_speakers[-1])
    return f"""xvec synthetic speaker corpus (format version {params["version"]})

Made by `xvec synth` (xvec.synth.make_corpus) with speakers={speakers},
utterances={utterances}, seed={seed}. Nothing here is recorded speech: every
voice is a source-filter model (glottal pulses with speaker-specific pitch, jitter, shimmer,
breathiness and tilt through a vocal tract of speaker-specific length, bandwidths and nasality),
and every utterance is a new random string of phone-like segments with its own prosody, loudness,
background noise (SNR 20-45 dB) and channel colouring. The same parameters give identical files.

audio/SPEAKER/uttNNN.wav  16 kHz mono PCM_16, {MIN_SECONDS}-{MAX_SECONDS} s each
train_list.txt            'SPEAKER path' for the {info.train_speakers} training speakers
trials.txt                'LABEL enroll test', {info.trials} trials (half targets) over the
                          {info.test_speakers} held-out speakers {first} to {last}
Paths in both lists are relative to audio/. Even-numbered speakers are male voices, odd female;
most non-target trials pair speakers of the same gender.

Remake: xvec synth OUT --speakers {speakers} --utterances {utterances} --seed {seed}
"""


def _pool_context() -> BaseContext:
    """Fork where the platform has it: workers need no re-import of the caller's main module
    (spawn would re-run an unguarded script) and only use numpy, so forking is safe."""
    return get_context("fork" if "fork" in get_all_start_methods() else None)


def _default_workers(speakers: int) -> int:
    return max(1, min(usable_cpus(), speakers, 16))


def write_lists(
    folder: str | Path,
    speakers: int,
    utterances: int,
    seed: int,
    train_name: str = "train_list.txt",
    trials_name: str = "trials.txt",
) -> tuple[list[int], list[int], list]:
    """Write the corpus's train list and trial list (they need no audio to be known).

    Returns the training speakers, the held-out speakers and the trials. ``lists/`` ships the
    default corpus's lists, made by this function.
    """
    folder = Path(folder)
    n_test = held_out_count(speakers)
    train_ids = list(range(speakers - n_test))
    test_ids = list(range(speakers - n_test, speakers))
    write_train_list(
        folder / train_name,
        [(speaker_name(s), utterance_path(s, u)) for s in train_ids for u in range(utterances)],
    )
    test_files = [utterance_path(s, u) for s in test_ids for u in range(utterances)]
    trials = build_trials(
        [path.split("/")[0] for path in test_files],
        {speaker_name(s): ("f" if s % 2 else "m") for s in test_ids},
        per_file=5,
        same_gender=0.8,
        seed=seed,
    )
    write_trials(folder / trials_name, trials, test_files)
    return train_ids, test_ids, trials


def make_corpus(
    out_dir: str | Path,
    speakers: int = 60,
    utterances: int = 20,
    seed: int = 0,
    workers: int | None = None,
) -> CorpusInfo:
    """Write the synthetic corpus to ``out_dir`` unless a complete one with these settings is
    already there (then return at once).

    Layout: ``audio/<speaker>/<utt>.wav``, ``train_list.txt`` (the training speakers),
    ``trials.txt`` (held-out speakers, see :func:`held_out_count`), ``README.txt``. A marker
    written last records the settings, so an interrupted run is detected and redone.
    ``workers`` processes render speakers in parallel (default: one per available core).
    """
    out_dir = Path(out_dir)
    if speakers < 4:
        raise XvecError(
            f"speakers must be at least 4 (2 to train, 2 to test), got {speakers}",
            options=("speakers",),
        )
    if utterances < 2:
        raise XvecError(
            f"utterances must be at least 2 (target trials), got {utterances}",
            options=("utterances",),
        )
    params = {
        "version": SYNTH_VERSION,
        "speakers": speakers,
        "utterances": utterances,
        "seed": seed,
    }
    marker = out_dir / COMPLETE_MARKER
    if marker.is_file():
        try:
            record = json.loads(marker.read_text())
            if record["params"] == params:
                return CorpusInfo(out_dir=out_dir, reused=True, **record["info"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unreadable marker: make the corpus again

    started = time.perf_counter()
    _prepare_folder(out_dir)
    audio_dir = out_dir / "audio"
    workers = workers or _default_workers(speakers)
    jobs = [(str(audio_dir), seed, speaker, utterances) for speaker in range(speakers)]
    if workers == 1:
        seconds = [_render_speaker(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers, mp_context=_pool_context()) as pool:
            seconds = list(pool.map(_render_speaker, *zip(*jobs, strict=True)))

    train_ids, test_ids, trials = write_lists(out_dir, speakers, utterances, seed)
    info = CorpusInfo(
        out_dir=out_dir,
        speakers=speakers,
        train_speakers=len(train_ids),
        test_speakers=len(test_ids),
        files=speakers * utterances,
        seconds=round(float(sum(seconds)), 3),
        trials=len(trials),
        elapsed=round(time.perf_counter() - started, 3),
        reused=False,
    )
    write_text_atomic(out_dir / "README.txt", _readme(params, info, test_ids))
    write_json_atomic(marker, {"params": params, "info": info.to_dict()})
    (out_dir / PROGRESS_MARKER).unlink(missing_ok=True)
    return info
