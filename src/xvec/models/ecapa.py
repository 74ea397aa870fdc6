"""ECAPA-TDNN (Desplanques et al., Interspeech 2020) on 80-dimensional log-mel filterbanks.

The layout of the paper's Figure 2: a kernel-5 convolution, three SE-Res2Blocks with dilations
2, 3 and 4, multi-layer feature aggregation (the three block outputs concatenated and mixed by a
1x1 convolution to 1536 channels), channel- and context-dependent attentive statistics pooling,
batch norm and a linear layer to the embedding. With 512 and 1024 channels it has the paper's
6.2 M and 14.7 M parameters. Every convolution is followed by ReLU, then batch norm.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from xvec.features import LogFbank
from xvec.models.layers import ConvReluBn, mean_std, weighted_mean_std
from xvec.plugin import Params, SpeakerModel

__all__ = [
    "ECAPATDNN",
    "AttentiveStatsPooling",
    "ConvReluBn",
    "ECAPATDNNParams",
    "Res2Conv",
    "SERes2Block",
    "SqueezeExcitation",
]

RES2_SCALE = 8
SE_BOTTLENECK = 128
ATTENTION_BOTTLENECK = 128
AGGREGATE_CHANNELS = 1536
VARIANCE_FLOOR = 1e-8


class Res2Conv(nn.Module):
    """Res2Net multi-scale convolution: channel groups chained through dilated convolutions.

    The channels are split into ``scale`` groups; the first passes unchanged and each later
    group ``i`` is convolved after adding the previous group's output, so successive groups see
    ever wider contexts at the cost of one group-sized convolution each (Gao et al. 2019).
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"channels ({channels}) must be divisible by scale ({scale})")
        self.width = channels // scale
        padding = dilation * (kernel_size // 2)
        self.convs = nn.ModuleList(
            ConvReluBn(self.width, self.width, kernel_size, dilation, padding)
            for _ in range(scale - 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = x.split(self.width, dim=1)
        outputs = [groups[0]]
        previous = None
        for group, layer in zip(groups[1:], self.convs, strict=True):
            previous = layer(group if previous is None else group + previous)
            outputs.append(previous)
        return torch.cat(outputs, dim=1)


class SqueezeExcitation(nn.Module):
    """Rescale channels by a gate computed from their utterance means (Hu et al. 2018)."""

    def __init__(self, channels: int, bottleneck: int = SE_BOTTLENECK) -> None:
        super().__init__()
        self.squeeze = nn.Linear(channels, bottleneck)
        self.excite = nn.Linear(bottleneck, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.excite(torch.relu(self.squeeze(x.mean(dim=-1)))))
        return x * gate.unsqueeze(-1)


class SERes2Block(nn.Module):
    """1x1 conv, dilated Res2 conv, 1x1 conv, squeeze-excitation, plus the block's input."""

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.reduce = ConvReluBn(channels, channels)
        self.res2 = Res2Conv(channels, kernel_size, dilation, RES2_SCALE)
        self.expand = ConvReluBn(channels, channels)
        self.se = SqueezeExcitation(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se(self.expand(self.res2(self.reduce(x))))


class AttentiveStatsPooling(nn.Module):
    """Channel- and context-dependent attentive statistics: ``[B, C, T] -> [B, 2C]``.

    Each frame's attention weight, separate for every channel, comes from the frame itself and
    the utterance's overall mean and standard deviation (the "global context"), through a tanh
    bottleneck; the output is the weighted mean and weighted standard deviation. The statistics
    are computed in float32, so a half-precision forward does not overflow.
    """

    def __init__(self, channels: int, bottleneck: int = ATTENTION_BOTTLENECK) -> None:
        super().__init__()
        self.hidden = nn.Conv1d(3 * channels, bottleneck, kernel_size=1)
        self.score = nn.Conv1d(bottleneck, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[-1]
        mean, std = mean_std(x.float(), dim=-1, floor=VARIANCE_FLOOR, keepdim=True)
        context = torch.cat([mean, std], dim=1).to(x.dtype).expand(-1, -1, frames)
        scores = self.score(torch.tanh(self.hidden(torch.cat([x, context], dim=1))))
        weights = torch.softmax(scores.float(), dim=-1)
        weighted_mean, weighted_std = weighted_mean_std(x.float(), weights, -1, VARIANCE_FLOOR)
        return torch.cat([weighted_mean, weighted_std], dim=1)


class ECAPATDNNParams(Params):
    """ECAPA-TDNN options: block width, embedding size, number of mel bands."""

    channels: int = Field(512, ge=RES2_SCALE, multiple_of=RES2_SCALE)
    embedding_size: int = Field(192, ge=1)
    n_mels: int = Field(80, ge=8, le=256)


class ECAPATDNN(SpeakerModel):
    """ECAPA-TDNN: SE-Res2Net TDNN blocks, multi-layer aggregation, attentive stats pooling.

    Input: 80-band log-mel filterbanks (:class:`xvec.features.LogFbank`, 25 ms / 10 ms, per
    utterance mean normalisation). ``channels`` 512 is the paper's small model (6.2 M
    parameters), 1024 its large one (14.7 M); the aggregation layer keeps 1536 channels for
    both, as in the paper.
    """

    Params = ECAPATDNNParams
    params: ECAPATDNNParams

    def __init__(self, params: ECAPATDNNParams | None = None) -> None:
        super().__init__(params)
        channels = self.params.channels
        self.fbank = LogFbank(n_mels=self.params.n_mels)
        self.stem = ConvReluBn(self.params.n_mels, channels, kernel_size=5, padding=2)
        self.blocks = nn.ModuleList(
            SERes2Block(channels, kernel_size=3, dilation=dilation) for dilation in (2, 3, 4)
        )
        self.aggregate = nn.Conv1d(3 * channels, AGGREGATE_CHANNELS, kernel_size=1)
        self.pooling = AttentiveStatsPooling(AGGREGATE_CHANNELS)
        self.pooling_bn = nn.BatchNorm1d(2 * AGGREGATE_CHANNELS)
        self.embedding = nn.Linear(2 * AGGREGATE_CHANNELS, self.params.embedding_size)

    @property
    def embedding_dim(self) -> int:
        return self.params.embedding_size

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"ECAPA-TDNN expects [batch, samples], got {tuple(waveform.shape)}")
        x = self.stem(self.fbank(waveform))
        block_outputs = []
        for block in self.blocks:
            x = block(x)
            block_outputs.append(x)
        x = torch.relu(self.aggregate(torch.cat(block_outputs, dim=1)))
        return self.embedding(self.pooling_bn(self.pooling(x)))
