"""WeSpeaker's ResNet family (ResNet18 ... ResNet293) with WeSpeaker's state-dict names.

The network of WeSpeaker's ``wespeaker/models/resnet.py``: a 3x3 stem convolution, four stages
of basic (ResNet18/34) or bottleneck (ResNet50 and deeper) residual blocks with widths m, 2m, 4m,
8m that halve time and frequency from the second stage on (no max pooling), a parameter-free
pooling over time of every channel x frequency (``pooling_func``: TSTP, the mean and standard
deviation; TAP, the mean; TSDP, the standard deviation), and one linear layer ``seg_1`` to the
embedding, optionally followed by ReLU, a parameter-free batch norm and a
second linear layer (``two_emb_layer``). Module names equal WeSpeaker's, so the ``avg_model.pt``
that WeSpeaker saves (a plain ``state_dict``) loads with ``strict=True`` after dropping its loss
head (``projection.*``); :meth:`WeSpeakerResNet.params_from_state` reads the sizes off it. The
pooling is not stored: TSTP over f mel bands has the shapes of TAP or TSDP over 2f
(:meth:`WeSpeakerResNet.pooling_readings` lists what fits), so importers ask for it.

The model takes 16 kHz waveforms and computes WeSpeaker's inference input itself
(:class:`WeSpeakerFrontEnd`), so its embeddings equal WeSpeaker's ``extract.py`` output.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from xvec.errors import XvecError
from xvec.features import KaldiFbank, wrap_pad_to
from xvec.plugin import Params, SpeakerModel

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "WeSpeakerFrontEnd",
    "WeSpeakerResNet",
    "WeSpeakerResNetParams",
    "temporal_pool",
    "temporal_stats",
]

INT16_SCALE = 32768.0  # WeSpeaker's data pipeline multiplies [-1, 1] audio by 1 << 15
STATS_VARIANCE_FLOOR = 1e-7  # WeSpeaker's TSTP: sqrt(unbiased variance + 1e-7)

WeSpeakerWindow = Literal["hamming", "povey"]
WeSpeakerPooling = Literal["TSTP", "TAP", "TSDP"]
# statistics per channel x band of each parameter-free WeSpeaker pooling
POOLED_STATISTICS: dict[str, int] = {"TSTP": 2, "TAP": 1, "TSDP": 1}
FREQUENCY_STRIDE = 8  # three stride-2 stages: seg_1 sees feat_dim / 8 bands
Depth = Literal[18, 34, 50, 101, 152, 221, 293]
# depth -> (bottleneck blocks?, blocks per stage), as WeSpeaker's ResNet18 ... ResNet293
RESNET_LAYOUTS: dict[int, tuple[bool, tuple[int, int, int, int]]] = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
    221: (True, (6, 16, 48, 3)),
    293: (True, (10, 20, 64, 3)),
}


class WeSpeakerFrontEnd(nn.Module):
    """WeSpeaker's network input ``[batch, samples] -> [batch, frames, n_mels]``.

    What WeSpeaker's data pipeline feeds its models: the [-1, 1] waveform scaled to int16
    range, Kaldi log filterbanks (25 ms / 10 ms, ``window`` "hamming" as WeSpeaker's own
    recipes, "povey" for the 3D-Speaker CAM++/ERes2Net releases), then the per-utterance mean
    over time subtracted (CMN). ``dither`` (int16 units; WeSpeaker trains with 1.0) applies in
    training mode only: WeSpeaker extracts embeddings without it. Signals shorter than
    ``min_samples`` are repeated cyclically up to that length. No state-dict entries.
    """

    band_axis: ClassVar[int] = 2  # the output's mel-band axis: a SpecAugment target

    def __init__(
        self,
        n_mels: int = 80,
        window: WeSpeakerWindow = "hamming",
        dither: float = 0.0,
        min_samples: int = 400,
    ) -> None:
        super().__init__()
        self.fbank = KaldiFbank(n_mels=n_mels, window=window, dither=dither)
        self.min_samples = max(min_samples, self.fbank.frame_length)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device_type=waveform.device.type, enabled=False):
            wave = wrap_pad_to(waveform.float(), self.min_samples) * INT16_SCALE
            features = self.fbank(wave)
            return features - features.mean(dim=1, keepdim=True)


def samples_for(frames: int, frame_shift: int = 160, frame_length: int = 400) -> int:
    """The fewest samples that give ``frames`` Kaldi frames (25 ms / 10 ms, snip_edges, 16 kHz)."""
    return frame_length + (frames - 1) * frame_shift


def temporal_stats(x: torch.Tensor, variance_floor: float = STATS_VARIANCE_FLOOR) -> torch.Tensor:
    """WeSpeaker's TSTP: mean and ``sqrt(unbiased var + floor)`` over the last (time) axis.

    ``[B, C, (F,) T] -> [B, 2 * C (* F)]``, mean block first; computed in float32 so that a
    half-precision forward cannot overflow. The floor is WeSpeaker's 1e-7 (3D-Speaker: 1e-8).
    """
    x = x.float()
    variance, mean = torch.var_mean(x, dim=-1, correction=1)
    std = torch.sqrt(variance + variance_floor)
    return torch.cat([mean.flatten(1), std.flatten(1)], dim=1)


def temporal_pool(
    x: torch.Tensor, pooling_func: WeSpeakerPooling, variance_floor: float = STATS_VARIANCE_FLOOR
) -> torch.Tensor:
    """WeSpeaker's (and 3D-Speaker's) parameter-free poolings over the last (time) axis,
    ``[B, C, (F,) T] -> [B, stats * C (* F)]``: TSTP (:func:`temporal_stats`), TAP (the mean)
    or TSDP (the floored unbiased standard deviation alone); float32 as :func:`temporal_stats`."""
    if pooling_func == "TSTP":
        return temporal_stats(x, variance_floor)
    x = x.float()
    if pooling_func == "TAP":
        return x.mean(dim=-1).flatten(1)
    variance = torch.var(x, dim=-1, correction=1)
    return torch.sqrt(variance + variance_floor).flatten(1)


def _shortcut(in_planes: int, out_planes: int, stride: int | tuple[int, int]) -> nn.Sequential:
    """Identity (empty) unless the shape changes: then a strided 1x1 convolution and batch norm."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm; the first may stride. ReLU after the sum."""

    expansion: ClassVar[int] = 1

    def __init__(self, in_planes: int, planes: int, stride: int | tuple[int, int] = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided) and 1x1 expand (x4) convolutions with batch norm."""

    expansion: ClassVar[int] = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        return F.relu(out + self.shortcut(x))


class WeSpeakerResNetParams(Params):
    """WeSpeaker ResNet options: depth, stem width, mel bands, pooling, embedding size, second
    layer."""

    depth: Depth = 34
    m_channels: int = Field(32, ge=1, description="width of the first stage (x2 per stage)")
    feat_dim: int = Field(80, ge=8, le=256, multiple_of=8, description="Kaldi mel bands")
    embed_dim: int = Field(256, ge=1)
    pooling_func: WeSpeakerPooling = Field(
        "TSTP", description="TSTP (mean and std), TAP (mean) or TSDP (std) over time"
    )
    two_emb_layer: bool = False
    window: WeSpeakerWindow = "hamming"
    dither: float = Field(1.0, ge=0, description="training-time fbank dither (int16 units)")


def _check_resnet_keys(state: dict[str, torch.Tensor]) -> str:
    """Refuse a state dict without a ResNet's stem and ``seg_1`` or with a learnt pooling;
    returns the name to use in further errors."""
    what = "WeSpeaker ResNet state dict"
    for key in ("conv1.weight", "seg_1.weight"):
        if key not in state:
            raise XvecError(f"{what}: no '{key}' (not a WeSpeaker ResNet checkpoint)")
    if any(key.startswith("pool.") for key in state):
        raise XvecError(
            f"{what}: has a learnt pooling ('pool.*'); only the parameter-free TSTP, TAP and "
            "TSDP are supported"
        )
    return what


class WeSpeakerResNet(SpeakerModel):
    """WeSpeaker's ResNet (18-293) with TSTP, TAP or TSDP pooling on Kaldi fbanks; loads
    WeSpeaker weights.

    Input: 16 kHz waveforms; :class:`WeSpeakerFrontEnd` makes WeSpeaker's 80-band Kaldi
    fbank with mean normalisation. ResNet34 with ``m_channels`` 32 and a 256-dim embedding is
    WeSpeaker's VoxCeleb baseline (6.6 M parameters). The embedding is ``seg_1``'s output, or
    ``seg_2``'s with ``two_emb_layer`` (WeSpeaker extracts the last of the two).
    """

    Params = WeSpeakerResNetParams
    params: WeSpeakerResNetParams
    min_frames: ClassVar[int] = 9  # 3 stride-2 stages leave 2 frames: an unbiased std exists

    def __init__(self, params: WeSpeakerResNetParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        bottleneck, blocks = RESNET_LAYOUTS[p.depth]
        block: type[BasicBlock] | type[Bottleneck] = Bottleneck if bottleneck else BasicBlock
        self.front_end = WeSpeakerFrontEnd(
            p.feat_dim, p.window, p.dither, samples_for(self.min_frames)
        )
        m = p.m_channels
        self.conv1 = nn.Conv2d(1, m, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m)
        in_planes = m
        stages = []
        for index, (count, width) in enumerate(zip(blocks, (m, 2 * m, 4 * m, 8 * m), strict=True)):
            layers = []
            for position in range(count):
                stride = 2 if index > 0 and position == 0 else 1
                layers.append(block(in_planes, width, stride))
                in_planes = width * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        pooled = POOLED_STATISTICS[p.pooling_func] * in_planes * (p.feat_dim // FREQUENCY_STRIDE)
        self.seg_1 = nn.Linear(pooled, p.embed_dim)
        if p.two_emb_layer:
            self.seg_bn_1 = nn.BatchNorm1d(p.embed_dim, affine=False)
            self.seg_2 = nn.Linear(p.embed_dim, p.embed_dim)

    @property
    def embedding_dim(self) -> int:
        return self.params.embed_dim

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """The network on WeSpeaker's input ``[batch, frames, feat_dim]`` -> embeddings."""
        x = features.transpose(1, 2).unsqueeze(1)  # [B, 1, F, T]
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        embedding = self.seg_1(temporal_pool(x, self.params.pooling_func))
        if self.params.two_emb_layer:
            embedding = self.seg_2(self.seg_bn_1(F.relu(embedding)))
        return embedding

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(
                f"WeSpeakerResNet expects [batch, samples], got {tuple(waveform.shape)}"
            )
        return self.embed_features(self.front_end(waveform))

    @classmethod
    def pooling_readings(cls, state: dict[str, torch.Tensor]) -> dict[str, int]:
        """``{pooling_func: feat_dim}`` for each pooling under which ``seg_1``'s input fits.

        ``seg_1`` takes ``stats x 8m x expansion x feat_dim / 8`` inputs (stats: 2 for TSTP, 1
        for TAP and TSDP), so TSTP over f bands looks exactly like TAP or TSDP over 2f. Only
        ``feat_dim`` values the model accepts (multiples of 8, 8..256) are listed.
        """
        _check_resnet_keys(state)
        expansion = Bottleneck.expansion if "layer1.0.conv3.weight" in state else 1
        per_band = 8 * int(state["conv1.weight"].shape[0]) * expansion
        pooled = int(state["seg_1.weight"].shape[1])
        readings = {}
        for pooling, statistics in POOLED_STATISTICS.items():
            if pooled % (statistics * per_band) == 0:
                feat_dim = FREQUENCY_STRIDE * pooled // (statistics * per_band)
                try:
                    WeSpeakerResNetParams(feat_dim=feat_dim)
                except ValueError:  # outside the mel bands the model takes
                    continue
                readings[pooling] = feat_dim
        return readings

    @classmethod
    def params_from_state(
        cls, state: dict[str, torch.Tensor], pooling_func: WeSpeakerPooling = "TSTP"
    ) -> dict[str, Any]:
        """The parameters of the WeSpeaker ResNet whose ``state_dict`` is ``state``, given
        its ``pooling_func`` (not stored: see :meth:`pooling_readings`).

        Depth from the block type (``conv3`` present: bottleneck) and the blocks per stage,
        ``m_channels`` from the stem, ``embed_dim`` and ``feat_dim`` from ``seg_1`` (its input
        is stats x 8m x expansion x feat_dim / 8), ``two_emb_layer`` from ``seg_2``. A loss head
        (``projection.*``) is ignored. Raises :class:`XvecError` when a size cannot be read.
        """
        what = _check_resnet_keys(state)
        bottleneck = "layer1.0.conv3.weight" in state
        blocks = []
        for stage in range(1, 5):
            pattern = re.compile(rf"^layer{stage}\.(\d+)\.")
            indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
            if not indices or indices != set(range(len(indices))):
                raise XvecError(f"{what}: blocks of 'layer{stage}' missing or not numbered 0..n")
            blocks.append(len(indices))
        layout = (bottleneck, tuple(blocks))
        depths = [depth for depth, known in RESNET_LAYOUTS.items() if known == layout]
        if not depths:
            kind = "bottleneck" if bottleneck else "basic"
            raise XvecError(f"{what}: {kind} blocks {tuple(blocks)} per stage match no depth")
        m_channels = int(state["conv1.weight"].shape[0])
        expansion = Bottleneck.expansion if bottleneck else BasicBlock.expansion
        embed_dim, pooled = (int(size) for size in state["seg_1.weight"].shape)
        per_band = POOLED_STATISTICS[pooling_func] * 8 * m_channels * expansion
        if pooled % per_band:
            raise XvecError(
                f"{what}: seg_1 input {pooled} is not a multiple of {per_band} "
                f"(as {pooling_func} pooling needs)"
            )
        return {
            "depth": depths[0],
            "m_channels": m_channels,
            "feat_dim": 8 * (pooled // per_band),
            "embed_dim": embed_dim,
            "two_emb_layer": "seg_2.weight" in state,
        }
