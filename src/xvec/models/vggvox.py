"""voxceleb_trainer's VGGVox: the VGG-M style CNN of the original VoxCeleb paper, on 40 log-mels.

Module names follow voxceleb_trainer (``netcnn.<index>``, ``sap_linear``, ``attention``, ``fc``,
``torchfb``), so its ``VGGVox`` state dicts load unchanged.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from xvec.features import VTLogMelInput, vt_filterbank
from xvec.models.pooling import (
    attention_vector,
    attentive_pool,
    self_attention_weights,
    temporal_pool,
)
from xvec.plugin import Params, SpeakerModel

__all__ = ["VGGVox40"]

N_MELS = 40  # the network's final (4 x 1) convolution assumes exactly 40 mel bands
CHANNELS = 512


class VGGVoxParams(Params):
    """VGGVox parameters (voxceleb_trainer's argument names)."""

    nOut: int = Field(512, ge=1, description="embedding size")
    encoder_type: Literal["SAP", "TAP", "MAX"] = "SAP"
    n_mels: int = N_MELS
    log_input: bool = True

    @field_validator("n_mels")
    @classmethod
    def _forty_mels(cls, value: int) -> int:
        if value != N_MELS:
            raise ValueError(f"VGGVox40 is built for {N_MELS} mel bands only, not {value}")
        return value


def _conv_bn_relu(
    inputs: int,
    outputs: int,
    kernel: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (1, 1),
) -> list[nn.Module]:
    return [
        nn.Conv2d(inputs, outputs, kernel, stride=stride, padding=padding),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
    ]


class VGGVox40(VTLogMelInput, SpeakerModel):
    """VGGVox40 (voxceleb_trainer's VGGVox): VGG-M style CNN on 40 log-mels, SAP/TAP/MAX pooling.

    Five convolutions with three max-pools reduce the 40 mel bands to 4, a (4 x 1) convolution
    collapses them, and the pooling runs over time. 4.03 M parameters at the defaults.
    """

    Params: ClassVar[type[VGGVoxParams]] = VGGVoxParams
    # Shorter inputs are cyclically padded: the three time-axis max-pools need >= 2 output
    # frames so batch norm also works in training on a single utterance.
    min_samples: ClassVar[int] = 99 * 160

    params: VGGVoxParams

    def __init__(self, params: VGGVoxParams | None = None) -> None:
        super().__init__(params)
        self.netcnn = nn.Sequential(
            *_conv_bn_relu(1, 96, (5, 7), stride=(1, 2), padding=(2, 2)),
            nn.MaxPool2d(kernel_size=(1, 3), stride=(1, 2)),
            *_conv_bn_relu(96, 256, (5, 5), stride=(2, 2)),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            *_conv_bn_relu(256, 384, (3, 3)),
            *_conv_bn_relu(384, 256, (3, 3)),
            *_conv_bn_relu(256, 256, (3, 3)),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            *_conv_bn_relu(256, CHANNELS, (4, 1), padding=(0, 0)),
        )
        if self.params.encoder_type == "SAP":
            self.sap_linear = nn.Linear(CHANNELS, CHANNELS)
            self.attention = attention_vector(CHANNELS)
        self.fc = nn.Linear(CHANNELS, self.params.nOut)
        # VGGVox uses torchaudio's default (Hann) window, unlike the ResNets' Hamming.
        self.instancenorm = nn.InstanceNorm1d(N_MELS)
        self.torchfb = vt_filterbank(N_MELS, window="hann", preemphasis=False)

    @property
    def embedding_dim(self) -> int:
        return self.params.nOut

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = self.netcnn(self.log_mel(waveform).unsqueeze(1))  # [batch, 512, 1, time]
        if self.params.encoder_type == "SAP":
            frames = x.flatten(start_dim=1, end_dim=2).transpose(1, 2)  # [batch, time, 512]
            weights = self_attention_weights(frames, self.sap_linear, self.attention)
            pooled = attentive_pool(frames, weights, dim=1, with_std=False)
        else:
            pooled = temporal_pool(x, self.params.encoder_type)
        return self.fc(pooled)
