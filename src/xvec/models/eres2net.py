"""ERes2Net and ERes2NetV2 (Chen et al., 3D-Speaker) with 3D-Speaker's state-dict names.

Both are Res2Net-style ResNets on the ``[freq, time]`` fbank: a 3x3 stem, four stages of
blocks (3, 4, 6, 3 by default) at widths m, 2m, 4m, 8m (times ``expansion`` at the block
outputs) that halve time and frequency from the second stage on. Inside a block a 1x1
convolution makes ``scale`` groups of ``width = planes * base_width // 64`` channels; each group
goes through a 3x3 convolution after being merged with the previous group's output (local
feature fusion): by addition in the first two stages, by attentional feature fusion (AFF) in the
last two. Activations in the blocks are ReLUs clipped at 20 (3D-Speaker's ``Hardtanh(0, 20)``).

- ERes2Net fuses the stages bottom-up (global feature fusion): stage 1's output, strided by a 3x3
  convolution, is fused with stage 2's by an AFF, that result strided and fused with stage 3's,
  and again with stage 4's. ``expansion`` 2 is 3D-Speaker's ``ERes2Net.py``, 4 (with
  ``base_width`` 24, ``scale`` 3, m 64) its ``ERes2Net_huge.py``.
- ERes2NetV2 keeps only the last fusion (stage 3 strided, fused with stage 4) and makes
  ``base_width``, ``scale`` and ``expansion`` options (26, 2, 2 by default; 24, 4, 4 for the
  "w24s4ep4" release).

Then statistics pooling over time of every channel x frequency (TSTP: mean and
``sqrt(unbiased var + 1e-8)``; TAP and TSDP keep one of the two) and a linear layer ``seg_1`` to
the embedding, optionally followed by ReLU, a parameter-free batch norm and ``seg_2``.

The input is 3D-Speaker's: 80 Kaldi fbanks (povey window, dither 0) of the [-1, 1] waveform, mean
over time removed (:class:`xvec.features.KaldiFbankCMN`). Module names equal 3D-Speaker's, so its
checkpoints (``embedding_model.ckpt``, ``pretrained_*.ckpt``) load with ``strict=True``; the
``params_from_state`` class methods read the sizes off them.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from xvec.errors import XvecError
from xvec.features import KaldiFbankCMN
from xvec.models.wespeaker_resnet import WeSpeakerPooling, samples_for, temporal_pool
from xvec.plugin import Params, SpeakerModel

__all__ = [
    "AttentionalFusion",
    "ERes2Net",
    "ERes2NetBlock",
    "ERes2NetParams",
    "ERes2NetV2",
    "ERes2NetV2Params",
    "pooled_width_options",
]

POOLED_STATS = {"TSTP": 2, "TAP": 1, "TSDP": 1}  # statistics per channel x frequency
CLIP = 20.0  # 3D-Speaker's block activation: Hardtanh(0, 20)
STD_FLOOR = 1e-8  # 3D-Speaker's TSTP/TSDP: sqrt(var + 1e-8)
AFF_REDUCTION = 4
FREQ_DOWNSAMPLING = 8  # three stride-2 stages


def clipped_relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU clipped at 20, the activation of every ERes2Net block."""
    return F.hardtanh(x, 0.0, CLIP)


