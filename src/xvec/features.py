"""Log-mel front ends: xvec's own :class:`LogFbank` and voxceleb_trainer's exact model inputs.

Plain torch, no torchaudio: torchaudio's binaries match one torch release each, so depending on
it pins torch. :class:`MelSpectrogram` and :func:`mel_filterbank` compute what torchaudio 2.11's
``MelSpectrogram`` and ``melscale_fbanks`` compute (HTK mel scale, no filter normalisation), with
the same state-dict names, so voxceleb_trainer checkpoints load unchanged; tests compare them
with stored torchaudio outputs. Front ends always run in float32 without gradient tracking, even
inside an autocast region: log-mel features of 16-bit audio lose too much in half precision, and
they have nothing to learn.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from xvec.audio import SAMPLE_RATE

__all__ = [
    "KaldiFbank",
    "KaldiFbankCMN",
    "LogFbank",
    "MelSpectrogram",
    "PreEmphasis",
    "VTLogMelInput",
    "VTMelFrontEnd",
    "kaldi_fbank",
    "kaldi_mel_banks",
    "kaldi_window",
    "mel_filterbank",
    "spec_augment",
    "vt_filterbank",
    "vt_log_mel",
    "wrap_pad_to",
]

VT_N_FFT = 512
VT_WIN_LENGTH = 400
VT_HOP_LENGTH = 160
VT_LOG_FLOOR = 1e-6  # added to the mel power before the log, as voxceleb_trainer does

WindowName = Literal["hamming", "hann"]
_WINDOWS = {"hamming": torch.hamming_window, "hann": torch.hann_window}


def wrap_pad_to(waveform: torch.Tensor, min_samples: int) -> torch.Tensor:
    """Repeat a ``[batch, samples]`` signal cyclically up to ``min_samples`` (no-op if longer).

    Cyclic repetition is what voxceleb_trainer does to short evaluation signals
    (``numpy.pad(..., "wrap")``), so a padded input still looks like speech, not silence.
    """
    samples = waveform.shape[-1]
    if samples >= min_samples:
        return waveform
    if samples == 0:
        raise ValueError("cannot pad an empty waveform")
    repeats = -(-min_samples // samples)
    return waveform.repeat(1, repeats)[:, :min_samples]


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_filterbank(
    n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> torch.Tensor:
    """Triangular HTK-mel filters ``[n_freqs, n_mels]`` (torchaudio's ``melscale_fbanks``).

    ``n_mels + 2`` points equally spaced on the mel scale between ``f_min`` and ``f_max``
    (default: Nyquist) define the triangles; each column weights the ``n_freqs`` STFT bins
    (spanning 0 .. ``sample_rate // 2``) of one band, peaking at 1 without area normalisation.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    bin_hz = torch.linspace(0, sample_rate // 2, n_freqs)
    mel_points = torch.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2)
    edges_hz = 700.0 * (10.0 ** (mel_points / 2595.0) - 1.0)
    widths = edges_hz[1:] - edges_hz[:-1]
    offsets = edges_hz.unsqueeze(0) - bin_hz.unsqueeze(1)  # [n_freqs, n_mels + 2]
    rising = (-1.0 * offsets[:, :-2]) / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def power_spectrum(
    wave: torch.Tensor, n_fft: int, hop_length: int, win_length: int, window: torch.Tensor
) -> torch.Tensor:
    """``|STFT|^2`` ``[batch, samples] -> [batch, n_fft // 2 + 1, frames]``, centred frames."""
    spec = torch.stft(
        wave,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window,
        center=True,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    return spec.real.square() + spec.imag.square()


class _PowerSpectrogram(nn.Module):
    """``|STFT|^2`` of ``[..., samples]``: centred frames, reflect padding, one-sided.

    The window is the persistent buffer ``window``, as in torchaudio's ``Spectrogram``.
    """

    def __init__(self, n_fft: int, win_length: int, hop_length: int, window: torch.Tensor) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.register_buffer("window", window)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        shape = waveform.shape
        power = power_spectrum(
            waveform.reshape(-1, shape[-1]),
            self.n_fft,
            self.hop_length,
            self.win_length,
            self.window,
        )
        return power.reshape(shape[:-1] + power.shape[-2:])


class _MelScale(nn.Module):
    """Apply the persistent filter matrix ``fb`` ``[freqs, n_mels]`` to ``[..., freqs, frames]``."""

    def __init__(self, fb: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("fb", fb)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return torch.matmul(spec.transpose(-1, -2), self.fb).transpose(-1, -2)


class MelSpectrogram(nn.Module):
    """Mel power spectrogram ``[..., samples] -> [..., n_mels, frames]`` (torchaudio's transform).

    Submodules ``spectrogram`` (buffer ``window``) and ``mel_scale`` (buffer ``fb``) carry
    torchaudio's state-dict names, under which voxceleb_trainer checkpoints store them.
    """

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = 400,
        win_length: int | None = None,
        hop_length: int | None = None,
        f_min: float = 0.0,
        f_max: float | None = None,
        n_mels: int = 128,
        window_fn=torch.hann_window,
    ) -> None:
        super().__init__()
        win_length = win_length or n_fft
        hop_length = hop_length or win_length // 2
        self.spectrogram = _PowerSpectrogram(n_fft, win_length, hop_length, window_fn(win_length))
        self.mel_scale = _MelScale(
            mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, f_min, f_max)
        )

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.mel_scale(self.spectrogram(waveform))


class PreEmphasis(nn.Module):
    """First-order high-pass ``y[t] = x[t] - coef * x[t-1]`` on ``[batch, samples]`` signals.

    The first output sample uses a reflected ``x[-1] = x[1]`` so the length is unchanged. The
    2-tap kernel is the buffer ``flipped_filter`` (``[-coef, 1]``), the name under which
    voxceleb_trainer's ResNetSE34V2 stores it, so its state dicts load unchanged.
    """

    def __init__(self, coef: float = 0.97) -> None:
        super().__init__()
        self.coef = coef
        kernel = torch.tensor([-coef, 1.0], dtype=torch.float32).view(1, 1, 2)
        self.register_buffer("flipped_filter", kernel)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"PreEmphasis expects [batch, samples], got {tuple(waveform.shape)}")
        padded = F.pad(waveform.unsqueeze(1), (1, 0), mode="reflect")
        return F.conv1d(padded, self.flipped_filter).squeeze(1)


