"""Temporal pooling used by voxceleb_trainer's CNNs: frame features -> one utterance vector.

The maths is shared here as functions; the models own the parameters under voxceleb_trainer's
state-dict names (``sap_linear``, ``attention``), so VT checkpoints load without renaming.

- SAP (self-attentive pooling): a softmax over time of ``tanh(W x_t + b) . a`` weights the mean.
- ASP (attentive statistics pooling): the same weights give a mean and a standard deviation.
- TAP / MAX: plain average / maximum over time.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from xvec.models.layers import time_mask, weighted_mean_std

__all__ = [
    "attention_vector",
    "attentive_pool",
    "channel_attention",
    "masked_attention",
    "self_attention_weights",
    "temporal_pool",
]

STD_FLOOR = 1e-5  # floor on the weighted variance before the square root, as VT


def attention_vector(dim: int) -> nn.Parameter:
    """The learnable context vector ``a`` of shape ``[dim, 1]`` (Xavier-normal, as VT's)."""
    vector = nn.Parameter(torch.empty(dim, 1))
    nn.init.xavier_normal_(vector)
    return vector


def _ignore_padding(scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``scores`` (time last) with each item's steps from ``lengths[i]`` on set to -inf, so a
    softmax over time gives them weight 0."""
    return scores.masked_fill(time_mask(lengths, scores) == 0, -torch.inf)


def self_attention_weights(
    frames: torch.Tensor,
    sap_linear: nn.Linear,
    attention: torch.Tensor,
    lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention weights ``[batch, time, 1]`` summing to 1 over time, for ``[batch, time, dim]``.

    ``w_t = softmax_t(tanh(sap_linear(x_t)) . attention)``: one scalar per frame; with
    ``lengths``, over each item's first ``lengths[i]`` frames only (the rest weigh 0).
    """
    scores = torch.matmul(torch.tanh(sap_linear(frames)), attention).squeeze(2)
    if lengths is not None:
        scores = _ignore_padding(scores, lengths)
    return F.softmax(scores, dim=1).unsqueeze(2)


def attentive_pool(
    frames: torch.Tensor, weights: torch.Tensor, dim: int, with_std: bool
) -> torch.Tensor:
    """Weighted mean over axis ``dim`` (SAP), concatenated with the weighted std if ``with_std``.

    ``weights`` broadcasts against ``frames`` and sums to 1 along ``dim``. The variance
    ``E[x^2] - E[x]^2`` is floored at 1e-5 so the std has a finite gradient for constant input.
    """
    if not with_std:
        return torch.sum(frames * weights, dim=dim)
    mean, std = weighted_mean_std(frames, weights, dim, STD_FLOOR)
    return torch.cat([mean, std], dim=1)


def channel_attention(channels: int, hidden: int = 128) -> nn.Sequential:
    """ResNetSE34V2's attention: per-channel softmax-over-time weights for ``[B, channels, T]``.

    Two 1x1 convolutions with a ReLU and batch norm between, then a softmax over time (each
    channel gets its own weighting). Indices 0 and 2/3 match VT's ``attention.*`` state keys.
    """
    return nn.Sequential(
        nn.Conv1d(channels, hidden, kernel_size=1),
        nn.ReLU(),
        nn.BatchNorm1d(hidden),
        nn.Conv1d(hidden, channels, kernel_size=1),
        nn.Softmax(dim=2),
    )


def masked_attention(
    attention: nn.Sequential, frames: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """:func:`channel_attention`'s weights over each item's first ``lengths[i]`` steps of
    ``[B, channels, T]`` (the rest weigh 0)."""
    scores = attention[:-1](frames)
    return attention[-1](_ignore_padding(scores, lengths))


def temporal_pool(frames: torch.Tensor, mode: Literal["TAP", "MAX"]) -> torch.Tensor:
    """Average (TAP) or maximum (MAX) over all axes after the channels, ``[B, C, ...] -> [B, C]``.

    Equal to VGGVox's adaptive 2-D pooling to a single cell.
    """
    flat = frames.flatten(start_dim=2)
    return flat.mean(dim=2) if mode == "TAP" else flat.amax(dim=2)
