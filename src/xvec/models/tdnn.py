"""The Kaldi x-vector network (Snyder et al., ICASSP 2018) on log-mel filterbanks.

Five frame-level TDNN layers (contexts [t-2..t+2], {t-2, t, t+2}, {t-3, t, t+3}, {t}, {t}; each
an affine map, ReLU and batch norm, as Kaldi's ``relu-batchnorm`` layers), statistics pooling
(mean and standard deviation over all frames) and the first segment-level affine layer, whose
output, before its nonlinearity, is the x-vector. Kaldi's further segment layers and softmax
belong to the training objective here (an xvec loss on top of the embedding).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from xvec.features import LogFbank
from xvec.models.layers import ConvReluBn, mean_std
from xvec.plugin import Params, SpeakerModel

__all__ = ["TDNN", "TDNNParams", "stats_pooling"]

# (kernel size, dilation) of the frame layers: the Kaldi contexts written as dilated convolutions
FRAME_CONTEXTS = ((5, 1), (3, 2), (3, 3), (1, 1), (1, 1))
RECEPTIVE_FIELD = 1 + sum((kernel - 1) * dilation for kernel, dilation in FRAME_CONTEXTS)
VARIANCE_FLOOR = 1e-10


def stats_pooling(x: torch.Tensor) -> torch.Tensor:
    """Mean and standard deviation over time, ``[B, C, T] -> [B, 2C]``, computed in float32.

    The variance is floored (as Kaldi's statistics pooling does) so constant channels give a
    finite standard deviation and no gradient blow-up.
    """
    mean, std = mean_std(x.float(), dim=-1, floor=VARIANCE_FLOOR)
    return torch.cat([mean, std], dim=1)


class TDNNParams(Params):
    """x-vector options: input mel bands, frame-layer width, pooled layer width, embedding size."""

    n_mels: int = Field(40, ge=8, le=256)
    embedding_size: int = Field(512, ge=1)
    hidden: int = Field(512, ge=1)
    stats_dim: int = Field(1500, ge=1)


class TDNN(SpeakerModel):
    """Kaldi x-vector TDNN: 5 frame layers, mean+std pooling, 512-dim segment6 embedding.

    Input: 40-band log-mel filterbanks (:class:`xvec.features.LogFbank`) with per-utterance
    mean normalisation. Kaldi's recipes feed 23 (SRE) or 30 (VoxCeleb) MFCCs with sliding
    mean normalisation; MFCCs are a rotation (DCT) of log-mel energies, which the first affine
    layer can learn by itself, and 40 bands at 16 kHz resolve the spectrum at least as finely as
    30 cepstra while matching the 40-band input of xvec's other log-mel models. The frame
    layers use no padding, as Kaldi: an input needs at least 15 frames (about 0.15 s).
    """

    Params = TDNNParams
    params: TDNNParams

    def __init__(self, params: TDNNParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        self.fbank = LogFbank(n_mels=p.n_mels)
        widths = [p.n_mels] + [p.hidden] * 4 + [p.stats_dim]
        self.frame_layers = nn.Sequential(
            *(
                ConvReluBn(widths[i], widths[i + 1], kernel, dilation)
                for i, (kernel, dilation) in enumerate(FRAME_CONTEXTS)
            )
        )
        self.segment6 = nn.Linear(2 * p.stats_dim, p.embedding_size)

    @property
    def embedding_dim(self) -> int:
        return self.params.embedding_size

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"TDNN expects [batch, samples], got {tuple(waveform.shape)}")
        features = self.fbank(waveform)
        if features.shape[-1] < RECEPTIVE_FIELD:
            raise ValueError(
                f"TDNN needs at least {RECEPTIVE_FIELD} frames of input "
                f"(about {RECEPTIVE_FIELD * self.fbank.hop_length} samples), "
                f"got {features.shape[-1]}"
            )
        return self.segment6(stats_pooling(self.frame_layers(features)))
