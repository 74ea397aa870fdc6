"""voxceleb_trainer's squeeze-excitation ResNet-34 family on log-mel spectrograms.

``ResNetSE34L`` ("Fast ResNet-34": half-width, frequency-strided stem, SAP/ASP over time) and
``ResNetSE34V2`` ("H/ASP": full stride, pre-emphasis, channel-wise attentive pooling). Module
and parameter names follow voxceleb_trainer, so its state dicts load with unchanged keys and the
embeddings equal VT's to float rounding.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from xvec.features import VTLogMelInput, vt_filterbank
from xvec.models.layers import (
    conv_output_lengths,
    padded_features,
    time_mask,
    zero_what_conv_reads_past,
)
from xvec.models.pooling import (
    attention_vector,
    attentive_pool,
    channel_attention,
    masked_attention,
    self_attention_weights,
)
from xvec.plugin import Params, SpeakerModel

__all__ = ["ResNetSE34L", "ResNetSE34V2", "SEBasicBlock", "SELayer"]

SE_REDUCTION = 8
StageWidths = Annotated[
    list[Annotated[int, Field(ge=SE_REDUCTION)]], Field(min_length=4, max_length=4)
]
StageDepths = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=4, max_length=4)]


class SELayer(nn.Module):
    """Squeeze-and-excitation: rescale each channel by a gate computed from its global mean."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc(self.avg_pool(x).flatten(1))
        return x * gate[:, :, None, None]

    def forward_padded(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with each item's channel means over its first ``lengths`` steps."""
        per_step = x.sum(dim=2)  # [batch, channels, time]
        total = (per_step * time_mask(lengths, per_step)).sum(dim=2)
        gate = self.fc(total / (lengths * x.shape[2]).to(total.dtype)[:, None])
        return x * gate[:, :, None, None]


class SEBasicBlock(nn.Module):
    """Two 3x3 convolutions with an SE gate and a residual connection (VT's ordering).

    As in voxceleb_trainer, the first convolution is followed by ReLU *then* batch norm.
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int | tuple[int, int] = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.se = SELayer(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.relu(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)

    def forward_padded(
        self, x: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` of a padded batch (changing ``x`` in place), and the items' lengths
        after it: what a convolution reads past an item's length is zeroed, as the item alone
        is padded; the other padded steps hold values no valid step depends on."""
        x = zero_what_conv_reads_past(x, lengths, self.conv1)
        out_lengths = conv_output_lengths(lengths, self.conv1)
        out = self.bn1(self.relu(self.conv1(x)))
        out = zero_what_conv_reads_past(out, out_lengths, self.conv2)
        out = self.bn2(self.conv2(out))
        out = self.se.forward_padded(out, out_lengths)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut), out_lengths


def make_stage(
    inplanes: int, planes: int, blocks: int, stride: int | tuple[int, int]
) -> nn.Sequential:
    """``blocks`` SE blocks; the first changes width/stride through a 1x1 projection if needed."""
    downsample = None
    if stride not in (1, (1, 1)) or inplanes != planes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes),
        )
    first = SEBasicBlock(inplanes, planes, stride, downsample)
    return nn.Sequential(first, *(SEBasicBlock(planes, planes) for _ in range(blocks - 1)))


class ResNetSEParams(Params):
    """Parameters shared by the VT ResNets (voxceleb_trainer's argument names)."""

    nOut: int = Field(512, ge=1, description="embedding size")
    encoder_type: Literal["SAP", "ASP"] = "SAP"
    n_mels: int = Field(40, ge=8, le=512, description="mel bands of the log-mel input")
    log_input: bool = True
    num_filters: StageWidths = Field(default_factory=lambda: [16, 32, 64, 128])
    layers: StageDepths = Field(default_factory=lambda: [3, 4, 6, 3])


