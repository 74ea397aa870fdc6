"""Layers and statistics shared by several model families.

The statistics helpers hold the maths only; each model keeps its own parameters under its
source's state-dict names, and passes its source's floor (and ceiling) on the variance.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvReluBn", "mean_std", "weighted_mean_std"]


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
