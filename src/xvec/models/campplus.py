"""CAM++ (Wang et al., Interspeech 2023) as WeSpeaker builds it, with WeSpeaker's state-dict names.

A front convolution module ``head`` (FCM: a 3x3 stem and two stages of two residual blocks
that halve only the frequency axis, then a frequency-strided 3x3 convolution) turns the
``[freq, time]`` fbank into a channel sequence; ``xvector`` is a time-strided TDNN layer, three
densely connected TDNN blocks (12, 24 and 16 layers of kernel 3, dilations 1, 2, 2) whose
layers each end in a context-aware masking (CAM) layer, each block followed by a transit layer
halving the channels, batch norm + ReLU, statistics pooling (WeSpeaker's TSTP) and a dense
layer with a parameter-free batch norm, whose output is the embedding. Every "nonlinear"
stage is batch norm then ReLU (WeSpeaker's default ``config_str``).

Module names equal WeSpeaker's, so its ``avg_model.pt`` loads with ``strict=True`` after the
loss head (``projection.*``) is dropped; :meth:`CAMPPlus.params_from_state` reads the sizes.
The front end is WeSpeaker's (:class:`xvec.models.wespeaker_resnet.WeSpeakerFrontEnd`). 3D-Speaker's
CAM++ has the same module names; ``toolkit="3dspeaker"`` reproduces its inference instead: the
fbank of the unscaled waveform (:class:`xvec.features.KaldiFbankCMN`) and statistics pooling
without a variance floor.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from xvec.errors import XvecError
from xvec.features import KaldiFbankCMN
from xvec.models.wespeaker_resnet import (
    WeSpeakerFrontEnd,
    WeSpeakerWindow,
    samples_for,
    temporal_stats,
)
from xvec.plugin import Params, SpeakerModel

__all__ = ["CAMLayer", "CAMPPlus", "CAMPPlusParams", "DenseTDNNLayer", "FrontConvModule"]

DENSE_BLOCKS = ((12, 3, 1), (24, 3, 2), (16, 3, 2))  # (layers, kernel, dilation) per block
FCM_BLOCKS = (2, 2)
CAM_SEGMENT = 100  # frames per segment of the CAM layer's segment-level context
CAM_REDUCTION = 2


class BatchNormReLU(nn.Module):
    """Batch norm then ReLU; ``affine=False`` for the embedding's final normalisation."""

    def __init__(self, channels: int, relu: bool = True, affine: bool = True) -> None:
        super().__init__()
        self.batchnorm = nn.BatchNorm1d(channels, affine=affine)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.batchnorm(x)
        return F.relu(x) if self.relu else x


