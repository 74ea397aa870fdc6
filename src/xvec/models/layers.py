"""Layers and statistics shared by several model families.

The statistics helpers hold the maths only; each model keeps its own parameters under its
source's state-dict names, and passes its source's floor (and ceiling) on the variance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConvReluBn",
    "conv_output_lengths",
    "mean_std",
    "padded_features",
    "time_mask",
    "weighted_mean_std",
    "zero_what_conv_reads_past",
]


def weighted_mean_std(
    x: torch.Tensor,
    weights: torch.Tensor,
    dim: int,
    floor: float,
    ceiling: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean and standard deviation of ``x`` along ``dim``.

    ``weights`` broadcasts against ``x`` and sums to 1 along ``dim``. The std is
    ``sqrt(clamp(E[x^2] - E[x]^2, floor, ceiling))``: the floor gives constant input a finite
    gradient (voxceleb_trainer's SAP/ASP, ECAPA, RawNet3 all pool this way).
    """
    mean = (x * weights).sum(dim=dim)
    variance = (x.square() * weights).sum(dim=dim) - mean.square()
    return mean, variance.clamp(floor, ceiling).sqrt()


def mean_std(
    x: torch.Tensor, dim: int, floor: float, keepdim: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population standard deviation ``sqrt(clamp(var, floor))`` along ``dim``."""
    variance, mean = torch.var_mean(x, dim=dim, keepdim=keepdim, correction=0)
    return mean, variance.clamp(min=floor).sqrt()


def time_mask(lengths: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``1`` on each item's first ``lengths[i]`` steps of ``x``'s last (time) axis, else ``0``,
    shaped to broadcast against ``x`` (``[batch, 1, ..., time]``) in its dtype."""
    steps = torch.arange(x.shape[-1], device=x.device)
    valid = steps < lengths.to(x.device)[:, None]
    return valid.to(x.dtype).view(x.shape[0], *([1] * (x.dim() - 2)), x.shape[-1])


def zero_what_conv_reads_past(
    x: torch.Tensor, lengths: torch.Tensor, conv: nn.Conv1d | nn.Conv2d
) -> torch.Tensor:
    """``x`` with zeros, in place, on the steps past each item's ``lengths[i]`` that ``conv``'s
    valid outputs read (one step for a 3-wide kernel): there the item alone has the conv's zero
    padding. Steps further on feed only outputs past the item's length, which stay unused."""
    out_lengths = conv_output_lengths(lengths, conv)
    last_read = (out_lengths - 1) * conv.stride[-1] - conv.padding[-1]
    last_read = last_read + conv.dilation[-1] * (conv.kernel_size[-1] - 1)
    width = int((last_read - lengths + 1).clamp(min=0).max())
    if width == 0:
        return x
    items = torch.arange(len(lengths), device=x.device).repeat_interleave(width)
    steps = (lengths[:, None] + torch.arange(width, device=lengths.device)).flatten().to(x.device)
    keep = (steps < x.shape[-1]) & (steps <= last_read.to(x.device).repeat_interleave(width))
    x[items[keep], ..., steps[keep]] = 0
    return x


def conv_output_lengths(lengths: torch.Tensor, conv: nn.Conv1d | nn.Conv2d) -> torch.Tensor:
    """Time steps a convolution makes of ``lengths`` steps along its input's last axis."""
    padding, kernel = conv.padding[-1], conv.kernel_size[-1]
    stride, dilation = conv.stride[-1], conv.dilation[-1]
    assert isinstance(padding, int), "string padding is resolved by the layer, not here"
    return (lengths + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def padded_features(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item features ``[1, ..., frames_i]`` zero-padded into one batch along the last axis,
    and each item's frame count."""
    lengths = torch.tensor([f.shape[-1] for f in features], device=features[0].device)
    longest = int(lengths.max())
    batch = torch.cat([F.pad(f, (0, longest - f.shape[-1])) for f in features])
    return batch, lengths


class ConvReluBn(nn.Module):
    """``batchnorm(relu(conv1d(x)))``; a TDNN layer when ``dilation`` spreads the kernel."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        dilation: int = 1,
        padding: int = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, dilation=dilation, padding=padding
        )
        self.bn = nn.BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.relu(self.conv(x)))
