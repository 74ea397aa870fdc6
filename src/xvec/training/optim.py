"""The optimiser (with weight-decay groups), learning-rate schedule, margin ramp and
mixed-precision settings a recipe asks for, applied to torch objects."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from xvec.config import Recipe
from xvec.errors import XvecError
from xvec.schedules import LrSchedule, MarginRamp, learning_rate, margin_at, set_margin


def _fusable(params: list[Any]) -> bool:
    """Whether torch's fused (one kernel for all tensors) optimiser step can take ``params``:
    3-5x faster than the per-tensor loop on the CPU (bench/optimizer_step.py)."""
    tensors = [t for item in params for t in (item["params"] if isinstance(item, dict) else [item])]
    return bool(tensors) and all(
        t.device.type in ("cpu", "cuda") and t.is_floating_point() for t in tensors
    )


def make_optimizer(recipe: Recipe, params: Any) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (Nesterov momentum) with weight decay, as the recipe says; its
    fused implementation where the parameters allow."""
    optim = recipe.optim
    params = list(params)
    fused = _fusable(params)
    if optim.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=optim.lr,
            momentum=optim.momentum,
            weight_decay=optim.weight_decay,
            nesterov=True,
            fused=fused,
        )
    cls = torch.optim.AdamW if optim.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=optim.lr, weight_decay=optim.weight_decay, fused=fused)


def make_scheduler(
    recipe: Recipe, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> tuple[Any, str]:
    """The LR schedule and when it steps ("epoch" or "step").

    ``steplr`` is voxceleb_trainer's: multiply by ``lr_decay`` every ``test_interval`` epochs.
    ``cosine`` warms up linearly for ``warmup_epochs`` then decays to ``min_lr``.
    """
    optim = recipe.optim
    if recipe.train.schedule is not None:  # per-step, set by the loop (training.schedules)
        return None, "none"
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


def channels_last_on(
    device: torch.device, mode: bool | str, model: nn.Module, bf16_autocast: bool
) -> bool:
    """Whether ``train.channels_last`` puts ``model`` in channels-last memory on ``device``.

    ``"auto"`` turns it on for models with 2-D convolutions on the CPU, where oneDNN's
    channels-last convolutions measured faster (docs/benchmarks.md), except where
    :func:`channels_last_hazard` finds a layer that oneDNN's kernels for this CPU and precision
    corrupt memory on; CUDA keeps the default layout until measured there. ``True`` with such
    a layer there is refused.
    """
    if not any(p.dim() == 4 for p in model.parameters()):
        return False
    hazard = channels_last_hazard(model, device, bf16_autocast)
    if mode == "auto":
        return device.type == "cpu" and hazard is None
    if mode and hazard is not None:
        name, min_channels, kernel = hazard
        raise XvecError(
            f"train.channels_last = true: layer '{name}' (a strided 1x1 convolution with "
            f"fewer than {min_channels} input channels) corrupts memory in oneDNN's {kernel} "
            'channels-last weight gradient on this CPU; set train.channels_last = "auto" or '
            "false" + (", or train.mixed_precision = false" if bf16_autocast else "")
        )
    return bool(mode)


# oneDNN (torch 2.13) writes past its buffers computing the weight gradient of a channels-last
# 1x1 convolution of stride 2 with few input channels (glibc aborts: "corrupted size vs.
# prev_size", "double free or corruption"): in bf16 on AVX-512 CPUs without AMX (AMD Zen 4)
# under 16 input channels, 16 and more measured safe (the AMX kernels of Xeons ran such layers
# through every test suite of this project); in float32 on AVX2 CPUs without AVX-512 (AMD
# Zen 3) under 8 input channels (1-7 abort within 20 steps), 8 and more measured safe.
BF16_HAZARD_MIN_CHANNELS = 16
AVX2_HAZARD_MIN_CHANNELS = 8


def channels_last_hazard(
    model: nn.Module, device: torch.device, bf16_autocast: bool
) -> tuple[str, int, str] | None:
    """``model``'s first strided 1x1 convolution with too few input channels for oneDNN's
    channels-last weight gradient on this CPU and precision: (its name, the channel count
    measured safe, the kernel's precision); None where there is none or no such bug is known."""
    if device.type != "cpu":
        return None
    if bf16_autocast and not _cpu_has_amx():
        min_channels, kernel = BF16_HAZARD_MIN_CHANNELS, "bf16"
    elif not bf16_autocast and torch.backends.cpu.get_cpu_capability() == "AVX2":
        min_channels, kernel = AVX2_HAZARD_MIN_CHANNELS, "AVX2 float32"
    else:
        return None
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.Conv2d)
            and module.kernel_size == (1, 1)
            and max(module.stride) > 1
            and module.in_channels < min_channels
        ):
            return name, min_channels, kernel
    return None