class AttentionalFusion(nn.Module):
    """AFF: ``x * g + y * (2 - g)`` with a gate ``g = 1 + tanh(att([x, y]))`` per element.

    ``att`` (``local_att``) is a 1x1 bottleneck (``channels // 4``) with batch norms and SiLU.
    """

    def __init__(self, channels: int, reduction: int = AFF_REDUCTION) -> None:
        super().__init__()
        inner = channels // reduction
        self.local_att = nn.Sequential(
            nn.Conv2d(2 * channels, inner, 1),
            nn.BatchNorm2d(inner),
            nn.SiLU(),
            nn.Conv2d(inner, channels, 1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gate = 1.0 + torch.tanh(self.local_att(torch.cat((x, y), dim=1)))
        return torch.mul(x, gate) + torch.mul(y, 2.0 - gate)


class ERes2NetBlock(nn.Module):
    """Res2Net block with local feature fusion: addition, or AFF when ``fuse`` is true."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        base_width: int,
        scale: int,
        expansion: int,
        fuse: bool,
    ) -> None:
        super().__init__()
        self.width = planes * base_width // 64
        if self.width < 1:
            raise ValueError(f"block width {planes} * {base_width} // 64 is 0")
        out_planes = planes * expansion
        self.conv1 = nn.Conv2d(in_planes, self.width * scale, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(self.width * scale)
        self.convs = nn.ModuleList(
            nn.Conv2d(self.width, self.width, 3, padding=1, bias=False) for _ in range(scale)
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(self.width) for _ in range(scale))
        self.fuse_models = (
            nn.ModuleList(AttentionalFusion(self.width) for _ in range(scale - 1)) if fuse else None
        )
        self.conv3 = nn.Conv2d(self.width * scale, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.split(clipped_relu(self.bn1(self.conv1(x))), self.width, dim=1)
        outputs = []
        merged = groups[0]
        for index, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            if index > 0:
                if self.fuse_models is not None:
                    merged = self.fuse_models[index - 1](merged, groups[index])
                else:
                    merged = merged + groups[index]
            merged = clipped_relu(bn(conv(merged)))
            outputs.append(merged)
        out = self.bn3(self.conv3(torch.cat(outputs, dim=1)))
        return clipped_relu(out + self.shortcut(x))


class ERes2NetParams(Params):
    """ERes2Net options: fbank bands, embedding size, widths, block layout, pooling."""

    feat_dim: int = Field(80, ge=8, le=256, multiple_of=8, description="Kaldi mel bands")
    embed_dim: int = Field(192, ge=1)
    m_channels: int = Field(32, ge=1, description="width of the stem and the first stage")
    base_width: int = Field(32, ge=1, description="block group width = planes * base_width // 64")
    scale: int = Field(2, ge=1, description="groups per block")
    expansion: int = Field(2, ge=1, description="block output = planes * expansion")
    num_blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
    pooling: WeSpeakerPooling = "TSTP"
    two_emb_layer: bool = False
    mean_norm: bool = Field(True, description="subtract the fbank's mean over time")

    @field_validator("num_blocks")
    @classmethod
    def _at_least_one(cls, value: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        if min(value) < 1:
            raise ValueError("every stage needs at least one block")
        return value


class ERes2NetV2Params(ERes2NetParams):
    """ERes2NetV2 options; the defaults are 3D-Speaker's ERes2NetV2 (m 64, 26/2/2)."""

    m_channels: int = Field(64, ge=1, description="width of the stem and the first stage")
    base_width: int = Field(26, ge=1, description="block group width = planes * base_width // 64")


class _ERes2NetBase(SpeakerModel):
    """Front end, stem, four stages, pooling and embedding layers shared by both versions."""

    Params = ERes2NetParams
    params: ERes2NetParams
    min_frames: ClassVar[int] = 9  # time shrinks 8 times: two pooled frames for the variance

    def __init__(self, params: ERes2NetParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        self.front_end = KaldiFbankCMN(
            p.feat_dim, "povey", 0.0, samples_for(self.min_frames), mean_norm=p.mean_norm
        )
        self.conv1 = nn.Conv2d(1, p.m_channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(p.m_channels)
        in_planes = p.m_channels
        for index, blocks in enumerate(p.num_blocks):
            planes = p.m_channels * 2**index
            stage = []
            for number in range(blocks):
                stride = 2 if index > 0 and number == 0 else 1
                stage.append(
                    ERes2NetBlock(
                        in_planes, planes, stride, p.base_width, p.scale, p.expansion, index >= 2
                    )
                )
                in_planes = planes * p.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
        bands = p.feat_dim // FREQ_DOWNSAMPLING
        pooled = POOLED_STATS[p.pooling] * bands * p.m_channels * 8 * p.expansion
        self.seg_1 = nn.Linear(pooled, p.embed_dim)
        if p.two_emb_layer:
            self.seg_bn_1 = nn.BatchNorm1d(p.embed_dim, affine=False)
            self.seg_2 = nn.Linear(p.embed_dim, p.embed_dim)

    @property
    def embedding_dim(self) -> int:
        return self.params.embed_dim

    def fused_features(self, x: torch.Tensor) -> torch.Tensor:
        """The stem output ``[B, m, F, T]`` through the stages and their fusion."""
        raise NotImplementedError

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """The network on 3D-Speaker's input ``[batch, frames, feat_dim]`` -> embeddings."""
        x = F.relu(self.bn1(self.conv1(features.transpose(1, 2).unsqueeze(1))))
        pooled = temporal_pool(self.fused_features(x), self.params.pooling, STD_FLOOR)
        embedding = self.seg_1(pooled)
        if self.params.two_emb_layer:
            embedding = self.seg_2(self.seg_bn_1(F.relu(embedding)))
        return embedding

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(
                f"{type(self).__name__} expects [batch, samples], got {tuple(waveform.shape)}"
            )
        return self.embed_features(self.front_end(waveform))

    @classmethod
    def params_from_state(cls, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The parameters the weights fix: ``m_channels``, ``expansion``, ``scale``,
        ``num_blocks``, ``embed_dim``, ``two_emb_layer``, and the candidate ``base_width``s
        (``base_widths``, every value giving the weights' group widths: the network is the same
        for all of them). ``feat_dim`` and ``pooling`` are tied (see
        :func:`pooled_width_options`). Raises :class:`XvecError` when a size cannot be read.
        """
        what = f"3D-Speaker {cls.__name__} state dict"
        for key in (
            "conv1.weight",
            "layer1.0.conv1.weight",
            "layer1.0.conv3.weight",
            "seg_1.weight",
        ):
            if key not in state:
                raise XvecError(f"{what}: no '{key}' (not a {cls.__name__} checkpoint)")
        m_channels = int(state["conv1.weight"].shape[0])
        num_blocks = []
        for index in range(1, 5):
            pattern = re.compile(rf"^layer{index}\.(\d+)\.")
            found = {int(m.group(1)) for key in state if (m := pattern.match(key))}
            if not found or found != set(range(len(found))):
                raise XvecError(f"{what}: stage layer{index} has no blocks numbered from 0")
            num_blocks.append(len(found))
        scale = len({key for key in state if re.match(r"^layer1\.0\.convs\.\d+\.weight$", key)})
        out_planes = int(state["layer1.0.conv3.weight"].shape[0])
        if scale < 1 or out_planes % m_channels:
            raise XvecError(f"{what}: cannot read the block layout of layer1.0")
        widths = [int(state[f"layer{index}.0.convs.0.weight"].shape[0]) for index in range(1, 5)]
        base_widths = [
            candidate
            for candidate in range(1, 257)
            if all(
                m_channels * 2**index * candidate // 64 == width
                for index, width in enumerate(widths)
            )
        ]
        if not base_widths:
            raise XvecError(f"{what}: group widths {widths} fit no base width")
        return {
            "embed_dim": int(state["seg_1.weight"].shape[0]),
            "m_channels": m_channels,
            "base_widths": base_widths,
            "scale": scale,
            "expansion": out_planes // m_channels,
            "num_blocks": tuple(num_blocks),
            "two_emb_layer": "seg_2.weight" in state,
        }


def pooled_width_options(
    state: dict[str, torch.Tensor], inferred: dict[str, Any]
) -> dict[str, int]:
    """``{pooling: feat_dim}`` for every pooling under which ``seg_1``'s input width fits.

    ``seg_1`` takes ``stats * feat_dim / 8 * m_channels * 8 * expansion`` inputs: TSTP (two
    statistics) at ``feat_dim`` f looks exactly like TAP or TSDP at 2f.
    """
    pooled = int(state["seg_1.weight"].shape[1])
    per_band = inferred["m_channels"] * 8 * inferred["expansion"]
    options = {}
    for pooling, stats in POOLED_STATS.items():
        if pooled % (stats * per_band) == 0:
            options[pooling] = FREQ_DOWNSAMPLING * pooled // (stats * per_band)
    return options


class ERes2Net(_ERes2NetBase):
    """ERes2Net: Res2Net blocks with local (add/AFF) and bottom-up global feature fusion.

    Input: 16 kHz waveforms; 3D-Speaker's 80-band Kaldi fbank with mean normalisation. The
    defaults are 3D-Speaker's VoxCeleb ERes2Net (m 32, 192-dim embedding, 6.6 M parameters);
    ``expansion 4, base_width 24, scale 3, m_channels 64`` is its ERes2Net-huge.
    """

    def __init__(self, params: ERes2NetParams | None = None) -> None:
        super().__init__(params)
        widths = [self.params.m_channels * 2**index * self.params.expansion for index in range(4)]
        for index in range(1, 4):
            conv = nn.Conv2d(widths[index - 1], widths[index], 3, stride=2, padding=1, bias=False)
            self.add_module(f"layer{index}_downsample", conv)
        self.fuse_mode12 = AttentionalFusion(widths[1])
        self.fuse_mode123 = AttentionalFusion(widths[2])
        self.fuse_mode1234 = AttentionalFusion(widths[3])

    def fused_features(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.layer1(x)
        out2 = self.layer2(out1)
        fused = self.fuse_mode12(out2, self.layer1_downsample(out1))
        out3 = self.layer3(out2)
        fused = self.fuse_mode123(out3, self.layer2_downsample(fused))
        out4 = self.layer4(out3)
        return self.fuse_mode1234(out4, self.layer3_downsample(fused))


class ERes2NetV2(_ERes2NetBase):
    """ERes2NetV2: ERes2Net with only the last stage fusion, widths and expansion as options.

    Input: 16 kHz waveforms; 3D-Speaker's 80-band Kaldi fbank with mean normalisation. The
    defaults are 3D-Speaker's ERes2NetV2 (m 64, base width 26, scale 2, expansion 2, 17.9 M
    parameters); ``base_width 24, scale 4, expansion 4`` is its "w24s4ep4" release.
    """

    Params = ERes2NetV2Params
    params: ERes2NetV2Params

    def __init__(self, params: ERes2NetV2Params | None = None) -> None:
        super().__init__(params)
        p = self.params
        channels = p.m_channels * 8 * p.expansion
        self.layer3_ds = nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1, bias=False)
        self.fuse34 = AttentionalFusion(channels)

    def fused_features(self, x: torch.Tensor) -> torch.Tensor:
        out3 = self.layer3(self.layer2(self.layer1(x)))
        return self.fuse34(self.layer4(out3), self.layer3_ds(out3))
