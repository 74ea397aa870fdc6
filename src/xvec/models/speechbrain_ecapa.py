"""SpeechBrain's ECAPA-TDNN (``spkrec-ecapa-voxceleb``), with its state-dict names and pipeline.

SpeechBrain's variant differs from :mod:`xvec.models.ecapa` in ways that change every output:
convolutions pad their input by reflection (not zeros), the first TDNN layer takes part in
nothing but the first block's input, the aggregation keeps its ReLU and batch norm, the embedding
layer is a 1x1 convolution, and the input is SpeechBrain's own filterbank in decibels with
per-utterance mean subtraction. Module names follow SpeechBrain's (``blocks.0.conv.conv.weight``,
``blocks.1.res2net_block.blocks.0.norm.norm.running_mean``, ``mfa``, ``asp``, ``asp_bn``, ``fc``),
so an ``embedding_model.ckpt`` loads with the identity mapping. The forward pass is what
SpeechBrain's ``EncoderClassifier.encode_batch`` computes for inputs of full relative length.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from xvec.features import SpeechBrainFbank, wrap_pad_to
from xvec.plugin import Params, SpeakerModel

__all__ = ["SpeechBrainECAPA", "SpeechBrainECAPAParams"]

STATS_FLOOR = 1e-12  # SpeechBrain's clamp on the (weighted) variance before the square root


class ReflectConv1d(nn.Module):
    """A 1-d convolution whose input is reflect-padded by ``dilation * (kernel - 1) // 2``.

    SpeechBrain's "same" padding; the layer sits under the attribute ``conv``, so its weight is
    ``<name>.conv.weight`` as in SpeechBrain's wrapper.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1
    ) -> None:
        super().__init__()
        self.padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding:
            x = F.pad(x, (self.padding, self.padding), mode="reflect")
        return self.conv(x)


class WrappedBatchNorm1d(nn.Module):
    """``nn.BatchNorm1d`` under the attribute ``norm`` (SpeechBrain's ``<name>.norm.weight``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class TDNNLayer(nn.Module):
    """``norm(relu(conv(x)))`` with a reflect-padded, possibly dilated convolution."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1
    ) -> None:
        super().__init__()
        self.conv = ReflectConv1d(in_channels, out_channels, kernel_size, dilation)
        self.norm = WrappedBatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.relu(self.conv(x)))