def _cpu_has_amx() -> bool:
    """Whether the CPU has AMX bf16 tiles (Linux's CPU flags; elsewhere assumed not)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            return any(line.startswith("flags") and " amx_bf16" in line for line in info)
    except OSError:
        return False


def autocast_settings(device: torch.device, mode: bool | str) -> tuple[bool, torch.dtype]:
    """Whether to autocast, and to which type, for ``train.mixed_precision`` on ``device``.

    ``True``: fp16 on CUDA, bf16 on CPUs that have it (measured faster than fp32 there,
    docs/benchmarks.md), otherwise off (silently). ``"bf16"`` / ``"fp16"``: that type (fp16
    needs CUDA: the CPU has no loss scaler). ``False``: fp32.
    """
    if mode is False:
        return False, torch.float32
    if mode == "bf16":
        return True, torch.bfloat16
    if mode == "fp16":
        if device.type != "cuda":
            raise XvecError(
                f"train.mixed_precision = 'fp16' needs a CUDA device (training on {device}); "
                "use 'bf16', true or false"
            )
        return True, torch.float16
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


@dataclass(frozen=True)
class ScheduledValues:
    """What :func:`apply_schedules` set: the base rate and the margin (None: left alone)."""

    lr: float | None
    margin: float | None


def apply_schedules(
    optimizer: torch.optim.Optimizer,
    loss: Any,
    lr_schedule: LrSchedule | None,
    margin_ramp: MarginRamp | None,
    step: int,
    *,
    steps_per_epoch: int,
    total_epochs: int,
    base_lr: float,
) -> ScheduledValues:
    """Set every param group's rate and the loss's margin for global step ``step`` (0-based).

    Call it before the step's forward pass (the margin shapes the loss). A group with an
    ``lr_scale`` entry runs at that multiple of the scheduled rate. A ramp on a loss without a
    settable ``margin`` is an error (an XvecError naming the loss), never silently ignored.
    """
    lr = None
    if lr_schedule is not None:
        lr = learning_rate(lr_schedule, step, steps_per_epoch, total_epochs, base_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
    margin = None
    if margin_ramp is not None:
        margin = margin_at(margin_ramp, step, steps_per_epoch)
        if not set_margin(loss, margin):
            raise XvecError(
                f"loss {type(loss).__name__} has no settable margin, so a margin ramp cannot "
                "drive it; remove the margin ramp or use a margin loss (amsoftmax, aamsoftmax)"
            )
    return ScheduledValues(lr=lr, margin=margin)


# --------------------------------------------------------------------------- weight decay


def _norm_layers() -> tuple[type[nn.Module], ...]:
    return (
        nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*, lazy ones
        nn.LayerNorm,
        nn.GroupNorm,
        *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
    )


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimiser param groups with ``weight_decay`` except on biases and normalisation layers.

    Decaying BatchNorm scales and biases only shrinks them towards zero without regularising
    anything, so SGD recipes exempt them. Returns the decayed group first, then the exempt one
    (``weight_decay`` 0.0); an empty group is left out. Shared parameters appear once.
    """
    decayed: list[nn.Parameter] = []
    exempt: list[nn.Parameter] = []
    seen: set[int] = set()
    norm_layers = _norm_layers()
    for module in model.modules():
        is_norm = isinstance(module, norm_layers)
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            (exempt if is_norm or name == "bias" else decayed).append(param)
    groups = [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": exempt, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]