class LogFbank(nn.Module):
    """Mean-normalised log-mel filterbank ``[batch, samples] -> [batch, n_mels, frames]``.

    Pre-emphasis, Hamming-window power spectrum (centred frames, reflect padding), HTK mel
    filters, ``log(x + 1e-6)``, then the per-utterance mean over time is subtracted (cepstral
    mean normalisation), which removes a fixed channel response. The window and filters are
    non-persistent buffers: they are constants, so checkpoints do not carry them. Signals
    shorter than one window are cyclically padded to one window.
    """

    band_axis: ClassVar[int] = 1  # the output's mel-band axis: a SpecAugment target

    def __init__(
        self,
        n_mels: int = 80,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = 512,
        win_length: int = 400,
        hop_length: int = 160,
        preemphasis: float = 0.97,
    ) -> None:
        super().__init__()
        if not 0 < win_length <= n_fft:
            raise ValueError(f"win_length must be in 1..n_fft ({n_fft}), got {win_length}")
        self.n_mels = n_mels
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.preemphasis = preemphasis
        mel_fb = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate)
        self.register_buffer("window", torch.hamming_window(win_length), persistent=False)
        self.register_buffer("mel_fb", mel_fb, persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device_type=waveform.device.type, enabled=False):
            wave = waveform.to(self.window.dtype)  # float32 unless the module was cast explicitly
            wave = wrap_pad_to(wave, max(self.win_length, self.n_fft // 2 + 1))
            if self.preemphasis:
                first = wave[:, :1] - self.preemphasis * wave[:, 1:2]  # reflected x[-1] = x[1]
                wave = torch.cat([first, wave[:, 1:] - self.preemphasis * wave[:, :-1]], dim=1)
            power = power_spectrum(
                wave, self.n_fft, self.hop_length, self.win_length, self.window
            )  # [batch, freqs, frames]
            mel = torch.matmul(power.transpose(1, 2), self.mel_fb).transpose(1, 2)
            logmel = torch.log(mel + VT_LOG_FLOOR)
            return logmel - logmel.mean(dim=-1, keepdim=True)


def vt_filterbank(
    n_mels: int, window: WindowName = "hamming", preemphasis: bool = False
) -> nn.Module:
    """voxceleb_trainer's ``torchfb``: a mel spectrogram (512-point FFT, 25 ms / 10 ms).

    ``preemphasis=True`` gives ResNetSE34V2's ``Sequential(PreEmphasis, MelSpectrogram)``;
    ResNetSE34L uses a Hamming window without pre-emphasis, VGGVox the default Hann window.
    Module names are torchaudio's, so VT state-dict keys (``torchfb.mel_scale.fb``,
    ``torchfb.1.spectrogram.window`` ...) load unchanged.
    """
    mel = MelSpectrogram(
        sample_rate=SAMPLE_RATE,
        n_fft=VT_N_FFT,
        win_length=VT_WIN_LENGTH,
        hop_length=VT_HOP_LENGTH,
        f_min=0.0,
        f_max=None,
        window_fn=_WINDOWS[window],
        n_mels=n_mels,
    )
    return nn.Sequential(PreEmphasis(), mel) if preemphasis else mel


def vt_log_mel(
    torchfb: nn.Module, instancenorm: nn.Module, waveform: torch.Tensor, log_input: bool
) -> torch.Tensor:
    """VT's model input ``[batch, n_mels, frames]``: ``instancenorm(log(torchfb(x) + 1e-6))``.

    The log is skipped when ``log_input`` is false (VT's ``--log_input False``). The instance
    norm standardises every mel band of every utterance over time.
    """
    with torch.no_grad(), torch.autocast(device_type=waveform.device.type, enabled=False):
        dtype = next(torchfb.buffers()).dtype  # float32 unless the model was cast explicitly
        features = torchfb(waveform.to(dtype)) + VT_LOG_FLOOR
        if log_input:
            features = features.log()
        return instancenorm(features)


class VTLogMelInput:
    """Mixin giving VT models ``log_mel``: their ``torchfb`` and ``instancenorm`` on the waveform.

    The models keep the two parts as their own attributes (VT's state-dict keys); inputs shorter
    than the model's ``min_samples`` are cyclically padded first, as VT pads short files.
    """

    torchfb: nn.Module
    instancenorm: nn.Module
    min_samples: int

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """The normalised log-mel input ``[batch, n_mels, frames]`` VT feeds its network."""
        waveform = wrap_pad_to(waveform, self.min_samples)
        return vt_log_mel(self.torchfb, self.instancenorm, waveform, self.params.log_input)  # type: ignore[attr-defined]


class VTMelFrontEnd(nn.Module):
    """voxceleb_trainer's normalised log-mel input, as one module ``[B, S] -> [B, n_mels, T]``.

    The VT models (:mod:`xvec.models.resnet`, :mod:`xvec.models.vggvox`) hold the two parts,
    ``torchfb`` and ``instancenorm``, directly as their own attributes so that VT state dicts
    load with unchanged keys; they compute exactly :func:`vt_log_mel`, as this module does.
    """

    def __init__(
        self,
        n_mels: int = 40,
        window: WindowName = "hamming",
        preemphasis: bool = False,
        log_input: bool = True,
    ) -> None:
        super().__init__()
        self.log_input = log_input
        self.torchfb = vt_filterbank(n_mels, window, preemphasis)
        self.instancenorm = nn.InstanceNorm1d(n_mels)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return vt_log_mel(self.torchfb, self.instancenorm, waveform, self.log_input)


SB_AMIN = 1e-10  # SpeechBrain's floor on the mel power before the decibel conversion
SB_TOP_DB = 80.0  # SpeechBrain's dynamic range: each utterance is clipped to max - 80 dB


def speechbrain_mel_filters(
    n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float
) -> torch.Tensor:
    """SpeechBrain's triangular filters ``[n_fft // 2 + 1, n_mels]`` (its ``Filterbank``).

    The centres are ``n_mels`` HTK-mel points strictly between ``f_min`` and ``f_max``; unlike
    HTK/torchaudio triangles, each filter is symmetric in Hz with half-width equal to the distance
    to the previous centre, so it reaches 0 at the lower neighbour but not always at the upper
    one. Computed in float32 with the operations SpeechBrain uses, so the matrix is the same.
    """
    mel_points = torch.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2)
    hz_points = 700.0 * (10.0 ** (mel_points / 2595.0) - 1.0)
    half_width = (hz_points[1:] - hz_points[:-1])[:-1]
    centres = hz_points[1:-1]
    bin_hz = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    slope = (bin_hz.unsqueeze(1) - centres.unsqueeze(0)) / half_width.unsqueeze(0)
    return torch.clamp(torch.minimum(slope + 1.0, 1.0 - slope), min=0.0)


class SpeechBrainFbank(nn.Module):
    """SpeechBrain's ``Fbank`` log-mel features: ``[batch, samples] -> [batch, n_mels, frames]``.

    What ``speechbrain.lobes.features.Fbank`` computes with its defaults (no deltas, no context):
    a 400-point STFT of 25 ms periodic-Hamming frames every 10 ms, centred with zero padding
    (SpeechBrain pads with zeros, torchaudio reflects), the power spectrum, the filters of
    :func:`speechbrain_mel_filters`, ``10 * log10(max(power, 1e-10))``, and every value of an
    utterance raised to at least its maximum minus ``top_db`` (80 dB). No mean normalisation:
    SpeechBrain applies that separately. The window and filters are non-persistent buffers (its
    checkpoints do not carry them); the computation runs in float32 without gradients, also
    inside an autocast region.
    """

    def __init__(
        self,
        n_mels: int = 40,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = 400,
        win_length_ms: float = 25.0,
        hop_length_ms: float = 10.0,
        f_min: float = 0.0,
        f_max: float | None = None,
        top_db: float = SB_TOP_DB,
    ) -> None:
        super().__init__()
        self.win_length = int(round(sample_rate / 1000.0 * win_length_ms))
        self.hop_length = int(round(sample_rate / 1000.0 * hop_length_ms))
        if not 0 < self.win_length <= n_fft:
            raise ValueError(f"window ({self.win_length} samples) must be in 1..n_fft ({n_fft})")
        f_max = sample_rate // 2 if f_max is None else f_max
        if not 0 <= f_min < f_max:
            raise ValueError(f"need 0 <= f_min < f_max, got f_min={f_min}, f_max={f_max}")
        self.n_mels = n_mels
        self.n_fft = n_fft
        self.top_db = top_db
        filters = speechbrain_mel_filters(n_mels, n_fft, sample_rate, f_min, f_max)
        self.register_buffer("window", torch.hamming_window(self.win_length), persistent=False)
        self.register_buffer("mel_filters", filters, persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"Fbank expects [batch, samples], got {tuple(waveform.shape)}")
        with torch.no_grad(), torch.autocast(device_type=waveform.device.type, enabled=False):
            spec = torch.stft(
                waveform.to(self.window.dtype),
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                win_length=self.win_length,
                window=self.window,
                center=True,
                pad_mode="constant",
                normalized=False,
                onesided=True,
                return_complex=True,
            )
            power = (spec.real.square() + spec.imag.square()).transpose(1, 2)  # [B, frames, freqs]
            decibels = 10.0 * torch.log10(torch.clamp(power @ self.mel_filters, min=SB_AMIN))
            floor = decibels.amax(dim=(1, 2), keepdim=True) - self.top_db
            return torch.maximum(decibels, floor).transpose(1, 2)


# --- Kaldi's filterbank (compute-fbank-feats), as torchaudio.compliance.kaldi.fbank computes it ---

KaldiWindowName = Literal["hamming", "povey", "hanning", "rectangular"]
KALDI_LOG_FLOOR = torch.finfo(torch.float32).eps  # Kaldi floors mel energies at float epsilon


def _kaldi_mel(freq: torch.Tensor) -> torch.Tensor:
    return 1127.0 * (1.0 + freq / 700.0).log()


def kaldi_window(
    window: KaldiWindowName, size: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Kaldi's symmetric analysis windows; "povey" is a Hann window raised to the power 0.85.

    ``dtype`` is the precision the window is computed in (torchaudio uses the input's).
    """
    if window == "hamming":
        return torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46, dtype=dtype)
    if window == "povey":
        return torch.hann_window(size, periodic=False, dtype=dtype).pow(0.85)
    if window == "hanning":
        return torch.hann_window(size, periodic=False, dtype=dtype)
    if window == "rectangular":
        return torch.ones(size, dtype=dtype)
    raise ValueError(f"unknown Kaldi window '{window}'")


def kaldi_mel_banks(
    n_mels: int,
    fft_size: int,
    sample_rate: int,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Kaldi's triangular mel filters ``[n_mels, fft_size // 2 + 1]`` (the Nyquist bin gets 0).

    Triangles are equally spaced on the mel scale ``1127 ln(1 + f / 700)`` between ``low_freq``
    and ``high_freq`` (``<= 0``: offset from Nyquist), and are triangular in mel, not in Hz.
    Computed in ``dtype`` (torchaudio: the default dtype, float32) in the order Kaldi/torchaudio
    use, so the filters agree to the last bit on the same CPU kernels.
    """
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ValueError(f"bad mel range {low_freq}..{high_freq} Hz for Nyquist {nyquist} Hz")
    mel_low = 1127.0 * math.log(1.0 + low_freq / 700.0)
    mel_high = 1127.0 * math.log(1.0 + high_freq / 700.0)
    step = (mel_high - mel_low) / (n_mels + 1)
    index = torch.arange(n_mels, dtype=dtype).unsqueeze(1)
    left = mel_low + index * step
    centre = mel_low + (index + 1.0) * step
    right = mel_low + (index + 2.0) * step
    bin_mel = _kaldi_mel((sample_rate / fft_size) * torch.arange(fft_size // 2, dtype=dtype))
    rising = (bin_mel - left) / (centre - left)
    falling = (right - bin_mel) / (right - centre)
    banks = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return F.pad(banks, (0, 1))


def kaldi_fbank(
    waveform: torch.Tensor,
    window: torch.Tensor,
    mel_banks: torch.Tensor,
    frame_shift: int,
    preemphasis: float = 0.97,
    dither: float = 0.0,
    remove_dc_offset: bool = True,
) -> torch.Tensor:
    """Kaldi log filterbank ``[batch, samples] -> [batch, frames, n_mels]`` (snip_edges=True).

    Frames of ``len(window)`` samples every ``frame_shift``, keeping only whole frames; per
    frame: optional Gaussian dither, DC removal, pre-emphasis (the first sample is its own
    predecessor), the window, zero padding to the FFT size implied by ``mel_banks``, power
    spectrum, mel filters, ``log(max(energy, float eps))``.
    """
    frame_length = window.shape[0]
    if waveform.dim() != 2:
        raise ValueError(f"kaldi_fbank expects [batch, samples], got {tuple(waveform.shape)}")
    if waveform.shape[-1] < frame_length:
        raise ValueError(f"need at least {frame_length} samples, got {waveform.shape[-1]}")
    frames = waveform.unfold(-1, frame_length, frame_shift)  # [batch, frames, frame_length]
    if dither:
        frames = frames + dither * torch.randn_like(frames)
    if remove_dc_offset:
        frames = frames - frames.mean(dim=-1, keepdim=True)
    if preemphasis:
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = frames - preemphasis * previous
    fft_size = 2 * (mel_banks.shape[-1] - 1)
    frames = F.pad(frames * window, (0, fft_size - frame_length))
    power = torch.fft.rfft(frames).abs().pow(2.0)
    energies = torch.matmul(power, mel_banks.T)
    return energies.clamp(min=KALDI_LOG_FLOOR).log()


class KaldiFbank(nn.Module):
    """Kaldi's ``compute-fbank-feats`` log mel energies: ``[batch, samples]`` to
    ``[batch, frames, n_mels]``.

    Equal to ``torchaudio.compliance.kaldi.fbank`` (use_energy=False, energy floor 0, snip_edges,
    FFT size rounded up to a power of two) for the options here; tests compare it with
    torchaudio 2.11.0's stored outputs. The input is taken as it is given: Kaldi and WeSpeaker
    feed int16-scaled samples. Window and filters are non-persistent buffers (constants, not
    checkpoint state). ``dither`` (Gaussian noise of that standard deviation, Kaldi's training
    default 1.0) is added only in training mode. Runs in float32 even under autocast.
    """

    def __init__(
        self,
        n_mels: int = 80,
        sample_rate: int = SAMPLE_RATE,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
        window: KaldiWindowName = "povey",
        preemphasis: float = 0.97,
        low_freq: float = 20.0,
        high_freq: float = 0.0,
        dither: float = 0.0,
        remove_dc_offset: bool = True,
    ) -> None:
        super().__init__()
        self.frame_length = int(sample_rate * frame_length_ms * 0.001)
        self.frame_shift = int(sample_rate * frame_shift_ms * 0.001)
        if self.frame_length < 2 or self.frame_shift < 1:
            raise ValueError("frame length must be at least 2 samples and the shift at least 1")
        fft_size = 1 << (self.frame_length - 1).bit_length()
        self.n_mels = n_mels
        self.preemphasis = preemphasis
        self.dither = dither
        self.remove_dc_offset = remove_dc_offset
        banks = kaldi_mel_banks(n_mels, fft_size, sample_rate, low_freq, high_freq)
        self.register_buffer("window", kaldi_window(window, self.frame_length), persistent=False)
        self.register_buffer("mel_banks", banks, persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device_type=waveform.device.type, enabled=False):
            return kaldi_fbank(
                waveform.to(self.window.dtype),
                self.window,
                self.mel_banks,
                self.frame_shift,
                self.preemphasis,
                self.dither if self.training else 0.0,
                self.remove_dc_offset,
            )


class KaldiFbankCMN(nn.Module):
    """Kaldi fbank minus its mean over time: ``[batch, samples] -> [batch, frames, n_mels]``.

    3D-Speaker's ``FBank(n_mels, mean_nor=True)``: ``kaldi.fbank`` with Kaldi's defaults (25 ms /
    10 ms, ``window``, pre-emphasis 0.97, 20 Hz .. Nyquist) of the waveform times
    ``waveform_scale`` (1: 3D-Speaker feeds [-1, 1] samples as they are), then the per-utterance
    mean over time subtracted unless ``mean_norm`` is false. ``dither`` applies in training mode
    only. Signals shorter than ``min_samples`` are repeated cyclically up to that length. No
    state-dict entries.
    """

    band_axis: ClassVar[int] = 2  # the output's mel-band axis: a SpecAugment target

    def __init__(
        self,
        n_mels: int = 80,
        window: KaldiWindowName = "povey",
        dither: float = 0.0,
        min_samples: int = 400,
        waveform_scale: float = 1.0,
        mean_norm: bool = True,
    ) -> None:
        super().__init__()
        self.fbank = KaldiFbank(n_mels=n_mels, window=window, dither=dither)
        self.min_samples = max(min_samples, self.fbank.frame_length)
        self.waveform_scale = waveform_scale
        self.mean_norm = mean_norm

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device_type=waveform.device.type, enabled=False):
            wave = wrap_pad_to(waveform.float(), self.min_samples)
            if self.waveform_scale != 1.0:
                wave = wave * self.waveform_scale
            features = self.fbank(wave)
            if self.mean_norm:
                features = features - features.mean(dim=1, keepdim=True)
            return features


def _mask_spans(
    rows: torch.Tensor, masks: int, max_width: int, size: int, device: torch.device
) -> torch.Tensor:
    """``[batch, size]`` True inside ``masks`` random spans per row marked in ``rows``.

    Each span starts uniformly in ``0 .. size - 1`` and is ``1 .. max_width`` long, cut at the
    end (WeSpeaker's ``spec_aug`` draws); rows where ``rows`` is False get no span.
    """
    batch = rows.shape[0]
    start = torch.randint(0, size, (batch, masks, 1), device=device)
    width = torch.randint(1, max_width + 1, (batch, masks, 1), device=device)
    position = torch.arange(size, device=device)
    inside = (position >= start) & (position < start + width)  # [batch, masks, size]
    return inside.any(dim=1) & rows[:, None]


def spec_augment(
    features: torch.Tensor,
    band_axis: int,
    probability: float,
    time_masks: int,
    max_frames: int,
    band_masks: int,
    max_bands: int,
) -> torch.Tensor:
    """SpecAugment of a ``[batch, ., .]`` feature batch: a masked copy, the input untouched.

    WeSpeaker's ``spec_aug``: each row, with chance ``probability``, gets ``time_masks`` spans of
    1 .. ``max_frames`` frames and ``band_masks`` spans of 1 .. ``max_bands`` mel bands, each
    starting uniformly and cut at the edge. Masked values become the row's mean of that band
    over time: 0 after mean normalisation (WeSpeaker's fill), a neutral value without it.
    Draws come from torch's default generator of the features' device (the training loop
    seeds it per step, so a resumed run masks exactly as an uninterrupted one).
    """
    if features.dim() != 3 or band_axis not in (1, 2):
        raise ValueError(
            "expected [batch, bands, frames] or [batch, frames, bands] features, got shape "
            f"{tuple(features.shape)} with band axis {band_axis}"
        )
    bands_first = features if band_axis == 1 else features.transpose(1, 2)
    batch, bands, frames = bands_first.shape
    device = features.device
    rows = torch.rand(batch, device=device) < probability
    hidden = torch.zeros(batch, bands, frames, dtype=torch.bool, device=device)
    if time_masks:
        hidden |= _mask_spans(rows, time_masks, max_frames, frames, device)[:, None, :]
    if band_masks:
        hidden |= _mask_spans(rows, band_masks, max_bands, bands, device)[:, :, None]
    fill = bands_first.mean(dim=2, keepdim=True)
    masked = torch.where(hidden, fill, bands_first)
    return masked if band_axis == 1 else masked.transpose(1, 2).contiguous()
