"""The optimiser, learning-rate schedule and mixed-precision settings a recipe asks for."""

from __future__ import annotations

import math
from typing import Any

import torch

from xvec.config import Recipe


def make_optimizer(recipe: Recipe, params: Any) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (Nesterov momentum) with weight decay, as the recipe says."""
    optim = recipe.optim
    if optim.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=optim.lr,
            momentum=optim.momentum,
            weight_decay=optim.weight_decay,
            nesterov=True,
        )
    cls = torch.optim.AdamW if optim.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=optim.lr, weight_decay=optim.weight_decay)


def make_scheduler(
    recipe: Recipe, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> tuple[Any, str]:
    """The LR schedule and when it steps ("epoch" or "step").

    ``steplr`` is voxceleb_trainer's: multiply by ``lr_decay`` every ``test_interval`` epochs.
    ``cosine`` warms up linearly for ``warmup_epochs`` then decays to ``min_lr``.
    """
    optim = recipe.optim
    if optim.scheduler == "steplr":
        return (
            torch.optim.lr_scheduler.StepLR(
                optimizer, step_size=recipe.train.test_interval, gamma=optim.lr_decay
            ),
            "epoch",
        )
    if optim.scheduler == "cosine":
        total = max(1, recipe.train.max_epoch * steps_per_epoch)
        warmup = int(optim.warmup_epochs * steps_per_epoch)
        floor = optim.min_lr / optim.lr

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "step"
    return None, "none"


def autocast_settings(device: torch.device, enabled: bool) -> tuple[bool, torch.dtype]:
    """fp16 autocast on CUDA, bf16 on CPUs that have it, otherwise off (silently)."""
    if not enabled:
        return False, torch.float32
    if device.type == "cuda":
        return True, torch.float16
    if device.type == "cpu" and _cpu_has_bf16():
        return True, torch.bfloat16
    return False, torch.float32


def _cpu_has_bf16() -> bool:
    try:
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):
        return False
