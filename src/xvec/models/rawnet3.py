"""RawNet3: a raw-waveform speaker embedding network, as in voxceleb_trainer's ``RawNet3``.

Jung et al., "Pushing the limits of raw waveform speaker recognition" (Interspeech 2022), in the
configuration of voxceleb_trainer's ``configs/RawNet3_AAM.yaml``. Module and parameter names are
voxceleb_trainer's, so its RawNet3 state dicts (and the published RawNet3 weights) load with
unchanged keys, buffers included. The learnable sinc front end is implemented here in plain
torch; it computes what asteroid-filterbanks' ``ParamSincFB`` computes, with the same names.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import field_validator, model_validator
from torch import nn

from xvec.features import PreEmphasis
from xvec.models.layers import weighted_mean_std
from xvec.plugin import Params, SpeakerModel

__all__ = ["AFMS", "Bottle2neck", "ParamSincFB", "RawNet3", "RawNet3Params", "SincEncoder"]

SINC_KERNEL = 251
ATTENTION_HIDDEN = 128
AGGREGATE_CHANNELS = 1536
LOG_FLOOR = 1e-6
STAT_MIN, STAT_MAX = 1e-4, 1e4


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


class ParamSincFB(nn.Module):
    """Learnable band-pass filters given by a low cut-off and a bandwidth each (SincNet).

    ``n_filters // 2`` bands each yield two filters, an even (cosine) windowed sinc band-pass
    and its odd (sine) counterpart, so the phase of each band is captured too (Pariente et al.
    2020). Cut-offs start mel-spaced between 30 Hz and Nyquist. Only ``low_hz_`` and
    ``band_hz_`` are learnt; ``window_`` (the left half of a Hamming window) and ``n_`` (the
    left half of the time axis times 2 pi / rate) are constant buffers kept under these names
    for state-dict compatibility.
    """

    def __init__(
        self,
        n_filters: int,
        kernel_size: int = SINC_KERNEL,
        sample_rate: float = 16000.0,
        min_low_hz: float = 50.0,
        min_band_hz: float = 50.0,
    ) -> None:
        super().__init__()
        if n_filters % 2 or kernel_size % 2 == 0:
            raise ValueError("ParamSincFB needs an even number of filters and an odd kernel size")
        self.n_filters = n_filters
        self.kernel_size = kernel_size
        self.sample_rate = float(sample_rate)
        self.min_low_hz = float(min_low_hz)
        self.min_band_hz = float(min_band_hz)
        half = kernel_size // 2
        top = self.sample_rate / 2 - (self.min_low_hz + self.min_band_hz)
        # float64 end points, float32 numpy spacing and conversion: asteroid's exact values,
        # so a seeded build equals voxceleb_trainer's bit for bit
        mel = np.linspace(_hz_to_mel(30.0), _hz_to_mel(top), n_filters // 2 + 1, dtype=np.float32)
        edges = torch.from_numpy(_mel_to_hz(mel).astype(np.float32))
        self.low_hz_ = nn.Parameter(edges[:-1].view(-1, 1).clone())
        self.band_hz_ = nn.Parameter(edges.diff().view(-1, 1))
        window = torch.hamming_window(kernel_size, periodic=False, dtype=torch.float64)[:half]
        self.register_buffer("window_", window.float())
        times = torch.arange(-half, 0, dtype=torch.float32).view(1, -1) / self.sample_rate
        self.register_buffer("n_", 2 * math.pi * times)

    def filters(self) -> torch.Tensor:
        """The current filters ``[n_filters, 1, kernel_size]``: cosine ones, then sine ones."""
        low = self.min_low_hz + self.low_hz_.abs()
        high = (low + self.min_band_hz + self.band_hz_.abs()).clamp(
            self.min_low_hz, self.sample_rate / 2
        )
        band = high - low  # [bands, 1]
        phase_low, phase_high = low * self.n_, high * self.n_  # [bands, half]
        half_times = self.n_ / 2
        even_left = (phase_high.sin() - phase_low.sin()) / half_times * self.window_
        odd_left = (phase_low.cos() - phase_high.cos()) / half_times * self.window_
        even = torch.cat([even_left, 2 * band, even_left.flip(1)], dim=1)
        odd = torch.cat([odd_left, torch.zeros_like(band), -odd_left.flip(1)], dim=1)
        bank = torch.cat([even, odd], dim=0) / (2 * band.repeat(2, 1))
        return bank.unsqueeze(1)


class SincEncoder(nn.Module):
    """Strided convolution of ``[batch, 1, samples]`` with a :class:`ParamSincFB`."""

    def __init__(self, filterbank: ParamSincFB, stride: int) -> None:
        super().__init__()
        self.filterbank = filterbank
        self.stride = stride

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return F.conv1d(waveform, self.filterbank.filters(), stride=self.stride)


class AFMS(nn.Module):
    """Alpha feature-map scaling: ``(x + alpha) * sigmoid(fc(mean_t x))`` per channel.

    A learnt offset and a squeeze-excitation style gate, applied after each residual block.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels, 1))
        self.fc = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc(x.mean(dim=-1)))
        return (x + self.alpha) * gate.unsqueeze(-1)