class Res2Layers(nn.Module):
    """Res2Net chain: the first of ``scale`` channel groups passes, group ``i`` gets ``+ y[i-1]``.

    Group 1 is convolved alone; each later group is added to the previous group's output before
    its own TDNN layer, so later groups see wider contexts.
    """

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        width = channels // scale
        self.scale = scale
        self.blocks = nn.ModuleList(
            TDNNLayer(width, width, kernel_size, dilation) for _ in range(scale - 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.chunk(x, self.scale, dim=1)
        outputs = [groups[0]]
        for index, layer in enumerate(self.blocks, start=1):
            group = groups[index] if index == 1 else groups[index] + outputs[-1]
            outputs.append(layer(group))
        return torch.cat(outputs, dim=1)


class ChannelGate(nn.Module):
    """Squeeze-excitation: channels scaled by ``sigmoid(conv2(relu(conv1(mean over time))))``."""

    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.conv1 = ReflectConv1d(channels, bottleneck)
        self.conv2 = ReflectConv1d(bottleneck, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.conv2(torch.relu(self.conv1(x.mean(dim=2, keepdim=True)))))
        return gate * x


class SERes2Layer(nn.Module):
    """TDNN 1x1, Res2Net, TDNN 1x1, squeeze-excitation, plus the (projected) input."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: int,
        se_channels: int,
        kernel_size: int,
        dilation: int,
    ) -> None:
        super().__init__()
        self.tdnn1 = TDNNLayer(in_channels, out_channels, 1)
        self.res2net_block = Res2Layers(out_channels, scale, kernel_size, dilation)
        self.tdnn2 = TDNNLayer(out_channels, out_channels, 1)
        self.se_block = ChannelGate(out_channels, se_channels)
        self.shortcut = (
            ReflectConv1d(in_channels, out_channels) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        return self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x)))) + residual


def _mean_std(x: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over time, uniform or with ``weights`` summing to 1."""
    if weights is None:
        mean = x.mean(dim=2)
        variance = (x - mean.unsqueeze(2)).square().mean(dim=2)
    else:
        mean = (weights * x).sum(dim=2)
        variance = (weights * (x - mean.unsqueeze(2)).square()).sum(dim=2)
    return mean, variance.clamp(min=STATS_FLOOR).sqrt()


class AttentiveStats(nn.Module):
    """Channel-wise attentive statistics pooling ``[B, C, T] -> [B, 2C, 1]``.

    With ``global_context`` the attention also sees the utterance's mean and standard deviation
    of every channel. Statistics are computed in float32, so half-precision inputs do not
    overflow.
    """

    def __init__(self, channels: int, attention_channels: int, global_context: bool) -> None:
        super().__init__()
        self.global_context = global_context
        attention_in = 3 * channels if global_context else channels
        self.tdnn = TDNNLayer(attention_in, attention_channels, 1)
        self.conv = ReflectConv1d(attention_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[-1]
        values = x.float()
        attention_in = x
        if self.global_context:
            mean, std = _mean_std(values, None)
            context = torch.cat([mean, std], dim=1).unsqueeze(2).expand(-1, -1, frames)
            attention_in = torch.cat([x, context.to(x.dtype)], dim=1)
        scores = self.conv(torch.tanh(self.tdnn(attention_in)))
        mean, std = _mean_std(values, torch.softmax(scores.float(), dim=2))
        return torch.cat([mean, std], dim=1).unsqueeze(2)


class SpeechBrainECAPAParams(Params):
    """SpeechBrain ``ECAPA_TDNN`` arguments (its names); defaults: ``spkrec-ecapa-voxceleb``."""

    input_size: int = Field(80, ge=1, le=512)
    channels: list[int] = Field(default_factory=lambda: [1024, 1024, 1024, 1024, 3072])
    kernel_sizes: list[int] = Field(default_factory=lambda: [5, 3, 3, 3, 1])
    dilations: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 1])
    attention_channels: int = Field(128, ge=1)
    res2net_scale: int = Field(8, ge=2)
    se_channels: int = Field(128, ge=1)
    global_context: bool = True
    lin_neurons: int = Field(192, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> SpeechBrainECAPAParams:
        if len(self.channels) < 3:
            raise ValueError("channels needs at least 3 entries (first TDNN, blocks, aggregation)")
        if not len(self.channels) == len(self.kernel_sizes) == len(self.dilations):
            raise ValueError("channels, kernel_sizes and dilations must have the same length")
        if min(self.channels) < 1 or min(self.dilations) < 1:
            raise ValueError("channels and dilations must be positive")
        if any(size < 1 or size % 2 == 0 for size in self.kernel_sizes):
            raise ValueError("kernel_sizes must be odd positive numbers")
        for width in self.channels[1:-1]:
            if width % self.res2net_scale:
                raise ValueError(
                    f"block channels ({width}) must be divisible by res2net_scale "
                    f"({self.res2net_scale})"
                )
        return self


class SpeechBrainECAPA(SpeakerModel):
    """SpeechBrain's ECAPA-TDNN (spkrec-ecapa-voxceleb): its Fbank, mean norm, same key names.

    Waveform -> :class:`xvec.features.SpeechBrainFbank` (``input_size`` mel bands, dB, 80 dB
    range) -> per-utterance mean subtraction (SpeechBrain's ``InputNormalization`` with
    ``norm_type: sentence``, ``std_norm: False``) -> TDNN -> SE-Res2Net blocks -> TDNN over the
    concatenated block outputs (``mfa``) -> attentive statistics -> batch norm -> 1x1 conv to
    ``lin_neurons``. Signals too short for the reflect padding of the widest layer are
    cyclically padded (SpeechBrain raises an error on them).
    """

    Params = SpeechBrainECAPAParams
    params: SpeechBrainECAPAParams

    def __init__(self, params: SpeechBrainECAPAParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        channels, kernels, dilations = p.channels, p.kernel_sizes, p.dilations
        self.fbank = SpeechBrainFbank(n_mels=p.input_size)
        self.blocks = nn.ModuleList(
            [TDNNLayer(p.input_size, channels[0], kernels[0], dilations[0])]
        )
        for index in range(1, len(channels) - 1):
            self.blocks.append(
                SERes2Layer(
                    channels[index - 1],
                    channels[index],
                    p.res2net_scale,
                    p.se_channels,
                    kernels[index],
                    dilations[index],
                )
            )
        self.mfa = TDNNLayer(
            channels[-2] * (len(channels) - 2), channels[-1], kernels[-1], dilations[-1]
        )
        self.asp = AttentiveStats(channels[-1], p.attention_channels, p.global_context)
        self.asp_bn = WrappedBatchNorm1d(2 * channels[-1])
        self.fc = ReflectConv1d(2 * channels[-1], p.lin_neurons)
        widest_padding = max(d * (k - 1) // 2 for k, d in zip(kernels, dilations, strict=True))
        self.min_samples = widest_padding * self.fbank.hop_length  # frames >= widest padding + 1

    @property
    def embedding_dim(self) -> int:
        return self.params.lin_neurons

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        """The network input ``[batch, input_size, frames]``: Fbank minus its mean over time."""
        feats = self.fbank(wrap_pad_to(waveform, self.min_samples))
        return feats - feats.mean(dim=2, keepdim=True)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"SpeechBrainECAPA expects [batch, samples], got {waveform.shape}")
        x = self.features(waveform)
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        x = self.mfa(torch.cat(outputs[1:], dim=1))
        return self.fc(self.asp_bn(self.asp(x))).squeeze(2)

    @classmethod
    def params_from_state(cls, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Every parameter the tensor shapes determine (all but ``dilations``), by SpeechBrain name.

        Raises ``KeyError`` naming a missing tensor when ``state`` is not an ECAPA state dict.
        """
        depth = 1  # the first TDNN layer, then one SE-Res2Net block per "blocks.N.tdnn1"
        while f"blocks.{depth}.tdnn1.conv.conv.weight" in state:
            depth += 1
        first = state["blocks.0.conv.conv.weight"]
        channels, kernel_sizes = [int(first.shape[0])], [int(first.shape[2])]
        for index in range(1, depth):
            prefix = f"blocks.{index}."
            res2 = state[prefix + "res2net_block.blocks.0.conv.conv.weight"]
            channels.append(int(state[prefix + "tdnn1.conv.conv.weight"].shape[0]))
            kernel_sizes.append(int(res2.shape[2]))
        mfa = state["mfa.conv.conv.weight"]
        channels.append(int(mfa.shape[0]))
        kernel_sizes.append(int(mfa.shape[2]))
        attention = state["asp.tdnn.conv.conv.weight"]
        params: dict[str, Any] = {
            "input_size": int(first.shape[1]),
            "channels": channels,
            "kernel_sizes": kernel_sizes,
            "attention_channels": int(attention.shape[0]),
            "global_context": int(attention.shape[1]) == 3 * channels[-1],
            "lin_neurons": int(state["fc.conv.weight"].shape[0]),
        }
        if depth > 1:
            scale = 1
            while f"blocks.1.res2net_block.blocks.{scale - 1}.conv.conv.weight" in state:
                scale += 1
            params["res2net_scale"] = scale
            params["se_channels"] = int(state["blocks.1.se_block.conv1.conv.weight"].shape[0])
        return params