class FrequencyResBlock(nn.Module):
    """Residual block of two 3x3 convolutions whose first one strides frequency only."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=(stride, 1), bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class FrontConvModule(nn.Module):
    """FCM: ``[B, F, T] -> [B, channels * F / 8, T]``, frequency downsampled 8 times."""

    def __init__(self, channels: int, feat_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(
            *(
                FrequencyResBlock(channels, channels, 2 if i == 0 else 1)
                for i in range(FCM_BLOCKS[0])
            )
        )
        self.layer2 = nn.Sequential(
            *(
                FrequencyResBlock(channels, channels, 2 if i == 0 else 1)
                for i in range(FCM_BLOCKS[1])
            )
        )
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.out_channels = channels * (feat_dim // 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        x = F.relu(self.bn2(self.conv2(self.layer2(self.layer1(x)))))
        return x.flatten(1, 2)


class TDNNLayer(nn.Module):
    """Convolution without bias then batch norm + ReLU (``linear``, ``nonlinear``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(
            in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False
        )
        self.nonlinear = BatchNormReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class CAMLayer(nn.Module):
    """Context-aware masking: a dilated convolution gated by utterance + segment context.

    The gate is ``sigmoid(linear2(relu(linear1(mean over the utterance + mean over the
    frame's 100-frame segment))))``, per output channel and frame.
    """

    def __init__(self, channels: int, out_channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        padding = (kernel - 1) // 2 * dilation
        self.linear_local = nn.Conv1d(
            channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False
        )
        self.linear1 = nn.Conv1d(channels, channels // CAM_REDUCTION, 1)
        self.linear2 = nn.Conv1d(channels // CAM_REDUCTION, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[-1]
        segments = F.avg_pool1d(x, CAM_SEGMENT, stride=CAM_SEGMENT, ceil_mode=True)
        segment_context = segments.repeat_interleave(CAM_SEGMENT, dim=-1)[..., :frames]
        context = x.mean(dim=-1, keepdim=True) + segment_context
        gate = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return self.linear_local(x) * gate


class DenseTDNNLayer(nn.Module):
    """BN-ReLU, 1x1 bottleneck convolution, BN-ReLU, CAM layer: ``growth_rate`` new channels."""

    def __init__(
        self, in_channels: int, growth_rate: int, bottleneck: int, kernel: int, dilation: int
    ) -> None:
        super().__init__()
        self.nonlinear1 = BatchNormReLU(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bottleneck, 1, bias=False)
        self.nonlinear2 = BatchNormReLU(bottleneck)
        self.cam_layer = CAMLayer(bottleneck, growth_rate, kernel, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class DenseTDNNBlock(nn.Module):
    """Densely connected layers ``tdnnd1..N``: each sees all earlier outputs concatenated."""

    def __init__(
        self,
        layers: int,
        in_channels: int,
        growth_rate: int,
        bottleneck: int,
        kernel: int,
        dilation: int,
    ) -> None:
        super().__init__()
        for index in range(layers):
            layer = DenseTDNNLayer(
                in_channels + index * growth_rate, growth_rate, bottleneck, kernel, dilation
            )
            self.add_module(f"tdnnd{index + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = torch.cat([x, layer(x)], dim=1)
        return x


class TransitLayer(nn.Module):
    """BN-ReLU then a 1x1 convolution without bias (``nonlinear``, ``linear``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.nonlinear = BatchNormReLU(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class StatsPooling(nn.Module):
    """Mean and standard deviation over time as a module, so it sits in ``xvector`` like theirs.

    ``floored``: WeSpeaker's TSTP (``sqrt(var + 1e-7)``); otherwise 3D-Speaker's plain unbiased
    standard deviation.
    """

    def __init__(self, floored: bool = True) -> None:
        super().__init__()
        self.floored = floored

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.floored:
            return temporal_stats(x)
        x = x.float()
        return torch.cat([x.mean(dim=-1), x.std(dim=-1, correction=1)], dim=-1)


class EmbeddingLayer(nn.Module):
    """1x1 convolution without bias on the pooled vector, then a parameter-free batch norm."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.nonlinear = BatchNormReLU(out_channels, relu=False, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class CAMPPlusParams(Params):
    """CAM++ options: mel bands, embedding size, dense growth rate and bottleneck, widths."""

    feat_dim: int = Field(80, ge=8, le=256, multiple_of=8, description="Kaldi mel bands")
    embed_dim: int = Field(512, ge=1)
    growth_rate: int = Field(32, ge=1, description="channels each dense TDNN layer adds")
    bn_size: int = Field(4, ge=1, description="dense layer bottleneck = bn_size * growth_rate")
    init_channels: int = Field(128, ge=2, description="width of the first TDNN layer")
    head_channels: int = Field(32, ge=1, description="FCM width (fixed at 32 in WeSpeaker)")
    window: WeSpeakerWindow = "hamming"
    dither: float = Field(1.0, ge=0, description="training-time fbank dither (int16 units)")
    toolkit: Literal["wespeaker", "3dspeaker"] = Field(
        "wespeaker",
        description="whose inference: WeSpeaker's (int16-scaled fbank input, pooled variance "
        "floored at 1e-7) or 3D-Speaker's (input unscaled, no floor)",
    )


class CAMPPlus(SpeakerModel):
    """CAM++: FCM front convolutions, D-TDNN blocks with context-aware masking (WeSpeaker's).

    Input: 16 kHz waveforms; WeSpeaker's 80-band Kaldi fbank with mean normalisation
    (:class:`xvec.models.wespeaker_resnet.WeSpeakerFrontEnd`). The defaults are WeSpeaker's
    VoxCeleb CAM++ (7.2 M parameters, 512-dim embedding).
    """

    Params = CAMPPlusParams
    params: CAMPPlusParams
    min_frames: ClassVar[int] = 3  # the stride-2 TDNN leaves 2 frames: an unbiased std exists

    def __init__(self, params: CAMPPlusParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        min_samples = samples_for(self.min_frames)
        self.front_end: nn.Module
        if p.toolkit == "3dspeaker":
            self.front_end = KaldiFbankCMN(p.feat_dim, p.window, p.dither, min_samples)
        else:
            self.front_end = WeSpeakerFrontEnd(p.feat_dim, p.window, p.dither, min_samples)
        self.head = FrontConvModule(p.head_channels, p.feat_dim)
        self.xvector = nn.Sequential()
        self.xvector.add_module(
            "tdnn", TDNNLayer(self.head.out_channels, p.init_channels, kernel=5, stride=2)
        )
        channels = p.init_channels
        for index, (layers, kernel, dilation) in enumerate(DENSE_BLOCKS, start=1):
            block = DenseTDNNBlock(
                layers, channels, p.growth_rate, p.bn_size * p.growth_rate, kernel, dilation
            )
            self.xvector.add_module(f"block{index}", block)
            channels += layers * p.growth_rate
            self.xvector.add_module(f"transit{index}", TransitLayer(channels, channels // 2))
            channels //= 2
        self.xvector.add_module("out_nonlinear", BatchNormReLU(channels))
        self.xvector.add_module("stats", StatsPooling(floored=p.toolkit == "wespeaker"))
        self.xvector.add_module("dense", EmbeddingLayer(2 * channels, p.embed_dim))
        for module in self.modules():  # WeSpeaker's initialisation of the 1-D layers
            if isinstance(module, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def embedding_dim(self) -> int:
        return self.params.embed_dim

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """The network on WeSpeaker's input ``[batch, frames, feat_dim]`` -> embeddings."""
        return self.xvector(self.head(features.transpose(1, 2)))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"CAMPPlus expects [batch, samples], got {tuple(waveform.shape)}")
        return self.embed_features(self.front_end(waveform))

    @classmethod
    def params_from_state(cls, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The parameters of the WeSpeaker CAM++ whose ``state_dict`` is ``state``.

        ``head_channels`` from the FCM stem, ``feat_dim`` from the first TDNN layer's input
        (``head_channels * feat_dim / 8``), ``init_channels`` from its output, ``growth_rate``
        and ``bn_size`` from the first dense layer, ``embed_dim`` from the dense output. The
        block layout must be WeSpeaker's (12, 24, 16 layers). A loss head (``projection.*``)
        is ignored. Raises :class:`XvecError` when a size cannot be read.
        """
        what = "WeSpeaker CAM++ state dict"
        needed = (
            "head.conv1.weight",
            "xvector.tdnn.linear.weight",
            "xvector.block1.tdnnd1.linear1.weight",
            "xvector.block1.tdnnd1.cam_layer.linear_local.weight",
            "xvector.dense.linear.weight",
        )
        for key in needed:
            if key not in state:
                raise XvecError(f"{what}: no '{key}' (not a WeSpeaker CAM++ checkpoint)")
        for index, (layers, _, _) in enumerate(DENSE_BLOCKS, start=1):
            pattern = re.compile(rf"^xvector\.block{index}\.tdnnd(\d+)\.")
            found = {int(m.group(1)) for key in state if (m := pattern.match(key))}
            if found != set(range(1, layers + 1)):
                raise XvecError(
                    f"{what}: block{index} has {len(found)} dense layers, CAM++ has {layers}"
                )
        head_channels = int(state["head.conv1.weight"].shape[0])
        init_channels, head_out = (int(s) for s in state["xvector.tdnn.linear.weight"].shape[:2])
        if head_out % head_channels:
            raise XvecError(f"{what}: TDNN input {head_out} is not a multiple of {head_channels}")
        growth_rate = int(state["xvector.block1.tdnnd1.cam_layer.linear_local.weight"].shape[0])
        bottleneck = int(state["xvector.block1.tdnnd1.linear1.weight"].shape[0])
        if bottleneck % growth_rate:
            raise XvecError(f"{what}: bottleneck {bottleneck} is not a multiple of {growth_rate}")
        return {
            "feat_dim": 8 * (head_out // head_channels),
            "embed_dim": int(state["xvector.dense.linear.weight"].shape[0]),
            "growth_rate": growth_rate,
            "bn_size": bottleneck // growth_rate,
            "init_channels": init_channels,
            "head_channels": head_channels,
        }