class Bottle2neck(nn.Module):
    """Res2Net bottleneck with dilated convolutions, residual, optional max-pool, then AFMS.

    The 1x1 expansion is split into ``scale`` groups; each of the first ``scale - 1`` groups
    (plus the previous group's output) goes through its own dilated convolution, the last group
    passes unchanged, which gives a range of receptive fields inside one block. Every
    convolution is followed by ReLU then batch norm, as in voxceleb_trainer.
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        kernel_size: int,
        dilation: int,
        scale: int,
        pool: int = 0,
    ) -> None:
        super().__init__()
        width = planes // scale
        self.width = width
        self.nums = scale - 1
        self.conv1 = nn.Conv1d(inplanes, width * scale, kernel_size=1)
        self.bn1 = nn.BatchNorm1d(width * scale)
        padding = (kernel_size // 2) * dilation
        self.convs = nn.ModuleList(
            nn.Conv1d(width, width, kernel_size, dilation=dilation, padding=padding)
            for _ in range(self.nums)
        )
        self.bns = nn.ModuleList(nn.BatchNorm1d(width) for _ in range(self.nums))
        self.conv3 = nn.Conv1d(width * scale, planes, kernel_size=1)
        self.bn3 = nn.BatchNorm1d(planes)
        self.relu = nn.ReLU()
        self.mp = nn.MaxPool1d(pool) if pool else None
        self.afms = AFMS(planes)
        self.residual: nn.Module = (
            nn.Sequential(nn.Conv1d(inplanes, planes, kernel_size=1, bias=False))
            if inplanes != planes
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.residual(x)
        groups = self.bn1(self.relu(self.conv1(x))).split(self.width, dim=1)
        outputs = []
        previous = None
        for index, (conv, norm) in enumerate(zip(self.convs, self.bns, strict=True)):
            group = groups[index] if previous is None else previous + groups[index]
            previous = norm(self.relu(conv(group)))
            outputs.append(previous)
        outputs.append(groups[self.nums])
        out = self.bn3(self.relu(self.conv3(torch.cat(outputs, dim=1)))) + residual
        if self.mp is not None:
            out = self.mp(out)
        return self.afms(out)


class RawNet3Params(Params):
    """RawNet3 options, with voxceleb_trainer's names and the RawNet3_AAM defaults."""

    nOut: int = 256
    encoder_type: Literal["ECA", "ASP"] = "ECA"
    sinc_stride: int = 10
    log_sinc: bool = True
    norm_sinc: Literal["mean", "mean_std", "none"] = "mean"
    out_bn: bool = False
    C: int = 1024
    model_scale: int = 8
    context: bool = True
    summed: bool = True

    @field_validator("nOut", "sinc_stride")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be a positive integer")
        return value

    @field_validator("model_scale")
    @classmethod
    def _scale(cls, value: int) -> int:
        if value < 2:
            raise ValueError("must be at least 2 (Res2Net groups)")
        return value

    @field_validator("C")
    @classmethod
    def _channels(cls, value: int) -> int:
        if value < 8 or value % 8:
            raise ValueError("must be a positive multiple of 8 (C // 4 sinc filters come in pairs)")
        return value

    @model_validator(mode="after")
    def _groups_fit(self) -> RawNet3Params:
        if self.model_scale > self.C:
            raise ValueError(f"C ({self.C}) must be at least model_scale ({self.model_scale})")
        return self