class _ResNetSE(VTLogMelInput, SpeakerModel):
    """Shared trunk: VT log-mel input, a stem, four SE-ResNet stages, pooling, linear output."""

    Params: ClassVar[type[ResNetSEParams]] = ResNetSEParams
    stage_strides: ClassVar[tuple[int, int, int, int]]
    window: ClassVar[Literal["hamming", "hann"]] = "hamming"
    preemphasis: ClassVar[bool]
    min_samples: ClassVar[int] = 15 * 160  # shorter inputs are cyclically padded (16 frames)

    params: ResNetSEParams

    def __init__(self, params: ResNetSEParams | None = None) -> None:
        super().__init__(params)
        # Construction order is VT's, so a seeded build draws the same initial weights.
        self.build_stem()
        self.relu = nn.ReLU(inplace=True)
        widths, depths = self.params.num_filters, self.params.layers
        inplanes = widths[0]
        for index, (planes, blocks, stride) in enumerate(
            zip(widths, depths, self.stage_strides, strict=True), start=1
        ):
            setattr(self, f"layer{index}", make_stage(inplanes, planes, blocks, stride))
            inplanes = planes
        self.instancenorm = nn.InstanceNorm1d(self.params.n_mels)
        self.torchfb = vt_filterbank(self.params.n_mels, self.window, self.preemphasis)
        self.build_head()
        self._init_weights()

    def _init_weights(self) -> None:
        """VT's initialisation: He (fan-out) for convolutions, unit/zero batch-norm affine."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def embedding_dim(self) -> int:
        return self.params.nOut

    def build_stem(self) -> None:  # pragma: no cover - abstract
        """Create ``conv1`` and ``bn1``."""
        raise NotImplementedError

    def build_head(self) -> None:  # pragma: no cover - abstract
        """Create the pooling parameters and ``fc``."""
        raise NotImplementedError

    def stem(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def pool(  # pragma: no cover - abstract
        self, x: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One vector per item of ``[batch, channels, bands, time]``, over each item's first
        ``lengths`` steps when given (else all)."""
        raise NotImplementedError

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.log_mel(waveform).unsqueeze(1))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x))

    def forward_padded(self, waveform: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Each item's :meth:`forward` from a zero-padded batch: the front end runs per item
        (its framing and instance norm see only the item), the trunk on the padded features."""
        features = [
            self.log_mel(waveform[item : item + 1, :length])
            for item, length in enumerate(lengths.tolist())
        ]
        x, frames = padded_features(features)
        x = self.stem(x.unsqueeze(1))
        frames = conv_output_lengths(frames, self.conv1)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x, frames = block.forward_padded(x, frames)
        return self.fc(self.pool(x, frames))


class ResNetSE34L(_ResNetSE):
    """ResNetSE34L (voxceleb_trainer): fast half-width ResNet-34 with SE blocks, log-mel input.

    7x7 stem strided over frequency, stages strided (1, 2, 2, 1); the frequency axis is averaged
    out and SAP/ASP attends over time. 1.44 M parameters at the defaults (40 mels, nOut 512).
    """

    stage_strides = (1, 2, 2, 1)
    preemphasis = False
    exact_padding = True  # padded batches: 0.75x the CPU time of one file at a time

    def build_stem(self) -> None:
        width = self.params.num_filters[0]
        self.conv1 = nn.Conv2d(1, width, 7, stride=(2, 1), padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)

    def build_head(self) -> None:
        channels = self.params.num_filters[3]
        self.sap_linear = nn.Linear(channels, channels)
        self.attention = attention_vector(channels)
        pooled = channels * (2 if self.params.encoder_type == "ASP" else 1)
        self.fc = nn.Linear(pooled, self.params.nOut)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def pool(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        frames = x.mean(dim=2).transpose(1, 2)  # [batch, time, channels]
        weights = self_attention_weights(frames, self.sap_linear, self.attention, lengths)
        return attentive_pool(frames, weights, dim=1, with_std=self.params.encoder_type == "ASP")


class ResNetSE34V2Params(ResNetSEParams):
    """ResNetSE34V2 defaults: VT's published baseline_v2 configuration (ASP, 64 mels)."""

    encoder_type: Literal["SAP", "ASP"] = "ASP"
    n_mels: int = Field(64, ge=8, le=512, description="mel bands of the log-mel input")
    num_filters: StageWidths = Field(default_factory=lambda: [32, 64, 128, 256])


class ResNetSE34V2(_ResNetSE):
    """ResNetSE34V2 (voxceleb_trainer): H/ASP ResNet-34 with SE blocks and channel attention.

    Pre-emphasised log-mel input, 3x3 stem, stages strided (1, 2, 2, 2); every (channel,
    frequency) row gets its own attention over time. 8.0 M parameters at the defaults.
    """

    Params = ResNetSE34V2Params
    stage_strides = (1, 2, 2, 2)
    # forward_padded is exact, but padded batches of this wider, full-resolution network
    # measured 1.02-1.10x the CPU time of one file at a time (bench/eval_speed.py): not used.
    exact_padding = False
    preemphasis = True

    def build_stem(self) -> None:
        width = self.params.num_filters[0]
        self.conv1 = nn.Conv2d(1, width, 3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(width)

    def build_head(self) -> None:
        bands = self.params.n_mels
        for _ in range(3):  # three stride-2 stages, each ceil-halving the frequency axis
            bands = (bands + 1) // 2
        channels = self.params.num_filters[3] * bands
        self.attention = channel_attention(channels)
        pooled = channels * (2 if self.params.encoder_type == "ASP" else 1)
        self.fc = nn.Linear(pooled, self.params.nOut)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.relu(self.conv1(x)))

    def pool(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        frames = x.flatten(start_dim=1, end_dim=2)  # [batch, channels * bands, time]
        weights = (
            self.attention(frames)
            if lengths is None
            else masked_attention(self.attention, frames, lengths)
        )
        return attentive_pool(frames, weights, dim=2, with_std=self.params.encoder_type == "ASP")