class RawNet3(SpeakerModel):
    """RawNet3 (voxceleb_trainer): learnable sinc front end on raw audio, Res2Net+AFMS blocks.

    Waveform -> pre-emphasis -> instance norm -> ``C // 4`` parametric sinc filters (251 taps,
    stride ``sinc_stride``) -> ``log(|.| + 1e-6)`` -> mean removal over time -> three
    Bottle2neck blocks (dilation 2, 3, 4; max-pool 5 and 3 after the first two; with
    ``summed`` the third sees the pooled first block's output plus the second's) -> 1x1 conv of
    their concatenation to 1536 channels -> context-aware attentive statistics pooling
    (``ECA``: per-channel attention; ``ASP``: one weight per frame) -> BN -> linear to ``nOut``.

    ``bn1`` (never used by voxceleb_trainer's forward) and ``bn6`` (used only with ``out_bn``)
    exist so that voxceleb_trainer state dicts load unchanged; when unused they are frozen, so
    every trainable parameter receives a gradient (DistributedDataParallel requires that).
    The front end always runs in float32, even under autocast.
    """

    Params = RawNet3Params
    params: RawNet3Params
    onnx_exporter = "torchscript"  # torch.export cannot equate the pooled blocks' symbolic lengths

    def __init__(self, params: RawNet3Params | None = None) -> None:
        super().__init__(params)
        p = self.params
        channels = p.C
        self.preprocess = nn.Sequential(PreEmphasis(), nn.InstanceNorm1d(1, eps=1e-4, affine=True))
        self.conv1 = SincEncoder(ParamSincFB(channels // 4, SINC_KERNEL), stride=p.sinc_stride)
        self.relu = nn.ReLU()
        self.bn1 = nn.BatchNorm1d(channels // 4)
        self.layer1 = Bottle2neck(
            channels // 4, channels, 3, dilation=2, scale=p.model_scale, pool=5
        )
        self.layer2 = Bottle2neck(channels, channels, 3, dilation=3, scale=p.model_scale, pool=3)
        self.layer3 = Bottle2neck(channels, channels, 3, dilation=4, scale=p.model_scale)
        self.layer4 = nn.Conv1d(3 * channels, AGGREGATE_CHANNELS, kernel_size=1)
        attention_in = AGGREGATE_CHANNELS * (3 if p.context else 1)
        attention_out = AGGREGATE_CHANNELS if p.encoder_type == "ECA" else 1
        self.attention = nn.Sequential(
            nn.Conv1d(attention_in, ATTENTION_HIDDEN, kernel_size=1),
            nn.ReLU(),
            nn.BatchNorm1d(ATTENTION_HIDDEN),
            nn.Conv1d(ATTENTION_HIDDEN, attention_out, kernel_size=1),
            nn.Softmax(dim=2),
        )
        self.bn5 = nn.BatchNorm1d(2 * AGGREGATE_CHANNELS)
        self.fc6 = nn.Linear(2 * AGGREGATE_CHANNELS, p.nOut)
        self.bn6 = nn.BatchNorm1d(p.nOut)
        self.mp3 = nn.MaxPool1d(3)
        self.bn1.requires_grad_(False)
        self.bn6.requires_grad_(p.out_bn)

    @property
    def embedding_dim(self) -> int:
        return self.params.nOut

    def min_samples(self) -> int:
        """The shortest input that leaves two frames for the pooling statistics."""
        sinc_frames = 5 * 3 * 2  # two frames after the max-pools of 5 and 3
        return SINC_KERNEL + (sinc_frames - 1) * self.params.sinc_stride

    def front_end(self, waveform: torch.Tensor) -> torch.Tensor:
        """Normalised log magnitudes of the sinc filterbank ``[batch, C // 4, frames]``."""
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            emphasised = self.preprocess[0](waveform.float()).unsqueeze(1)
            x = self.conv1(self.preprocess[1](emphasised)).abs()
            if self.params.log_sinc:
                x = torch.log(x + LOG_FLOOR)
            if self.params.norm_sinc == "mean":
                x = x - x.mean(dim=-1, keepdim=True)
            elif self.params.norm_sinc == "mean_std":
                std = x.std(dim=-1, keepdim=True).clamp(min=1e-3)
                x = (x - x.mean(dim=-1, keepdim=True)) / std
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Attentive mean and standard deviation ``[batch, 2 * 1536]`` of ``x [batch, 1536, T]``.

        With ``context`` the attention also sees each utterance's global mean and standard
        deviation. The weighted statistics are computed in float32.
        """
        if self.params.context:
            frames = x.shape[-1]
            mean = x.mean(dim=2, keepdim=True)
            std = x.var(dim=2, keepdim=True).clamp(STAT_MIN, STAT_MAX).sqrt()
            attention_in = torch.cat(
                [x, mean.expand(-1, -1, frames), std.expand(-1, -1, frames)], 1
            )
        else:
            attention_in = x
        weights = self.attention(attention_in).float()
        mu, sigma = weighted_mean_std(x.float(), weights, 2, STAT_MIN, STAT_MAX)
        return torch.cat([mu, sigma], dim=1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"RawNet3 expects [batch, samples], got {tuple(waveform.shape)}")
        if waveform.shape[-1] < self.min_samples():
            raise ValueError(
                f"RawNet3 needs at least {self.min_samples()} samples, got {waveform.shape[-1]}"
            )
        x = self.front_end(waveform)
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        pooled1 = self.mp3(x1)
        x3 = self.layer3(pooled1 + x2 if self.params.summed else x2)
        x = self.relu(self.layer4(torch.cat([pooled1, x2, x3], dim=1)))
        x = self.fc6(self.bn5(self.pool(x)))
        return self.bn6(x) if self.params.out_bn else x
